//! `cargo xtask bench [all|host|bridge|e2e] [--quick]`: nself-embedded measured against native
//! PostgreSQL, PgBouncer and PGlite in Node, in one invocation on one machine.
//!
//! The runtime crates are built with `cargo build --release` and driven as processes (xtask
//! never links them). Results are printed as tables with ratios against native PostgreSQL and
//! written to `<target>/bench/report.md` and `<target>/bench/chart.svg`. A baseline that is
//! not installed is reported as skipped. Every server started is stopped by its guard
//! ([`procs::Proc`]), on error too.

mod bridge;
mod chart;
mod copy;
mod e2e;
mod native;
mod node;
mod nself;
mod pgbench;
mod procs;
mod report;
mod speedtest;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use procs::RunAs;
use report::Report;

/// The PGlite releases measured, a column each: every pinned line.
const VERSIONS: &[&str] = &["0.2.17", "0.3.16", "0.5.17", "0.6.1"];

/// Everything the sections share.
pub(crate) struct Ctx {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) quick: bool,
    /// Scratch space for clusters, sockets and logs; removed at the end.
    pub(crate) scratch: tempfile::TempDir,
    /// `<target>/bench`: the report, the chart, the warm artifact cache, the Node install.
    pub(crate) out_dir: PathBuf,
    /// `<target>/release`, where the built binaries are.
    pub(crate) release_dir: PathBuf,
    pub(crate) run_as: Option<RunAs>,
}

impl Ctx {
    /// A fresh directory under the scratch space.
    pub(crate) fn scratch_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.path().join(name);
        if dir.exists() {
            bail!("scratch directory {} used twice", dir.display());
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The log file for a server or tool.
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.scratch.path().join(format!("{name}.log"))
    }

    /// The artifact cache root the measurements treat as warm (`NSELF_CACHE_DIR`).
    pub(crate) fn warm_cache(&self) -> PathBuf {
        self.out_dir.join("cache")
    }

    /// pgbench's `-T`.
    pub(crate) fn pgbench_seconds(&self) -> u32 {
        if self.quick { 3 } else { 10 }
    }

    /// `bench e2e`'s pgbench rows: how many rounds each system runs a workload in, the
    /// systems taking turns, and pgbench's `-T` in each (the median round is the row's).
    pub(crate) fn pgbench_rounds(&self) -> (usize, u32) {
        if self.quick { (1, 3) } else { (3, 4) }
    }
}

/// A PostgreSQL endpoint on a Unix socket: `<dir>/.s.PGSQL.<port>`.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    /// PGlite in Node asks for a password (any will do).
    pub(crate) password: Option<String>,
}

impl Endpoint {
    pub(crate) fn unix(dir: &Path, port: u16) -> Endpoint {
        Endpoint { dir: dir.to_owned(), port, password: None }
    }

    /// Connects as `postgres` to `postgres`; the connection task is spawned on the current
    /// runtime and ends when the client is dropped.
    pub(crate) async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.dir).port(self.port).user("postgres").dbname("postgres");
        config.connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

