//! Durability: a process killed with SIGKILL right after a commit loses nothing committed, on
//! every release. The test re-runs its own binary as the child that commits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::{releases, scalar, start};

const CHILD_ENV: &str = "PGLITE_HOST_TEST_CRASH_CHILD";
/// The release the child runs.
const RELEASE_ENV: &str = "PGLITE_HOST_TEST_CRASH_RELEASE";

/// In the child: commit rows, say so, then wait to be killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let version = std::env::var(RELEASE_ENV).expect("the release to run");
    let pg = start(&version, std::path::Path::new(&dir));
    scalar(
        &pg,
        "CREATE TABLE IF NOT EXISTS durable(n int); INSERT INTO durable SELECT generate_series(1, 1000); SELECT 1",
    );
    println!("committed");
    let mut line = String::new();
    // Blocks until the parent kills us (stdin never sends anything).
    let _ = std::io::stdin().read_line(&mut line);
    std::mem::forget(pg);
    std::process::abort();
}

#[test]
fn sigkill_right_after_commit_keeps_committed_rows() {
    for version in releases() {
        sigkill_right_after_commit_on(&version);
    }
}

fn sigkill_right_after_commit_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env(RELEASE_ENV, version)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut committed = false;
    for line in stdout.lines() {
        if line.unwrap().contains("committed") {
            committed = true;
            break;
        }
    }
    assert!(committed, "{version}: child never committed");
    child.kill().unwrap();
    child.wait().unwrap();

    // The lock died with the process; WAL recovery brings back every committed row.
    let pg = start(version, dir.path());
    assert_eq!(scalar(&pg, "SELECT count(*) FROM durable"), "1000", "{version}");
}
