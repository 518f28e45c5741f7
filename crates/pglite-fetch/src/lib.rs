//! pglite-fetch: bytes in, verified files out.
//!
//! Ensures a pinned PGlite release (the PostgreSQL WebAssembly module, its Emscripten data
//! bundle and JS glue) is in a local cache, verified against SHA-256 pins compiled into this
//! crate, and that the data bundle is unpacked into a directory tree the host can mount.
//!
//! Layout: `pins` (generated table) and `pin` (its types), `glue` (JS file-list parser),
//! `archive` (tarball reading), `hash` and `source` are sans-IO; `http` (network), `cache`
//! (disk), `tree` (checks of extracted trees), `fill` (trying sources in order) and `verify`
//! (the full check on request) are the edges. This crate never runs the code it downloads and
//! knows nothing about wasmtime or PostgreSQL.
//!
//! Every [`ensure`] checks, cheaply, that what the cache extracted is still whole (each file's
//! size and mtime, see `tree.rs`) and extracts it again from the verified bundle when it is
//! not; [`verify`] checks every byte, downloads included.
//!
//! Tests of other crates can share one warm cache by setting `NSELF_CACHE_DIR` to
//! `<workspace>/target/test-cache` and calling [`fetch_or_cached`]: the first run downloads,
//! later runs verify from receipts without touching the network.

mod archive;
mod cache;
mod error;
mod fill;
mod glue;
mod hash;
mod http;
mod options;
mod pin;
mod pins;
mod source;
mod tree;
mod verify;

#[cfg(test)]
mod tests;

use camino::{Utf8Path, Utf8PathBuf};

pub use crate::{
    archive::{dist_file_name, validate_entry_path},
    error::{Attempt, Error, Reason},
    glue::{GlueError, PackageFile, check_ranges, parse_package_files, validate_guest_path},
    hash::sha256_hex,
    options::{FetchOptions, Progress, ProgressFn, default_cache_dir},
    pin::{FilePin, NpmPackage, PinnedRelease, pinned_release, pinned_releases},
    source::{
        NSELF_CDN, Source, UNPKG, default_sources, expand_template, npm_package_tarball_url, npm_registry,
        npm_tarball_url, parse_sources, registry_from_npmrc,
    },
    tree::{Damage, Problem},
    verify::{Verified, verify, verify_with_pins},
};

/// The PGlite release used unless `NSELF_PGLITE_VERSION` or the API says otherwise.
pub const DEFAULT_PGLITE_VERSION: &str = "0.3.16";

/// A verified, unpacked PGlite release in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// npm version, e.g. `0.2.17`.
    pub version: String,
    /// `<cache>/<version>/`.
    pub dir: Utf8PathBuf,
    /// The WebAssembly module.
    pub wasm: Utf8PathBuf,
    /// Lowercase hex SHA-256 of `wasm` (the pin it was verified against).
    pub wasm_sha256: String,
    /// The Emscripten data bundle.
    pub data: Utf8PathBuf,
    /// The JS glue.
    pub js: Utf8PathBuf,
    /// The separate initdb module and its SHA-256, on releases that have one (0.4 on).
    pub initdb: Option<(Utf8PathBuf, String)>,
    /// The data bundle unpacked: guest `/tmp/pglite/bin/postgres` is `<root>/tmp/pglite/bin/postgres`.
    /// Shared by every user of the cache: treat it as read-only.
    pub root: Utf8PathBuf,
    /// The bundle's file list, as parsed from the JS glue.
    pub files: Vec<PackageFile>,
}

/// Ensures `opts.version` is cached, verified and unpacked; downloads only what is missing
/// or corrupt. A warm cache is checked without any network access.
pub async fn ensure(opts: &FetchOptions) -> Result<Artifact, Error> {
    let release = pinned_release(&opts.version)?;
    ensure_with_pins(opts, &release).await
}

/// [`ensure`] for the version and configuration from the environment (see
/// [`FetchOptions::from_env`]), with `version` taking precedence.
pub async fn fetch_or_cached(version: &str) -> Result<Artifact, Error> {
    let mut opts = FetchOptions::from_env()?;
    opts.version = version.to_owned();
    ensure(&opts).await
}

/// A verified extension bundle and its unpacked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The bundle's name, e.g. `pgcrypto`.
    pub name: String,
    /// The verified `<name>.tar.gz`.
    pub archive: Utf8PathBuf,
    /// Its files unpacked: `lib/postgresql/...`, `share/postgresql/extension/...`.
    pub root: Utf8PathBuf,
}

/// Ensures the named extension bundles (`pgcrypto`, ...) of `opts.version` are cached,
/// verified and unpacked; returns them in the order asked. Unknown names are an error that
/// lists the available ones.
pub async fn ensure_extensions(opts: &FetchOptions, names: &[&str]) -> Result<Vec<Extension>, Error> {
    let release = pinned_release(&opts.version)?;
    ensure_extensions_with_pins(opts, &release, names).await
}

