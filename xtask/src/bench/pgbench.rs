//! pgbench runs: initialisation (`-i -I dtGvp -s 1`: server-side generation, as COPY does
//! not pass the bridge) and fixed-duration runs whose tps is parsed from the output.

use std::process::Command;

use anyhow::{Context, bail};

use super::native::pg_tool;
use super::{Ctx, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// `-S -M simple`: one `SELECT` per transaction, simple query protocol.
    SelectSimple,
    /// `-S -M extended`: the same through Parse/Bind/Execute/Sync.
    SelectExtended,
    /// The default TPC-B-like transaction (five statements), simple protocol.
    TpcbLike,
    /// A migration's kind of work, [`DDL_SCRIPT`]: a table dropped, made again and indexed,
    /// each client its own table, simple protocol.
    Ddl,
}

/// The [`Workload::Ddl`] script.
const DDL_SCRIPT: &str = "DROP TABLE IF EXISTS bench_ddl_:client_id;\n\
     CREATE TABLE bench_ddl_:client_id (id int PRIMARY KEY, name text, at timestamptz);\n\
     CREATE INDEX ON bench_ddl_:client_id (name);\n";

/// One pgbench run: a workload and a number of clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) workload: Workload,
    pub(crate) clients: u32,
}

impl Run {
    pub(crate) const fn new(workload: Workload, clients: u32) -> Run {
        Run { workload, clients }
    }

    pub(crate) fn name(&self) -> String {
        let workload = match self.workload {
            Workload::SelectSimple => "pgbench -S simple",
            Workload::SelectExtended => "pgbench -S extended",
            Workload::TpcbLike => "pgbench tpcb-like",
            Workload::Ddl => "pgbench DROP, CREATE TABLE, CREATE INDEX",
        };
        let plural = if self.clients == 1 { "" } else { "s" };
        format!("{workload}, {} client{plural}", self.clients)
    }
}

/// The end-to-end runs.
pub(crate) const E2E_RUNS: [Run; 7] = [
    Run::new(Workload::SelectSimple, 1),
    Run::new(Workload::SelectSimple, 8),
    Run::new(Workload::SelectExtended, 1),
    Run::new(Workload::SelectExtended, 8),
    Run::new(Workload::TpcbLike, 1),
    Run::new(Workload::TpcbLike, 8),
    Run::new(Workload::Ddl, 1),
];

/// The proxy runs: read-only, so every system sees the same data.
pub(crate) const PROXY_RUNS: [Run; 4] = [
    Run::new(Workload::SelectSimple, 1),
    Run::new(Workload::SelectSimple, 8),
    Run::new(Workload::SelectExtended, 1),
    Run::new(Workload::SelectExtended, 8),
];

fn pgbench(endpoint: &Endpoint) -> anyhow::Result<Command> {
    let mut cmd = Command::new(pg_tool("pgbench").context("pgbench is not installed")?);
    cmd.arg("-h").arg(&endpoint.dir).args(["-p", &endpoint.port.to_string(), "-U", "postgres"]);
    if let Some(password) = &endpoint.password {
        cmd.env("PGPASSWORD", password);
    }
    Ok(cmd)
}

fn output(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("pgbench failed ({}):\n{stdout}{stderr}", out.status);
    }
    Ok(format!("{stdout}{stderr}"))
}

/// Creates and fills the pgbench tables at scale 1.
pub(crate) fn init(endpoint: &Endpoint) -> anyhow::Result<()> {
    let mut cmd = pgbench(endpoint)?;
    cmd.args(["-i", "-I", "dtGvp", "-s", "1", "postgres"]);
    output(cmd).context("pgbench -i")?;
    Ok(())
}

/// `run`, also returning how many transactions were processed.
pub(crate) fn run_counted(ctx: &Ctx, endpoint: &Endpoint, run: Run) -> anyhow::Result<(f64, u64)> {
    run_for(endpoint, run, ctx.pgbench_seconds())
}

/// A short run whose result is thrown away, so that a measured run does not pay for
/// connecting, cold caches or the scheduler settling after another system was busy.
pub(crate) fn warm_up(ctx: &Ctx, endpoint: &Endpoint, run: Run) -> anyhow::Result<()> {
    run_for(endpoint, run, if ctx.quick { 1 } else { 2 }).map(drop)
}

/// `run` for `seconds`; returns transactions per second.
pub(crate) fn run_seconds(endpoint: &Endpoint, run: Run, seconds: u32) -> anyhow::Result<f64> {
    Ok(run_for(endpoint, run, seconds)?.0)
}

fn run_for(endpoint: &Endpoint, run: Run, seconds: u32) -> anyhow::Result<(f64, u64)> {
    let mut cmd = pgbench(endpoint)?;
    let (clients, threads) = (run.clients.to_string(), run.clients.min(2).to_string());
    // -n: the tables were vacuumed by -i; vacuuming again would only add noise.
    cmd.args(["-n", "-T", &seconds.to_string(), "-c", &clients, "-j", &threads]);
    match run.workload {
        Workload::SelectSimple => cmd.args(["-S", "-M", "simple"]),
        Workload::SelectExtended => cmd.args(["-S", "-M", "extended"]),
        Workload::TpcbLike => cmd.args(["-M", "simple"]),
        Workload::Ddl => {
            let script = std::env::temp_dir().join(format!("nself-bench-ddl-{}.sql", std::process::id()));
            std::fs::write(&script, DDL_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
            cmd.args(["-M", "simple", "-f"]).arg(script)
        }
    };
    cmd.arg("postgres");
    let text = output(cmd).with_context(|| run.name())?;
    let tps = parse_tps(&text).with_context(|| format!("no tps in pgbench's output:\n{text}"))?;
    let transactions = parse_transactions(&text).with_context(|| format!("no count in pgbench's output:\n{text}"))?;
    Ok((tps, transactions))
}

/// The `number of transactions actually processed: N` line.
pub(super) fn parse_transactions(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("number of transactions actually processed: "))?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The `tps = N (...)` line (pgbench 14+ prints one; older ones two, the first including
/// connection time, so the last is taken).
pub(super) fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .next_back()
}
