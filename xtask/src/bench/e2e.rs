//! `bench e2e`: every system through its Unix socket: start-up times, resident memory, the
//! speedtest suite and pgbench. Columns: nself-embedded per PGlite release, native PostgreSQL
//! (the base of every ratio) and PGlite in Node. All servers run side by side (idle but for
//! the one measured), and each workload visits them in turn: pgbench and the speedtest in
//! rounds (the first system rotating), each row the median round.

use super::native::{self, pg_bin, pg_tool, version_of};
use super::nself::{Starts, measure_starts};
use super::procs::Proc;
use super::report::{Report, Table, Target, Unit};
use super::{Ctx, Endpoint, VERSIONS, copy, node, pgbench, speedtest};

const FIRST_RUN: &str = "first run: empty cache, files local (compile + initdb)";
const NEW_DATABASE: &str = "new database (warm cache)";
const WARM_RESTART: &str = "warm restart of an existing database";
const RSS_BOOT: &str = "RSS after boot";
const RSS_SPEEDTEST: &str = "RSS after the speedtest (its last round)";
const SPEEDTEST_TOTAL: &str = "total";
const COPY_IN: &str = "COPY 1 million rows in (psql \\copy FROM)";
const COPY_OUT: &str = "COPY 1 million rows out (psql \\copy TO)";
const RSS_COPY: &str = "peak RSS (VmHWM) at the end (after pgbench and the COPY rows)";

/// The tables this section fills, all with the same columns.
struct Tables {
    start: Table,
    memory: Table,
    pgbench: Table,
    speedtest: Table,
    copy: Table,
    tests: Vec<speedtest::Test>,
}

