//! `bench bridge`: the bridge's own overhead. pgbench -S through pg-bridge's `proxy` example
//! (every client multiplexed onto one session of a native server) against the same server
//! direct and against PgBouncer in transaction mode with a pool of one (the same sharing).
//! Runs alternate between the systems so that drift on a shared machine hits all of them.

use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use super::native::{NativeCluster, pg_bin, pg_tool, start_pgbouncer};
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

    let mut systems = vec![(NATIVE, cluster.endpoint()), (BRIDGE, proxy_endpoint)];
    if let Some((_, endpoint)) = &pgbouncer {
        systems.push((PGBOUNCER, endpoint.clone()));
    }
    let columns = ["native PostgreSQL (direct)", "pg-bridge proxy", "PgBouncer pool=1"];
    let rounds = if ctx.quick { 1 } else { 3 };
    let mut table = Table::new(&format!("{TITLE} (median of {rounds} alternating runs)"), columns);
    table.base = Some(NATIVE);
    table.tag = "proxy".to_owned();
    // The proxies are within a few per cent of each other, less than one run's drift on a
    // shared machine: each figure is the median of alternating rounds.
    for run in pgbench::PROXY_RUNS {
        let mut measured = vec![Vec::new(); columns.len()];
        for round in 1..=rounds {
            for (column, endpoint) in &systems {
                eprintln!("bench: bridge {} on {} (round {round} of {rounds})", run.name(), columns[*column]);
                match pgbench::run(ctx, endpoint, run) {
                    Ok(tps) => measured[*column].push(tps),
                    Err(err) if *column == BRIDGE => report.errors.push(format!("bridge {}: {err:#}", run.name())),
                    Err(err) => report.skipped.push(format!("bridge {} on {}: {err:#}", run.name(), columns[*column])),
                }
            }
        }
        for (column, tps) in measured.iter_mut().enumerate() {
            if let Some(median) = median(tps) {
                table.set(&run.name(), Unit::Tps, column, median);
            }
        }
        let bridge = table.get(&run.name(), BRIDGE);
        let pgbouncer = table.get(&run.name(), PGBOUNCER);
        report.targets.push(Target::at_least(
            &format!("bridge proxy, {}", run.name()),
            "≥ PgBouncer pool=1",
            bridge,
            pgbouncer,
            1.0,
            Unit::Tps,
        ));
    }
    report.tables.push(table);
    proxy.stop()?;
    if let Some((pgbouncer, _)) = pgbouncer {
        pgbouncer.stop()?;
    }
    Ok(())
}

/// The middle value (the upper one of an even count); `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}
