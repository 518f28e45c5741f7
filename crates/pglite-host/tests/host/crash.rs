//! Durability: a process killed with SIGKILL right after a commit loses nothing committed.
//! The test re-runs its own binary as the child that commits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::{scalar, start};

const CHILD_ENV: &str = "PGLITE_HOST_TEST_CRASH_CHILD";

/// In the child: commit rows, say so, then wait to be killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let pg = start("0.2.17", std::path::Path::new(&dir));
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
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
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
    assert!(committed, "child never committed");
    child.kill().unwrap();
    child.wait().unwrap();

    // The lock died with the process; WAL recovery brings back every committed row.
    let pg = start("0.2.17", dir.path());
    assert_eq!(scalar(&pg, "SELECT count(*) FROM durable"), "1000");
}
