//! The `Backend` trait: the one PostgreSQL session every client is multiplexed onto.
//!
//! The bridge never talks to PGlite or to a server directly; it hands complete frontend frames
//! to a `Backend` and gets back the complete backend output. Implementations own the transport
//! (a wasmtime instance on its own thread, a socket to a real server) and must not filter
//! anything: filtering, renaming and leasing are the bridge's job.

use std::future::Future;

use bytes::{Bytes, BytesMut};

use crate::Error;

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

    /// The `ParameterStatus` values the backend reported at its own startup (`server_version`,
    /// `server_encoding`, `DateStyle`, ...), in the order reported.
    fn parameter_status(&self) -> Vec<(String, String)>;

    /// Session-level SQL that must be in effect for every client, applied once at bridge start
    /// and restored for the names it sets whenever a client resets its settings. For PGlite:
    /// `SET search_path TO "$user", public; SET enable_seqscan TO on`; for a native server,
    /// empty.
    fn session_baseline(&self) -> &str {
        ""
    }

    /// Asks the backend to cancel whatever `exchange` is running now. Returns whether the
    /// backend supports cancellation at all; the default supports none.
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
