//! The wasmtime engine and the compiled-module cache. Compiling the 8 MB PostgreSQL module
//! takes seconds, so its compiled form is kept on disk keyed by the wasm's SHA-256, the
//! engine's compatibility hash and the tag of the host's changes to the module (`patch`),
//! written atomically and checked by a receipt before use. The main module's key is the
//! artifact's SHA-256, verified against its pin when it was fetched, so loading it neither
//! reads nor hashes the wasm (only `facts.rs` reads it, beside the boot); side modules are
//! hashed as they load and compiled as they come.
//! Nothing here decides which module to run: callers hand in the bytes or the artifact.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

use crate::{Artifact, Error};

mod patch;

pub(crate) use patch::{LONGJMP_TAG, STACK_CHECK};

/// Wasm stack for PostgreSQL's recursion (parser, plpgsql); the native stack the guest runs on
/// (`pglite.rs`'s `GUEST_STACK`, also the boot thread's) is comfortably larger than this.
pub(crate) const MAX_WASM_STACK: usize = 64 << 20;

/// The address space reserved for each linear memory, all of it mapped when the memory is
/// made: the whole 32-bit range.
pub(crate) const MEMORY_RESERVATION: u64 = 1 << 32;

/// The process-wide engine: one configuration, so compiled modules can be shared.
pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.max_wasm_stack(MAX_WASM_STACK);
        // Checked against max_wasm_stack even without async support compiled in.
        config.async_stack_size(MAX_WASM_STACK + (1 << 20));
        // A longjmp is an error unwinding through wasm: capturing backtraces would make every
        // SQL error pay for one.
        config.wasm_backtrace_max_frames(None);
        config.parallel_compilation(true);
        // A longjmp is a wasm exception in the patched module (`patch`).
        config.wasm_exceptions(true);
        // Other threads raise PostgreSQL's interrupt flags in a running guest's memory (see
        // `interrupts`), so a linear memory must stay where it was made. (Memories are capped
        // at 2 GiB, inside the 4 GiB reservation: growing never needed to move them.) The
        // reservation is wasmtime's default on 64-bit hosts, set here because the host advises
        // the kernel on all of it (`instance::advise_pages`).
        config.memory_reservation(MEMORY_RESERVATION);
        config.memory_may_move(false);
        // For profiling: `perf` finds the compiled functions' names in /tmp/perf-<pid>.map.
        if std::env::var_os("NSELF_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).expect("static engine configuration is valid")
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The cache key for a SHA-256 given in hex (lowercased), if it is one: 64 hex digits.
fn sha256_key(hex: &str) -> Option<String> {
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// Where the compiled form of the module with this SHA-256 lives; `tag` names the host's
/// changes to the module before compiling (`patch::TAG`, or none).
fn cache_path(engine: &Engine, dir: &Path, wasm_sha256: &str, tag: &str) -> PathBuf {
    dir.join(format!("{}-{}{tag}.cwasm", &wasm_sha256[..wasm_sha256.len().min(32)], engine_key(engine)))
}

/// Where the compiled form of `artifact`'s main module lives in `dir` for this build of the
/// host (the engine's settings are part of the name).
pub fn compiled_module_path(artifact: &Artifact, dir: &Path) -> PathBuf {
    let sha = sha256_key(&artifact.wasm_sha256).unwrap_or_else(|| artifact.wasm_sha256.clone());
    cache_path(engine(), dir, &sha, patch::TAG)
}

/// The artifact's main module: its compiled form from the cache, found by the artifact's
/// verified SHA-256 without reading the wasm, or else compiled from the wasm file (read only
/// then) and cached.
pub(crate) fn load_main_module(
    engine: &Engine,
    artifact: &Artifact,
    cache_dir: Option<&Path>,
) -> Result<Module, Error> {
    load_module(engine, &artifact.wasm, &artifact.wasm_sha256, cache_dir)
}

/// The module at `path`, whose verified SHA-256 is `sha256`: from the cache when it holds it
/// (without reading `path`), else patched (`patch`), compiled and cached.
pub(crate) fn load_module(
    engine: &Engine,
    path: &Path,
    sha256: &str,
    cache_dir: Option<&Path>,
) -> Result<Module, Error> {
    let read = || std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source });
    let compile = |wasm: &[u8]| compile_patched(engine, wasm, patch::patch(wasm)).map_err(Error::compile);
    let Some(dir) = cache_dir else {
        return compile(&read()?);
    };
    if let Some(wasm_sha256) = sha256_key(sha256) {
        return cached(engine, dir, &wasm_sha256, patch::TAG, || compile(&read()?));
    }
    let wasm = read()?;
    cached(engine, dir, &sha256_hex(&wasm), patch::TAG, || compile(&wasm))
}

/// Compiles a side module's `wasm`, with its invokes in wasm when the main module's are
/// (`main_rewritten`, see `patch::patch_side`), or loads its cached compiled form (keyed by
/// its hash and the patch's tag).
pub(crate) fn compile_cached(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
    main_rewritten: bool,
) -> wasmtime::Result<Module> {
    let compile = || compile_patched(engine, wasm, patch::patch_side(wasm, main_rewritten));
    let Some(dir) = cache_dir else {
        return compile();
    };
    let tag = if main_rewritten { patch::SIDE_TAG } else { "" };
    cached(engine, dir, &sha256_hex(wasm), tag, compile)
}

