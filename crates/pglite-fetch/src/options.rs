//! What a fetch is configured with: version, cache directory, sources, limits, progress.
//!
//! [`FetchOptions::from_env`] is the one place that reads `NSELF_*` variables; everything
//! below it takes the options as given.

use std::{fmt, sync::Arc, time::Duration};

use camino::Utf8PathBuf;

use crate::{DEFAULT_PGLITE_VERSION, Error, source::Source};

/// Progress callback; called from the fetching task, so keep it cheap.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress report for one file (or one registry tarball) being downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The file name (e.g. `postgres.wasm`), or the tarball's name for the npm source.
    pub file: String,
    /// Bytes received so far.
    pub done: u64,
    /// Total bytes when known (pin size or `Content-Length`).
    pub total: Option<u64>,
    /// The URL or path being read.
    pub source: String,
}

/// How to find, verify and cache one PGlite release.
#[derive(Clone)]
pub struct FetchOptions {
    /// npm version of `@electric-sql/pglite`; must be pinned.
    pub version: String,
    /// Cache root for PGlite; the release lives in `<cache_dir>/<version>/`.
    pub cache_dir: Utf8PathBuf,
    /// Sources tried in order for each missing file.
    pub sources: Vec<Source>,
    /// Called as bytes arrive.
    pub progress: Option<ProgressFn>,
    /// Limit for establishing a connection (TCP and TLS) and receiving response headers.
    pub connect_timeout: Duration,
    /// Limit for any single wait on body bytes.
    pub read_timeout: Duration,
    /// No single file may be larger than this, whatever a server claims.
    pub max_file_size: u64,
    /// No registry tarball may be larger than this.
    pub max_archive_size: u64,
}

impl FetchOptions {
    /// Defaults for `version`: the cache from [`default_cache_dir`] (empty when the platform
    /// has no home directory, which [`crate::ensure`] reports as [`Error::NoHomeDir`]), the
    /// built-in sources, 15 s connect, 30 s read, 64 MiB per file, 256 MiB per tarball.
    pub fn new(version: impl Into<String>) -> FetchOptions {
        FetchOptions {
            version: version.into(),
            cache_dir: default_cache_dir().unwrap_or_default(),
            sources: crate::source::default_sources(),
            progress: None,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            max_file_size: 64 << 20,
            max_archive_size: 256 << 20,
        }
    }

    /// Defaults, with `NSELF_PGLITE_VERSION` (version), `NSELF_CACHE_DIR` (see
    /// [`default_cache_dir`]) and `NSELF_PGLITE_SOURCES` (see [`crate::parse_sources`]) applied.
    pub fn from_env() -> Result<FetchOptions, Error> {
        let version = env_nonempty("NSELF_PGLITE_VERSION").unwrap_or_else(|| DEFAULT_PGLITE_VERSION.to_owned());
        let mut res = FetchOptions::new(version);
        res.cache_dir = default_cache_dir()?;
        if let Some(list) = env_nonempty("NSELF_PGLITE_SOURCES") {
            res.sources = crate::source::parse_sources(&list)?;
        }
        Ok(res)
    }

    /// `<cache_dir>/<version>`.
    pub fn version_dir(&self) -> Utf8PathBuf {
        self.cache_dir.join(&self.version)
    }
}

impl fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("version", &self.version)
            .field("cache_dir", &self.cache_dir)
            .field("sources", &self.sources)
            .field("progress", &self.progress.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_file_size", &self.max_file_size)
            .field("max_archive_size", &self.max_archive_size)
            .finish()
    }
}

/// `$NSELF_CACHE_DIR/pglite` when set, else `~/.nself/cache/pglite` (home from the platform).
pub fn default_cache_dir() -> Result<Utf8PathBuf, Error> {
    let nself_cache = match std::env::var_os("NSELF_CACHE_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::home_dir().ok_or(Error::NoHomeDir)?.join(".nself").join("cache"),
    };
    let res = Utf8PathBuf::from_path_buf(nself_cache).map_err(Error::NonUtf8Path)?;
    Ok(res.join("pglite"))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|value| value.trim().to_owned()).filter(|value| !value.is_empty())
}
