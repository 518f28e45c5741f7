//! Unit tests for the parts of the benchmark that need no server: parsing, SQL generation,
//! ratios, targets and rendering.

use super::bridge::{cpu_seconds_of, migrations_of, paired_target};
use super::e2e::{in_turns, median, speedtest_vs_node};
use super::pgbench::{parse_tps, parse_transactions};
use super::report::{Report, Table, Target, Unit};
use super::speedtest::{number_name, tests};

#[test]
fn tps_is_read_from_pgbench_output() {
    let text = "number of failed transactions: 0 (0.000%)\nlatency average = 0.108 ms\n\
                initial connection time = 2.318 ms\ntps = 9219.647702 (without initial connection time)\n";
    assert_eq!(parse_tps(text), Some(9219.647702));
    assert_eq!(parse_tps("pgbench: error: connection failed"), None);
}

#[test]
fn the_transaction_count_is_read_from_pgbench_output() {
    let text = "duration: 10 s\nnumber of transactions actually processed: 90412\nnumber of failed \
                transactions: 0 (0.000%)\n";
    assert_eq!(parse_transactions(text), Some(90412));
    // With -t, pgbench prints the count against the total asked for.
    assert_eq!(parse_transactions("number of transactions actually processed: 3000/3000\n"), Some(3000));
    assert_eq!(parse_transactions("tps = 1.0\n"), None);
}

#[test]
fn cpu_time_is_read_from_proc_stat_even_with_spaces_in_the_name() {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
    assert_eq!(cpu_seconds_of(stat), Some(300.0 / ticks));
    assert_eq!(cpu_seconds_of("4242 (truncated) S 1"), None);
}

#[test]
fn migrations_are_read_from_proc_sched() {
    let sched = "proxy (4242, #threads: 1)\n----\nse.exec_start        :   30866744.9\n\
                 se.nr_migrations                             :               313690\n\
                 nr_switches                                  :              1943325\n";
    assert_eq!(migrations_of(sched), Some(313_690));
    assert_eq!(migrations_of("nr_switches : 1\n"), None);
}

#[test]
fn the_proxy_target_takes_the_median_of_paired_ratios() {
    let mut ratios = [1.04, 0.93, 1.01, 0.99, 1.02];
    let target = paired_target("pgbench -S simple, 1 client", &mut ratios);
    assert_eq!(target.pass, Some(true));
    assert_eq!(target.measured, "1.01x PgBouncer (median of 5 paired runs; 0.93x to 1.04x)");
    let target = paired_target("pgbench -S simple, 1 client", &mut [0.97, 1.2, 0.98]);
    assert_eq!(target.pass, Some(false), "{}", target.measured);
    assert_eq!(paired_target("x", &mut []).pass, None);
}

#[test]
fn numbers_are_named_like_sqlite_speedtest() {
    assert_eq!(number_name(0), "zero");
    assert_eq!(number_name(13), "thirteen");
    assert_eq!(number_name(100), "one hundred");
    assert_eq!(number_name(13_153), "thirteen thousand one hundred fifty three");
    assert_eq!(number_name(498_020), "four hundred ninety eight thousand twenty");
}

#[test]
fn speedtest_has_sixteen_deterministic_tests() {
    let full = tests(1);
    assert_eq!(full.len(), 16);
    assert!(full[0].name.starts_with(" 1. 1000 INSERTs"));
    assert!(full[15].name.starts_with("16. DROP TABLE"));
    assert_eq!(full[1].sql.matches("INSERT INTO t2").count(), 25_000);
    let again = tests(1);
    assert!(full.iter().zip(&again).all(|(a, b)| a.sql == b.sql));
    assert_eq!(tests(5)[1].sql.matches("INSERT INTO t2").count(), 5000);
}

#[test]
fn ratios_and_targets() {
    let mut table = Table::new("t", ["nself", "native"]);
    table.base = Some(1);
    table.set("select", Unit::Tps, 0, 900.0);
    table.set("select", Unit::Tps, 1, 1000.0);
    let row = table.rows[0].clone();
    assert_eq!(table.ratio(&row, 0), Some(0.9));
    assert_eq!(table.ratio(&row, 1), None);
    assert_eq!(Target::at_least("a", "", Some(900.0), Some(1000.0), 0.8, Unit::Tps).pass, Some(true));
    assert_eq!(Target::at_least("a", "", Some(700.0), Some(1000.0), 0.8, Unit::Tps).pass, Some(false));
    assert_eq!(Target::at_least("a", "", Some(700.0), None, 0.8, Unit::Tps).pass, None);
    assert_eq!(Target::at_most("a", Some(130.0), 120.0, Unit::Ms).pass, Some(false));

    let mut report = Report::new(true);
    report.tables.push(table);
    let console = report.to_console();
    assert!(console.contains("900 tps (0.90x)"), "{console}");
    assert!(report.to_markdown().contains("| select | 900 tps (0.90x) | 1000 tps |"));
}

#[test]
fn chart_is_an_svg_with_every_series() {
    let mut table = Table::new("t", ["nself", "native", "node"]);
    table.base = Some(1);
    for (row, values) in [("select", [900.0, 1000.0, 300.0]), ("insert", [5.0, 1.0, 0.5])] {
        let unit = if row == "select" { Unit::Tps } else { Unit::Ms };
        for (column, value) in values.into_iter().enumerate() {
            table.set(row, unit, column, value);
        }
    }
    let mut report = Report::new(false);
    report.tables.push(table);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.svg");
    super::chart::draw(&report, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("nself") && svg.contains("node") && svg.contains("0.20x"), "{svg}");
}

#[test]
fn each_round_starts_one_system_further_on() {
    let turns: Vec<(usize, usize)> = in_turns(3, 3).collect();
    assert_eq!(turns, [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]);
    assert_eq!(in_turns(2, 0).count(), 0);
}

#[test]
fn a_row_is_the_median_round() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[5.0]), Some(5.0));
    assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[test]
fn the_node_target_names_every_test_slower_than_node() {
    // Columns: ours, Node. Two tests and a total row after them.
    let mut table = Table::new("speedtest", vec!["ours".to_owned(), "node".to_owned()]);
    table.set("1. first", Unit::Ms, 0, 10.0);
    table.set("1. first", Unit::Ms, 1, 12.0);
    table.set("2. second", Unit::Ms, 0, 30.0);
    table.set("2. second", Unit::Ms, 1, 20.0);
    table.set("total", Unit::Ms, 0, 40.0);
    table.set("total", Unit::Ms, 1, 32.0);
    let target = speedtest_vs_node("ours", &table, 0, 1, 2);
    assert_eq!((target.pass, target.measured.as_str()), (Some(false), "slower on test 2"));
    table.set("2. second", Unit::Ms, 0, 20.0);
    let target = speedtest_vs_node("ours", &table, 0, 1, 2);
    assert_eq!((target.pass, target.measured.as_str()), (Some(true), "none slower"));
    // A test Node did not run leaves the target unjudged.
    let mut partial = Table::new("speedtest", vec!["ours".to_owned(), "node".to_owned()]);
    partial.set("1. first", Unit::Ms, 0, 10.0);
    partial.set("2. second", Unit::Ms, 0, 10.0);
    partial.set("2. second", Unit::Ms, 1, 20.0);
    assert_eq!(speedtest_vs_node("ours", &partial, 0, 1, 2).pass, None);
}
