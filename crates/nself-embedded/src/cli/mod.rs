//! The `nself-embedded` command line: `start` (fetch, boot, serve until SIGINT or SIGTERM,
//! stop cleanly) and `fetch` (fill the cache, print its path; with `--verify`, check every
//! byte of it and repair what is damaged).
//!
//! Standard output carries only what a script may want (connection lines, the final
//! `ready:` line, the cache path); logs and progress go to standard error. Failures end with a
//! message a person can act on and an exit code from [`exit`].

mod progress;
mod start;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::{Artifact, DEFAULT_BUSY_POLL_US, DEFAULT_PGLITE_VERSION, Error};

/// Exit codes besides 0 (success) and 2 (usage, from clap).
pub(crate) mod exit {
    /// Anything not listed below; for `fetch --verify`, damage that could not be repaired.
    pub(crate) const FAILURE: u8 = 1;
    /// The runtime directory, its socket or the TCP address is already in use.
    pub(crate) const IN_USE: u8 = 3;
    /// The PGlite artifact could not be had: version not pinned, or no source reachable.
    pub(crate) const NO_ARTIFACT: u8 = 4;
    /// `fetch --verify` found damage in the cache and repaired all of it.
    pub(crate) const REPAIRED: u8 = 5;
}

#[derive(Parser, Debug)]
#[command(
    name = "nself-embedded",
    version,
    about = "PostgreSQL (PGlite in wasmtime) for ordinary PostgreSQL clients on a Unix socket",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage, 3 already in use (data directory, socket \
                  or TCP address), 4 PGlite artifact unavailable, 5 (fetch --verify) damage found in the \
                  cache and repaired; fetch --verify exits 1 when damage could not be repaired.\n\
                  Environment: RUST_LOG (log filter, default info), NSELF_CACHE_DIR (cache root), \
                  NSELF_PGLITE_SOURCES (download sources)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch PGlite if needed, boot it and serve clients until SIGINT or SIGTERM.
    Start(StartArgs),
    /// Make sure PGlite is in the cache, verified, and print the cache directory.
    Fetch(FetchCommand),
}

#[derive(clap::Args, Debug)]
struct FetchCommand {
    #[command(flatten)]
    fetch: FetchArgs,
    /// Check every byte of the cache, whatever sizes and dates say (bit rot keeps both):
    /// downloads against their pinned SHA-256s, extracted files and extension bundles against
    /// the verified archives, the template cluster and the compiled modules against the
    /// hashes recorded when they were made. Damaged files are repaired (fetched, extracted,
    /// built or compiled again). Without --pglite-version, every release in the cache is
    /// checked. Exit code 0: all whole; 5: damage found and repaired; 1: damage that could
    /// not be repaired.
    #[arg(long)]
    verify: bool,
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    #[arg(long, env = "NSELF_PGLITE_VERSION", help = version_help())]
    pglite_version: Option<String>,
}

fn version_help() -> String {
    format!(
        "The PGlite release; must be one of the pinned ones [default: for `start` on an existing \
         cluster, the release that runs its PostgreSQL version; else {DEFAULT_PGLITE_VERSION}]"
    )
}

impl FetchArgs {
    /// The release asked for, or the default.
    fn version(&self) -> &str {
        self.pglite_version.as_deref().unwrap_or(DEFAULT_PGLITE_VERSION)
    }
}

#[derive(clap::Args, Debug)]
struct StartArgs {
    /// Directory of the socket (`.s.PGSQL.5432`) and of the cluster (`data/`) [default:
    /// $XDG_DATA_HOME/nself-embedded or ~/.local/share/nself-embedded]
    #[arg(long, env = "NSELF_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Also listen on this TCP address, e.g. 127.0.0.1:5432. Without --password its clients
    /// are trusted, so it must then be a loopback address.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// The password of the superuser `postgres`, set at every start; TCP clients then log in
    /// with their role's own password (SCRAM-SHA-256 or md5, as ALTER ROLE ... PASSWORD stored
    /// it). The Unix socket always trusts its clients.
    #[arg(long, env = "NSELF_PASSWORD", hide_env_values = true, requires = "tcp", value_parser = parse_password)]
    password: Option<String>,
    /// The database to serve, created if missing [default: the one the runtime directory's
    /// cluster was made with; `nself` for a new one]. `postgres` is accepted as another name
    /// for it; any other name is refused.
    #[arg(long, env = "NSELF_DATABASE", value_name = "NAME")]
    database: Option<String>,
    /// More extensions to make available to CREATE EXTENSION, comma separated; pgcrypto,
    /// citext and uuid-ossp always are (where the release can load them).
    #[arg(long, env = "NSELF_EXTENSIONS", value_delimiter = ',', value_name = "NAMES")]
    extensions: Vec<String>,
    /// Permission bits of the socket, in octal, e.g. 0660 to admit a group (see
    /// --socket-group) or 0666 for everyone. Anyone who can reach the socket is trusted as
    /// any database user, superusers included: open it only to users you would give the
    /// data. The runtime directory is made searchable for the same users.
    #[arg(long, env = "NSELF_SOCKET_MODE", value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Group (name or numeric id) to own the socket and the runtime directory, so that the
    /// socket mode's group bits admit its members, e.g. containers running as another user
    /// with the socket bind-mounted.
    #[arg(long, env = "NSELF_SOCKET_GROUP", value_name = "GROUP", value_parser = parse_group)]
    socket_group: Option<u32>,
    /// Give up starting after this many seconds (fetching not included).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    startup_timeout: u64,
    /// After each reply, keep polling this many microseconds for the client's next message
    /// before sleeping: a lone client's queries run faster, for up to this much CPU per reply
    /// (0 turns it off).
    #[arg(long, env = "NSELF_BUSY_POLL_US", value_name = "MICROSECONDS", default_value_t = DEFAULT_BUSY_POLL_US)]
    busy_poll_us: u64,
    /// Server-wide default of `statement_timeout`, as in postgresql.conf (e.g. `30s`, or
    /// milliseconds): statements running longer are cancelled with 57014. Sessions may change
    /// it; off by default.
    #[arg(long, env = "NSELF_STATEMENT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration_setting)]
    statement_timeout: Option<String>,
    /// Commands to answer with 0A000 instead of running them: any of copy, listen, notify,
    /// comma separated (`--refuse ''` refuses none). LISTEN and NOTIFY are refused on PGlite
    /// 0.2.17 whatever this says.
    #[arg(long, env = "NSELF_REFUSE", value_name = "COMMANDS", value_parser = pg_bridge::Refuse::parse)]
    refuse: Option<pg_bridge::Refuse>,
}

