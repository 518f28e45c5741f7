//! The `Backend` trait: the one PostgreSQL session every client is multiplexed onto.
//!
//! The bridge never talks to PGlite or to a server directly; it hands complete frontend frames
//! to a `Backend` and gets back the complete backend output. Implementations own the transport
//! (a wasmtime instance on its own thread, a socket to a real server) and must not filter
//! anything: filtering, scoping state to clients and leasing are the bridge's job.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::Error;

/// A session's timeouts as the backend has them (`None` is off), which the bridge keeps for
/// a backend that does not run them itself: the idle ones and `transaction_timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub idle_in_transaction: Option<Duration>,
    pub idle_session: Option<Duration>,
    pub transaction: Option<Duration>,
}

/// What may have changed session state during an exchange, as the backend saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionEvents {
    /// A utility command ran that may change the session's settings (`SET`, `RESET`, a role
    /// command), at any depth.
    pub utility: bool,
    /// Another utility command ran that may have made or dropped temporary objects (`CREATE`,
    /// `DROP`, `DO`, `DISCARD`, ...), at any depth.
    pub objects: bool,
    /// `DECLARE` or `CLOSE` of a cursor ran.
    pub cursors: bool,
    /// `PREPARE` or `DEALLOCATE` ran.
    pub statements: bool,
    /// `set_config(..., false)` ran.
    pub settings: bool,
    /// A session-level advisory-lock function ran.
    pub locks: bool,
    /// Names of custom (dotted) settings that were set or reset: PostgreSQL does not list
    /// those in `pg_settings`.
    pub custom_settings: Vec<String>,
    /// A role was created, altered, renamed or dropped (or something else renamed): logins
    /// checked earlier may no longer hold.
    pub roles: bool,
    /// `LISTEN` or `UNLISTEN` ran: the channels the session listens on may have changed.
    pub listen: bool,
    /// Those `LISTEN`s and `UNLISTEN`s, in order, when the backend can tell them apart.
    pub listens: Vec<ListenOp>,
}

/// One `LISTEN` or `UNLISTEN` a client ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenOp {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

impl SessionEvents {
    /// Taken when the backend cannot tell: anything may have changed.
    pub fn anything() -> SessionEvents {
        SessionEvents {
            utility: true,
            objects: true,
            cursors: true,
            statements: true,
            settings: true,
            locks: true,
            custom_settings: Vec::new(),
            // Not taken to have changed: the startup cache would be emptied by every exchange
            // and every login would wait for the backend. A role dropped since it was cached
            // is still caught when its identity is put on the backend.
            roles: false,
            listen: true,
            listens: Vec::new(),
        }
    }

    /// Whether settings may have changed.
    pub(crate) fn settings_may_change(&self) -> bool {
        self.utility || self.settings
    }

    /// Whether session-level locks, cursors or temporary objects may have changed.
    pub(crate) fn holds_may_change(&self) -> bool {
        self.utility || self.objects || self.cursors || self.locks
    }

    /// Adds what `other` recorded.
    pub(crate) fn merge(&mut self, other: &SessionEvents) {
        self.utility |= other.utility;
        self.objects |= other.objects;
        self.cursors |= other.cursors;
        self.statements |= other.statements;
        self.settings |= other.settings;
        self.locks |= other.locks;
        self.roles |= other.roles;
        self.listen |= other.listen;
        self.listens.extend(other.listens.iter().cloned());
        for name in &other.custom_settings {
            if !self.custom_settings.contains(name) {
                self.custom_settings.push(name.clone());
            }
        }
    }
}

/// What a streamed exchange hands on while it runs (see [`Backend::exchange_streamed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// COPY data the backend made: whole messages ending with a `CopyData`.
    CopyOut(Bytes),
    /// The backend waits for more input, having read the head and the first `read` pieces of
    /// input; `said` is what it said since the last piece (whole messages, maybe none). A
    /// `CopyInResponse` among them is where the client's COPY data is wanted.
    Waits { said: Bytes, read: usize },
}

