//! Runs PGlite's Emscripten build of PostgreSQL inside wasmtime with no JavaScript.
//!
//! [`Pglite::start`] takes an extracted artifact and a data directory, boots PostgreSQL on a
//! dedicated thread that owns the wasm store, and returns a handle. Protocol bytes go in and
//! out with [`Pglite::exec_protocol`]: one or more frontend messages in, every backend message
//! they produce out. The startup phase (StartupMessage, SSLRequest, CancelRequest) is the
//! caller's business: those packets never reach the backend.
//!
//! This crate never opens a socket and never touches the network.

mod cluster;
mod engine;
mod errno;
mod imports;
mod instance;
mod mem;
mod pglite;
mod profile;
mod sql;
mod template;
mod vfs;

use std::path::PathBuf;
use std::time::Duration;

pub use cluster::cluster_major;
pub use pglite::{BootInfo, BootKind, Pglite};

/// SQL that gives a session the usual defaults. PGlite's backend arguments set `search_path`
/// to `pg_catalog` and, by accident, `enable_seqscan` off, at command-line priority; its
/// single-user boot ignores per-database settings, so this is applied at boot and must be
/// applied again after anything that resets session settings (`RESET ALL`, `DISCARD ALL`).
pub const SESSION_BASELINE: &str = "SET search_path TO \"$user\", public; SET enable_seqscan TO on;";

/// The PostgreSQL major version PGlite `version` runs, if this host supports that release.
pub fn pg_major(version: &str) -> Option<u32> {
    profile::for_version(version).map(|profile| profile.pg_major)
}

/// Why extension bundle `name` cannot load on PGlite `version`, if it cannot.
pub fn extension_unavailable(version: &str, name: &str) -> Option<&'static str> {
    let profile = profile::for_version(version)?;
    profile.broken_extensions.iter().find(|(broken, _)| *broken == name).map(|(_, reason)| *reason)
}

/// A verified PGlite release, extracted on disk.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The release, e.g. `0.2.17`.
    pub version: String,
    /// The main module (`postgres.wasm`).
    pub wasm: PathBuf,
    /// Its SHA-256 (hex), the key of the compiled-module cache.
    pub wasm_sha256: String,
    /// The extracted file package: `tmp/pglite/{bin,lib,share}` beneath it.
    pub package_root: PathBuf,
}

/// How to run an instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's directory; created (mode 0700) when missing.
    pub data_dir: PathBuf,
    /// Where the pristine cluster for this artifact is kept; `None` runs initdb for every new
    /// data directory.
    pub template_dir: Option<PathBuf>,
    /// Where compiled modules are cached; `None` compiles at every start.
    pub module_cache_dir: Option<PathBuf>,
    /// Bounds start-up (compile, initdb, boot); the boot goes on in the background and is
    /// stopped cleanly if the caller has given up.
    pub startup_timeout: Duration,
    /// Unpacked extension bundles to make available (each holds `lib/` and `share/`), so that
    /// `CREATE EXTENSION` finds their control files and side modules.
    pub extensions: Vec<PathBuf>,
    /// The database to serve, created when the cluster lacks it. `None` serves the cluster's
    /// own database: the one it was made with (see `new_database`), or `postgres` for clusters
    /// made before the data directory recorded it.
    pub database: Option<String>,
    /// The name a new cluster's database gets (initdb's `postgres`, renamed).
    pub new_database: String,
    /// Roles made to exist at every start as superusers that can log in, like initdb's
    /// bootstrap superuser (which is always `postgres` here).
    pub superusers: Vec<String>,
}

impl Config {
    /// Defaults for `data_dir`: no template, no module cache, a two-minute start-up bound.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            template_dir: None,
            module_cache_dir: None,
            startup_timeout: Duration::from_secs(120),
            extensions: Vec::new(),
            database: None,
            new_database: "postgres".to_owned(),
            superusers: Vec::new(),
        }
    }
}

/// What can go wrong hosting PGlite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PGlite {version} is not supported by this host (supported: 0.2.x and 0.3.11 or later 0.3.x)")]
    UnsupportedVersion { version: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("extension {name} cannot load on PGlite {version}: {reason}")]
    ExtensionUnavailable { name: String, version: String, reason: String },
    #[error("data directory {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("data directory {path} holds a PostgreSQL {found} cluster; PGlite {version} runs PostgreSQL {expected}")]
    IncompatibleDataDir { path: PathBuf, found: String, expected: u32, version: String },
    #[error("compiling the PostgreSQL module failed: {message}")]
    Compile { message: String },
    #[error("instantiating the PostgreSQL module failed: {message}")]
    Instantiate { message: String },
    #[error("the host's own SQL failed ({code} {message}): {sql}")]
    Sql { sql: String, code: String, message: String },
    #[error("initdb failed (pg_initdb returned {code})")]
    InitdbFailed { code: i32 },
    #[error("PostgreSQL exited with code {code}")]
    GuestExit { code: i32 },
    #[error("PostgreSQL crashed: {message}")]
    Trap { message: String },
    #[error("request of {len} bytes is larger than this PGlite release accepts ({max} bytes)")]
    RequestTooLarge { len: usize, max: usize },
    #[error("startup, SSL and cancel packets are answered by the caller, never sent to the backend")]
    StartupPacket,
    #[error("reply of {len} bytes overflowed the {max}-byte transfer buffer")]
    ReplyOverflow { len: usize, max: usize },
    #[error("the request failed because PostgreSQL crashed and was restarted from disk: {cause}")]
    Restarted { cause: Box<Error> },
    #[error("start-up did not finish within {0:?}")]
    StartupTimeout(Duration),
    #[error("the PostgreSQL instance is not running")]
    NotRunning,
}
