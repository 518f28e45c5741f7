//! nself-embedded as its users run it: the real `nself-embedded start` binary, measured from
//! spawn to the first answered `SELECT 1` on its Unix socket.
//!
//! The warm artifact cache is `<target>/bench/cache` (seeded from the user's cache when that
//! has the files, so a download happens at most once). A cold first run gets an empty cache
//! and a local directory of the release files as its only source: it compiles the module and
//! runs initdb, but downloads nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use camino::Utf8PathBuf;
use pglite_fetch::{FetchOptions, Source};
use rustix::process::Signal;

use super::procs::{Proc, wait_ready};
use super::{Ctx, Endpoint};

/// Makes sure the warm cache holds `version`'s verified files and returns where they are.
pub(crate) fn seed_warm_cache(ctx: &Ctx, version: &str) -> anyhow::Result<pglite_fetch::Artifact> {
    let mut opts = FetchOptions::new(version);
    let cache = ctx.warm_cache().join("pglite");
    opts.cache_dir =
        Utf8PathBuf::from_path_buf(cache).map_err(|path| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    // The user's own cache first (NSELF_CACHE_DIR or the default), then the usual sources.
    let mut sources = Vec::new();
    if let Ok(user_cache) = pglite_fetch::default_cache_dir() {
        sources.push(Source::Dir(user_cache.join(version)));
    }
    match std::env::var("NSELF_PGLITE_SOURCES") {
        Ok(list) if !list.trim().is_empty() => sources.extend(pglite_fetch::parse_sources(&list)?),
        _ => sources.extend(pglite_fetch::default_sources()),
    }
    opts.sources = sources;
    ctx.rt
        .block_on(pglite_fetch::ensure(&opts))
        .with_context(|| format!("fetching PGlite {version} into the bench cache"))
}

/// Copies the release's files (wasm, data, glue, and initdb where separate) into a new scratch
/// directory, to serve as `NSELF_PGLITE_SOURCES` for a cold start; with them the extension
/// bundles the warm cache holds (those `start` fetched for the warm-up: the default ones, which
/// every start loads).
pub(crate) fn local_sources(ctx: &Ctx, artifact: &pglite_fetch::Artifact) -> anyhow::Result<PathBuf> {
    let dir = ctx.scratch_dir(&format!("sources-{}", artifact.version))?;
    let initdb = artifact.initdb.as_ref().map(|(path, _)| path);
    for file in [&artifact.wasm, &artifact.data, &artifact.js].into_iter().chain(initdb) {
        let name = file.file_name().context("artifact file without a name")?;
        std::fs::copy(file, dir.join(name)).with_context(|| format!("copying {file}"))?;
    }
    let extensions = artifact.dir.join("extensions");
    for entry in std::fs::read_dir(&extensions).with_context(|| format!("listing {extensions}"))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()).filter(|name| name.ends_with(".tar.gz"))
        else {
            continue;
        };
        std::fs::copy(&path, dir.join(name)).with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(dir)
}

/// How one `nself-embedded start` is set up.
pub(crate) struct Start<'a> {
    pub(crate) version: &'a str,
    pub(crate) runtime_dir: &'a Path,
    /// `NSELF_CACHE_DIR`.
    pub(crate) cache_root: &'a Path,
    /// `NSELF_PGLITE_SOURCES`; `None` leaves the built-in sources (the cache is warm).
    pub(crate) sources: Option<&'a Path>,
}

