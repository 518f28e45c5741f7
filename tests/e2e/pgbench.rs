//! pgbench through the command, on every release: server-side initialisation, then a
//! select-only and a TPC-B-like run with four clients, checked by pgbench's own counts and by
//! the invariants of its tables.

use crate::support::{RELEASES, Server, client, psql, text};

fn pgbench(server: &Server, args: &[&str]) -> (String, String) {
    let host = server.dir.to_str().unwrap();
    let mut all = vec!["-h", host, "-U", "postgres"];
    all.extend_from_slice(args);
    all.push("postgres");
    let out = client("pgbench", &all, "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "pgbench {args:?} failed ({})\n{stdout}\n{stderr}", out.status);
    (stdout, stderr)
}

#[test]
fn initialise_then_select_only_and_tpcb_like_runs() {
    for version in RELEASES {
        initialise_then_select_only_and_tpcb_like_runs_on(version);
    }
}

fn initialise_then_select_only_and_tpcb_like_runs_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_release(dir.path(), version);

    let (_, stderr) = pgbench(&server, &["-i", "-I", "dtGvp", "-s", "1"]);
    assert!(stderr.contains("done in"), "{version}: {stderr}");

    for mode in [&["-S"][..], &[][..]] {
        let mut args = mode.to_vec();
        args.extend_from_slice(&["-c", "4", "-t", "50"]);
        let (stdout, stderr) = pgbench(&server, &args);
        for expected in ["number of clients: 4", "number of transactions actually processed: 200/200"] {
            assert!(stdout.contains(expected), "{version} {mode:?}: missing {expected:?}\n{stdout}\n{stderr}");
        }
        assert!(stdout.contains("number of failed transactions: 0 "), "{version} {mode:?}\n{stdout}\n{stderr}");
    }

    // Every TPC-B-like transaction moved the same delta through all three tables.
    let out = psql(
        dir.path(),
        &["-At", "-v", "ON_ERROR_STOP=1"],
        "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history), \
         (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers) \
         AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches);",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.trim(), "100000|200|t", "{version}: {stderr}");
    drop(server);
}
