//! `bench bridge`: the bridge's own overhead. pgbench -S through pg-bridge's `proxy` example
//! (every client multiplexed onto one session of a native server) against the same server
//! direct and against PgBouncer in transaction mode with a pool of one (the same sharing).
//! Runs alternate between the systems so that drift on a shared machine hits all of them.

use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use super::native::{NativeCluster, pg_bin, pg_tool, start_pgbouncer};
use super::pgbench::Run;
use super::procs::{Proc, wait_ready};
use super::report::{Report, Table, Target, Unit};
use super::{Ctx, Endpoint, pgbench};

const TITLE: &str = "Bridge overhead: pgbench through a proxy in front of native PostgreSQL";
const NATIVE: usize = 0;
const BRIDGE: usize = 1;
const PGBOUNCER: usize = 2;

pub(crate) fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    if pg_bin().is_none() || pg_tool("pgbench").is_none() {
        report.skipped.push("bridge: PostgreSQL or pgbench is not installed (set PG_BIN)".to_owned());
        return Ok(());
    }
    let cluster = NativeCluster::init(ctx, "bridge-native")?;
    let (_postgres, _) = cluster.start(ctx)?;
    pgbench::init(&cluster.endpoint())?;

    let proxy_dir = ctx.scratch_dir("bridge-proxy")?;
    let mut cmd = Command::new(ctx.release_dir.join("examples/proxy"));
    cmd.arg(cluster.socket_file()).arg(&proxy_dir);
    let mut proxy = Proc::spawn("pg-bridge proxy", cmd, &ctx.log("bridge-proxy"), Signal::TERM)?;
    let proxy_endpoint = Endpoint::unix(&proxy_dir, 5432);
    wait_ready(&ctx.rt, &proxy_endpoint, &mut proxy, Duration::from_secs(30))?;
    let pgbouncer = start_pgbouncer(ctx, &cluster.endpoint(), "bridge-pgbouncer")?;
    if pgbouncer.is_none() {
        report.skipped.push("bridge: PgBouncer is not installed (no `pgbouncer` binary)".to_owned());
    }

    let mut systems = vec![(NATIVE, cluster.endpoint(), None), (BRIDGE, proxy_endpoint, Some(proxy.pid()))];
    if let Some((pgbouncer, endpoint)) = &pgbouncer {
        systems.push((PGBOUNCER, endpoint.clone(), Some(pgbouncer.pid())));
    }
    let columns = ["native PostgreSQL (direct)", "pg-bridge proxy", "PgBouncer pool=1"];
    let rounds = if ctx.quick { 1 } else { 5 };
    let mut table = Table::new(&format!("{TITLE} (median of {rounds} alternating runs)"), columns);
    table.base = Some(NATIVE);
    table.tag = "proxy".to_owned();
    let mut cpu_table = Table::new("Proxy CPU time per transaction (user + system, median of the same runs)", columns);
    cpu_table.tag = "proxy CPU".to_owned();
    // The two proxies are within a few per cent of each other, less than the drift between two
    // runs of one system on this VM (see `Usage::migrations`). So the systems take turns,
    // round after round, each measured run after a warm-up run, and the proxies are compared
    // run by run: each round's bridge/PgBouncer ratio compares two runs made back to back, and
    // the target is judged on the median of those ratios. Every run is listed under the CPU
    // table.
    for run in pgbench::PROXY_RUNS {
        let mut measured = vec![Vec::new(); columns.len()];
        let mut cpu = vec![Vec::new(); columns.len()];
        let mut ratios = Vec::new();
        let mut runs = Vec::new();
        for round in 1..=rounds {
            let mut this_round = [None; 3];
            // The proxies take turns going first, so neither always follows the same system.
            let mut order: Vec<_> = systems.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for (column, endpoint, pid) in order {
                eprintln!("bench: bridge {} on {} (round {round} of {rounds})", run.name(), columns[*column]);
                match measure(ctx, endpoint, *pid, run) {
                    Ok((tps, per_tx)) => {
                        measured[*column].push(tps);
                        this_round[*column] = Some(tps);
                        if let Some((us, migrations)) = per_tx {
                            cpu[*column].push(us);
                            runs.push(format!(
                                "{}, round {round}: {}: {tps:.0} tps, {us:.1} µs and {migrations:.2} CPU migrations \
                                 per transaction",
                                run.name(),
                                columns[*column]
                            ));
                        }
                    }
                    Err(err) if *column == BRIDGE => {
                        report.errors.push(format!("bridge {}: {err:#}", run.name()));
                    }
                    Err(err) => {
                        report.skipped.push(format!("bridge {} on {}: {err:#}", run.name(), columns[*column]));
                    }
                }
            }
            if let (Some(bridge), Some(pgbouncer)) = (this_round[BRIDGE], this_round[PGBOUNCER]) {
                ratios.push(bridge / pgbouncer);
            }
        }
        for (column, tps) in measured.iter_mut().enumerate() {
            if let Some(median) = median(tps) {
                table.set(&run.name(), Unit::Tps, column, median);
            }
        }
        for (column, us) in cpu.iter_mut().enumerate() {
            if let Some(median) = median(us) {
                cpu_table.set(&run.name(), Unit::Us, column, median);
            }
        }
        report.targets.push(paired_target(&run.name(), &mut ratios));
        cpu_table.notes.extend(runs);
    }
    report.tables.push(table);
    report.tables.push(cpu_table);
    proxy.stop()?;
    if let Some((pgbouncer, _)) = pgbouncer {
        pgbouncer.stop()?;
    }
    Ok(())
}