pub(crate) fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let native_col = VERSIONS.len();
    let pgbouncer_col = native_col + 1;
    let node_col = native_col + 2;
    // `postgres (PostgreSQL) 15.18 (Debian ...)` -> `15.18`
    let native_version = pg_tool("postgres").map(|path| version_of(&path)).unwrap_or_default();
    let native_version = native_version.split_whitespace().find(|word| word.starts_with(|c: char| c.is_ascii_digit()));
    let mut columns: Vec<String> = VERSIONS.iter().map(|version| format!("nself (PGlite {version})")).collect();
    columns.push(format!("native PostgreSQL {}", native_version.unwrap_or("")).trim_end().to_owned());
    columns.push("PgBouncer pool=1 → native".to_owned());
    columns.push(format!("Node (PGlite {})", node::PGLITE));
    let (rounds, seconds) = ctx.pgbench_rounds();
    let with_base = |title: &str| {
        let mut table = Table::new(title, columns.clone());
        table.base = Some(native_col);
        table
    };
    let mut tables = Tables {
        start: with_base("Start-up, to the first answered SELECT 1 (median)"),
        memory: Table::new("Resident memory (VmRSS of the server process)", columns.clone()),
        pgbench: with_base(&format!(
            "pgbench over the Unix socket (scale 1, -I dtGvp; median of {rounds} rounds of -T {seconds}, the systems \
             taking turns)"
        )),
        speedtest: with_base(&format!(
            "PGlite benchmark suite (SQLite speedtest 1–16), one script per test; median of {rounds} rounds, the \
             systems taking turns"
        )),
        copy: with_base("COPY of a million rows (two int columns, 11.9 MB), wall time of psql"),
        tests: speedtest::tests(if ctx.quick { 5 } else { 1 }),
    };
    tables.speedtest.tag = "speedtest".to_owned();
    tables.start.notes.push(
        "Native: new database = initdb + server start; PGlite in Node: new database = pglite-server on a new \
         --db directory (initdb in wasm, no compile cache). First run only applies to nself-embedded."
            .to_owned(),
    );
    tables.memory.notes.push("Native PostgreSQL is one process per connection, so it has no single RSS.".to_owned());
    let repeats = if ctx.quick { 1 } else { 3 };

    // Start-up first, system by system; each leaves its server running.
    let mut systems = Vec::new();
    for (column, version) in VERSIONS.iter().enumerate() {
        let name = format!("nself-embedded {version}");
        match measure_starts(ctx, version, repeats) {
            Ok(starts) => systems.push(System::new(&mut tables, column, &name, starts, true)),
            Err(err) => report.errors.push(format!("e2e {name}: start-up: {err:#}")),
        }
    }
    if pg_bin().is_none() {
        report.skipped.push("e2e: native PostgreSQL is not installed (set PG_BIN)".to_owned());
    } else {
        match native::measure_starts(ctx, repeats) {
            Ok(starts) => {
                // PgBouncer for pgbench only, in the same rounds, for the 8-client targets.
                let upstream = starts.endpoint.clone();
                systems.push(System::new(&mut tables, native_col, "native PostgreSQL", starts, false));
                match native::start_pgbouncer(ctx, &upstream, "e2e-pgbouncer") {
                    Ok(Some((server, endpoint))) => systems.push(System::pgbench_only(pgbouncer_col, server, endpoint)),
                    Ok(None) => {
                        report.skipped.push("e2e: PgBouncer is not installed (no `pgbouncer` binary)".to_owned())
                    }
                    Err(err) => report.skipped.push(format!("e2e PgBouncer: {err:#}")),
                }
            }
            Err(err) => report.skipped.push(format!("e2e native PostgreSQL: {err:#}")),
        }
    }
    report.skipped.push(format!(
        "e2e: PGlite 0.2.17 in Node: pglite-socket needs PGlite ≥ 0.3.1 (0.2.x cannot answer a startup \
         message through execProtocolRaw); Node runs PGlite {} instead",
        node::PGLITE
    ));
    match node::install(ctx).and_then(|script| node::measure_starts(ctx, &script, repeats)) {
        Ok(starts) => systems.push(System::new(&mut tables, node_col, "PGlite in Node", starts, false)),
        Err(err) => report.skipped.push(format!("e2e PGlite in Node: {err:#}")),
    }

    // Then every workload visits the systems in turn, so that drift on a shared machine (another
    // build starting, say) is spread over all of them rather than landing on one.
    for system in systems.iter_mut().filter(|system| !system.pgbench_only) {
        system.attempt(report, "settings and memory after boot", |system| {
            let settings = ctx.rt.block_on(settings(&system.endpoint))?;
            tables.pgbench.notes.push(format!("{}: {settings}.", tables.pgbench.columns[system.column]));
            if system.single_process {
                tables.memory.set(RSS_BOOT, Unit::Mib, system.column, system.server.rss_mib()?);
            }
            Ok(())
        });
    }
    // The whole suite in rounds too, the systems taking turns; each test's row is its median
    // round, the total their sum.
    let mut suite_ms: Vec<Vec<Vec<f64>>> = vec![Vec::new(); systems.len()];
    for (round, at) in in_turns(rounds, systems.len()) {
        let system = &mut systems[at];
        if system.pgbench_only {
            continue;
        }
        eprintln!("bench: {}: speedtest (round {})", system.name, round + 1);
        let runs = &mut suite_ms[at];
        system.attempt(report, "speedtest", |system| {
            runs.push(ctx.rt.block_on(speedtest::run(&system.endpoint, &tables.tests))?);
            if system.single_process && round + 1 == rounds {
                tables.memory.set(RSS_SPEEDTEST, Unit::Mib, system.column, system.server.rss_mib()?);
            }
            Ok(())
        });
    }
    for (system, runs) in systems.iter().zip(&suite_ms) {
        let medians: Option<Vec<f64>> = (0..tables.tests.len())
            .map(|test| median(&runs.iter().filter_map(|run| run.get(test).copied()).collect::<Vec<_>>()))
            .collect();
        if let Some(medians) = medians {
            for (test, ms) in tables.tests.iter().zip(&medians) {
                tables.speedtest.set(&test.name, Unit::Ms, system.column, *ms);
            }
            tables.speedtest.set(SPEEDTEST_TOTAL, Unit::Ms, system.column, medians.iter().sum());
        }
    }
    let pgbench_runs: &[pgbench::Run] = if pg_tool("pgbench").is_some() {
        &pgbench::E2E_RUNS
    } else {
        report.skipped.push("e2e: pgbench is not installed (set PG_BIN)".to_owned());
        &[]
    };
    for system in systems.iter_mut().filter(|system| !system.pgbench_only && !pgbench_runs.is_empty()) {
        system.attempt(report, "pgbench -i", |system| pgbench::init(&system.endpoint));
    }
    // Rounds, each starting one system further on: the machine's speed drifts within minutes
    // (on a small VM by ±10 % and more), and a single run per system put all of a slow spell
    // on whichever system it fell on.
    for &run in pgbench_runs {
        let mut rounds_tps: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
        for (round, at) in in_turns(rounds, systems.len()) {
            let system = &mut systems[at];
            eprintln!("bench: {}: {} (round {})", system.name, run.name(), round + 1);
            let samples = &mut rounds_tps[at];
            system.attempt(report, &run.name(), |system| {
                pgbench::warm_up(ctx, &system.endpoint, run)?;
                samples.push(pgbench::run_seconds(&system.endpoint, run, seconds)?);
                Ok(())
            });
        }
        for (system, samples) in systems.iter().zip(&rounds_tps) {
            if let Some(tps) = median(samples) {
                tables.pgbench.set(&run.name(), Unit::Tps, system.column, tps);
            }
        }
    }
    match copy::data_file(ctx.scratch.path()) {
        Ok(data) => {
            // Last: a system whose server a COPY breaks (PGlite in Node) has run the rest.
            for system in systems.iter().filter(|system| !system.pgbench_only && !system.failed) {
                eprintln!("bench: {}: COPY", system.name);
                let measured =
                    copy::run(&system.endpoint, &data, ctx.scratch.path()).and_then(|(copy_in, copy_out)| {
                        tables.copy.set(COPY_IN, Unit::Ms, system.column, copy_in);
                        tables.copy.set(COPY_OUT, Unit::Ms, system.column, copy_out);
                        if system.single_process {
                            tables.memory.set(RSS_COPY, Unit::Mib, system.column, system.server.peak_rss_mib()?);
                        }
                        Ok(())
                    });
                if let Err(err) = measured {
                    let message = format!("e2e {}: COPY: {err:#}", system.name);
                    if system.ours { report.errors.push(message) } else { report.skipped.push(message) }
                }
            }
        }
        Err(err) => report.errors.push(format!("e2e COPY: writing the rows: {err:#}")),
    }
    for system in systems {
        let (name, ours) = (system.name.clone(), system.ours);
        if let Err(err) = system.server.stop() {
            let message = format!("e2e {name}: stopping: {err:#}");
            if ours { report.errors.push(message) } else { report.skipped.push(message) }
        }
    }

    add_targets(report, &tables, Columns { native: native_col, pgbouncer: pgbouncer_col, node: node_col });
    report.tables.extend([tables.start, tables.memory, tables.pgbench, tables.speedtest, tables.copy]);
    Ok(())
}

