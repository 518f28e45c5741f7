//! pg-bridge: ordinary PostgreSQL clients on a Unix (or TCP) socket, multiplexed onto ONE
//! single-session backend.
//!
//! # Layout
//!
//! - [`Backend`] (`backend.rs`): the session behind the bridge; [`UpstreamBackend`]
//!   (`upstream.rs`) implements it over a socket to a real server, the facade crate implements it
//!   over PGlite.
//! - `config.rs`: [`Config`]. `server.rs`: [`Bridge::listen`] / [`Bridge::close`], [`bind`] and
//!   [`serve`], which takes its listeners and shutdown future from the caller. `shared.rs`: what
//!   every connection shares (the backend, the lease, cancel keys, the startup cache).
//! - `startup.rs`: the startup phase, answered by the bridge itself (SSL/GSS refusal, protocol
//!   negotiation, database check, trust or password, per-client BackendKeyData, cancel
//!   requests). `auth.rs`: password authentication over TCP, against the role's secret in
//!   `pg_authid` (SCRAM-SHA-256 in `scram.rs`, or MD5).
//! - `conn/`: one client after startup: the frame loop (`mod.rs`), the batch of messages for the
//!   next exchange (`batch.rs`), the per-statement treatment of its SQL (`statements.rs`),
//!   refusals (`refusal.rs`) and the exchange under the lease (`exchange.rs`).
//! - `session.rs`: the one owner of session state: the backend session inside the lease and each
//!   client's state between turns; entering, settling and cleaning up are its methods.
//! - `filter.rs`: backend output on its way to a client.
//! - Sans-IO cores: `protocol/` (the wire codec: framing, frontend and backend messages),
//!   `lexer.rs` + `classify.rs` (the COPY/LISTEN/NOTIFY filter and session-state statements),
//!   `settings.rs` (settings maps and the SQL that switches them), `scram.rs`.
//!
//! # Invariants
//!
//! - The bridge never links wasmtime or pglite-host; PGlite is only ever a [`Backend`].
//! - A Sync group, and a transaction, runs on the backend without any other client's messages
//!   in between: the client holds the lease from its first forwarded message until the backend
//!   reports `ReadyForQuery 'I'` with no extended-protocol sequence open.
//! - No COPY, LISTEN or NOTIFY reaches the backend from a client, and no COPY or notification
//!   frame reaches a client.
//! - Malformed input ends that one connection with `08P01`; it never panics and never
//!   allocates the size a frame advertises.

mod acceptor;
mod auth;
mod backend;
mod classify;
mod config;
mod conn;
mod filter;
mod lexer;
mod notify;
pub mod protocol;
mod scram;
mod server;
mod session;
mod settings;
mod shared;
mod socket;
mod startup;
mod upstream;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(all(test, not(fuzzing)))]
mod fuzzing;
#[cfg(test)]
mod robustness_tests;

pub use backend::{Backend, ListenOp, Piece, SessionEvents, SessionTimeouts};
pub use config::{Config, DEFAULT_SOCKET_NAME, Refuse, TcpAuth, socket_dir_mode};
pub use protocol::frame::{MAX_MESSAGE_LEN, MAX_STARTUP_LEN};
pub use server::{Bridge, Interrupter, Listeners, bind, serve};
pub use upstream::{UpstreamAddr, UpstreamBackend, UpstreamConfig};

/// Everything that can go wrong in the bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or file I/O failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// A client was turned away with this SQLSTATE.
    #[error("client rejected with {sqlstate}: {reason}")]
    Rejected {
        /// The SQLSTATE sent to the client.
        sqlstate: String,
        /// The message sent to the client.
        reason: String,
    },
    /// A synthetic message could not be encoded.
    #[error("encoding a message")]
    Encode {
        /// pgwire's error.
        #[source]
        source: Box<pgwire::error::PgWireError>,
    },
    /// The upstream PostgreSQL server misbehaved or refused the session.
    #[error("upstream server: {reason}")]
    Upstream {
        /// What happened.
        reason: String,
    },
    /// A [`Backend`] implementation failed; the backend is unusable from then on.
    #[error("backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed earlier and no longer serves clients.
    #[error("the backend is no longer available")]
    BackendGone,
    /// The backend restarted after a failure; this client's session state is gone.
    #[error("the backend restarted; this session's state is lost")]
    BackendRestarted,
    /// Another server already listens on the socket.
    #[error("another server is listening on {path}")]
    SocketInUse {
        /// The socket's path.
        path: std::path::PathBuf,
    },
    /// The bridge's configuration cannot work.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}
