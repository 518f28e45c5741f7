//! Start, stop, restart, locking and the compiled-module cache.

use pglite_host::{BootKind, Error, Pglite};

use crate::support::{artifact, config, releases, scalar, start};

#[test]
fn first_boot_then_restart_keeps_data() {
    for version in releases() {
        let version = version.as_str();
        first_boot_then_restart(version);
    }
}

fn first_boot_then_restart(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pg = start(version, &data);
    assert_ne!(pg.boot_info().kind, BootKind::Resumed);
    assert_eq!(scalar(&pg, "SELECT current_database()"), "postgres");
    assert_eq!(scalar(&pg, "SELECT current_user"), "postgres");
    assert_eq!(scalar(&pg, "SHOW search_path"), "\"$user\", public");
    assert_eq!(scalar(&pg, "SHOW enable_seqscan"), "on");
    // Commits are synced at commit, not WAL write by WAL write (0.2.17's build default).
    assert_eq!(scalar(&pg, "SHOW wal_sync_method"), "fdatasync");
    assert_eq!(scalar(&pg, "SHOW fsync"), "on");
    scalar(
        &pg,
        "CREATE TABLE kept(id int primary key, note text); INSERT INTO kept VALUES (1, 'one'), (2, 'two'); SELECT 1",
    );
    // The guest's scratch file system lives in the data directory while the cluster is open,
    // and goes with it.
    let scratch = data.join(".nself-scratch");
    assert!(scratch.join("tmp").is_dir(), "{version}");
    pg.stop().unwrap();
    pg.stop().unwrap();
    assert!(!pg.healthy());
    drop(pg);
    assert!(!scratch.exists(), "{version}: the scratch directory is removed at close");

    // One left behind by a process that was killed is emptied at the next open.
    std::fs::create_dir_all(scratch.join("tmp")).unwrap();
    std::fs::write(scratch.join("tmp/left-behind"), "x").unwrap();
    let pg = start(version, &data);
    assert!(!scratch.join("tmp/left-behind").exists(), "{version}");
    assert_eq!(pg.boot_info().kind, BootKind::Resumed);
    assert_eq!(scalar(&pg, "SELECT string_agg(note, ',' ORDER BY id) FROM kept"), "one,two");
    assert_eq!(scalar(&pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'kept' AND schemaname = 'public'"), "1");
    // User objects never land in template1.
    assert_eq!(scalar(&pg, "SELECT datname FROM pg_database WHERE datname = current_database()"), "postgres");
}

#[test]
fn two_hosts_on_one_data_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start("0.2.17", dir.path());
    let err = Pglite::start(artifact("0.2.17"), config("0.2.17", dir.path())).err().expect("second host refused");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    // The first is unaffected.
    assert_eq!(scalar(&pg, "SELECT 40 + 2"), "42");
}

#[test]
fn data_directory_of_another_major_version_is_refused() {
    // A cluster made by one line cannot be opened by another: 0.3 (PostgreSQL 17) by 0.2
    // (16), 0.5 (18) by 0.6 (19), and 0.6 (19) by 0.5 (18).
    for (made_by, opened_by) in [("0.3.16", "0.2.17"), ("0.5.17", "0.6.1"), ("0.6.1", "0.5.17")] {
        let dir = tempfile::tempdir().unwrap();
        let pg = start(made_by, dir.path());
        pg.stop().unwrap();
        drop(pg);
        let err = Pglite::start(artifact(opened_by), config(opened_by, dir.path())).err().expect("refused");
        assert!(matches!(err, Error::IncompatibleDataDir { .. }), "{made_by} by {opened_by}: {err}");
        let major = pglite_host::pg_major(made_by).unwrap();
        assert!(err.to_string().contains(&format!("PostgreSQL {major}")), "{made_by} by {opened_by}: {err}");
    }
}

#[test]
fn corrupt_compiled_module_cache_is_recovered() {
    let modules = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("0.2.17", dir.path());
    cfg.module_cache_dir = Some(modules.path().to_path_buf());
    let pg = Pglite::start(artifact("0.2.17"), cfg.clone()).unwrap();
    pg.stop().unwrap();
    drop(pg);
    let cwasm = std::fs::read_dir(modules.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "cwasm")
                && p.to_string_lossy().starts_with(&*modules.path().to_string_lossy())
                && p.metadata().unwrap().len() > 1 << 20
        })
        .expect("compiled module cached");
    let good = std::fs::read(&cwasm).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 4096].fill(0xAB);
    std::fs::write(&cwasm, &bad).unwrap();

    let pg = Pglite::start(artifact("0.2.17"), cfg.clone()).unwrap();
    assert_eq!(scalar(&pg, "SELECT 'recovered'"), "recovered");
    pg.stop().unwrap();
    assert_eq!(std::fs::read(&cwasm).unwrap(), good, "the corrupt entry was rewritten");

    // A truncated entry too.
    std::fs::write(&cwasm, &good[..1000]).unwrap();
    let pg = Pglite::start(artifact("0.2.17"), cfg).unwrap();
    assert_eq!(scalar(&pg, "SELECT 1"), "1");
}

