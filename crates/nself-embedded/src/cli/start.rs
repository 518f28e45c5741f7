//! `nself-embedded start`: fetch, boot, print how to connect, serve until SIGINT or SIGTERM,
//! then stop cleanly (clients ended and their transactions rolled back, shutdown checkpoint,
//! socket removed) and exit 0.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::{StartArgs, fetch, startup_timeout};
use crate::{EmbeddedPgRuntime, Error, Release};

pub(super) async fn run(args: StartArgs) -> anyhow::Result<()> {
    let runtime_dir = prepare_runtime_dir(args.runtime_dir.clone(), args.socket_mode)?;
    let release = choose_release(args.fetch.pglite_version.as_deref(), &runtime_dir.join("data"))?;
    let version = release.version();
    let artifact = fetch(version).await.with_context(|| format!("fetching PGlite {version}"))?;
    let mut runtime = EmbeddedPgRuntime::new(&runtime_dir, artifact);
    let mut names: Vec<&str> = crate::DEFAULT_EXTENSIONS
        .into_iter()
        .filter(|name| pglite_host::extension_unavailable(version, name).is_none())
        .collect();
    for name in args.extensions.iter().map(|name| name.trim()).filter(|name| !name.is_empty()) {
        // Refused with the reason (and the release that has it) before looking for its bundle,
        // which this release may not even pin.
        if let Some(reason) = pglite_host::extension_unavailable(version, name) {
            let (name, version, reason) = (name.to_owned(), version.to_owned(), reason.to_owned());
            return Err(Error::Host(pglite_host::Error::ExtensionUnavailable { name, version, reason }).into());
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let extensions = crate::fetch_extensions(version, &names).await.context("fetching extensions")?;
    runtime.set_extensions(&extensions);
    if let Some(database) = &args.database {
        runtime.set_database(database);
    }
    if let Some(timeout) = &args.statement_timeout {
        runtime.host_config_mut().settings.push(("statement_timeout".to_owned(), timeout.clone()));
    }
    if let Some(password) = &args.password {
        runtime.set_password(password);
    }
    let bridge_config = runtime.bridge_config_mut();
    bridge_config.tcp = args.tcp;
    bridge_config.busy_poll = Duration::from_micros(args.busy_poll_us);
    bridge_config.socket_mode = args.socket_mode;
    bridge_config.socket_group = args.socket_group;
    if let Some(refuse) = args.refuse {
        bridge_config.refuse = refuse;
    }

    // A new cluster comes from the cache (the template, or initdb from the extracted files), so
    // its failing to boot may be the cache's fault.
    let fresh = !runtime.data_dir().join("PG_VERSION").exists();
    // Hooked before the boot: a signal during start-up stops the server as soon as it is up.
    // Signals are taken on a thread of their own: this one runs the queries, and a stop must
    // not wait for a long one.
    let interrupter = Arc::new(std::sync::Mutex::new(None::<crate::Interrupter>));
    let mut signals = Signals::spawn(interrupter.clone())?;
    tokio::select! {
        started = runtime.start(startup_timeout(&args)) => {
            started.map_err(|err| explain(err, &runtime_dir, &args, fresh))?;
        }
        name = signals.recv() => {
            tracing::info!(signal = name, "interrupted during start-up");
            // Dropping the start lets a half-booted instance stop itself once it is up.
            return Ok(());
        }
    }
    *interrupter.lock().unwrap_or_else(|e| e.into_inner()) = runtime.interrupter();

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
        Error::Bridge(pg_bridge::Error::SocketInUse { .. }) => true,
        _ => false,
    }
}

/// Whether a failed start may come from a damaged cache: a new cluster (copied from the
/// template, or made by initdb from the extracted files) that does not boot, or PostgreSQL
/// missing a file of its installation (a library, a time zone) at any start.
fn may_be_the_cache(err: &Error, fresh: bool) -> bool {
    let Error::Host(err) = err else {
        return false;
    };
    let text = err.to_string();
    let missing_file = ["could not access file", "could not load library", "could not open file"]
        .iter()
        .any(|symptom| text.contains(symptom));
    let boot_failed = matches!(
        err,
        pglite_host::Error::Trap { .. }
            | pglite_host::Error::InitdbFailed { .. }
            | pglite_host::Error::BackendStart { .. }
            | pglite_host::Error::GuestExit { .. }
            | pglite_host::Error::Sql { .. }
            | pglite_host::Error::Instantiate { .. }
    );
    missing_file || (fresh && boot_failed)
}

/// How to run the full check of the cache, for error messages.
const VERIFY_HINT: &str = "the cache may be damaged: run `nself-embedded fetch --verify`";

fn explain(err: Error, runtime_dir: &Path, args: &StartArgs, fresh: bool) -> anyhow::Error {
    let hint = match &err {
        Error::Bridge(pg_bridge::Error::Io(io)) if io.kind() == std::io::ErrorKind::AddrInUse => {
            let addr = args.tcp.map(|addr| addr.to_string()).unwrap_or_default();
            format!("cannot listen on {addr}: the address is in use (another PostgreSQL server?)")
        }
        err if in_use(err) => {
            format!("cannot start on {}: is nself-embedded already running on it?", runtime_dir.display())
        }
        err if may_be_the_cache(err, fresh) => {
            format!("starting PostgreSQL in {} failed ({VERIFY_HINT})", runtime_dir.display())
        }
        _ => format!("starting PostgreSQL in {}", runtime_dir.display()),
    };
    anyhow::Error::new(err).context(hint)
}

/// The PGlite release to run: the one asked for, else the one for the runtime directory's
/// cluster (see [`Release::for_cluster`]), logged when it is not the default.
fn choose_release(asked: Option<&str>, data_dir: &Path) -> anyhow::Result<Release> {
    if let Some(version) = asked {
        return Ok(Release::parse(version)?);
    }
    match Release::for_cluster(data_dir)? {
        Ok(release) => {
            if release != Release::default_release() {
                tracing::info!(
                    data_dir = %data_dir.display(),
                    pglite = %release,
                    "the cluster was made by another release than the default; running the release of its PostgreSQL version"
                );
            }
            Ok(release)
        }
        Err(major) => {
            let supported: Vec<String> = Release::all().iter().map(Release::to_string).collect();
            anyhow::bail!(
                "the cluster in {} holds PostgreSQL {major}, which no PGlite release this nself-embedded \
                 supports runs (supported: {}); start it with the nself-embedded version that made it",
                data_dir.display(),
                supported.join(", ")
            )
        }
    }
}

/// The runtime directory from the flag or `NSELF_RUNTIME_DIR`, else the platform's per-user
/// data directory; created and made absolute. Its mode is the owner's alone, plus search
/// permission for whom the socket is opened to (`socket_mode`), whether it is new or not: a
/// directory found wider is narrowed, with a warning.
fn prepare_runtime_dir(flag: Option<PathBuf>, socket_mode: u32) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match flag.filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => default_runtime_dir()?,
    };
    let mode = pg_bridge::socket_dir_mode(socket_mode);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(&dir)
        .with_context(|| format!("creating the runtime directory {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let found =
        std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?.permissions().mode() & 0o7777;
    if found != mode {
        if found & !mode != 0 {
            tracing::warn!(dir = %dir.display(), found = format!("{found:04o}"), now = format!("{mode:04o}"), "the runtime directory was open to more users than the socket is; narrowed");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(dir)
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
    let database = runtime.database().unwrap_or_else(|| crate::DEFAULT_DATABASE.to_owned());
    let mut out = std::io::stdout().lock();
    writeln!(out, "DATABASE_URL=postgres://postgres@localhost/{}?host={}", url_encode(&database), url_encode(&dir))?;
    writeln!(out, "dsn: host={} dbname={} sslmode=disable", dsn_quote(&dir), dsn_quote(&database))?;
    if let Some(addr) = runtime.tcp_addr() {
        let auth = if args.password.is_some() { " (password required)" } else { "" };
        writeln!(out, "tcp: postgres://postgres@{addr}/{}{auth}", url_encode(&database))?;
    }
    writeln!(out, "ready: psql -h {} {}", shell_quote(&dir), shell_quote(&database))?;
    out.flush()
}

/// `s` as a libpq connection-string value: quoted when it has spaces, quotes or backslashes.
fn dsn_quote(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '\\']) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
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

/// SIGINT and SIGTERM, whichever comes first, taken on a thread of its own with its own
/// runtime: the first one cancels what clients are running (once the server is up) and is
/// then reported.
struct Signals {
    received: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
}

impl Signals {
    fn spawn(interrupter: Arc<std::sync::Mutex<Option<crate::Interrupter>>>) -> anyhow::Result<Signals> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("signal runtime")?;
        let (hooked_tx, hooked) = std::sync::mpsc::channel();
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("nself-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let hooked = signal(SignalKind::interrupt())
                        .context("hooking SIGINT")
                        .and_then(|int| Ok((int, signal(SignalKind::terminate()).context("hooking SIGTERM")?)));
                    let (mut interrupt, mut terminate) = match hooked {
                        Ok(pair) => {
                            let _ = hooked_tx.send(Ok(()));
                            pair
                        }
                        Err(err) => {
                            let _ = hooked_tx.send(Err(err));
                            return;
                        }
                    };
                    loop {
                        let name = tokio::select! {
                            _ = interrupt.recv() => "SIGINT",
                            _ = terminate.recv() => "SIGTERM",
                        };
                        let current = interrupter.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        if let Some(current) = current {
                            current.stop_serving().await;
                        }
                        if sender.send(name).is_err() {
                            return;
                        }
                    }
                });
            })
            .context("starting the signal thread")?;
        hooked.recv().context("the signal thread ended")??;
        Ok(Signals { received })
    }

    async fn recv(&mut self) -> &'static str {
        self.received.recv().await.unwrap_or("SIGTERM")
    }
}

#[cfg(test)]
mod tests;