/// A warm-up, then one measured run: tps, and for a proxy (`pid`) its CPU µs and CPU migrations
/// per transaction.
fn measure(ctx: &Ctx, endpoint: &Endpoint, pid: Option<u32>, run: Run) -> anyhow::Result<(f64, Option<(f64, f64)>)> {
    pgbench::warm_up(ctx, endpoint, run)?;
    let before = pid.map(Usage::of).transpose()?;
    let (tps, transactions) = pgbench::run_counted(ctx, endpoint, run)?;
    let per_tx = match (pid, before) {
        (Some(pid), Some(before)) if transactions > 0 => {
            let after = Usage::of(pid)?;
            let n = transactions as f64;
            Some((
                (after.cpu_seconds - before.cpu_seconds) * 1e6 / n,
                (after.migrations - before.migrations) as f64 / n,
            ))
        }
        _ => None,
    };
    Ok((tps, per_tx))
}

/// What a process has used so far.
struct Usage {
    /// User plus system time.
    cpu_seconds: f64,
    /// Moves of its main thread from one CPU to another. On this 2-vCPU VM a proxy's CPU time
    /// per transaction (perf's task-clock) is ~23 µs while the kernel keeps it where it is
    /// and ~38 µs in spells, lasting over several runs and striking either proxy, when it
    /// moves it about twice per transaction; the count shows which runs fell in one.
    migrations: u64,
}

impl Usage {
    fn of(pid: u32) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let sched = std::fs::read_to_string(format!("/proc/{pid}/sched"))?;
        Ok(Usage {
            cpu_seconds: cpu_seconds_of(&stat).ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?,
            migrations: migrations_of(&sched).ok_or_else(|| anyhow::anyhow!("no migrations in /proc/{pid}/sched"))?,
        })
    }
}

/// User plus system time from the text of `/proc/<pid>/stat`, in seconds.
pub(super) fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields are counted after its `)`.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// The `se.nr_migrations` count from the text of `/proc/<pid>/sched`.
pub(super) fn migrations_of(sched: &str) -> Option<u64> {
    sched.lines().find_map(|line| line.strip_prefix("se.nr_migrations")?.trim().strip_prefix(':')?.trim().parse().ok())
}

/// The target for one pgbench run: the median of the rounds' bridge/PgBouncer ratios ≥ 1.
pub(super) fn paired_target(run: &str, ratios: &mut [f64]) -> Target {
    let name = format!("bridge proxy, {run}");
    let goal = "≥ PgBouncer pool=1";
    let Some(median) = median(ratios) else {
        return Target { name, goal: goal.to_owned(), measured: "not measured".to_owned(), pass: None };
    };
    let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
    let measured = if ratios.len() > 1 {
        format!("{median:.2}x PgBouncer (median of {} paired runs; {low:.2}x to {high:.2}x)", ratios.len())
    } else {
        format!("{median:.2}x PgBouncer (one run)")
    };
    Target { name, goal: goal.to_owned(), measured, pass: Some(median >= 1.0) }
}

/// The middle value (the upper one of an even count); `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}
