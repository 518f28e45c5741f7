//! The crate's one error type, [`Error`], and how failures of the WebAssembly runtime become
//! it. wasmtime's errors are kept as sources, boxed as plain `std::error::Error`s, so that no
//! wasmtime type appears in this crate's API; they are never flattened to strings.

use std::path::PathBuf;
use std::time::Duration;

use crate::imports::GuestExit;

/// A failure of the WebAssembly runtime (or of the module it runs), with its causes.
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong hosting PGlite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This host has no profile for the PGlite release.
    #[error("PGlite {version} is not supported by this host (supported: 0.2.x and 0.3.11 or later 0.3.x)")]
    UnsupportedVersion { version: String },
    /// A host file or directory could not be read, written or made.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An extension bundle this release ships cannot load on it.
    #[error("extension {name} cannot load on PGlite {version}: {reason}")]
    ExtensionUnavailable { name: String, version: String, reason: String },
    /// Another process holds the data directory.
    #[error("data directory {path} is in use by another process")]
    Locked { path: PathBuf },
    /// The data directory holds a cluster of another PostgreSQL major version.
    #[error("data directory {path} holds a PostgreSQL {found} cluster; PGlite {version} runs PostgreSQL {expected}")]
    IncompatibleDataDir { path: PathBuf, found: String, expected: u32, version: String },
    /// The PostgreSQL module did not compile.
    #[error("compiling the PostgreSQL module failed: {}", chain(.source))]
    Compile {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The PostgreSQL module could not be linked and instantiated (a missing import or export).
    #[error("instantiating the PostgreSQL module failed: {}", chain(.source))]
    Instantiate {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// SQL the host runs itself (setting up databases and roles) failed.
    #[error("the host's own SQL failed ({code} {message}): {sql}")]
    Sql { sql: String, code: String, message: String },
    /// initdb, or resuming the cluster, did not succeed (`code`: its result bits).
    #[error("initdb failed (pg_initdb returned {code})")]
    InitdbFailed { code: i32 },
    /// The artifact of a release whose initdb is a module of its own (0.5+) names none.
    #[error("PGlite {version} makes new clusters with initdb.wasm, which the artifact does not include")]
    MissingInitdb { version: String },
    /// PostgreSQL's single-user backend did not come up (0.5+): `main` ended with `code`
    /// instead of 99 (alive).
    #[error("PostgreSQL's backend did not start (exit code {code}; 99 means started)")]
    BackendStart { code: i32 },
    /// PostgreSQL ended itself (`exit`); not a crash.
    #[error("PostgreSQL exited with code {code}")]
    GuestExit { code: i32 },
    /// The guest trapped or aborted: the instance is dead.
    #[error("PostgreSQL crashed: {}", chain(.source))]
    Trap {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The request is over [`Pglite::max_request`](crate::Pglite::max_request).
    #[error("request of {len} bytes is larger than this PGlite release accepts ({max} bytes)")]
    RequestTooLarge { len: usize, max: usize },
    /// A streamed exchange was asked of a release whose transport takes a request whole (0.2).
    #[error("this PGlite release cannot stream a request (0.3 and later can)")]
    NoStreaming,
    /// A startup-phase packet (no message type byte) was sent to the backend.
    #[error("startup, SSL and cancel packets are answered by the caller, never sent to the backend")]
    StartupPacket,
    /// The backend's reply ran past its buffer: the instance is dead.
    #[error("reply of {len} bytes overflowed the {max}-byte transfer buffer")]
    ReplyOverflow { len: usize, max: usize },
    /// The instance died during the request and a new one was started from disk; the request
    /// is lost, as is the session's state.
    #[error("the request failed because PostgreSQL crashed and was restarted from disk: {cause}")]
    Restarted { cause: Box<Error> },
    /// Start-up did not finish within [`Config::startup_timeout`](crate::Config::startup_timeout).
    #[error("start-up did not finish within {0:?}")]
    StartupTimeout(Duration),
    /// There is no running instance (stopped, or not restarted after a crash).
    #[error("the PostgreSQL instance is not running")]
    NotRunning,
    /// [`Config::postgres_password`](crate::Config::postgres_password) is empty.
    #[error("the password for role postgres is empty (a password must have at least one character)")]
    EmptyPassword,
}

impl Error {
    /// The module did not compile.
    pub(crate) fn compile(source: impl Into<Source>) -> Error {
        Error::Compile { source: source.into() }
    }

    /// The module could not be linked, instantiated or set up for the host.
    pub(crate) fn instantiate(source: impl Into<Source>) -> Error {
        Error::Instantiate { source: source.into() }
    }

    /// A call into the guest failed: the guest's own exit, or a trap.
    pub(crate) fn guest(err: wasmtime::Error) -> Error {
        if let Some(GuestExit(code)) = err.downcast_ref::<GuestExit>() {
            return Error::GuestExit { code: *code };
        }
        Error::trap(err)
    }

    /// The guest trapped, or the host found its state broken.
    pub(crate) fn trap(source: impl Into<Source>) -> Error {
        Error::Trap { source: source.into() }
    }
}

/// `err` and its causes, each after a `: ` (as wasmtime's `{:#}` shows an error).
fn chain(err: &Source) -> String {
    let mut res = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        res.push_str(": ");
        res.push_str(&next.to_string());
        cause = next.source();
    }
    res
}

#[cfg(test)]
mod tests;
