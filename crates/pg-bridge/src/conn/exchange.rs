//! One exchange with the backend under the lease: taking the lease (and putting the client's
//! session state on the backend), sending the batch, filtering and writing the answer,
//! settling what the client changed, letting the lease go, and cleaning up when it leaves.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Connection;
use super::batch::{Batch, Unnamed};
use crate::filter;
use crate::protocol::backend::{TxStatus, parameter_status};
use crate::protocol::frame;
use crate::session::Recreate;

/// Length of a `ReadyForQuery` message, the last of an output that has one.
const READY_FOR_QUERY_LEN: usize = 6;
use crate::{Backend, Error};

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

/// After a client's turn that ran `LISTEN` or `UNLISTEN`: records the channels it listens on
/// now, by what the backend listens on, and has the backend listen again on the channels its
/// `UNLISTEN` took from other clients (see `notify`).
async fn settle_listens<B: Backend>(
    session: &mut crate::session::Session,
    shared: &crate::shared::Shared<B>,
    pid: i32,
    ops: &[crate::ListenOp],
) -> Result<(), Error> {
    let out = match session.internal(&shared.backend, "SELECT pg_catalog.pg_listening_channels()").await? {
        Ok(out) => out,
        Err((code, message)) => {
            tracing::warn!(code, message, "reading the backend's channels failed");
            return Ok(());
        }
    };
    let backend = crate::protocol::backend::text_rows(&out)
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let relisten = shared.hub.settle(pid, ops, &backend);
    if !relisten.channels.is_empty() {
        let sql: Vec<String> =
            relisten.channels.iter().map(|c| format!("LISTEN {}", crate::settings::ident(c))).collect();
        if let Err((code, message)) = session.internal(&shared.backend, &sql.join("; ")).await? {
            tracing::warn!(code, message, "listening again on other clients' channels failed");
        }
    }
    Ok(())
}

