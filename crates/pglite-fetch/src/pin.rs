//! Pin types and lookup: which files make up a release and the SHA-256 each must have.
//!
//! The table itself lives in the generated `pins.rs`; this module only gives it a shape and
//! answers questions about it. Sans-IO.

use crate::{Error, pins};

/// The expected size and SHA-256 of one file in a release's `dist/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePin {
    /// File name inside `dist/`, e.g. `postgres.wasm` or `pgcrypto.tar.gz`.
    pub name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// The npm package whose `dist/` holds the file, when it is not the release's own
    /// `@electric-sql/pglite` (extensions packaged separately, such as pgvector from 0.5 on).
    pub package: Option<NpmPackage>,
}

/// An npm package at one version, e.g. `@electric-sql/pglite-pgvector@0.0.16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmPackage {
    /// The package name, scope included.
    pub name: String,
    pub version: String,
}

impl FilePin {
    /// Builds a pin; used by the generated table and by tests.
    pub fn new(name: &str, size: u64, sha256: &str) -> FilePin {
        FilePin { name: name.to_owned(), size, sha256: sha256.to_owned(), package: None }
    }

    /// A pin of a file in another npm package's `dist/` (a separately packaged extension).
    pub fn in_package(name: &str, size: u64, sha256: &str, package: &str, version: &str) -> FilePin {
        let package = Some(NpmPackage { name: package.to_owned(), version: version.to_owned() });
        FilePin { package, ..FilePin::new(name, size, sha256) }
    }
}

/// Everything pinned for one PGlite version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRelease {
    /// npm version of `@electric-sql/pglite`, e.g. `0.2.17`.
    pub version: String,
    /// The PostgreSQL WebAssembly module (`postgres.wasm` on 0.2, `pglite.wasm` on 0.3).
    pub wasm: FilePin,
    /// The Emscripten data bundle holding the guest file tree.
    pub data: FilePin,
    /// The Emscripten JS glue; only its `loadPackage` file list is read.
    pub js: FilePin,
    /// The separate initdb module (`initdb.wasm`, 0.4 on), which makes a new cluster by
    /// running PostgreSQL's bootstrap and single-user modes.
    pub initdb: Option<FilePin>,
    /// Extension bundles (`<name>.tar.gz`), fetched only on request.
    pub extensions: Vec<FilePin>,
}

impl PinnedRelease {
    /// The files every boot needs: module, data bundle, glue, and initdb where separate.
    pub fn core_files(&self) -> Vec<&FilePin> {
        [&self.wasm, &self.data, &self.js].into_iter().chain(&self.initdb).collect()
    }

    /// The pin of extension `name` (without `.tar.gz`).
    pub fn extension(&self, name: &str) -> Option<&FilePin> {
        self.extensions.iter().find(|pin| extension_name(&pin.name) == name)
    }

    /// Names of all pinned extensions, sorted.
    pub fn extension_names(&self) -> Vec<String> {
        let mut res: Vec<String> = self.extensions.iter().map(|pin| extension_name(&pin.name).to_owned()).collect();
        res.sort();
        res
    }
}

/// `pgcrypto.tar.gz` -> `pgcrypto`.
pub(crate) fn extension_name(file_name: &str) -> &str {
    file_name.strip_suffix(".tar.gz").unwrap_or(file_name)
}

/// Every release in the generated pin table, oldest first.
pub fn pinned_releases() -> Vec<PinnedRelease> {
    pins::releases()
}

/// The pinned release for `version`, or [`Error::UnpinnedVersion`] naming the pinned ones.
pub fn pinned_release(version: &str) -> Result<PinnedRelease, Error> {
    find_release(pinned_releases(), version)
}

pub(crate) fn find_release(releases: Vec<PinnedRelease>, version: &str) -> Result<PinnedRelease, Error> {
    let pinned: Vec<String> = releases.iter().map(|release| release.version.clone()).collect();
    releases
        .into_iter()
        .find(|release| release.version == version)
        .ok_or_else(|| Error::UnpinnedVersion { version: version.to_owned(), pinned })
}
