//! One client connection after its startup: frames in, filtered backend output out.
//!
//! Messages are collected into a batch until a message the client waits on (`Sync`, `Query`,
//! `Flush`, `FunctionCall`), then the batch is exchanged with the backend under the lease. The
//! lease is taken for the first exchange and kept while the client is in a transaction, in an
//! extended-protocol sequence not yet ended by `Sync`, or holds session-level advisory locks or
//! `WITH HOLD` cursors; everyone else queues on it. On the way in, the prepared statements a
//! batch names are noted (the backend holds only the statements of the client whose turn it is:
//! see `session`), session-scoped commands are scoped to this client, and what the bridge is
//! told to refuse is refused. This module must not block the backend on anything but this
//! client's own messages and output.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, watch};

use crate::lexer::LexOptions;
use crate::protocol::backend::{Severity, TxStatus, error_frame};
use crate::protocol::frame::{self, Frame};
use crate::protocol::frontend::{self as message, FrontendMessage};
use crate::session::{ClientState, Session};
use crate::shared::{RunState, Shared};
use crate::{Backend, Error, SessionTimeouts};

mod batch;
mod copy;
mod exchange;
mod refusal;
mod statements;

use batch::{Batch, Unnamed};
use refusal::Refusal;

/// A batch larger than this is sent even before the client asks for results, so a client
/// streaming messages without `Sync` cannot make the bridge buffer without bound.
const BATCH_SOFT_LIMIT: usize = 1 << 20;

/// One client's connection state that outlives single messages; its session state proper
/// (settings, statements, locks) is the [`ClientState`] the session module keeps.
pub(crate) struct Client {
    pub(crate) pid: i32,
    state: ClientState,
    run: Arc<RunState>,
    _permit: OwnedSemaphorePermit,
    /// Bytes read but not yet framed (startup may have read ahead).
    buf: BytesMut,
    standard_strings: bool,
    /// The SQL text last found to hold only `Plain` statements, and how it was lexed (`None`:
    /// no such text yet). The buffer is reused.
    plain_sql: (Vec<u8>, Option<LexOptions>),
    /// This client's last unnamed Parse, replayed if another client's replaced it since.
    /// (Empty when there is none; the buffer is reused.)
    unnamed_parse: Vec<u8>,
    tx: TxStatus,
    /// Extended-protocol messages were forwarded and their `Sync` has not been.
    pending: bool,
    /// Prepared statements (by name, `""` the unnamed) that are COPY statements, and the
    /// portals bound to them: their `Execute` runs in a streamed exchange (see `copy`).
    copy_statements: HashSet<Vec<u8>>,
    copy_portals: HashSet<Vec<u8>>,
    /// The session's timeouts the bridge keeps, as of the client's last exchange.
    timeouts: SessionTimeouts,
    /// When the client's transaction began (the start of the exchange that opened it).
    tx_started: Option<Instant>,
}

impl Client {
    pub(crate) fn new(
        state: ClientState,
        pid: i32,
        run: Arc<RunState>,
        permit: OwnedSemaphorePermit,
        buf: BytesMut,
        standard_strings: bool,
    ) -> Client {
        Client {
            pid,
            state,
            run,
            _permit: permit,
            buf,
            standard_strings,
            plain_sql: (Vec::new(), None),
            unnamed_parse: Vec::new(),
            tx: TxStatus::Idle,
            pending: false,
            copy_statements: HashSet::new(),
            copy_portals: HashSet::new(),
            timeouts: SessionTimeouts::default(),
            tx_started: None,
        }
    }