/// [`ensure`] against an explicit pin table entry; for tests that serve synthetic files.
#[doc(hidden)]
pub async fn ensure_with_pins(opts: &FetchOptions, release: &PinnedRelease) -> Result<Artifact, Error> {
    let dir = version_dir(opts, release)?;
    let files = {
        let (dir, release) = (dir.clone(), release.clone());
        blocking(move || warm_files(&dir, &release)).await?
    };
    if let Some(files) = files {
        return Ok(artifact(&dir, release, files));
    }
    cache::create_dir_all(&dir)?;
    let lock = {
        let dir = dir.clone();
        blocking(move || cache::lock(&dir)).await?
    };
    // Under the lock: another process may have filled the cache while we waited.
    let missing = {
        let (dir, release) = (dir.clone(), release.clone());
        blocking(move || {
            cache::remove_leftovers(&dir)?;
            missing_pins(&dir, release.core_files())
        })
        .await?
    };
    if !missing.is_empty() {
        tracing::info!(version = %release.version, n_missing = missing.len(), "fetching PGlite");
        fill::fill(opts, &dir, missing).await?;
    }
    let (files, damage) = {
        let (dir, release) = (dir.clone(), release.clone());
        blocking(move || {
            let files = read_file_list(&dir, &release)?;
            let damage = cache::root_damage(&dir, &release.data, &files)?;
            Ok((files, damage))
        })
        .await?
    };
    if let Some(damage) = damage {
        if !damage.is_empty() {
            tracing::warn!(
                version = %release.version,
                damaged = %tree::summary(&damage),
                "the extracted PGlite files are damaged; extracting them again from the verified bundle"
            );
        }
        rehash_or_fill(opts, &dir, &release.data).await?;
        let (dir, release, files) = (dir.clone(), release.clone(), files.clone());
        blocking(move || cache::extract_root(&dir, &release.data, &files)).await?;
        if !damage.is_empty() {
            tracing::info!(version = %release.version, n_files = damage.len(), "repaired the extracted PGlite files");
        }
    }
    drop(lock);
    Ok(artifact(&dir, release, files))
}

/// Whether `artifact`'s extracted tree passes the quick check every [`ensure`] runs (each
/// file's size and mtime); reads only. For measuring that check (`examples/check_cost.rs`).
#[doc(hidden)]
pub fn extracted_is_whole(artifact: &Artifact) -> bool {
    cache::root_quick_check(&artifact.dir, &artifact.files).is_whole()
}

/// [`ensure_extensions`] against an explicit pin table entry; for tests.
#[doc(hidden)]
pub async fn ensure_extensions_with_pins(
    opts: &FetchOptions,
    release: &PinnedRelease,
    names: &[&str],
) -> Result<Vec<Extension>, Error> {
    let pins = names
        .iter()
        .map(|name| {
            release.extension(name).cloned().ok_or_else(|| Error::UnknownExtension {
                version: release.version.clone(),
                name: (*name).to_owned(),
                available: release.extension_names(),
            })
        })
        .collect::<Result<Vec<FilePin>, Error>>()?;
    let version_dir = version_dir(opts, release)?;
    let dir = version_dir.join("extensions");
    cache::create_dir_all(&dir)?;
    // Always under the lock: checking a tree may stamp its files or write its manifest.
    let lock = {
        let version_dir = version_dir.clone();
        blocking(move || cache::lock(&version_dir)).await?
    };
    let missing = {
        let (dir, pins) = (dir.clone(), pins.clone());
        blocking(move || {
            cache::remove_leftovers(&dir)?;
            missing_pins(&dir, &pins)
        })
        .await?
    };
    if !missing.is_empty() {
        fill::fill(opts, &dir, missing).await?;
    }
    let mut res = Vec::new();
    for pin in pins {
        let unpacked = {
            let (dir, pin) = (dir.clone(), pin.clone());
            blocking(move || cache::unpacked_extension(&dir, &pin)).await?
        };
        let name = pin::extension_name(&pin.name).to_owned();
        let root = match unpacked {
            cache::Unpacked::Whole(root) => root,
            cache::Unpacked::No => unpack_extension(opts, &dir, &pin).await?,
            cache::Unpacked::Damaged(damage) => {
                tracing::warn!(
                    extension = %name,
                    damaged = %tree::summary(&damage),
                    "an unpacked extension is damaged; unpacking it again from the verified bundle"
                );
                let root = unpack_extension(opts, &dir, &pin).await?;
                tracing::info!(extension = %name, n_files = damage.len(), "repaired the unpacked extension");
                root
            }
        };
        res.push(Extension { name, archive: dir.join(&pin.name), root });
    }
    drop(lock);
    Ok(res)
}