/// `(round, system)` for `rounds` rounds over `systems` systems, each round starting one
/// system further on.
pub(super) fn in_turns(rounds: usize, systems: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rounds).flat_map(move |round| (0..systems).map(move |turn| (round, (turn + round) % systems)))
}

/// The middle of `samples` (of an even number, the mean of the two in the middle).
pub(super) fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// A running system under test, after its start-up measurements.
struct System {
    column: usize,
    name: String,
    endpoint: Endpoint,
    server: Proc,
    /// Whether the server's RSS is the whole system's (not so for native PostgreSQL, which
    /// runs a process per connection).
    single_process: bool,
    /// nself-embedded's failures are errors; a baseline's make it skipped.
    ours: bool,
    /// A proxy in front of another system's server: it only runs pgbench.
    pgbench_only: bool,
    failed: bool,
}

impl System {
    fn new(tables: &mut Tables, column: usize, name: &str, starts: Starts, ours: bool) -> System {
        if let Some(first_run) = starts.first_run {
            tables.start.set(FIRST_RUN, Unit::Ms, column, first_run);
        }
        tables.start.set(NEW_DATABASE, Unit::Ms, column, starts.new_database);
        tables.start.set(WARM_RESTART, Unit::Ms, column, starts.warm_restart);
        System {
            column,
            name: name.to_owned(),
            endpoint: starts.endpoint,
            server: starts.server,
            single_process: name != "native PostgreSQL",
            ours,
            pgbench_only: false,
            failed: false,
        }
    }

