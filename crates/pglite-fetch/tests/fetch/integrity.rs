//! Nothing unverified lands: wrong hashes, short bodies, stalls and size caps all fail the
//! attempt, are listed in the error, and leave no file behind.

use std::time::Duration;

use pglite_fetch::{Error, Reason, Source, ensure_with_pins};

use crate::support::{Route, Server, TestCache, npm_tarball, release, tarball_path};

#[tokio::test]
async fn wrong_hash_on_every_source_lists_all_three_and_caches_nothing() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    let mut tampered = release.files["postgres.wasm"].clone();
    tampered[7] ^= 1;
    for prefix in ["/cdn1", "/cdn2"] {
        server.serve_release(prefix, &release);
        server.route(&format!("{prefix}/postgres.wasm"), Route::Ok(tampered.clone()));
    }
    let mut bad_release = crate::support::release();
    bad_release.files.insert("postgres.wasm", tampered);
    server.route(&tarball_path(), Route::Ok(npm_tarball(&bad_release)));
    let opts = cache.opts(vec![server.source("/cdn1"), server.source("/cdn2"), Source::Npm(Some(server.url("/")))]);

    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();

    let Error::AllSourcesFailed { file, attempts, .. } = &err else { panic!("{err:?}") };
    assert_eq!(file.as_deref(), Some("postgres.wasm"));
    let urls: Vec<&str> = attempts.iter().map(|attempt| attempt.url.as_str()).collect();
    assert_eq!(
        urls,
        [server.url("/cdn1/postgres.wasm"), server.url("/cdn2/postgres.wasm"), server.url(&tarball_path())]
    );
    for attempt in attempts {
        let Reason::HashMismatch { expected, actual } = &attempt.reason else { panic!("{err}") };
        assert_eq!(expected, &release.pins.wasm.sha256);
        assert_ne!(actual, expected);
    }
    let message = err.to_string();
    assert_eq!(message.lines().count(), 4, "{message}");
    assert!(!cache.version_dir().join("postgres.wasm").exists());
    assert!(!cache.version_dir().join("root").exists());
    assert_eq!(cache.leftovers(), Vec::<String>::new());
}

#[tokio::test]
async fn truncated_body_is_reported_and_discarded() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let wasm = &release.files["postgres.wasm"];
    server.route("/cdn/postgres.wasm", Route::Truncated { declared: wasm.len(), body: wasm[..1000].to_vec() });
    let opts = cache.opts(vec![server.source("/cdn")]);

    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();

    let Error::AllSourcesFailed { attempts, .. } = &err else { panic!("{err:?}") };
    assert_eq!(attempts.len(), 1, "{err}");
    assert!(matches!(attempts[0].reason, Reason::Truncated { received: 1000, .. }), "{err}");
    assert!(!cache.version_dir().join("postgres.wasm").exists());
    assert_eq!(cache.leftovers(), Vec::<String>::new());
}

#[tokio::test]
async fn stalled_server_hits_the_read_timeout() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    server.route("/cdn/postgres.wasm", Route::Hang);
    let data_len = release.files["postgres.data"].len();
    server.route("/cdn/postgres.data", Route::HangBody { declared: data_len });
    let mut opts = cache.opts(vec![server.source("/cdn")]);
    opts.connect_timeout = Duration::from_millis(100);
    opts.read_timeout = Duration::from_millis(200);

    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();

    let Error::AllSourcesFailed { file: None, attempts, .. } = &err else { panic!("{err:?}") };
    let phases: Vec<&str> = attempts
        .iter()
        .map(|attempt| match attempt.reason {
            Reason::Timeout { phase, .. } => phase,
            _ => panic!("{err}"),
        })
        .collect();
    assert_eq!(phases, ["waiting for the response", "reading the body"]);
}

#[tokio::test]
async fn size_cap_stops_a_download() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let mut opts = cache.opts(vec![server.source("/cdn")]);
    opts.max_file_size = 1024;
    let err = ensure_with_pins(&opts, &release.pins).await.unwrap_err();
    let Error::AllSourcesFailed { attempts, .. } = &err else { panic!("{err:?}") };
    assert!(attempts.iter().any(|attempt| matches!(attempt.reason, Reason::TooLarge { limit: 1024 })), "{err}");
}
