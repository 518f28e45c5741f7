//! One client connection after its startup: frames in, filtered backend output out.
//!
//! Messages are collected into a batch until a message the client waits on (`Sync`, `Query`,
//! `Flush`, `FunctionCall`), then the batch is exchanged with the backend under the lease. The
//! lease is taken for the first exchange and kept while the client is in a transaction, in an
//! extended-protocol sequence not yet ended by `Sync`, or holds session-level advisory locks or
//! `WITH HOLD` cursors; everyone else queues on it. On the way in, statement and portal names
//! are renamed per client, session-scoped commands are scoped to this client, and COPY, LISTEN
//! and NOTIFY are refused. This module must not block the backend on anything but this
//! client's own messages and output.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, watch};

use crate::classify::{self, Classified, StatementKind, Verdict};
use crate::frame::{self, Frame};
use crate::lease::{self, Plan, Session};
use crate::lexer::LexOptions;
use crate::message::{self, FrontendMessage, Part};
use crate::reply::{Replies, Severity, TxStatus};
use crate::server::Shared;
use crate::settings::{self, Settings};
use crate::{Backend, Error};

/// A batch larger than this is sent even before the client asks for results, so a client
/// streaming messages without `Sync` cannot make the bridge buffer without bound.
const BATCH_SOFT_LIMIT: usize = 1 << 20;

/// Awaits the backend's answer to a batch. While other clients wait for the backend, the loop
/// is not let sleep for up to `limit`: the task yields instead, so the runtime still polls for
/// I/O (without blocking) and serves the others, and the answer is read the moment it arrives
/// rather than after the CPU went idle and had to be woken again.
async fn answer_while_queued<F: Future>(answer: F, waiting: &AtomicUsize, limit: Duration) -> F::Output {
    let mut answer = std::pin::pin!(answer);
    let mut deadline = None;
    loop {
        let poll = !limit.is_zero() && waiting.load(Ordering::Relaxed) > 0 && {
            let now = Instant::now();
            now < *deadline.get_or_insert(now + limit)
        };
        tokio::select! {
            biased;
            out = &mut answer => return out,
            () = tokio::task::yield_now(), if poll => {}
        }
    }
}

/// Per-client session state that outlives single messages.
pub(crate) struct Client {
    pub(crate) id: u32,
    pub(crate) pid: i32,
    /// Settings from the startup packet (and the role), restored after `RESET`.
    startup: Settings,
    /// The settings this client has now, as overrides of the baseline.
    overrides: Settings,
    running: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
    /// Bytes read but not yet framed (startup may have read ahead).
    buf: BytesMut,
    standard_strings: bool,
    /// Backend names of this client's prepared statements, closed when it leaves.
    statements: HashSet<Vec<u8>>,
    /// The SQL text last found to hold only `Plain` statements, and how it was lexed (`None`:
    /// no such text yet). The buffer is reused.
    plain_sql: (Vec<u8>, Option<LexOptions>),
    /// This client's last unnamed Parse, replayed if another client's replaced it since.
    /// (Empty when there is none; the buffer is reused.)
    unnamed_parse: Vec<u8>,
    tx: TxStatus,
    /// Extended-protocol messages were forwarded and their `Sync` has not been.
    pending: bool,
    /// A statement may have changed settings; take a snapshot when idle.
    settings_dirty: bool,
    /// Settings reset by `RESET`, to restore to the startup values when idle.
    restore: BTreeSet<String>,
    /// The backend session this client has used; state on an older one is gone.
    generation: Option<u64>,
    /// Backend names of statements (the unnamed one as empty) whose SQL may take or release
    /// session-level advisory locks or cursors.
    scoped_statements: HashSet<Vec<u8>>,
    /// The client holds session-level advisory locks or `WITH HOLD` cursors. They cannot be
    /// told apart from other clients' on the one backend session, so it keeps the lease until
    /// it lets go of them: others wait, and its `pg_advisory_unlock_all()` and `CLOSE ALL`
    /// touch only its own.
    holds: bool,
}