    fn pgbench_only(column: usize, server: Proc, endpoint: Endpoint) -> System {
        System {
            column,
            name: "PgBouncer".to_owned(),
            endpoint,
            server,
            single_process: false,
            ours: false,
            pgbench_only: true,
            failed: false,
        }
    }

    /// Runs one workload unless an earlier one failed; a failure is reported and ends this
    /// system's part in the rest.
    fn attempt(&mut self, report: &mut Report, what: &str, workload: impl FnOnce(&System) -> anyhow::Result<()>) {
        if self.failed {
            return;
        }
        if let Err(err) = workload(self) {
            self.failed = true;
            let message = format!("e2e {}: {what}: {err:#}", self.name);
            if self.ours { report.errors.push(message) } else { report.skipped.push(message) }
        }
    }
}

/// The settings that decide what a commit costs, as the server reports them.
async fn settings(endpoint: &Endpoint) -> anyhow::Result<String> {
    let client = endpoint.connect().await?;
    let mut res = Vec::new();
    for name in ["server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"] {
        let messages = client.simple_query(&format!("SHOW {name}")).await?;
        let value = messages.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        res.push(format!("{name} = {}", value.unwrap_or_default()));
    }
    Ok(res.join(", "))
}

/// The baselines' columns.
struct Columns {
    native: usize,
    pgbouncer: usize,
    node: usize,
}