    fn id(&self) -> u32 {
        self.state.id
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
    /// Why the connection must end before its next message (a timeout that cancelled a
    /// statement, or shutdown), as the FATAL error it ends with.
    ending: Option<(&'static str, &'static str)>,
    /// Notifications for this client (`NotificationResponse` frames), delivered when it is
    /// idle.
    notifications: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
}

/// Resolves when the bridge is told to shut down (never if the sender is gone without).
async fn stop_requested(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    pub(crate) fn new(shared: Arc<Shared<B>>, stream: S, client: Client, shutdown: watch::Receiver<bool>) -> Self {
        let stopping = Box::pin(stop_requested(shutdown.clone()));
        let notifications = shared.hub.join(client.pid);
        Connection {
            shared,
            stream,
            client,
            shutdown,
            stopping,
            lease: None,
            batch: Batch::new(),
            discarding: None,
            ending: None,
            notifications,
        }
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
            Err(Error::Rejected { sqlstate, reason }) => {
                let (sqlstate, reason) = (sqlstate.clone(), reason.clone());
                self.write_error(Severity::Fatal, &sqlstate, &reason).await;
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
        if let Ok(bytes) = error_frame(severity, sqlstate, message) {
            let _ = self.stream.write_all(&bytes).await;
        }
    }

    async fn next_frame(&mut self) -> Result<Next, Error> {
        if let Some((sqlstate, message)) = self.ending {
            return Ok(Next::Stop { sqlstate, message: message.to_owned() });
        }
        let busy_poll = self.shared.config.busy_poll;
        let idle_since = Instant::now();
        let poll_until = (!busy_poll.is_zero()).then(|| idle_since + busy_poll);
        let session_limit = self.session_idle_limit(idle_since);
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
                // Between transactions, as PostgreSQL delivers them.
                Some(frame) = self.notifications.recv(), if self.client.tx == TxStatus::Idle && !self.client.pending => {
                    if let Err(error) = self.stream.write_all(&frame).await {
                        tracing::debug!(%error, "writing a notification");
                        return Ok(Next::Closed);
                    }
                }
                // Busy polling: instead of letting the loop sleep, hand it back to the runtime,
                // which looks for I/O without blocking and runs any other ready client first.
                () = tokio::task::yield_now(), if poll_until.is_some_and(|until| Instant::now() < until) => {}
                () = tokio::time::sleep_until(session_limit.map_or(idle_since, |(at, _, _)| at).into()),
                    if session_limit.is_some() =>
                {
                    let (_, sqlstate, message) = session_limit.unwrap_or((idle_since, "57P05", ""));
                    return Ok(Next::Stop { sqlstate, message: message.to_owned() });
                }
                () = tokio::time::sleep(idle_limit), if holding => {
                    if self.client.tx == TxStatus::Idle && self.client.state.holds() {
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

    /// The first of the session's own timeouts due while the client is idle from `since`:
    /// when, and the FATAL error PostgreSQL ends the connection with then.
    fn session_idle_limit(&self, since: Instant) -> Option<(Instant, &'static str, &'static str)> {
        let timeouts = self.client.timeouts;
        let mut limits = Vec::new();
        if self.client.tx == TxStatus::Idle {
            if !self.client.pending
                && let Some(idle) = timeouts.idle_session
            {
                limits.push((since + idle, "57P05", "terminating connection due to idle-session timeout"));
            }
        } else {
            if let Some(idle) = timeouts.idle_in_transaction {
                limits.push((since + idle, "25P03", "terminating connection due to idle-in-transaction timeout"));
            }
            if let (Some(limit), Some(started)) = (timeouts.transaction, self.client.tx_started) {
                limits.push((started + limit, "25P04", "terminating connection due to transaction timeout"));
            }
        }
        limits.into_iter().min_by_key(|(at, _, _)| *at)
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
            // Outside COPY, PostgreSQL ignores these.
            FrontendMessage::CopyStray => {}
            FrontendMessage::Query { sql } => self.query(sql).await?,
            FrontendMessage::Parse { statement, sql, param_types } => {
                self.parse(frame.bytes(), statement, sql, param_types).await?;
            }
            FrontendMessage::Bind { portal, statement, .. } => {
                if !self.client.copy_statements.is_empty() && self.client.copy_statements.contains(statement) {
                    self.client.copy_portals.insert(portal.to_vec());
                } else if !self.client.copy_portals.is_empty() {
                    self.client.copy_portals.remove(portal);
                }
                if statement.is_empty() {
                    self.use_unnamed();
                } else {
                    self.batch.references.push(statement.to_vec());
                }
                self.batch.push(frame.bytes());
            }
            FrontendMessage::Describe { kind, name } | FrontendMessage::Close { kind, name } => {
                let close = frame.tag() == b'C';
                if kind == b'S' {
                    match (name.is_empty(), close) {
                        (true, true) => {
                            self.client.unnamed_parse.clear();
                            self.batch.unnamed = Unnamed::Dropped;
                        }
                        (true, false) => self.use_unnamed(),
                        (false, true) => self.client.state.closed(name),
                        (false, false) => self.batch.references.push(name.to_vec()),
                    }
                }
                self.batch.push(frame.bytes());
            }
            FrontendMessage::Execute { portal, .. } => {
                self.batch.push(frame.bytes());
                if !self.client.copy_portals.is_empty()
                    && self.client.copy_portals.contains(portal)
                    && self.shared.backend.streams()
                {
                    // A COPY runs with the client: what it says goes out now, as PostgreSQL
                    // sends a CopyInResponse without waiting for a Sync.
                    self.send_with(true).await?;
                }
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
}