impl Client {
    pub(crate) fn new(
        id: u32,
        pid: i32,
        startup: Settings,
        running: Arc<AtomicBool>,
        permit: OwnedSemaphorePermit,
        buf: BytesMut,
        standard_strings: bool,
    ) -> Client {
        Client {
            id,
            pid,
            overrides: startup.clone(),
            startup,
            running,
            _permit: permit,
            buf,
            standard_strings,
            statements: HashSet::new(),
            plain_sql: (Vec::new(), None),
            unnamed_parse: Vec::new(),
            tx: TxStatus::Idle,
            pending: false,
            settings_dirty: false,
            restore: BTreeSet::new(),
            generation: None,
            scoped_statements: HashSet::new(),
            holds: false,
        }
    }

    /// The backend's name for this client's statement or portal `name`.
    fn backend_name(&self, name: &[u8]) -> Vec<u8> {
        let mut res = format!("_pgb{}_", self.id).into_bytes();
        // Names longer than NAMEDATALEN - 1 are truncated by the backend; hash instead, so two
        // long names sharing a prefix stay apart.
        if res.len() + name.len() > 63 {
            res.extend_from_slice(format!("h{:016x}", fnv1a(name)).as_bytes());
        } else {
            res.extend_from_slice(name);
        }
        res
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// What the unnamed statement is after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unnamed {
    Unchanged,
    Mine,
    Dropped,
}

/// The messages collected for the next exchange.
struct Batch {
    frames: BytesMut,
    plan: Plan,
    /// Closes and the like that must run before the client's messages.
    prefix: BytesMut,
    /// The batch refers to the unnamed statement before parsing one of its own.
    uses_unnamed: bool,
    unnamed: Unnamed,
    /// The last message waits for results (`Sync`, `Query`, `FunctionCall`).
    terminated: bool,
    /// A statement may have taken or released session-level locks or cursors.
    session_scoped: bool,
    /// The client sent `DISCARD ALL`.
    discard_all: bool,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            // Room for a typical Parse/Bind/Describe/Execute/Sync group without regrowing.
            frames: BytesMut::with_capacity(512),
            plan: Plan::default(),
            prefix: BytesMut::new(),
            uses_unnamed: false,
            unnamed: Unnamed::Unchanged,
            terminated: false,
            session_scoped: false,
            discard_all: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.prefix.is_empty()
    }

    fn push(&mut self, bytes: &[u8]) {
        self.frames.extend_from_slice(bytes);
        self.terminated = false;
    }