/// A time setting as PostgreSQL takes it: a number, optionally followed by a unit.
fn parse_duration_setting(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim();
    let valid_number = !number.is_empty() && number.parse::<f64>().is_ok();
    if valid_number && ["", "us", "ms", "s", "min", "h", "d"].contains(&unit) {
        Ok(trimmed.to_owned())
    } else {
        Err(format!("{text:?} is not a duration such as 30s, 500ms or 2min"))
    }
}

/// A password as `--password` takes it: at least one character.
fn parse_password(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the password is empty; give one of at least one character".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && mode & 0o600 == 0o600 => Ok(mode),
        Ok(_) => Err("a permission mode from 0600 to 0777 (the owner keeps read and write)".to_owned()),
        Err(_) => Err(format!("{text:?} is not an octal mode such as 0660")),
    }
}

fn parse_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {text:?}")),
        Err(err) => Err(format!("looking up group {text:?}: {err}")),
    }
}

/// Runs the command line; the whole of `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Start(args) = &cli.command
        && let Some(addr) = args.tcp
        && !addr.ip().is_loopback()
        && args.password.is_none()
    {
        let message = format!(
            "--tcp {addr} is not a loopback address: its clients must authenticate, so --password (or \
             NSELF_PASSWORD) is required"
        );
        let mut command = Cli::command();
        command.build();
        let start = command.find_subcommand_mut("start").expect("the start subcommand");
        start.error(clap::error::ErrorKind::MissingRequiredArgument, message).exit();
    }
    init_tracing();
    // One thread: the backend is single-threaded and the guest runs inline on the task that
    // holds it, so the bridge works like PgBouncer's event loop with the database in it. A
    // second worker only added cross-thread wake-ups (pgbench -S, 1 client: +14 % this way).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("nself-embedded: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let verifying = matches!(&cli.command, Command::Fetch(FetchCommand { verify: true, .. }));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Start(args) => start::run(args).await.map(|()| 0),
            Command::Fetch(FetchCommand { fetch, verify: true }) => verify::run(&fetch).await,
            Command::Fetch(FetchCommand { fetch, verify: false }) => fetch_command(fetch).await.map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("nself-embedded: {err:#}");
            ExitCode::from(if verifying { verify::exit_code(&err) } else { exit_code(&err) })
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn fetch_command(args: FetchArgs) -> anyhow::Result<()> {
    let artifact = fetch(args.version()).await?;
    println!("{}", artifact.dir);
    Ok(())
}

/// The verified artifact, downloading what is missing with progress on standard error.
async fn fetch(version: &str) -> anyhow::Result<Artifact> {
    let (opts, reporter) = fetch_options(version)?;
    let result = pglite_fetch::ensure(&opts).await;
    reporter.finish();
    Ok(result.map_err(Error::Fetch)?)
}

/// Options for `version` from the environment, reporting progress on standard error.
fn fetch_options(version: &str) -> anyhow::Result<(pglite_fetch::FetchOptions, progress::Reporter)> {
    let mut opts = pglite_fetch::FetchOptions::from_env().map_err(Error::Fetch)?;
    opts.version = version.to_owned();
    let reporter = progress::Reporter::new();
    opts.progress = Some(reporter.callback());
    Ok((opts, reporter))
}

fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Error>() {
        Some(Error::Fetch(
            pglite_fetch::Error::UnpinnedVersion { .. } | pglite_fetch::Error::AllSourcesFailed { .. },
        )) => exit::NO_ARTIFACT,
        Some(err) if start::in_use(err) => exit::IN_USE,
        _ => exit::FAILURE,
    }
}

fn startup_timeout(args: &StartArgs) -> Duration {
    Duration::from_secs(args.startup_timeout)
}
