//! Warm starts use no network; corrupt files and half-done extractions are repaired.

use pglite_fetch::{Source, ensure_with_pins};

use crate::support::{Server, TestCache, assert_good, release};

/// A source that cannot answer: a warm cache must not need it.
fn dead_source() -> Source {
    Source::Url("http://127.0.0.1:1/{file}".to_owned())
}

#[tokio::test]
async fn warm_cache_needs_no_network() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let first = ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    let n_hits = server.hits().len();

    let second = ensure_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(server.hits().len(), n_hits);
    assert_good(&second, &release);
}

#[tokio::test]
async fn warm_cache_without_receipts_is_rehashed_not_refetched() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    for entry in std::fs::read_dir(cache.version_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".receipt") && !path.ends_with("root.receipt") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let artifact = ensure_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();
    assert_good(&artifact, &release);
    assert!(cache.version_dir().join(".postgres.wasm.receipt").exists());
}

#[tokio::test]
async fn tampered_cache_is_repaired() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();

    // Same size, one bit flipped, written right after the fill (same timestamp tick).
    let mut wasm = std::fs::read(&artifact.wasm).unwrap();
    wasm[100] ^= 0x40;
    std::fs::write(&artifact.wasm, &wasm).unwrap();
    // Truncated.
    let data = std::fs::read(&artifact.data).unwrap();
    std::fs::write(&artifact.data, &data[..data.len() / 2]).unwrap();

    let repaired = ensure_with_pins(&opts, &release.pins).await.unwrap();

    assert_good(&repaired, &release);
    assert_eq!(server.n_hits("/cdn/postgres.wasm"), 2);
    assert_eq!(server.n_hits("/cdn/postgres.data"), 2);
    assert_eq!(server.n_hits("/cdn/postgres.js"), 1);
}

#[tokio::test]
async fn half_extracted_root_is_discarded_and_redone() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let artifact = ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    // A crash after rename but before the receipt, plus a staging dir from another crash.
    std::fs::remove_file(cache.version_dir().join("root.receipt")).unwrap();
    std::fs::remove_file(artifact.root.join("tmp/pglite/bin/postgres")).unwrap();
    let staging = cache.version_dir().join(".root-part-crashed/tmp");
    std::fs::create_dir_all(&staging).unwrap();

    let artifact = ensure_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();

    assert_good(&artifact, &release);
    assert!(!staging.exists());
    assert_eq!(cache.leftovers(), Vec::<String>::new());
}