pub(crate) fn run(flags: &flags::Bench) -> anyhow::Result<()> {
    let section = flags.section.as_deref().unwrap_or("all");
    let (host, bridge, e2e) = match section {
        "all" => (true, true, true),
        "host" => (true, false, false),
        "bridge" => (false, true, false),
        "e2e" => (false, false, true),
        other => bail!("unknown section `{other}`: expected all, host, bridge or e2e"),
    };
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    let target_dir = crate::target_dir();
    // Built before anything is measured, so compiling never overlaps a measurement.
    if e2e {
        cmd!(sh, "cargo build --release -p nself-embedded --bin nself-embedded").run()?;
    }
    if host {
        cmd!(sh, "cargo build --release -p pglite-host --example bench").run()?;
    }
    if bridge {
        cmd!(sh, "cargo build --release -p pg-bridge --example proxy").run()?;
    }

    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let ctx = Ctx {
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        quick: flags.quick,
        scratch: tempfile::Builder::new().prefix("nself-bench-").tempdir()?,
        out_dir,
        release_dir: target_dir.join("release"),
        run_as: RunAs::detect()?,
    };
    // Servers running as the postgres user need to reach their directories.
    std::fs::set_permissions(ctx.scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let mut report = Report::new(flags.quick);
    report.machine = machine_info(&sh);
    if host {
        run_host(&ctx, &mut report)?;
    }
    if bridge {
        bridge::run(&ctx, &mut report)?;
    }
    if e2e {
        e2e::run(&ctx, &mut report)?;
    }

    // Other work on a shared machine skews absolute numbers; the load shows how much there was.
    report.machine.push(("load average at end".to_owned(), load_average()));
    let console = report.to_console();
    println!("{console}");
    let report_path = ctx.out_dir.join("report.md");
    std::fs::write(&report_path, report.to_markdown())?;
    let chart_path = ctx.out_dir.join("chart.svg");
    chart::draw(&report, &chart_path)?;
    eprintln!("wrote {} and {}", report_path.display(), chart_path.display());
    if !report.errors.is_empty() {
        bail!("{} measurement(s) of nself-embedded failed; see the report", report.errors.len());
    }
    Ok(())
}

/// The pglite-host example's lines (`name<TAB>value<TAB>unit`), one column per version.
fn run_host(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let bench = ctx.release_dir.join("examples/bench");
    let mut table = report::Table::new("Host (pglite-host, no socket)", VERSIONS.iter().map(|v| format!("PGlite {v}")));
    for (index, version) in VERSIONS.iter().enumerate() {
        nself::seed_warm_cache(ctx, version)?;
        eprintln!("bench: host {version}");
        let output = std::process::Command::new(&bench)
            .arg(version)
            .env("NSELF_CACHE_DIR", ctx.warm_cache())
            .env_remove("NSELF_PGLITE_SOURCES")
            .output()
            .with_context(|| format!("running {}", bench.display()))?;
        if !output.status.success() {
            let message = format!("host bench {version} failed: {}", String::from_utf8_lossy(&output.stderr));
            report.errors.push(message);
            continue;
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if let [name, value, unit] = fields[..]
                && let Ok(value) = value.parse::<f64>()
            {
                table.set(name, report::Unit::parse(unit), index, value);
            }
        }
        match node::exec_protocol_round_trip(ctx, version) {
            Ok(us) => table.set("node_execProtocolRaw_select1_round_trip", report::Unit::parse("us"), index, us),
            Err(err) => report.skipped.push(format!("host: PGlite {version} in Node: {err:#}")),
        }
    }
    report.tables.push(table);
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn missing() -> String {
    "not installed".to_owned()
}

fn machine_info(sh: &Shell) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']));
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let read = |cmd: xshell::Cmd<'_>| cmd.quiet().ignore_stderr().read().unwrap_or_else(|_| "unknown".to_owned());
    let rev = read(cmd!(sh, "git rev-parse --short HEAD"));
    let dirty = cmd!(sh, "git status --porcelain --untracked-files=no")
        .quiet()
        .read()
        .map(|out| !out.is_empty())
        .unwrap_or(false);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = mem.lines().find_map(|line| line.strip_prefix("MemTotal:")).map(|rest| rest.trim().to_owned());
    vec![
        ("date (UTC)".to_owned(), read(cmd!(sh, "date -u +%Y-%m-%dT%H:%M:%SZ"))),
        ("git rev".to_owned(), format!("{rev}{}", if dirty { " (with uncommitted changes)" } else { "" })),
        ("CPU".to_owned(), cpu.unwrap_or("unknown").to_owned()),
        ("nproc".to_owned(), nproc.to_string()),
        ("memory".to_owned(), mem_total.unwrap_or_else(|| "unknown".to_owned())),
        ("kernel".to_owned(), read(cmd!(sh, "uname -sr"))),
        ("load average at start".to_owned(), load_average()),
        (
            "PostgreSQL (native)".to_owned(),
            native::pg_tool("postgres").map_or(missing(), |path| native::version_of(&path)),
        ),
        ("PgBouncer".to_owned(), native::which("pgbouncer").map_or(missing(), |path| native::version_of(&path))),
        ("Node".to_owned(), native::which("node").map_or(missing(), |_| node::node_version())),
    ]
}
