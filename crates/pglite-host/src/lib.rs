//! Runs PGlite's Emscripten build of PostgreSQL inside wasmtime with no JavaScript.
//!
//! [`Pglite::start`] takes a verified, extracted [`Artifact`] and a [`Config`] (the data
//! directory among it), boots PostgreSQL and returns a handle. The wasm store sits behind a
//! mutex in the handle, and whoever holds it runs the guest inline on its own thread, on a large
//! stack borrowed for the call (an async caller that finds it busy waits on tokio's blocking
//! pool); only the boot runs on a thread of its own, so that a start can time out. Protocol
//! bytes go in and out with [`Pglite::exec_protocol`]: one or more frontend messages in, every
//! backend message they produce out. The startup phase (StartupMessage, SSLRequest,
//! CancelRequest) is the caller's business: those packets never reach the backend.
//!
//! This crate never opens a socket and never touches the network.

mod cluster;
mod encodings;
mod engine;
mod errno;
mod error;
mod facts;
mod hooks;
mod imports;
mod instance;
mod interrupts;
mod mem;
mod pglite;
mod profile;
mod sql;
mod stream;
mod template;
mod vfs;

use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{cluster_major, verify_cache};
pub use engine::compiled_module_path;
pub use error::Error;
pub use hooks::{ListenOp, SessionEvents};
pub use interrupts::{Interrupt, SessionTimeouts};
pub use pglite::{BootInfo, BootKind, Pglite};
pub use stream::{PIECE, Stream};
pub use template::{CacheDamage, CacheProblem};

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
    /// Its SHA-256 (hex), as verified against the release's pin. It is the key of the
    /// compiled-module cache, so a warm start loads the compiled module without reading or
    /// hashing `wasm`: it must be the hash of that file. A value that is not 64 hex digits is
    /// ignored and the file hashed instead.
    pub wasm_sha256: String,
    /// The extracted file package: `tmp/pglite/{bin,lib,share}` (0.2, 0.3) or
    /// `pglite/{bin,lib,share}` (0.5+) beneath it.
    pub package_root: PathBuf,
    /// The separate initdb module (`initdb.wasm`, 0.5+) and its verified SHA-256 (the key of
    /// its compiled form, as for `wasm`); needed to make a new cluster on those releases.
    pub initdb: Option<(PathBuf, String)>,
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
    /// Server-wide settings, as if in postgresql.conf (what `RESET` returns to), e.g.
    /// `statement_timeout`. A value PostgreSQL refuses fails the start.
    pub settings: Vec<(String, String)>,
    /// A password for the bootstrap superuser `postgres`, set at every start (stored in
    /// `pg_authid` as a SCRAM-SHA-256 secret, as `ALTER ROLE ... PASSWORD` stores it, so it is
    /// checked like any role's; a client may change it until the next start). An empty one
    /// fails the start. `None` leaves whatever password the role has.
    pub postgres_password: Option<String>,
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
            settings: Vec::new(),
            postgres_password: None,
        }
    }
}