    fn put(&mut self, tag: u8, parts: &[Part<'_>]) {
        message::put(&mut self.frames, tag, parts);
        self.terminated = false;
    }

    /// Appends a client's frame `whole`, re-encoded from `parts` if `rewritten` (a name renamed,
    /// a text changed), else as it came: unnamed statements and portals keep their empty names.
    fn forward(&mut self, whole: &[u8], rewritten: bool, tag: u8, parts: &[Part<'_>]) {
        if rewritten { self.put(tag, parts) } else { self.push(whole) }
    }
}

/// Counts a client queued on the lease for as long as it waits (a dropped wait included).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(waiting: &'a AtomicUsize) -> Queued<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        Queued(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Next {
    Frame(Frame),
    Closed,
    Stop { sqlstate: &'static str, message: String },
}

/// A client connection being served.
pub(crate) struct Connection<B, S> {
    shared: Arc<Shared<B>>,
    stream: S,
    client: Client,
    shutdown: watch::Receiver<bool>,
    /// Resolves once shutdown is asked for; kept across reads, so waiting for a message does
    /// not register with the watch channel anew each time.
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    lease: Option<OwnedMutexGuard<Session>>,
    batch: Batch,
    /// A refused command; client messages are discarded until `Sync`.
    discarding: Option<Refusal>,
}

/// Resolves when the bridge is told to shut down (never if the sender is gone without).
async fn stop_requested(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a statement or message is answered with an error instead of being forwarded.
#[derive(Clone, Debug)]
struct Refusal {
    sqlstate: &'static str,
    message: String,
}

impl Refusal {
    fn unsupported(command: &str) -> Refusal {
        Refusal { sqlstate: "0A000", message: format!("{command} is not supported by this server") }
    }

    fn too_large(len: usize, max: usize) -> Refusal {
        Refusal {
            sqlstate: "54000",
            message: format!("message of {len} bytes is larger than this server accepts ({max} bytes)"),
        }
    }

    /// A statement that makes the backend raise this error itself.
    fn raise_sql(&self) -> String {
        format!(
            "DO $pgb$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$pgb$",
            self.sqlstate,
            self.message.replace('\'', "''")
        )
    }
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    pub(crate) fn new(shared: Arc<Shared<B>>, stream: S, client: Client, shutdown: watch::Receiver<bool>) -> Self {
        let stopping = Box::pin(stop_requested(shutdown.clone()));
        Connection { shared, stream, client, shutdown, stopping, lease: None, batch: Batch::new(), discarding: None }
    }

    /// Serves messages until the client leaves or must be ended. A backend failure ends the
    /// connection with a FATAL the client can understand, as PostgreSQL does after a crash.
    pub(crate) async fn serve(&mut self) -> Result<(), Error> {
        let result = self.serve_frames().await;
        match &result {
            Err(Error::Backend(_) | Error::BackendRestarted) => {
                self.write_error(
                    Severity::Fatal,
                    "57P02",
                    "terminating connection because the database backend crashed and was restarted",
                )
                .await;
            }
            Err(Error::BackendGone) => {
                self.write_error(Severity::Fatal, "57P03", "the database system is not available").await;
            }
            _ => {}
        }
        result
    }

    async fn serve_frames(&mut self) -> Result<(), Error> {
        loop {
            match self.next_frame().await? {
                Next::Frame(frame) => {
                    if !self.handle(frame).await? {
                        return Ok(());
                    }
                }
                Next::Closed => return Ok(()),
                Next::Stop { sqlstate, message } => {
                    self.write_error(Severity::Fatal, sqlstate, &message).await;
                    return Ok(());
                }
            }
        }
    }

    async fn write_error(&mut self, severity: Severity, sqlstate: &str, message: &str) {
        if let Ok(bytes) = crate::reply::error_frame(severity, sqlstate, message) {
            let _ = self.stream.write_all(&bytes).await;
        }
    }

    async fn next_frame(&mut self) -> Result<Next, Error> {
        let busy_poll = self.shared.config.busy_poll;
        let poll_until = (!busy_poll.is_zero()).then(|| Instant::now() + busy_poll);
        loop {
            match frame::split_frame(&mut self.client.buf, frame::MAX_MESSAGE_LEN) {
                Ok(Some(frame)) => return Ok(Next::Frame(frame)),
                Ok(None) => {}
                Err(error) => {
                    return Ok(Next::Stop { sqlstate: "08P01", message: format!("invalid message: {error}") });
                }
            }
            if *self.shutdown.borrow() {
                return Ok(Next::Stop {
                    sqlstate: "57P01",
                    message: "terminating connection due to administrator command".to_owned(),
                });
            }
            let idle_limit = self.shared.config.idle_in_transaction_timeout;
            let holding = self.lease.is_some();
            // Room for a whole pipeline in one read; once the frames split off the buffer are
            // gone this reuses its memory.
            if self.client.buf.capacity() - self.client.buf.len() < 4096 {
                self.client.buf.reserve(8192);
            }
            let read = self.stream.read_buf(&mut self.client.buf);
            // Biased: the client's bytes are what wakes this loop nearly every time; the other
            // branches are polled only when there are none (shutdown is also checked above).
            tokio::select! {
                biased;
                res = read => match res {
                    Ok(0) => return Ok(Next::Closed),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%error, "reading from client");
                        return Ok(Next::Closed);
                    }
                },
                // Done only once: the loop then returns at the check above.
                () = &mut self.stopping => {}
                // Busy polling: instead of letting the loop sleep, hand it back to the runtime,
                // which looks for I/O without blocking and runs any other ready client first.
                () = tokio::task::yield_now(), if poll_until.is_some_and(|until| Instant::now() < until) => {}
                () = tokio::time::sleep(idle_limit), if holding => {
                    if self.client.tx == TxStatus::Idle && self.client.holds {
                        return Ok(Next::Stop {
                            sqlstate: "57P05",
                            message: "terminating connection due to idle-session timeout while holding \
                                      session-level advisory locks or cursors that other clients wait for"
                                .to_owned(),
                        });
                    }
                    return Ok(Next::Stop {
                        sqlstate: "25P03",
                        message: "terminating connection due to idle-in-transaction timeout".to_owned(),
                    });
                }
            }
        }
    }

    /// Handles one frame; `false` ends the connection.
    async fn handle(&mut self, frame: Frame) -> Result<bool, Error> {
        let msg = match message::decode(frame.tag(), frame.body()) {
            Ok(msg) => msg,
            Err(malformed) => {
                self.write_error(Severity::Fatal, "08P01", &malformed.reason).await;
                return Ok(false);
            }
        };
        if let Some(refusal) = self.discarding.take() {
            if msg == FrontendMessage::Sync {
                self.finish_refusal(&refusal).await?;
                return Ok(true);
            }
            self.discarding = Some(refusal);
            if msg == FrontendMessage::Terminate {
                return Ok(false);
            }
            return Ok(true);
        }
        if let Some(max) = self.shared.max_request {
            if frame.bytes().len() > max {
                let refusal = Refusal::too_large(frame.bytes().len(), max);
                return self.refuse(frame.tag() == b'Q', refusal).await.map(|()| true);
            }
            if !self.batch.is_empty() && self.batch.frames.len() + self.batch.prefix.len() + frame.bytes().len() > max {
                // The backend takes no more at once: what is batched so far goes first.
                self.send().await?;
            }
        }
        match msg {
            FrontendMessage::Terminate => return Ok(false),
            FrontendMessage::CopyStray => {}
            FrontendMessage::Query { sql } => self.query(sql).await?,
            FrontendMessage::Parse { statement, sql, param_types } => {
                self.parse(frame.bytes(), statement, sql, param_types).await?;
            }
            FrontendMessage::Bind { portal, statement, rest } => {
                if statement.is_empty() {
                    self.use_unnamed();
                }
                let renamed = !portal.is_empty() || !statement.is_empty();
                let portal = self.portal_name(portal);
                let statement = self.statement_name(statement);
                // Most clients never prepare such a statement: skip hashing the name.
                if !self.client.scoped_statements.is_empty() && self.client.scoped_statements.contains(&statement) {
                    self.batch.session_scoped = true;
                }
                let parts = [Part::Cstr(&portal), Part::Cstr(&statement), Part::Raw(rest)];
                self.batch.forward(frame.bytes(), renamed, b'B', &parts);
            }
            FrontendMessage::Describe { kind, name } | FrontendMessage::Close { kind, name } => {
                let close = frame.tag() == b'C';
                let renamed = if kind == b'S' {
                    if name.is_empty() {
                        if close {
                            self.client.unnamed_parse.clear();
                            self.batch.unnamed = Unnamed::Dropped;
                        } else {
                            self.use_unnamed();
                        }
                    }
                    let renamed = self.statement_name(name);
                    if close {
                        self.client.statements.remove(&renamed);
                    }
                    renamed
                } else {
                    self.portal_name(name)
                };
                self.batch.forward(
                    frame.bytes(),
                    !name.is_empty(),
                    frame.tag(),
                    &[Part::Raw(&[kind]), Part::Cstr(&renamed)],
                );
            }
            FrontendMessage::Execute { portal, max_rows } => {
                let renamed = !portal.is_empty();
                let portal = self.portal_name(portal);
                let parts = [Part::Cstr(&portal), Part::Raw(&max_rows.to_be_bytes())];
                self.batch.forward(frame.bytes(), renamed, b'E', &parts);
            }
            FrontendMessage::Flush => {
                self.batch.push(frame.bytes());
                self.send().await?;
            }
            FrontendMessage::Sync | FrontendMessage::FunctionCall => {
                self.batch.push(frame.bytes());
                self.batch.terminated = true;
                self.send().await?;
            }
        }
        if self.batch.frames.len() > BATCH_SOFT_LIMIT {
            self.send().await?;
        }
        Ok(true)
    }

    fn statement_name(&self, name: &[u8]) -> Vec<u8> {
        if name.is_empty() { Vec::new() } else { self.client.backend_name(name) }
    }

    fn portal_name(&self, name: &[u8]) -> Vec<u8> {
        self.statement_name(name)
    }

    fn use_unnamed(&mut self) {
        if self.batch.unnamed == Unnamed::Unchanged {
            self.batch.uses_unnamed = true;
        }
    }

    fn lex_options(&self) -> LexOptions {
        LexOptions { standard_strings: self.client.standard_strings }
    }

    /// Applies the per-statement treatment to SQL text; returns the text to send.
    fn rewrite<'a>(&mut self, sql: &'a [u8], statements: &[Classified], simple: bool) -> Cow<'a, [u8]> {
        let mut res = Vec::new();
        let mut copied = 0;
        let replace = |res: &mut Vec<u8>, copied: &mut usize, range: std::ops::Range<usize>, with: &[u8]| {
            res.extend_from_slice(&sql[*copied..range.start]);
            res.extend_from_slice(with);
            *copied = range.end;
        };
        for (idx, statement) in statements.iter().enumerate() {
            if statement.kind.touches_settings() {
                self.client.settings_dirty = true;
            }
            match &statement.kind {
                StatementKind::Plain | StatementKind::Settings => {}
                StatementKind::SessionScoped => self.batch.session_scoped = true,
                StatementKind::Reset { name } => {
                    self.client.restore.insert(name.clone());
                }
                StatementKind::ResetAll => self.restore_all(),
                StatementKind::DeallocateAll | StatementKind::DiscardAll => {
                    for name in self.client.statements.drain() {
                        self.batch.prefix.extend_from_slice(&message::close_statement(&name));
                        self.batch.plan.drop_leading += 1;
                    }
                    let (with, tag): (&[u8], &str) = if statement.kind == StatementKind::DeallocateAll {
                        // Any harmless statement would do; this one needs nothing from the
                        // catalog and does nothing when nobody listens.
                        (b" UNLISTEN _pgb_noop", "DEALLOCATE ALL")
                    } else {
                        self.restore_all();
                        self.batch.session_scoped = true;
                        self.batch.discard_all = true;
                        (b" RESET ALL", "DISCARD ALL")
                    };
                    replace(&mut res, &mut copied, statement.span.clone(), with);
                    if simple {
                        self.batch.plan.tags.push((idx, tag.to_owned()));
                    }
                }
                StatementKind::NamedStatement { name, value } => {
                    let renamed = self.client.backend_name(value);
                    let is_prepare =
                        sql[statement.span.clone()].iter().position(|b| !b.is_ascii_whitespace()).is_some_and(|at| {
                            sql[statement.span.start + at..].len() >= 7
                                && sql[statement.span.start + at..statement.span.start + at + 7]
                                    .eq_ignore_ascii_case(b"PREPARE")
                        });
                    if is_prepare {
                        self.client.statements.insert(renamed.clone());
                    }
                    let mut quoted = Vec::with_capacity(renamed.len() + 2);
                    quoted.push(b'"');
                    for &b in &renamed {
                        if b == b'"' {
                            quoted.push(b'"');
                        }
                        quoted.push(b);
                    }
                    quoted.push(b'"');
                    replace(&mut res, &mut copied, name.clone(), &quoted);
                }
            }
        }
        if copied == 0 {
            return Cow::Borrowed(sql);
        }
        res.extend_from_slice(&sql[copied..]);
        Cow::Owned(res)
    }

    /// Classifies SQL text, skipping the work for the text last found to hold only plain
    /// statements: clients that do not name their statements send the same text every time.
    fn classify(&mut self, sql: &[u8]) -> Verdict {
        let options = self.lex_options();
        if self.client.plain_sql.1 == Some(options) && self.client.plain_sql.0 == sql {
            return Verdict::Allow { statements: Default::default() };
        }
        let verdict = classify::classify(sql, options);
        if let Verdict::Allow { statements } = &verdict
            && statements.iter().all(|s| s.kind == StatementKind::Plain)
        {
            let (text, lexed) = &mut self.client.plain_sql;
            text.clear();
            text.extend_from_slice(sql);
            *lexed = Some(options);
        }
        verdict
    }

    fn restore_all(&mut self) {
        let names = self.client.startup.keys().chain(self.shared.baseline_changes.keys());
        self.client.restore.extend(names.cloned());
    }

    async fn query(&mut self, sql: &[u8]) -> Result<(), Error> {
        match self.classify(sql) {
            Verdict::Refuse { command } => self.refuse(true, Refusal::unsupported(command)).await,
            Verdict::Allow { statements } => {
                let rewritten = self.rewrite(sql, &statements, true);
                self.batch.put(b'Q', &[Part::Cstr(&rewritten)]);
                self.batch.terminated = true;
                // A simple query drops the unnamed statement, the client's own included.
                self.client.unnamed_parse.clear();
                self.batch.unnamed = Unnamed::Dropped;
                self.send().await
            }
        }
    }

    /// `whole` is the Parse frame as the client sent it.
    async fn parse(&mut self, whole: &[u8], statement: &[u8], sql: &[u8], param_types: &[u8]) -> Result<(), Error> {
        match self.classify(sql) {
            Verdict::Refuse { command } => self.refuse(false, Refusal::unsupported(command)).await,
            Verdict::Allow { statements } => {
                let rewritten = self.rewrite(sql, &statements, false);
                let name = self.statement_name(statement);
                if statements.iter().any(|s| s.kind == StatementKind::SessionScoped) {
                    self.client.scoped_statements.insert(name.clone());
                } else if !self.client.scoped_statements.is_empty() {
                    self.client.scoped_statements.remove(&name);
                }
                let changed = !statement.is_empty() || matches!(rewritten, Cow::Owned(_));
                let start = self.batch.frames.len();
                let parts = [Part::Cstr(&name), Part::Cstr(&rewritten), Part::Raw(param_types)];
                self.batch.forward(whole, changed, b'P', &parts);
                if statement.is_empty() {
                    // Kept as sent to the backend, to replay it there.
                    self.client.unnamed_parse.clear();
                    self.client.unnamed_parse.extend_from_slice(&self.batch.frames[start..]);
                    self.batch.unnamed = Unnamed::Mine;
                } else {
                    self.client.statements.insert(name);
                }
                Ok(())
            }
        }
    }

    /// Answers a refused message instead of forwarding it: a simple `Query` at once, an
    /// extended-protocol message at the `Sync` that ends its group (the rest is discarded).
    async fn refuse(&mut self, simple_query: bool, refusal: Refusal) -> Result<(), Error> {
        if !self.batch.is_empty() {
            self.send().await?;
        }
        if !simple_query {
            if self.lease.is_none() {
                self.write_error(Severity::Error, refusal.sqlstate, &refusal.message).await;
            }
            self.discarding = Some(refusal);
            return Ok(());
        }
        if self.lease.is_some() {
            // Let the backend raise the error, so an open transaction is aborted exactly as
            // PostgreSQL would.
            self.batch.push(&message::query(&refusal.raise_sql()));
            self.batch.terminated = true;
            self.batch.unnamed = Unnamed::Dropped;
            self.send().await
        } else {
            let mut replies = Replies::new();
            replies.error(Severity::Error, refusal.sqlstate, &refusal.message)?;
            replies.ready(self.client.tx)?;
            self.stream.write_all(&replies.into_bytes()).await?;
            Ok(())
        }
    }

    /// Answers the `Sync` that ends a group with a refused message.
    async fn finish_refusal(&mut self, refusal: &Refusal) -> Result<(), Error> {
        if self.lease.is_none() {
            let mut replies = Replies::new();
            replies.ready(self.client.tx)?;
            self.stream.write_all(&replies.into_bytes()).await?;
            return Ok(());
        }
        // Something of this group already ran, or a transaction is open: the backend raises
        // the error itself so the group or transaction fails as it would in PostgreSQL.
        let sql = refusal.raise_sql();
        self.batch.put(b'P', &[Part::Cstr(b""), Part::Cstr(sql.as_bytes()), Part::Raw(&[0, 0])]);
        self.batch.put(b'B', &[Part::Cstr(b""), Part::Cstr(b""), Part::Raw(&[0, 0, 0, 0, 0, 0])]);
        self.batch.put(b'E', &[Part::Cstr(b""), Part::Raw(&[0, 0, 0, 0])]);
        self.batch.push(&message::sync());
        self.batch.terminated = true;
        self.batch.plan.drop_leading += 2;
        self.batch.unnamed = Unnamed::Dropped;
        self.send().await
    }

    /// Takes the lease if this client does not hold it, and puts its settings on the backend.
    async fn acquire(&mut self) -> Result<(), Error> {
        if self.lease.is_some() {
            return Ok(());
        }
        // Free and nobody queued (the mutex hands a released lease straight to the first in
        // line): taken without queueing.
        let mut session = match self.shared.lease.clone().try_lock_owned() {
            Ok(session) => session,
            Err(_) => {
                let _queued = Queued::new(&self.shared.waiting);
                self.shared.lease.clone().lock_owned().await
            }
        };
        if session.broken {
            return Err(Error::BackendGone);
        }
        match self.client.generation {
            Some(generation) if generation != session.generation => return Err(Error::BackendRestarted),
            _ => self.client.generation = Some(session.generation),
        }
        if session.applied_for == Some(self.client.id) {
            // Nobody else had the backend since this client's settings were put on it.
        } else if let Some(sql) = settings::switch_sql(&session.applied, &self.client.overrides, &self.shared.baseline)
        {
            match session.internal(&self.shared.backend, &sql).await? {
                Err((code, message)) => {
                    // The client's settings stopped being valid (a dropped role, say); it
                    // runs with whatever the backend has, which is logged.
                    tracing::warn!(code, message, client = self.client.id, "re-applying a client's settings failed");
                }
                Ok(_) => {
                    session.applied = self.client.overrides.clone();
                    session.applied_for = Some(self.client.id);
                }
            }
        } else {
            session.applied_for = Some(self.client.id);
        }
        self.lease = Some(session);
        Ok(())
    }

    /// Exchanges the batch with the backend and forwards the filtered output.
    async fn send(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.acquire().await?;
        let mut batch = std::mem::replace(&mut self.batch, Batch::new());
        let id = self.client.id;
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        let mut frames = BytesMut::new();
        if batch.uses_unnamed && session.unnamed_owner != Some(id) && !self.client.unnamed_parse.is_empty() {
            frames.extend_from_slice(&self.client.unnamed_parse);
            batch.plan.drop_leading += 1;
            session.unnamed_owner = Some(id);
        }
        if frames.is_empty() && batch.prefix.is_empty() {
            frames = std::mem::take(&mut batch.frames);
        } else {
            frames.extend_from_slice(&batch.prefix);
            frames.extend_from_slice(&batch.frames);
        }
        self.client.running.store(true, Ordering::SeqCst);
        let answer = self.shared.backend.exchange(frames.freeze());
        let output = answer_while_queued(answer, &self.shared.waiting, self.shared.config.poll_while_queued).await;
        self.client.running.store(false, Ordering::SeqCst);
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                session.exchange_failed(&self.shared.backend).await;
                return Err(error);
            }
        };
        let filtered = lease::filter(output, &batch.plan, session)?;
        match batch.unnamed {
            Unnamed::Unchanged => {}
            Unnamed::Mine => session.unnamed_owner = Some(id),
            Unnamed::Dropped => session.unnamed_owner = None,
        }
        for (name, value) in &filtered.parameters {
            if name == "standard_conforming_strings" {
                self.client.standard_strings = value == "on";
            }
        }
        if let Some(status) = filtered.ready {
            self.client.tx = status;
            self.client.pending = false;
        }
        if !batch.terminated {
            self.client.pending = true;
        }
        let mut out = filtered.out;
        if self.client.tx == TxStatus::Idle && !self.client.pending {
            out.extend_from_slice(&self.settle_settings().await?);
            if batch.session_scoped || self.client.holds {
                self.settle_holds(batch.discard_all).await?;
            }
            if !self.client.holds {
                self.lease = None;
                if self.shared.waiting.load(Ordering::SeqCst) > 0 {
                    // Let the next client send its request before this one's output is
                    // written, so the backend works while we write.
                    tokio::task::yield_now().await;
                }
            }
        }
        self.write_output(&out).await
    }

    /// Writes backend output to the client. Idle clients were let go of the backend before
    /// this, so one that stops reading holds up only itself; one that holds the backend gets
    /// as long as an idle owner would before it is ended (and rolled back).
    async fn write_output(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.lease.is_none() {
            self.stream.write_all(bytes).await?;
            return Ok(());
        }
        let limit = self.shared.config.idle_in_transaction_timeout;
        match tokio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok(written) => Ok(written?),
            Err(_) => {
                tracing::warn!(client = self.client.id, "client stopped reading while holding the backend; ending it");
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading while holding the backend",
                )))
            }
        }
    }

    /// After a batch that may have taken or released session-level advisory locks or
    /// cursors, finds out whether the client still holds any (then it keeps the lease).
    /// `DISCARD ALL` releases them, as PostgreSQL's does.
    async fn settle_holds(&mut self, discard_all: bool) -> Result<(), Error> {
        let Some(session) = self.lease.as_mut() else {
            return Ok(());
        };
        let mut sql = String::new();
        if discard_all && self.client.holds {
            sql.push_str("CLOSE ALL; SELECT pg_catalog.pg_advisory_unlock_all(); ");
        }
        sql.push_str(lease::HOLDS_SQL);
        self.client.holds = match session.internal(&self.shared.backend, &sql).await? {
            Ok(out) => frame::backend_frames(&out).flatten().any(|(tag, _)| tag == b'D'),
            Err((code, message)) => {
                // Cannot tell: keeping the lease is the safe side (the idle timeout bounds it).
                tracing::warn!(code, message, "checking a client's session locks failed");
                true
            }
        };
        Ok(())
    }

    /// After a batch that may have changed settings, restores what `RESET` reset to the
    /// startup values and records the client's settings, while still holding the lease.
    /// Returns `ParameterStatus` frames for the client.
    async fn settle_settings(&mut self) -> Result<BytesMut, Error> {
        let mut status_frames = BytesMut::new();
        if !self.client.settings_dirty && self.client.restore.is_empty() {
            return Ok(status_frames);
        }
        let Some(session) = self.lease.as_mut() else {
            return Ok(status_frames);
        };
        let mut calls = Vec::new();
        for name in std::mem::take(&mut self.client.restore) {
            let value = self.client.startup.get(&name).or_else(|| self.shared.baseline_changes.get(&name));
            if let Some(value) = value {
                calls.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    settings::literal(&name),
                    settings::literal(value)
                ));
            }
        }
        if !calls.is_empty() {
            let sql = format!("SELECT {}", calls.join(", "));
            match session.internal(&self.shared.backend, &sql).await? {
                Err((code, message)) => tracing::warn!(code, message, "restoring a client's startup settings failed"),
                Ok(out) => {
                    for (tag, bytes) in frame::backend_frames(&out).flatten() {
                        if tag == b'S' {
                            status_frames.extend_from_slice(bytes);
                        }
                    }
                }
            }
        }
        let snapshot = session.internal(&self.shared.backend, settings::SNAPSHOT_SQL).await?;
        if let Ok(out) = snapshot {
            self.client.overrides = settings::overrides(&settings::rows(&out), &self.shared.baseline);
            session.applied = self.client.overrides.clone();
            session.applied_for = Some(self.client.id);
        }
        self.client.settings_dirty = false;
        // ParameterStatus may arrive at any time; these tell the client about values RESET put
        // back to its startup settings.
        Ok(status_frames)
    }

    /// Undoes everything the client left on the backend: an open extended sequence or
    /// transaction, its prepared statements. Runs once the connection is over.
    pub(crate) async fn finish(&mut self) {
        let _ = self.stream.flush().await;
        let stateless = self.lease.is_none()
            && self.client.statements.is_empty()
            && self.client.tx == TxStatus::Idle
            && !self.client.pending;
        if stateless {
            return;
        }
        let session = match self.lease.take() {
            Some(session) => session,
            None => self.shared.lease.clone().lock_owned().await,
        };
        let mut session = session;
        if session.broken || self.client.generation.is_some_and(|g| g != session.generation) {
            return;
        }
        let frames = lease::cleanup_frames(self.client.pending, self.client.holds, self.client.statements.drain());
        match self.shared.backend.exchange(frames).await {
            Ok(out) => {
                settings::parameter_statuses(&out, &mut session.reported);
                if session.unnamed_owner == Some(self.client.id) {
                    session.unnamed_owner = None;
                }
                // `Query` drops the unnamed statement.
                session.unnamed_owner = None;
            }
            Err(error) => {
                tracing::error!(%error, "cleaning up after a client failed");
                session.exchange_failed(&self.shared.backend).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::answer_while_queued;

    /// How many times the answer is polled until it resolves, when another task sends it after
    /// yielding to the runtime ten times.
    async fn polls(waiting: usize, limit: Duration) -> usize {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let answerer = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            tx.send(42).unwrap();
        });
        let mut polls = 0;
        let answer = std::future::poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut rx).poll(cx)
        });
        let got = answer_while_queued(answer, &AtomicUsize::new(waiting), limit).await;
        answerer.await.unwrap();
        assert_eq!(got, Ok(42));
        polls
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_for_the_answer_only_while_others_wait() {
        // Alone: polled once, then once more when woken by the answer.
        assert_eq!(polls(0, Duration::from_secs(3600)).await, 2);
        assert_eq!(polls(1, Duration::ZERO).await, 2);
        // Others queue: polled again every time the runtime comes round.
        assert!(polls(1, Duration::from_secs(3600)).await > 5);
    }
}