#[test]
fn stop_and_drop_work_inside_an_async_runtime() {
    for version in releases() {
        stop_and_drop_inside_an_async_runtime(&version);
    }
}

fn stop_and_drop_inside_an_async_runtime(version: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pg = start(version, dir.path());
        assert_eq!(
            pg.exec_protocol_async(crate::support::query("SELECT 1"), Default::default())
                .await
                .map(|r| r.is_empty())
                .ok(),
            Some(false),
            "{version}"
        );
        pg.stop_async().await.unwrap();
        // Blocking stop (now a no-op) and drop on a runtime thread must not panic.
        pg.stop().unwrap();
        drop(pg);
        let dir = tempfile::tempdir().unwrap();
        let pg = start(version, dir.path());
        drop(pg);
        // The dropped instance released its lock: the directory opens again.
        let pg = start(version, dir.path());
        assert_eq!(scalar(&pg, "SELECT 5"), "5", "{version}");
    });
}

/// A line of this process's `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The release `boot_peak_child` measures; unset, that test does nothing.
const PEAK_RELEASE_ENV: &str = "PGLITE_HOST_TEST_PEAK_RELEASE";

/// In a process of its own (peak memory is the process's): starts `version` once so that its
/// module is compiled and its template made, then measures a second start's peak memory.
#[test]
fn boot_peak_child() {
    let Ok(version) = std::env::var(PEAK_RELEASE_ENV) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    drop(start(&version, &dir.path().join("first")));
    // Resets VmHWM, the peak resident set, to the present one.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS");
    let pg = start(&version, &dir.path().join("second"));
    let grown = status_kib("VmHWM") - before;
    let pool = scalar(
        &pg,
        "SELECT setting::bigint * current_setting('block_size')::bigint / 1024 FROM pg_settings \
         WHERE name = 'shared_buffers'",
    );
    println!("peak: grown {grown} pool {pool}");
}

/// Boot leaves the buffer pool to the kernel's zero page until PostgreSQL puts buffers there:
/// the memory a start takes at its peak stays under `shared_buffers` (it used to be all of it
/// and more, written at boot).
#[test]
fn boot_does_not_make_the_buffer_pool_resident() {
    for version in releases() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["lifecycle::boot_peak_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(PEAK_RELEASE_ENV, &version)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{version}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        let line = stdout.lines().find_map(|line| Some(line.split_once("peak: ")?.1)).expect("the child's measurement");
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
        let [grown, pool] = numbers[..] else { panic!("{version}: {line}") };
        assert!(pool >= 64 << 10, "{version}: a pool of {pool} KiB proves nothing");
        assert!(grown < pool, "{version}: a start took {grown} KiB at its peak, the pool is {pool} KiB");
    }
}
