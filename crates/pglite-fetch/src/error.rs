//! The crate's one error type, shaped so a caller can act on each variant.
//!
//! `AllSourcesFailed` carries every attempt (URL and why it failed) so a user can see at a
//! glance whether the mirror 404'd, the proxy timed out or a file was tampered with.

use std::{fmt, io, time::Duration};

use camino::Utf8PathBuf;

use crate::glue::GlueError;

/// Everything that can go wrong while ensuring a verified PGlite artifact.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested version has no pins; `pinned` lists the versions that do.
    #[error("PGlite {version} is not pinned (pinned versions: {})", pinned.join(", "))]
    UnpinnedVersion {
        /// The version asked for.
        version: String,
        /// Versions in the pin table.
        pinned: Vec<String>,
    },
    /// No source produced a file matching its pin; nothing unverified was cached.
    #[error("{}", AllFailed { version, file: file.as_deref(), attempts })]
    AllSourcesFailed {
        /// The version being fetched.
        version: String,
        /// The file that failed, when exactly one did.
        file: Option<String>,
        /// Every attempt, in the order tried.
        attempts: Vec<Attempt>,
    },
    /// Reading or writing the cache failed.
    #[error("cache I/O at {path}")]
    Cache {
        /// The file or directory involved.
        path: Utf8PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An extension name that the release does not ship.
    #[error("PGlite {version} has no extension {name:?} (available: {})", available.join(", "))]
    UnknownExtension {
        /// The version searched.
        version: String,
        /// The name asked for.
        name: String,
        /// The extensions that are pinned for `version`.
        available: Vec<String>,
    },
    /// The verified JS glue's file list could not be used to unpack the data bundle.
    #[error("data bundle file list in {path}")]
    Glue {
        /// The JS glue file.
        path: Utf8PathBuf,
        /// What was wrong with it.
        #[source]
        source: GlueError,
    },
    /// An entry of a source list (`NSELF_PGLITE_SOURCES` or the API) is malformed.
    #[error("invalid PGlite source {entry:?}: {reason}")]
    InvalidSource {
        /// The offending entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An environment variable has a value that cannot be used.
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The platform reports no home directory and `NSELF_CACHE_DIR` is unset.
    #[error("no home directory to put the cache in; set NSELF_CACHE_DIR")]
    NoHomeDir,
    /// A path is not valid UTF-8 (the cache API speaks UTF-8 paths).
    #[error("path {0:?} is not valid UTF-8")]
    NonUtf8Path(std::path::PathBuf),
    /// The platform's root certificates could not be loaded.
    #[error("loading the platform's root certificates")]
    Tls(#[source] io::Error),
}

/// One try at one file from one source.
#[derive(Debug)]
pub struct Attempt {
    /// The file being fetched (e.g. `postgres.wasm`).
    pub file: String,
    /// Where it was fetched from: a URL or a local path.
    pub url: String,
    /// Why it failed.
    pub reason: Reason,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// The server answered with a non-success status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Connecting or waiting for bytes took longer than allowed.
    #[error("timed out after {after:?} while {phase}")]
    Timeout {
        /// `connecting` or `reading`.
        phase: &'static str,
        /// The limit that was hit.
        after: Duration,
    },
    /// The bytes did not match the pin; they were discarded.
    #[error("SHA-256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The pinned digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// More bytes arrived than the pin or the size cap allows.
    #[error("larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The connection ended before `Content-Length` bytes arrived.
    #[error("truncated: got {received} of {expected} bytes")]
    Truncated {
        /// Announced length.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// Plain `http` to a non-loopback host, or a scheme other than http(s).
    #[error("refusing insecure URL (https only, http allowed for loopback)")]
    Insecure,
    /// The URL or a redirect target could not be parsed or followed.
    #[error("bad URL or redirect: {0}")]
    BadUrl(String),
    /// The npm source has no registry URL and none could be discovered.
    #[error("no npm registry configured: set NPM_CONFIG_REGISTRY, add `registry=` to ~/.npmrc or put npm on PATH")]
    NoNpmRegistry,
    /// The archive lacks the file.
    #[error("not in the archive")]
    NotInArchive,
    /// The archive has an entry with an absolute path or a `..` component; it was refused.
    #[error("archive entry {0:?} has an unsafe path")]
    UnsafeArchivePath(String),
    /// Connection, TLS or protocol failure.
    #[error("request failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// The response body broke off.
    #[error("reading the body failed")]
    Body(#[source] hyper::Error),
    /// A local file or archive could not be read, or a temp file written.
    #[error("I/O error")]
    Io(#[source] io::Error),
}

/// Renders `AllSourcesFailed`, one attempt per line with its whole cause chain.
struct AllFailed<'a> {
    version: &'a str,
    file: Option<&'a str>,
    attempts: &'a [Attempt],
}

impl fmt::Display for AllFailed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.file {
            Some(file) => write!(f, "no source had a verified {file} for PGlite {}", self.version)?,
            None => write!(f, "no source had verified files for PGlite {}", self.version)?,
        }
        for attempt in self.attempts {
            write!(f, "\n  - {} ({}): {}", attempt.url, attempt.file, attempt.reason)?;
            let mut source = std::error::Error::source(&attempt.reason);
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
        }
        Ok(())
    }
}
