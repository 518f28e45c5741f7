//! Two fills of the same version at once, as threads and as processes: both succeed, each
//! file is downloaded once, and nobody sees a partial file.

use std::process::{Command, Stdio};

use camino::Utf8PathBuf;
use pglite_fetch::ensure_with_pins;

use crate::support::{Server, TestCache, assert_good, release};

const CHILD_ENV: &str = "PGLITE_FETCH_TEST_CHILD";

#[test]
fn two_threads_share_one_fill() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    let artifacts: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(ensure_with_pins(&opts, &release.pins)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    for artifact in &artifacts {
        assert_good(artifact, &release);
    }
    for name in release.files.keys().filter(|name| name.starts_with("postgres.")) {
        assert_eq!(server.n_hits(&format!("/cdn/{name}")), 1, "{name}");
    }
}

#[test]
fn two_processes_share_one_fill() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "concurrency::child_process_fill", "--test-threads=1"])
                .stdout(Stdio::null())
                .env(CHILD_ENV, format!("{}|{}", cache.path(), server.url("/cdn")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let artifact = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(ensure_with_pins(&cache.opts(vec![]), &release.pins))
        .unwrap();
    assert_good(&artifact, &release);
    for name in release.files.keys().filter(|name| name.starts_with("postgres.")) {
        assert_eq!(server.n_hits(&format!("/cdn/{name}")), 1, "{name}");
    }
}

/// The child half of `two_processes_share_one_fill`; does nothing unless spawned by it.
#[test]
fn child_process_fill() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (cache_dir, base) = config.split_once('|').unwrap();
    let release = release();
    let mut opts = pglite_fetch::FetchOptions::new(crate::support::VERSION);
    opts.cache_dir = Utf8PathBuf::from(cache_dir);
    opts.sources = vec![pglite_fetch::Source::Url(format!("{base}/{{file}}"))];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let artifact = runtime.block_on(ensure_with_pins(&opts, &release.pins)).unwrap();
    assert_good(&artifact, &release);
}
