//! The npm registry source: one tarball per fill, only needed entries, unsafe paths refused.

use pglite_fetch::{Error, Reason, Source, ensure_with_pins};

use crate::support::{Route, Server, TestCache, assert_good, npm_tarball, release, tarball, tarball_path};

#[tokio::test]
async fn registry_tarball_is_fetched_once_for_all_files() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.route(&tarball_path(), Route::Ok(npm_tarball(&release)));
    let opts = cache.opts(vec![server.source("/cdn"), Source::Npm(Some(format!("{}/", server.url(""))))]);

    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();

    assert_good(&artifact, &release);
    assert_eq!(server.n_hits(&tarball_path()), 1);
    assert!(!cache.version_dir().join("pgcrypto.tar.gz").exists(), "only needed entries are extracted");
    assert_eq!(cache.leftovers(), Vec::<String>::new(), "the downloaded tarball is not kept");
}

#[tokio::test]
async fn tar_entry_with_dotdot_is_refused() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    let evil =
        tarball(&[("package/../../evil", b"pwned"), ("package/dist/postgres.wasm", &release.files["postgres.wasm"])]);
    server.route(&tarball_path(), Route::Ok(evil));
    let opts = cache.opts(vec![Source::Npm(Some(server.url("")))]);

    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();

    let Error::AllSourcesFailed { attempts, .. } = &err else { panic!("{err:?}") };
    assert!(
        attempts
            .iter()
            .any(|attempt| matches!(&attempt.reason, Reason::UnsafeArchivePath(path) if path == "package/../../evil")),
        "{err}"
    );
    assert!(!cache.path().join("evil").exists() && !cache.path().parent().unwrap().join("evil").exists());
    assert!(!cache.version_dir().join("postgres.wasm").exists(), "nothing after the bad entry is read");
}

#[tokio::test]
async fn absolute_tar_entry_is_refused() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.route(&tarball_path(), Route::Ok(tarball(&[("/etc/evil", b"pwned")])));
    let opts = cache.opts(vec![Source::Npm(Some(server.url("")))]);
    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();
    let Error::AllSourcesFailed { attempts, .. } = &err else { panic!("{err:?}") };
    assert!(matches!(&attempts[0].reason, Reason::UnsafeArchivePath(path) if path == "/etc/evil"), "{err}");
}
