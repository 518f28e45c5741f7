//! A full disk: statements that need space fail with `53100` and the session goes on; nothing
//! committed is lost, and once there is room again the cluster starts with all of it. The test
//! re-runs its own binary in a user and mount namespace (`unshare`), where it may mount a small
//! tmpfs for the data directory without privileges.

use std::path::Path;
use std::process::Command;

use crate::support::{Outcome, run, scalar, start};

const CHILD_ENV: &str = "PGLITE_HOST_TEST_FULL_DISK_CHILD";
const DONE: &str = "full disk checked";

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("running mount");
    assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// In the child, inside the namespaces: the scenario itself.
#[test]
fn full_disk_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    // The template copy takes ~27 MB of it.
    mount(&["-t", "tmpfs", "-o", "size=48m", "tmpfs", dir.to_str().unwrap()]);
    let data = dir.join("data");

    let pg = start("0.2.17", &data);
    scalar(&pg, "CREATE TABLE t(a text); INSERT INTO t VALUES ('kept'); SELECT 1");
    let mut failure = None;
    for _ in 0..40 {
        match run(&pg, "INSERT INTO t SELECT repeat('x', 1000) FROM generate_series(1, 2000)") {
            Outcome::Rows(_) => {}
            Outcome::Error(code) => {
                failure = Some(code);
                break;
            }
        }
    }
    assert_eq!(failure.as_deref(), Some("53100"), "filling the disk must fail with disk_full");
    // The session goes on; what fits still works, what does not fails the same way.
    let committed = scalar(&pg, "SELECT count(*) FROM t");
    assert!(committed.parse::<u64>().unwrap() > 1, "{committed}");
    let small = run(&pg, "INSERT INTO t VALUES ('small')");
    assert!(matches!(&small, Outcome::Rows(_)) || small == Outcome::Error("53100".into()), "{small:?}");
    let committed = scalar(&pg, "SELECT count(*) FROM t");
    // The shutdown checkpoint may itself fail for want of space: an error, never a hang.
    let _ = pg.stop();
    drop(pg);

    mount(&["-o", "remount,size=256m", dir.to_str().unwrap()]);
    let pg = start("0.2.17", &data);
    assert_eq!(scalar(&pg, "SELECT count(*) FROM t"), committed);
    assert_eq!(scalar(&pg, "SELECT count(*) FROM t WHERE a = 'kept'"), "1");
    pg.stop().unwrap();
    drop(pg);
    println!("{DONE}");
}

#[test]
fn a_full_disk_fails_statements_cleanly_and_loses_nothing() {
    // The artifact, compiled module and template are ready before the child needs them.
    drop(start("0.2.17", tempfile::tempdir().unwrap().path()));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["full_disk::full_disk_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains(DONE), "child failed\n{stdout}\n{stderr}");
}