/// Unpacks extension bundle `pin` (again), from bytes hashed just before. Call under the lock.
async fn unpack_extension(opts: &FetchOptions, dir: &Utf8Path, pin: &FilePin) -> Result<Utf8PathBuf, Error> {
    rehash_or_fill(opts, dir, pin).await?;
    let (dir, pin) = (dir.to_owned(), pin.clone());
    blocking(move || cache::unpack_extension(&dir, &pin)).await
}

/// Makes sure `<dir>/<pin.name>` hashes to its pin right now, receipt or not, fetching it
/// again if it does not: nothing is extracted from bytes that were not just hashed. Call under
/// the lock.
async fn rehash_or_fill(opts: &FetchOptions, dir: &Utf8Path, pin: &FilePin) -> Result<(), Error> {
    let problem = {
        let (dir, pin) = (dir.to_owned(), pin.clone());
        blocking(move || cache::hash_state(&dir, &pin)).await?
    };
    if let Some(problem) = problem {
        tracing::warn!(file = %dir.join(&pin.name), %problem, "a cached file no longer matches its pin; fetching it again");
        fill::fill(opts, dir, vec![pin.clone()]).await?;
    }
    Ok(())
}

fn version_dir(opts: &FetchOptions, release: &PinnedRelease) -> Result<Utf8PathBuf, Error> {
    if opts.cache_dir.as_str().is_empty() {
        return Err(Error::NoHomeDir);
    }
    Ok(opts.cache_dir.join(&release.version))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.expect("cache task panicked")
}

/// The file list when every core file verifies and `root/` is complete and whole (every file
/// of the size and mtime it was extracted with, or compared equal to the bundle); no lock and
/// no writes needed, so a read-only cache stays usable.
fn warm_files(dir: &Utf8Path, release: &PinnedRelease) -> Result<Option<Vec<PackageFile>>, Error> {
    if !dir.is_dir() || !missing_pins(dir, release.core_files())?.is_empty() {
        return Ok(None);
    }
    let files = read_file_list(dir, release)?;
    let whole = cache::root_damage(dir, &release.data, &files)?.is_none();
    Ok(whole.then_some(files))
}

fn missing_pins<'a>(dir: &Utf8Path, pins: impl IntoIterator<Item = &'a FilePin>) -> Result<Vec<FilePin>, Error> {
    let mut res = Vec::new();
    for pin in pins {
        if !cache::is_verified(dir, pin)? {
            res.push(pin.clone());
        }
    }
    Ok(res)
}

/// Parses the verified JS glue and checks every range against the verified data size.
fn read_file_list(dir: &Utf8Path, release: &PinnedRelease) -> Result<Vec<PackageFile>, Error> {
    let js_path = dir.join(&release.js.name);
    let js = std::fs::read(&js_path).map_err(cache::cache_err(&js_path))?;
    let js = String::from_utf8_lossy(&js);
    let glue_err = |source| Error::Glue { path: js_path.clone(), source };
    let files = parse_package_files(&js).map_err(glue_err)?;
    check_ranges(&files, release.data.size).map_err(glue_err)?;
    Ok(files)
}

fn artifact(dir: &Utf8Path, release: &PinnedRelease, files: Vec<PackageFile>) -> Artifact {
    Artifact {
        version: release.version.clone(),
        dir: dir.to_owned(),
        wasm: dir.join(&release.wasm.name),
        wasm_sha256: release.wasm.sha256.clone(),
        data: dir.join(&release.data.name),
        js: dir.join(&release.js.name),
        initdb: release.initdb.as_ref().map(|pin| (dir.join(&pin.name), pin.sha256.clone())),
        root: dir.join("root"),
        files,
    }
}

/// Downloads `url` into `sink` under this crate's HTTP policy (https or loopback http,
/// platform roots, `opts`' timeouts, `opts.max_archive_size` cap). For `cargo xtask
/// update-pins`, which must see the registry exactly as [`ensure`] does. Verifies nothing.
#[doc(hidden)]
pub async fn download(opts: &FetchOptions, url: &str, sink: &mut (dyn std::io::Write + Send)) -> Result<u64, Error> {
    let http = http::Http::new(opts.connect_timeout, opts.read_timeout)?;
    let file = url.rsplit('/').next().unwrap_or(url).to_owned();
    let mut progress = |done, total| {
        if let Some(progress) = &opts.progress {
            progress(Progress { file: file.clone(), done, total, source: url.to_owned() });
        }
    };
    http.download(url, opts.max_archive_size, sink, &mut progress).await.map_err(|reason| {
        let attempt = Attempt { file: file.clone(), url: url.to_owned(), reason };
        Error::AllSourcesFailed { version: opts.version.clone(), file: Some(file.clone()), attempts: vec![attempt] }
    })
}