/// Counts a client queued on the lease for as long as it waits (a dropped wait included).
pub(super) struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    pub(super) fn new(waiting: &'a AtomicUsize) -> Queued<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        Queued(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    /// Takes the lease if this client does not hold it, and puts its settings on the backend.
    pub(super) async fn acquire(&mut self) -> Result<(), Error> {
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
        session.enter(&self.shared.backend, &self.shared.baseline, &mut self.client.state).await?;
        self.lease = Some(session);
        Ok(())
    }

    /// Exchanges the batch with the backend and forwards the filtered output.
    pub(super) async fn send(&mut self) -> Result<(), Error> {
        self.send_with(false).await
    }

    /// [`send`](Self::send); `streamed`: in a streamed exchange if the backend streams, so that
    /// a COPY the batch runs goes on with the client (see `copy`).
    pub(super) async fn send_with(&mut self, streamed: bool) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // From here a cancel request is for this batch, queued or running; and a stop that
        // comes later cancels it, while one that came before is seen here.
        let _running = self.client.run.start();
        if self.stopping() {
            self.ending = Some(("57P01", "terminating connection due to administrator command"));
            return Ok(());
        }
        self.acquire().await?;
        let mut batch = std::mem::replace(&mut self.batch, Batch::new());
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        let mut frames = BytesMut::new();
        if session.take_deallocate() {
            // The previous client's prepared statements, off the backend before anything of
            // this client's runs.
            frames.extend_from_slice(&crate::protocol::frontend::query("DEALLOCATE ALL"));
            batch.plan.skip_ready += 1;
        }
        // The client's statements another client's turn took off the backend, made again
        // first: by simple query (their answers skipped up to each ReadyForQuery), then by
        // Parse (their ParseCompletes dropped). In a failed transaction nothing can be made;
        // the client's use of them fails as it would anyway.
        if !batch.references.is_empty() && self.client.tx != TxStatus::Failed {
            for (name, recreate) in self.client.state.to_recreate(&batch.references) {
                match recreate {
                    Recreate::Query(query) => {
                        frames.extend_from_slice(&query);
                        batch.plan.skip_ready += 1;
                        batch.recreated.0.push(name);
                    }
                    Recreate::Parse(parse) => {
                        batch.prefix_parses.extend_from_slice(&parse);
                        batch.plan.drop_leading += 1;
                        batch.recreated.1.push(name);
                    }
                    Recreate::Lost => {}
                }
            }
            frames.extend_from_slice(&std::mem::take(&mut batch.prefix_parses));
        }
        let id = self.client.id();
        if batch.uses_unnamed && session.unnamed_owner() != Some(id) && !self.client.unnamed_parse.is_empty() {
            frames.extend_from_slice(&self.client.unnamed_parse);
            batch.plan.drop_leading += 1;
            session.set_unnamed_owner(Some(id));
        }
        if frames.is_empty() && batch.prefix.is_empty() {
            frames = std::mem::take(&mut batch.frames);
        } else {
            frames.extend_from_slice(&batch.prefix);
            frames.extend_from_slice(&batch.frames);
        }
        if streamed && self.shared.backend.streams() {
            batch.plan.copy = true;
            let Some((output, started, written)) =
                self.exchange_copy(frames.freeze(), _running, &mut batch.plan).await?
            else {
                return Ok(());
            };
            // The client's sequence may go on after its COPY: it ends where the backend
            // answered a Sync or a query.
            batch.terminated = frame::frames(&output).flatten().last().is_some_and(|(tag, _)| tag == b'Z');
            return self.finish_turn(batch, output, started, Some(written)).await;
        }
        let Some((output, started)) = self.exchange_started(frames.freeze(), _running).await? else {
            return Ok(());
        };
        self.finish_turn(batch, output, started, None).await
    }

    /// Exchanges `frames` for this client, which holds the lease and whose run began with
    /// `running`: cancellable, within its transaction's deadline. `None` when the connection
    /// must end instead (a statement the bridge cancelled), as `self.ending` says.
    pub(super) async fn exchange_started(
        &mut self,
        frames: bytes::Bytes,
        running: crate::shared::RunGuard,
    ) -> Result<Option<(BytesMut, Instant)>, Error> {
        let cancel = self.client.run.cancel.clone();
        let started = Instant::now();
        let tx_deadline = self.tx_deadline(started);
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        let answer = session.exchange(&self.shared.backend, &mut self.client.state, frames, cancel, tx_deadline);
        let output = answer_while_queued(answer, &self.shared.waiting, self.shared.config.poll_while_queued).await;
        drop(running);
        self.answered(output?, started, tx_deadline)
    }

    /// The deadline `transaction_timeout` puts on an exchange that starts at `started` (it
    /// covers a statement outside a transaction block too).
    pub(super) fn tx_deadline(&self, started: Instant) -> Option<Instant> {
        self.client.timeouts.transaction.map(|limit| self.client.tx_started.unwrap_or(started) + limit)
    }

    /// The rest of [`exchange_started`](Self::exchange_started) once the backend answered.
    pub(super) fn answered(
        &mut self,
        output: BytesMut,
        started: Instant,
        tx_deadline: Option<Instant>,
    ) -> Result<Option<(BytesMut, Instant)>, Error> {
        if let Some(timeouts) = self.shared.backend.session_timeouts() {
            self.client.timeouts = timeouts;
        }
        // A statement the bridge had cancelled (its transaction ran out of time, or the bridge
        // is stopping) ends the connection, as PostgreSQL's FATAL does; its error is not the
        // client's to see.
        let stopping = *self.shutdown.borrow() || self.shared.stopping.load(Ordering::SeqCst);
        let cancelled = (stopping || tx_deadline.is_some())
            && crate::protocol::frame::frames(&output).flatten().any(|(tag, frame)| {
                tag == b'E' && crate::protocol::backend::field(frame, b'C').as_deref() == Some("57014")
            });
        if cancelled {
            if stopping {
                self.ending = Some(("57P01", "terminating connection due to administrator command"));
            } else if tx_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                self.ending = Some(("25P04", "terminating connection due to transaction timeout"));
            }
            if self.ending.is_some() {
                self.client.tx = TxStatus::Failed;
                return Ok(None);
            }
        }
        Ok(Some((output, started)))
    }

    /// Filters the output of the exchange of `batch` that began at `started`, writes it to
    /// the client, and settles what the turn changed; lets the lease go if the client is done
    /// with it. `written`: what of the exchange's output went to the client already.
    pub(super) async fn finish_turn(
        &mut self,
        mut batch: Batch,
        output: BytesMut,
        started: Instant,
        written: Option<filter::Filtered>,
    ) -> Result<(), Error> {
        let id = self.client.id();
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        self.client.state.batch_sent();
        let filtered = filter::filter(output, &mut batch.plan)?;
        let filtered = match written {
            Some(written) => written.then(filtered),
            None => filtered,
        };
        if !filtered.skipped_error {
            for name in &batch.recreated.0 {
                self.client.state.recreated(name);
            }
        }
        for name in batch.recreated.1.iter().take(filtered.dropped) {
            self.client.state.recreated(name);
        }
        session.note_statements(&self.client.state);
        session.note_reported(&filtered.parameters);
        match batch.unnamed {
            Unnamed::Unchanged => {}
            Unnamed::Mine => session.set_unnamed_owner(Some(id)),
            Unnamed::Dropped => session.set_unnamed_owner(None),
        }
        let mut out = filtered.out;
        let mut parameters = filtered.parameters;
        if self.client.state.roles_changed() {
            // Cached startups answer a login without asking the backend; one whose role
            // changed must be checked again.
            self.shared.startup_cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        if let Some(status) = filtered.ready {
            match (self.client.tx, status) {
                (_, TxStatus::Idle) => self.client.tx_started = None,
                (TxStatus::Idle, _) => self.client.tx_started = Some(started),
                _ => {}
            }
            self.client.tx = status;
            self.client.pending = false;
            // ParameterStatus for what the turn changed, before its ReadyForQuery, as
            // PostgreSQL sends them.
            let failed = status == TxStatus::Failed;
            let reports =
                session.report(&self.shared.backend, &self.shared.baseline, &mut self.client.state, failed).await?;
            if !reports.is_empty() && out.len() >= READY_FOR_QUERY_LEN {
                parameters.extend(
                    crate::protocol::frame::frames(&reports).flatten().filter_map(|(_, frame)| parameter_status(frame)),
                );
                let ready = out.split_off(out.len() - READY_FOR_QUERY_LEN);
                out.extend_from_slice(&reports);
                out.extend_from_slice(&ready);
            }
        }
        if !batch.terminated {
            self.client.pending = true;
        }
        for (name, value) in &parameters {
            if name == "standard_conforming_strings" {
                self.client.standard_strings = value == "on";
            }
        }
        let pid = self.client.pid;
        if self.client.tx == TxStatus::Idle && !self.client.pending {
            let mut listens = self.client.state.take_listens();
            if batch.discard_all {
                session.discard_all(&self.shared.backend, &self.shared.baseline, &mut self.client.state).await?;
                // DISCARD ALL is UNLISTEN * too.
                listens.get_or_insert_with(Vec::new).push(crate::ListenOp::UnlistenAll);
            }
            if let Some(ops) = listens {
                settle_listens(session, &self.shared, pid, &ops).await?;
            }
            // After its own LISTENs count: a transaction that listens and notifies hears
            // itself, as in PostgreSQL.
            let mut own = BytesMut::new();
            for (channel, payload) in &filtered.notifications {
                own.extend(self.shared.hub.publish(pid, channel, payload));
            }
            if !own.is_empty() && out.len() >= READY_FOR_QUERY_LEN {
                let ready = out.split_off(out.len() - READY_FOR_QUERY_LEN);
                out.extend_from_slice(&own);
                out.extend_from_slice(&ready);
            }
            session.settle(&self.shared.backend, &self.shared.baseline, &mut self.client.state).await?;
            if !self.client.state.holds() {
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

    /// Whether the bridge is stopping (told through the shutdown channel, or begun from another
    /// thread by an [`Interrupter`](crate::Interrupter)).
    pub(super) fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Writes backend output to the client. Idle clients were let go of the backend before
    /// this, so one that stops reading holds up only itself; one that holds the backend gets
    /// as long as an idle owner would before it is ended (and rolled back).
    pub(super) async fn write_output(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.lease.is_none() {
            self.stream.write_all(bytes).await?;
            return Ok(());
        }
        let limit = self.shared.config.idle_in_transaction_timeout;
        match tokio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok(written) => Ok(written?),
            Err(_) => {
                tracing::warn!(
                    client = self.client.id(),
                    "client stopped reading while holding the backend; ending it"
                );
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading while holding the backend",
                )))
            }
        }
    }

    /// Undoes everything the client left on the backend: an open extended sequence or
    /// transaction, its prepared statements, its locks. Runs once the connection is over.
    pub(crate) async fn finish(&mut self) {
        let _ = self.stream.flush().await;
        // Where the bridge delivers notifications, other clients may listen on the backend
        // too: it stops listening only on what this client alone listened on.
        let unlisten =
            self.shared.backend.delivers_notifications().then(|| self.shared.hub.exclusive_channels(self.client.pid));
        let stateless = self.lease.is_none()
            && !self.client.state.has_backend_state()
            && self.client.tx == TxStatus::Idle
            && !self.client.pending
            && unlisten.as_ref().is_none_or(Vec::is_empty);
        if stateless {
            return;
        }
        let mut session = match self.lease.take() {
            Some(session) => session,
            None => self.shared.lease.clone().lock_owned().await,
        };
        let (state, pending) = (&mut self.client.state, self.client.pending);
        session.clean_up_after(&self.shared.backend, state, pending, unlisten.as_deref()).await;
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