/// A single PostgreSQL session, already past its startup phase.
///
/// The bridge calls `exchange` from one task at a time (it holds the lease), but `cancel` may be
/// called concurrently from another task.
pub trait Backend: Send + Sync + 'static {
    /// Sends `frames` (one or more complete frontend messages) and returns every backend message
    /// they produced, as raw frames.
    ///
    /// When the batch ends in `Sync`, `Query` or `FunctionCall`, the output runs up to and
    /// including the `ReadyForQuery` of each such message. Otherwise (a batch ending in `Flush`
    /// or in a message that awaits more) it holds whatever the batch's messages produced: one
    /// response per message, or output up to the first `ErrorResponse`.
    ///
    /// If the backend enters COPY IN or COPY BOTH mode, the implementation must abort it within
    /// the same exchange (send `CopyFail`) so the session never waits for copy data; the
    /// bridge hides the copy frames from clients.
    fn exchange(&self, frames: Bytes) -> impl Future<Output = Result<BytesMut, Error>> + Send;

    /// [`exchange`](Self::exchange) for a client's own messages: raising `cancel` while it runs
    /// (then calling [`cancel`](Self::cancel)) cancels the statement running, or the next to
    /// start, as PostgreSQL's cancel request does. The default ignores the flag.
    ///
    /// The statement running at `deadline` is cancelled the same way (the bridge words the
    /// error itself).
    fn exchange_cancellable(
        &self,
        frames: Bytes,
        cancel: Arc<AtomicBool>,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<BytesMut, Error>> + Send {
        let _ = (cancel, deadline);
        self.exchange(frames)
    }

    /// Whether [`exchange_streamed`](Self::exchange_streamed) streams. The bridge then runs
    /// COPY with the client as PostgreSQL does, the data going both ways as it comes, in
    /// bounded memory; otherwise it holds a COPY FROM STDIN's data and sends it whole (within
    /// [`max_request`](Self::max_request)), and refuses one it cannot run that way.
    fn streams(&self) -> bool {
        false
    }

    /// [`exchange_cancellable`](Self::exchange_cancellable) of `head` followed by what `input`
    /// brings while it runs, in pieces of whole frontend messages. Whenever the backend has
    /// read everything and waits for more, it says so on `output` ([`Piece::Waits`], with
    /// what it said since the last piece) and waits for the next input; a closed `input` ends
    /// the exchange (inside a COPY, failing it as a `CopyFail` would). COPY data it makes may
    /// leave early ([`Piece::CopyOut`]). What is returned is the rest of the output. The
    /// default runs `head` alone and hands nothing on.
    fn exchange_streamed(
        &self,
        head: Bytes,
        input: tokio::sync::mpsc::Receiver<Bytes>,
        output: tokio::sync::mpsc::Sender<Piece>,
        cancel: Arc<AtomicBool>,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<BytesMut, Error>> + Send {
        drop((input, output));
        self.exchange_cancellable(head, cancel, deadline)
    }

    /// The timeouts of the session as it is after the last exchange, if the bridge is to keep
    /// them (see [`SessionTimeouts`]); `None` for a backend that keeps its own.
    fn session_timeouts(&self) -> Option<SessionTimeouts> {
        None
    }

    /// The `ParameterStatus` values the backend reported at its own startup (`server_version`,
    /// `server_encoding`, `DateStyle`, ...), in the order reported.
    fn parameter_status(&self) -> Vec<(String, String)>;

    /// Session-level SQL that must be in effect for every client, applied once at bridge start
    /// and restored for the names it sets whenever a client resets its settings. Empty for a
    /// backend whose defaults are right.
    fn session_baseline(&self) -> &str {
        ""
    }

    /// What ran since the last call that may have changed session state, as the backend itself
    /// saw it (commands inside functions and `DO` blocks included); `None` when it cannot tell,
    /// and the bridge then takes anything to have changed.
    fn session_events(&self) -> Option<SessionEvents> {
        None
    }

    /// Whether the session's own notifications come out of its exchanges (a committed
    /// `NOTIFY` on a channel it listens on, as `NotificationResponse`s before `ReadyForQuery`),
    /// so that the bridge can carry `LISTEN`/`NOTIFY` between its clients. Without it they are
    /// refused with `0A000`.
    fn delivers_notifications(&self) -> bool {
        false
    }

    /// Whether [`set_connection_defaults`](Self::set_connection_defaults) works.
    fn has_connection_defaults(&self) -> bool {
        false
    }

    /// Makes `settings` what `RESET` and `DISCARD ALL` return to, as PostgreSQL does with a
    /// client's startup options and its login role (`session_authorization`). Called only
    /// between transactions, with values the backend accepted as settings. Returns the names
    /// the backend refused.
    fn set_connection_defaults(
        &self,
        settings: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send {
        let refused = settings.iter().map(|(name, _)| name.clone()).collect();
        async { Ok(refused) }
    }

    /// Whether the backend sends `ParameterStatus` itself when a reported setting changes, as a
    /// PostgreSQL server does; otherwise the bridge sends them for the settings in
    /// [`reported_parameters`](Self::reported_parameters).
    fn reports_parameters(&self) -> bool {
        true
    }

    /// The settings PostgreSQL reports with `ParameterStatus` (its `GUC_REPORT` ones), by name
    /// as reported.
    fn reported_parameters(&self) -> Vec<String> {
        self.parameter_status().into_iter().map(|(name, _)| name).collect()
    }

    /// Asks the backend to cancel the client's statement: the client's cancel flag (see
    /// [`exchange_cancellable`](Self::exchange_cancellable)) was just raised, or, for a
    /// backend that ignores the flag, whatever `exchange` runs now. Returns whether the backend
    /// supports cancellation at all; the default supports none.
    fn cancel(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// The largest batch of frontend messages the backend takes in one exchange, if it has a
    /// limit (PGlite 0.2: 15 MiB). The bridge splits batches to fit and answers a single
    /// message that cannot fit with `54000`, so the backend never sees more.
    fn max_request(&self) -> Option<usize> {
        None
    }

    /// Called after an `exchange` failed: whether the backend serves again with a fresh
    /// session (every session's state lost, the baseline in effect), as PGlite does after its
    /// host rebuilt a crashed instance from disk. The bridge then ends the clients that had
    /// state on the old session and goes on serving; otherwise it stops using the backend.
    fn recovered(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}