fn add_targets(report: &mut Report, tables: &Tables, columns: Columns) {
    let Columns { native, pgbouncer, node } = columns;
    for (column, version) in VERSIONS.iter().enumerate() {
        let who = format!("PGlite {version}");
        for run in pgbench::E2E_RUNS
            .iter()
            .filter(|run| matches!(run.workload, pgbench::Workload::SelectSimple | pgbench::Workload::SelectExtended))
        {
            let name = run.name();
            let measured = tables.pgbench.get(&name, column);
            // Extended on one client: issue #22's targets below.
            if run.clients == 1 && run.workload == pgbench::Workload::SelectExtended {
                continue;
            }
            let target = if run.clients == 1 {
                Target::at_least(
                    &format!("{who}: {name}"),
                    "≥ 0.8x native",
                    measured,
                    tables.pgbench.get(&name, native),
                    0.8,
                    Unit::Tps,
                )
            } else {
                let reference = tables.pgbench.get(&name, pgbouncer);
                Target::at_least(&format!("{who}: {name}"), "≥ PgBouncer pool=1", measured, reference, 1.0, Unit::Tps)
            };
            report.targets.push(target);
        }
        // Issue #22's: the extended protocol against native and against PgBouncer in front of it,
        // the speedtest's total and a warm restart against native.
        let extended = pgbench::Run::new(pgbench::Workload::SelectExtended, 1).name();
        for (goal, reference, factor) in [("≥ 0.9x native", native, 0.9), ("≥ PgBouncer pool=1", pgbouncer, 1.0)] {
            let (measured, reference) =
                (tables.pgbench.get(&extended, column), tables.pgbench.get(&extended, reference));
            let name = format!("{who}: {extended}");
            report.targets.push(Target::at_least(&name, goal, measured, reference, factor, Unit::Tps));
        }
        report.targets.push(speedtest_target(&who, &tables.speedtest, column, native, tables.tests.len()));
        report.targets.push(speedtest_vs_node(&who, &tables.speedtest, column, node, tables.tests.len()));
        // (what the target names, the row, its table, the goal, the factor)
        let against_native = [
            ("speedtest total", SPEEDTEST_TOTAL, &tables.speedtest, "≤ 1.8x native", 1.8),
            (WARM_RESTART, WARM_RESTART, &tables.start, "≤ 1.5x native", 1.5),
        ];
        for (what, row, table, goal, factor) in against_native {
            let (measured, reference) = (table.get(row, column), table.get(row, native));
            let name = format!("{who}: {what}");
            let within = |m: f64, r: f64| m <= factor * r;
            report.targets.push(Target::relative(&name, goal, measured, reference, Unit::Ms, within));
        }
        report.targets.push(Target::at_most(
            &format!("{who}: {WARM_RESTART}"),
            tables.start.get(WARM_RESTART, column),
            120.0,
            Unit::Ms,
        ));
        report.targets.push(Target::at_most(
            &format!("{who}: {NEW_DATABASE}"),
            tables.start.get(NEW_DATABASE, column),
            500.0,
            Unit::Ms,
        ));
        report.targets.push(Target::at_most(
            &format!("{who}: {RSS_BOOT}"),
            tables.memory.get(RSS_BOOT, column),
            150.0,
            Unit::Mib,
        ));
    }
}

/// Issue #22's: no speedtest test slower than in PGlite in Node.
pub(super) fn speedtest_vs_node(who: &str, table: &Table, column: usize, node: usize, n_tests: usize) -> Target {
    let slower: Vec<String> = table
        .rows
        .iter()
        .take(n_tests)
        .filter(|row| matches!((row.cells[column], row.cells[node]), (Some(ours), Some(theirs)) if ours > theirs))
        .map(|row| row.name.trim().split('.').next().unwrap_or("").to_owned())
        .collect();
    let measured_all =
        table.rows.iter().take(n_tests).all(|row| row.cells[column].is_some() && row.cells[node].is_some());
    let name = format!("{who}: every speedtest test");
    let goal = "≤ PGlite in Node".to_owned();
    if table.rows.len() < n_tests || !measured_all {
        return Target { name, goal, measured: "not measured".to_owned(), pass: None };
    }
    let measured =
        if slower.is_empty() { "none slower".to_owned() } else { format!("slower on test {}", slower.join(", ")) };
    Target { name, goal, measured, pass: Some(slower.is_empty()) }
}

/// One target for the whole suite: every test within 1.5x of native.
fn speedtest_target(who: &str, table: &Table, column: usize, native: usize, n_tests: usize) -> Target {
    let ratios: Vec<(String, f64)> = table
        .rows
        .iter()
        .take(n_tests)
        .filter_map(|row| Some((row.name.clone(), row.cells[column]? / row.cells[native]?)))
        .collect();
    let name = format!("{who}: every speedtest test");
    let goal = "≤ 1.5x native".to_owned();
    if ratios.len() < n_tests {
        return Target { name, goal, measured: "not measured".to_owned(), pass: None };
    }
    let over = ratios.iter().filter(|(_, ratio)| *ratio > 1.5).count();
    let (worst, ratio) = ratios.iter().max_by(|a, b| a.1.total_cmp(&b.1)).cloned().unwrap_or_default();
    let measured =
        format!("worst {ratio:.2}x (test {}); {over} of {n_tests} over", worst.trim().split('.').next().unwrap_or(""));
    Target { name, goal, measured, pass: Some(over == 0) }
}