/// Compiles `patched`, the host's changes to `wasm`, or else `wasm` as it came: the changes
/// are optimisations, and the host's own invokes serve a module without them.
fn compile_patched(engine: &Engine, wasm: &[u8], patched: Cow<'_, [u8]>) -> wasmtime::Result<Module> {
    Module::new(engine, &patched).or_else(|err| match patched {
        Cow::Borrowed(_) => Err(err),
        Cow::Owned(_) => {
            tracing::warn!(%err, "the patched module did not compile; compiling it as it is");
            Module::new(engine, wasm)
        }
    })
}

/// The module cached in `dir` under `wasm_sha256`, or else `compile`'s, then cached; a
/// missing, stale or corrupt entry is (re)compiled and rewritten. Cache failures never fail
/// the load, they only cost time.
fn cached<E>(
    engine: &Engine,
    dir: &Path,
    wasm_sha256: &str,
    tag: &str,
    compile: impl FnOnce() -> Result<Module, E>,
) -> Result<Module, E> {
    let path = cache_path(engine, dir, wasm_sha256, tag);
    prune_stale(&path);
    if let Some(module) = load_verified(engine, &path) {
        return Ok(module);
    }
    // One compiler at a time per module: processes starting together (a test suite, a
    // supervisor restarting several) wait for the first instead of all compiling.
    let _lock = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path.with_extension("lock"))
        })
        .and_then(|file| file.lock().map(|()| file))
        .inspect_err(|err| tracing::debug!(%err, "compiling without the cache lock"))
        .ok();
    if let Some(module) = load_verified(engine, &path) {
        return Ok(module);
    }
    let module = compile()?;
    if let Err(err) = store(&module, &path) {
        tracing::warn!(path = %path.display(), %err, "could not write the compiled-module cache");
    }
    Ok(module)
}

/// How long a compiled form of a module that this build of the host does not use (another
/// build's engine, an earlier patch) stays in the cache unread: another build on the machine
/// that still uses it reads it within this time and keeps it.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 60 * 60);

/// Removes the other compiled forms of the module `path` is for (same wasm, other name) that
/// nobody has read for [`STALE_AFTER`], with their receipts and locks: each build of the host
/// (and each change to the patch) compiles its own, ~24 MB a release, which would otherwise
/// stay forever. When a file was last read is its access time (updated at least daily under
/// Linux's default `relatime`; on a `noatime` mount its write time, so an entry another build
/// still uses may go and be compiled again). Failures leave files where they are.
fn prune_stale(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Some((module, _)) = name.split_once('-') else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(other) = file_name.to_str() else { continue };
        let same_module = other.strip_prefix(module).is_some_and(|rest| rest.starts_with('-'));
        if other == name || !same_module || !other.ends_with(".cwasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let last_read = meta.accessed().or_else(|_| meta.modified()).unwrap_or(now);
        if now.duration_since(last_read).is_ok_and(|idle| idle > STALE_AFTER) {
            let stale = entry.path();
            tracing::info!(path = %stale.display(), "removing a compiled module unread for 30 days");
            for file in [receipt_path(&stale), stale.with_extension("lock"), stale] {
                if let Err(err) = std::fs::remove_file(&file)
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::debug!(path = %file.display(), %err, "could not remove a stale cache file");
                }
            }
        }
    }
}

fn receipt_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.receipt")
}

/// The receipt records size, mtime and SHA-256 of the compiled file. A matching size and mtime
/// is trusted without re-hashing (cheap warm start); otherwise the file is hashed again.
fn load_verified(engine: &Engine, path: &Path) -> Option<Module> {
    let meta = std::fs::metadata(path).ok()?;
    let receipt = std::fs::read_to_string(receipt_path(path)).ok()?;
    let mut fields = receipt.split_whitespace();
    let (size, mtime, sha) = (fields.next()?, fields.next()?, fields.next()?);
    let stamp_matches = size == meta.len().to_string() && mtime == mtime_ns(&meta).to_string();
    if !stamp_matches {
        let bytes = std::fs::read(path).ok()?;
        if sha256_hex(&bytes) != sha {
            tracing::warn!(path = %path.display(), "compiled-module cache is corrupt; recompiling");
            let _ = std::fs::remove_file(path);
            return None;
        }
        let _ = write_atomic(&receipt_path(path), format!("{} {} {sha}\n", meta.len(), mtime_ns(&meta)).as_bytes());
    }
    deserialize(engine, path)
        .inspect_err(|err| tracing::warn!(path = %path.display(), %err, "compiled module rejected; recompiling"))
        .ok()
}

#[expect(unsafe_code, reason = "deserializing a module we compiled and hash-addressed ourselves")]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: the file was written by `store` from `Module::serialize` under a name keyed by
    // the engine's compatibility hash, and its SHA-256 matches the receipt written with it.
    unsafe { Module::deserialize_file(engine, path) }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn store(module: &Module, path: &Path) -> std::io::Result<()> {
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(path, &bytes)?;
    let meta = std::fs::metadata(path)?;
    write_atomic(&receipt_path(path), format!("{} {} {}\n", meta.len(), mtime_ns(&meta), sha256_hex(&bytes)).as_bytes())
}

/// Writes `bytes` to a unique temp file beside `path`, syncs it, renames it into place and
/// syncs the directory, so readers see the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
