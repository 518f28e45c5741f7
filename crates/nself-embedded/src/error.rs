//! The facade's error: the three crates' errors, plus the few things only wiring can get wrong.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong fetching, starting or stopping the embedded server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Getting the verified PGlite artifact failed.
    #[error(transparent)]
    Fetch(#[from] pglite_fetch::Error),
    /// Running PGlite failed (including a data directory locked by another process).
    #[error(transparent)]
    Host(#[from] pglite_host::Error),
    /// The socket bridge failed (including an address already in use).
    #[error(transparent)]
    Bridge(#[from] pg_bridge::Error),
    /// Start-up did not finish in time; whatever was started has been stopped.
    #[error("start-up did not finish within {0:?}")]
    StartupTimeout(Duration),
    /// PGlite did not answer the query for the values it reports to clients.
    #[error("reading PGlite's reported settings: {reason}")]
    Settings {
        /// What went wrong.
        reason: String,
    },
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {path} is {len} bytes long; Unix sockets allow at most {max}")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The platform's limit.
        max: usize,
    },
    /// A file of the runtime directory could not be created or removed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
