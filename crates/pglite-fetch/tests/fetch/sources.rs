//! Source order and kinds: fallback past a 404, redirects, local directories, policy.

use std::sync::{Arc, Mutex};

use pglite_fetch::{Error, Progress, Reason, Source, ensure_with_pins};

use crate::support::{Route, Server, TestCache, assert_good, release};

#[tokio::test]
async fn primary_404_falls_back_to_the_next_source() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/b", &release);
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let mut opts = cache.opts(vec![server.source("/a"), server.source("/b")]);
    let seen2 = seen.clone();
    opts.progress = Some(Arc::new(move |progress| seen2.lock().unwrap().push(progress)));

    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();

    assert_good(&artifact, &release);
    assert_eq!(server.n_hits("/a/postgres.wasm"), 1);
    assert_eq!(server.n_hits("/b/postgres.wasm"), 1);
    let seen = seen.lock().unwrap();
    let last_wasm = seen.iter().rev().find(|progress| progress.file == "postgres.wasm").unwrap();
    assert_eq!(last_wasm.done, release.pins.wasm.size);
    assert_eq!(last_wasm.total, Some(release.pins.wasm.size));
    assert_eq!(last_wasm.source, server.url("/b/postgres.wasm"));
}

#[tokio::test]
async fn redirects_are_followed() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/real", &release);
    for name in release.files.keys() {
        server.route(&format!("/moved/{name}"), Route::Redirect(format!("/real/{name}")));
    }
    let opts = cache.opts(vec![server.source("/moved")]);
    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();
    assert_good(&artifact, &release);
}

#[tokio::test]
async fn local_directory_sources() {
    let (cache, release) = (TestCache::new(), release());
    let mirror = tempfile::tempdir().unwrap();
    for (name, content) in &release.files {
        std::fs::write(mirror.path().join(name), content).unwrap();
    }
    let mirror_path = mirror.path().to_str().unwrap();
    let sources = pglite_fetch::parse_sources(&format!("/nonexistent/pglite,file://{mirror_path}")).unwrap();
    let artifact = ensure_with_pins(&cache.opts(sources), &release.pins).await.unwrap();
    assert_good(&artifact, &release);
}

#[tokio::test]
async fn plain_http_to_a_non_loopback_host_is_refused_before_connecting() {
    let (cache, release) = (TestCache::new(), release());
    let opts = cache.opts(vec![Source::Url("http://mirror.invalid/{file}".to_owned())]);
    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();
    let Error::AllSourcesFailed { attempts, .. } = &err else { panic!("{err:?}") };
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|attempt| matches!(attempt.reason, Reason::Insecure)), "{err}");
}

#[tokio::test]
async fn unpinned_version_names_the_pinned_ones() {
    let cache = TestCache::new();
    let mut opts = cache.opts(vec![]);
    opts.version = "0.0.1".to_owned();
    let err = pglite_fetch::ensure(&opts).await.unwrap_err();
    let Error::UnpinnedVersion { pinned, .. } = &err else { panic!("{err:?}") };
    assert!(pinned.contains(&pglite_fetch::DEFAULT_PGLITE_VERSION.to_owned()));
}

#[tokio::test]
async fn extensions_are_fetched_on_request_only() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    ensure_with_pins(&opts, &release.pins).await.unwrap();
    assert_eq!(server.n_hits("/cdn/pgcrypto.tar.gz"), 0);

    let extensions = pglite_fetch::ensure_extensions_with_pins(&opts, &release.pins, &["pgcrypto"]).await.unwrap();
    assert_eq!(extensions.len(), 1);
    assert_eq!(extensions[0].name, "pgcrypto");
    assert_eq!(extensions[0].archive, cache.version_dir().join("extensions/pgcrypto.tar.gz"));
    assert_eq!(std::fs::read(&extensions[0].archive).unwrap(), release.files["pgcrypto.tar.gz"]);
    assert_eq!(
        std::fs::read(extensions[0].root.join("lib/postgresql/pgcrypto.so")).unwrap(),
        b"\0asm pretend side module"
    );
    assert!(extensions[0].root.join("share/postgresql/extension/pgcrypto.control").is_file());
    // A damaged unpacked tree without its receipt is unpacked again.
    std::fs::remove_file(extensions[0].root.join("lib/postgresql/pgcrypto.so")).unwrap();
    std::fs::remove_file(cache.version_dir().join("extensions/pgcrypto.unpacked")).unwrap();
    let again = pglite_fetch::ensure_extensions_with_pins(&opts, &release.pins, &["pgcrypto"]).await.unwrap();
    assert!(again[0].root.join("lib/postgresql/pgcrypto.so").is_file());
    assert_eq!(server.n_hits("/cdn/pgcrypto.tar.gz"), 1, "second call is served from the cache");

    let err = pglite_fetch::ensure_extensions_with_pins(&opts, &release.pins, &["nope"]).await.unwrap_err();
    let Error::UnknownExtension { available, .. } = &err else { panic!("{err:?}") };
    assert_eq!(available, &vec!["pgcrypto".to_owned()]);
    assert!(err.to_string().contains("available: pgcrypto"), "{err}");
}
