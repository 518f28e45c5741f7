//! nself-embedded: PostgreSQL (PGlite's WebAssembly build) in-process, reachable by ordinary
//! PostgreSQL clients on a Unix socket.
//!
//! This crate holds no logic of its own beyond wiring and configuration: `pglite-fetch`
//! provides the verified artifact ([`fetch_or_cached`]), `pglite-host` runs it, and `pg-bridge`
//! multiplexes clients onto its single session. [`EmbeddedPgRuntime`] puts the three together:
//!
//! ```no_run
//! # async fn demo() -> Result<(), nself_embedded::Error> {
//! let artifact = nself_embedded::fetch_or_cached(nself_embedded::DEFAULT_PGLITE_VERSION).await?;
//! let runtime_dir = std::env::temp_dir().join("nself");
//! let runtime = nself_embedded::EmbeddedPgRuntime::new(&runtime_dir, artifact);
//! runtime.start(std::time::Duration::from_secs(120)).await?;
//! // psql -h <runtime_dir> -U postgres postgres
//! runtime.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `runtime.rs`: [`EmbeddedPgRuntime`], the lifecycle (start once, stop cleanly, health).
//! - `backend.rs`: [`PgliteBackend`], the bridge's `Backend` over a PGlite instance.
//! - `probe.rs`: the health check, a real client connection through the socket.
//! - `release.rs`: [`Release`], a release this build can fetch and run, resolved once.
//! - `cli/`: the `nself-embedded` command (only `main.rs` uses it).

mod backend;
mod error;
mod probe;
mod release;
mod runtime;

#[doc(hidden)]
pub mod cli;

pub use backend::PgliteBackend;
pub use error::Error;
pub use release::Release;
pub use runtime::{EmbeddedPgRuntime, SOCKET_NAME};

/// Accepts PostgreSQL clients on a Unix socket and multiplexes them onto one backend: see
/// [`pg_bridge::Bridge::listen`] and [`pg_bridge::Bridge::close`]. COPY runs through it and
/// notifications are delivered between clients; `BridgeConfig::refuse` answers any of COPY,
/// LISTEN and NOTIFY with SQLSTATE `0A000` instead.
pub use pg_bridge::Bridge as PgSocketBridge;
/// How a [`PgSocketBridge`] listens.
pub use pg_bridge::Config as BridgeConfig;
pub use pg_bridge::Interrupter;
/// How TCP clients authenticate ([`BridgeConfig::tcp_auth`]; see [`EmbeddedPgRuntime::set_password`]).
pub use pg_bridge::TcpAuth;
/// A verified, unpacked PGlite release in the cache.
pub use pglite_fetch::Artifact;

/// The PGlite release used unless `NSELF_PGLITE_VERSION` or the caller says otherwise.
pub const DEFAULT_PGLITE_VERSION: &str = pglite_fetch::DEFAULT_PGLITE_VERSION;

/// The database a new runtime directory's cluster is made with and serves (`postgres`, the
/// conventional maintenance database, is accepted as another name for it).
pub const DEFAULT_DATABASE: &str = "nself";

/// Extension bundles the command makes available without being asked: those the seed's stack
/// creates (Hasura's `pgcrypto`, the auth service's `citext`, and `uuid-ossp`, which
/// migration sets often use). A release on which one cannot load goes without it.
pub const DEFAULT_EXTENSIONS: [&str; 3] = ["pgcrypto", "citext", "uuid-ossp"];

/// How long the bridge polls for a client's next message after each reply before its event
/// loop may sleep, in microseconds ([`BridgeConfig::busy_poll`]). On a virtual machine a CPU
/// that went idle comes back with cold caches, and PostgreSQL's code in wasm then runs about
/// half as fast: `pgbench -S` with one client measured 6.2k -> 8.9k tps with 50 µs, for at
/// most that much CPU per reply.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;

/// Ensures the named extension bundles of PGlite `version` (`pgcrypto`, `uuid-ossp`, `vector`,
/// ...) are cached, verified and unpacked; an unknown name is an error listing the available
/// ones. Hand the result to [`EmbeddedPgRuntime::set_extensions`].
pub async fn fetch_extensions(version: &str, names: &[&str]) -> Result<Vec<pglite_fetch::Extension>, Error> {
    let mut opts = pglite_fetch::FetchOptions::from_env()?;
    opts.version = version.to_owned();
    Ok(pglite_fetch::ensure_extensions(&opts, names).await?)
}

/// Ensures PGlite `version` is in the cache, verified against its pins, and returns it.
/// The cache is `$NSELF_CACHE_DIR/pglite` (default `~/.nself/cache/pglite`); a warm cache is
/// checked without network access.
pub async fn fetch_or_cached(version: &str) -> Result<Artifact, Error> {
    Ok(pglite_fetch::fetch_or_cached(version).await?)
}
