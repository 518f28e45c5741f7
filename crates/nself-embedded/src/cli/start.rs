//! `nself-embedded start`: fetch, boot, print how to connect, serve until SIGINT or SIGTERM,
//! then stop cleanly (clients ended and their transactions rolled back, shutdown checkpoint,
//! socket removed) and exit 0.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{StartArgs, fetch, startup_timeout};
use crate::{EmbeddedPgRuntime, Error};

pub(super) async fn run(args: StartArgs) -> anyhow::Result<()> {
    let runtime_dir = prepare_runtime_dir(args.runtime_dir.clone())?;
    let version = &args.fetch.pglite_version;
    let artifact = fetch(version).await.with_context(|| format!("fetching PGlite {version}"))?;
    let mut runtime = EmbeddedPgRuntime::new(&runtime_dir, artifact);
    if !args.extensions.is_empty() {
        let names: Vec<&str> = args.extensions.iter().map(|name| name.trim()).filter(|name| !name.is_empty()).collect();
        let extensions = crate::fetch_extensions(version, &names).await.context("fetching extensions")?;
        runtime.set_extensions(&extensions);
    }
    let bridge_config = runtime.bridge_config_mut();
    bridge_config.tcp = args.tcp;
    bridge_config.tcp_password = args.password.clone();
    bridge_config.busy_poll = Duration::from_micros(args.busy_poll_us);

    // Hooked before the boot: a signal during start-up stops the server as soon as it is up.
    let mut signals = Signals::new()?;
    tokio::select! {
        started = runtime.start(startup_timeout(&args)) => {
            started.map_err(|err| explain(err, &runtime_dir, &args))?;
        }
        name = signals.recv() => {
            tracing::info!(signal = name, "interrupted during start-up");
            // Dropping the start lets a half-booted instance stop itself once it is up.
            return Ok(());
        }
    }

    print_ready(&runtime, &args).context("writing to standard output")?;
    let name = signals.recv().await;
    tracing::info!(signal = name, "stopping");
    runtime.stop().await.context(
        "PostgreSQL did not shut down cleanly (is the disk full?); nothing committed is lost: \
         the next start recovers from the write-ahead log",
    )?;
    Ok(())
}

/// Whether `err` means something else already uses the directory, socket or address.
pub(super) fn in_use(err: &Error) -> bool {
    match err {
        Error::Host(pglite_host::Error::Locked { .. }) => true,
        Error::Bridge(pg_bridge::Error::Io(io)) => io.kind() == std::io::ErrorKind::AddrInUse,
        Error::Bridge(pg_bridge::Error::Config { reason }) => reason.starts_with("another server is listening"),
        _ => false,
    }
}

fn explain(err: Error, runtime_dir: &Path, args: &StartArgs) -> anyhow::Error {
    let hint = match &err {
        Error::Bridge(pg_bridge::Error::Io(io)) if io.kind() == std::io::ErrorKind::AddrInUse => {
            let addr = args.tcp.map(|addr| addr.to_string()).unwrap_or_default();
            format!("cannot listen on {addr}: the address is in use (another PostgreSQL server?)")
        }
        err if in_use(err) => {
            format!("cannot start on {}: is nself-embedded already running on it?", runtime_dir.display())
        }
        _ => format!("starting PostgreSQL in {}", runtime_dir.display()),
    };
    anyhow::Error::new(err).context(hint)
}

/// The runtime directory from the flag or `NSELF_RUNTIME_DIR`, else the platform's per-user
/// data directory; created (mode 0700) and made absolute.
fn prepare_runtime_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match flag.filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => default_runtime_dir()?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the runtime directory {}", dir.display()))?;
    std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))
}

fn default_runtime_dir() -> anyhow::Result<PathBuf> {
    const NAME: &str = "nself-embedded";
    if let Some(data_home) = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).filter(|dir| dir.is_absolute()) {
        return Ok(data_home.join(NAME));
    }
    let home = std::env::home_dir().context("no home directory: pass --runtime-dir or set NSELF_RUNTIME_DIR")?;
    Ok(if cfg!(target_os = "macos") {
        home.join("Library/Application Support").join(NAME)
    } else {
        home.join(".local/share").join(NAME)
    })
}

fn print_ready(runtime: &EmbeddedPgRuntime, args: &StartArgs) -> std::io::Result<()> {
    let dir = runtime.runtime_dir().to_string_lossy().into_owned();
    let mut out = std::io::stdout().lock();
    writeln!(out, "DATABASE_URL=postgres://postgres@localhost/postgres?host={}", url_encode(&dir))?;
    if let Some(addr) = runtime.tcp_addr() {
        let auth = if args.password.is_some() { " (password required)" } else { "" };
        writeln!(out, "tcp: postgres://postgres@{addr}/postgres{auth}")?;
    }
    writeln!(out, "ready: psql -h {} -U postgres postgres", shell_quote(&dir))?;
    out.flush()
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !s.is_empty() && s.chars().all(plain) { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// `s` percent-encoded for a URL query value; `/` stays readable.
fn url_encode(s: &str) -> String {
    let mut res = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            res.push(byte as char);
        } else {
            res.push_str(&format!("%{byte:02X}"));
        }
    }
    res
}

/// SIGINT and SIGTERM, whichever comes first.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("hooking SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("hooking SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests;