impl Start<'_> {
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint::unix(self.runtime_dir, 5432)
    }

    /// Starts the server and waits for its first answered `SELECT 1`; returns the guard and
    /// the time from spawn to that answer.
    pub(crate) fn run(&self, ctx: &Ctx) -> anyhow::Result<(Proc, Duration)> {
        let mut cmd = Command::new(ctx.release_dir.join("nself-embedded"));
        cmd.arg("start").arg("--runtime-dir").arg(self.runtime_dir).args(["--pglite-version", self.version]);
        cmd.env("NSELF_CACHE_DIR", self.cache_root).env_remove("NSELF_RUNTIME_DIR").env_remove("NSELF_PGLITE_VERSION");
        // The default log level, whatever the caller's RUST_LOG says.
        cmd.env_remove("RUST_LOG");
        match self.sources {
            Some(dir) => cmd.env("NSELF_PGLITE_SOURCES", dir),
            None => cmd.env_remove("NSELF_PGLITE_SOURCES"),
        };
        let name = format!("nself-embedded {}", self.version);
        let log = ctx.log(&format!("nself-{}-{}", self.version, sanitize(self.runtime_dir)));
        let started = std::time::Instant::now();
        let mut proc = Proc::spawn(&name, cmd, &log, Signal::TERM)?;
        let ready = wait_ready(&ctx.rt, &self.endpoint(), &mut proc, Duration::from_secs(600))?;
        Ok((proc, ready - started))
    }
}

fn sanitize(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Start-up times of one system, in milliseconds, and the server left running.
pub(crate) struct Starts {
    /// Empty cache (nself-embedded only).
    pub(crate) first_run: Option<f64>,
    pub(crate) new_database: f64,
    pub(crate) warm_restart: f64,
    pub(crate) server: Proc,
    pub(crate) endpoint: Endpoint,
}

/// Cold first run, new databases on the warm cache, warm restarts of one of them (medians);
/// the last restart keeps running for the workloads.
pub(crate) fn measure_starts(ctx: &Ctx, version: &str, repeats: usize) -> anyhow::Result<Starts> {
    let artifact = seed_warm_cache(ctx, version)?;
    let warm = ctx.warm_cache();
    // A first boot on the warm cache compiles the module and makes the initdb template if an
    // earlier bench run has not; the measurements below then see the cache as users do.
    let warm_up = ctx.scratch_dir(&format!("nself-{version}-warmup"))?;
    let (server, _) = Start { version, runtime_dir: &warm_up, cache_root: &warm, sources: None }.run(ctx)?;
    server.stop()?;

    eprintln!("bench: nself-embedded {version}: first run (compile + initdb)");
    let sources = local_sources(ctx, &artifact)?;
    let cold_cache = ctx.scratch_dir(&format!("nself-{version}-cold-cache"))?;
    let cold_dir = ctx.scratch_dir(&format!("nself-{version}-cold"))?;
    let cold = Start { version, runtime_dir: &cold_dir, cache_root: &cold_cache, sources: Some(&sources) };
    let (server, first_run) = cold.run(ctx)?;
    server.stop()?;

    eprintln!("bench: nself-embedded {version}: new databases and warm restarts");
    let mut new_database = Vec::new();
    let mut runtime_dir = PathBuf::new();
    for index in 0..repeats {
        runtime_dir = ctx.scratch_dir(&format!("nself-{version}-db{index}"))?;
        let (server, elapsed) =
            Start { version, runtime_dir: &runtime_dir, cache_root: &warm, sources: None }.run(ctx)?;
        new_database.push(elapsed);
        server.stop()?;
    }
    let start = Start { version, runtime_dir: &runtime_dir, cache_root: &warm, sources: None };
    let mut warm_restart = Vec::new();
    let mut server = None;
    for index in 0..repeats + 2 {
        if let Some(server) = server.take() {
            Proc::stop(server)?;
        }
        let (running, elapsed) = start.run(ctx)?;
        // The first restart after a fresh database may still find the OS cache cold.
        if index > 0 {
            warm_restart.push(elapsed);
        }
        server = Some(running);
    }
    Ok(Starts {
        first_run: Some(ms(first_run)),
        new_database: median_ms(&new_database),
        warm_restart: median_ms(&warm_restart),
        server: server.context("no server left running")?,
        endpoint: start.endpoint(),
    })
}

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub(crate) fn median_ms(durations: &[Duration]) -> f64 {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).map_or(f64::NAN, |median| ms(*median))
}
