//! A full disk, on every release: statements that need space fail with `53100` and the session
//! goes on; nothing committed is lost, and once there is room again the cluster starts with all of it. The test
//! re-runs its own binary in a user and mount namespace (`unshare`), where it may mount a small
//! tmpfs for the data directory without privileges.

use std::path::Path;
use std::process::Command;

use crate::support::{Outcome, config, releases, run, scalar, start};

const CHILD_ENV: &str = "PGLITE_HOST_TEST_FULL_DISK_CHILD";
/// The release the child runs, and the size of its tmpfs in MiB.
const RELEASE_ENV: &str = "PGLITE_HOST_TEST_FULL_DISK_RELEASE";
const SIZE_ENV: &str = "PGLITE_HOST_TEST_FULL_DISK_MIB";
/// Room the tmpfs leaves beside the cluster copied from the template, with 1 MiB WAL segments
/// (0.2, 0.3): a few batches of rows fit.
const ROOM_MIB: u64 = 21;
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
    let version = std::env::var(RELEASE_ENV).expect("the release to run");
    let size = std::env::var(SIZE_ENV).expect("the tmpfs size");
    mount(&["-t", "tmpfs", "-o", &format!("size={size}m"), "tmpfs", dir.to_str().unwrap()]);
    let data = dir.join("data");

    let pg = start(&version, &data);
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
    assert_eq!(failure.as_deref(), Some("53100"), "{version}: filling the disk must fail with disk_full");
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
    let pg = start(&version, &data);
    assert_eq!(scalar(&pg, "SELECT count(*) FROM t"), committed);
    assert_eq!(scalar(&pg, "SELECT count(*) FROM t WHERE a = 'kept'"), "1");
    pg.stop().unwrap();
    drop(pg);
    println!("{DONE}");
}

#[test]
fn a_full_disk_fails_statements_cleanly_and_loses_nothing() {
    for version in releases() {
        a_full_disk_on(&version);
    }
}

/// Bytes of the files under `dir`.
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() { size_of(&entry.path()) } else { meta.len() }
        })
        .sum()
}

/// The room to leave beside a new cluster of `pg` so that the data files run out of space
/// before the WAL does: PostgreSQL stops with a PANIC (natively too) when it cannot add a WAL
/// segment, and 0.5+ have 16 MiB segments, so with them the room holds the rest of the current
/// segment and one more, and runs out while the WAL still fits in that one.
fn room_mib(pg: &pglite_host::Pglite) -> u64 {
    let sizes = scalar(
        pg,
        "SELECT s.seg || ',' || (s.seg - (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint % s.seg) \
         FROM (SELECT setting::bigint AS seg FROM pg_settings WHERE name = 'wal_segment_size') s",
    );
    let (segment, rest) = sizes.split_once(',').expect("two numbers");
    let (segment, rest): (u64, u64) = (segment.parse().unwrap(), rest.parse().unwrap());
    if segment < 16 << 20 { ROOM_MIB } else { (rest + segment).div_ceil(1 << 20) + 8 }
}

fn a_full_disk_on(version: &str) {
    // The artifact, compiled module and template are ready before the child needs them.
    let scratch = tempfile::tempdir().unwrap();
    let room = room_mib(&start(version, scratch.path()));
    let template = config(version, scratch.path()).template_dir.expect("a template directory");
    let size = size_of(&template).div_ceil(1 << 20) + room;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["full_disk::full_disk_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env(RELEASE_ENV, version)
        .env(SIZE_ENV, size.to_string())
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains(DONE), "{version}: child failed\n{stdout}\n{stderr}");
}
