//! What the cache made from its downloads is checked too: a start notices extracted files that
//! are missing, of the wrong size or written since, and extracts them again from the verified
//! bundle; `verify` finds bit rot (same size, same mtime) anywhere and repairs it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use camino::Utf8Path;
use pglite_fetch::{Problem, Source, ensure_extensions_with_pins, ensure_with_pins, verify_with_pins};

use crate::support::{Server, TestCache, assert_good, release};

/// A source that cannot answer: repairs from the cache's own verified files must not need it.
fn dead_source() -> Source {
    Source::Url("http://127.0.0.1:1/{file}".to_owned())
}

/// The mtime every extracted file is given.
fn stamp() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

fn mtime(path: &Utf8Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Flips one byte of `path` in place and puts its mtime back, as bit rot would leave it.
fn rot(path: &Utf8Path, offset: usize) {
    let before = mtime(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(before).unwrap();
}

#[tokio::test]
async fn deleted_and_truncated_extracted_files_are_extracted_again_at_the_next_start() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let artifact = ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    assert_eq!(mtime(&artifact.root.join("tmp/pglite/bin/postgres")), stamp(), "extracted files are stamped");
    std::fs::remove_file(artifact.root.join("tmp/pglite/lib/postgresql/plpgsql.so")).unwrap();
    let initdb = artifact.root.join("tmp/pglite/bin/initdb");
    std::fs::write(&initdb, b"init").unwrap();

    let repaired = ensure_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();

    assert_good(&repaired, &release);
    assert_eq!(mtime(&initdb), stamp());
    assert_eq!(cache.leftovers(), Vec::<String>::new(), "the old tree is gone");
}

#[tokio::test]
async fn an_extracted_file_edited_in_place_is_noticed_by_its_mtime() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let artifact = ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    let postgres = artifact.root.join("tmp/pglite/bin/postgres");
    std::fs::write(&postgres, b"POSTGRES STUB").unwrap();
    // Written again with its own bytes: the mtime moved, the content did not.
    let pgpass = artifact.root.join("home/web_user/.pgpass");
    std::fs::write(&pgpass, std::fs::read(&pgpass).unwrap()).unwrap();
    assert_ne!(mtime(&pgpass), stamp());

    let repaired = ensure_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();

    assert_good(&repaired, &release);
    assert_eq!(mtime(&pgpass), stamp(), "an unchanged file is stamped again");
}

#[tokio::test]
async fn verify_finds_bit_rot_that_a_start_cannot_see_and_repairs_it() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();
    rot(&artifact.wasm, 1000);
    let initdb = artifact.root.join("tmp/pglite/bin/initdb");
    rot(&initdb, 3);
    std::fs::write(artifact.root.join("tmp/pglite/lib/postgresql/stray.so"), b"not ours").unwrap();

    // Size and mtime are as they were: a start trusts them (this is what verify is for).
    let started = ensure_with_pins(&opts, &release.pins).await.unwrap();
    assert_ne!(std::fs::read(&started.wasm).unwrap(), release.files["postgres.wasm"]);

    let verified = verify_with_pins(&opts, &release.pins).await.unwrap();

    let found: Vec<(String, Problem)> = verified
        .repaired
        .iter()
        .map(|damage| (damage.path.strip_prefix(cache.version_dir()).unwrap().to_string(), damage.problem.clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("postgres.wasm".to_owned(), Problem::Content),
            ("root/tmp/pglite/bin/initdb".to_owned(), Problem::Content),
            ("root/tmp/pglite/lib/postgresql/stray.so".to_owned(), Problem::Unexpected),
        ]
    );
    assert_good(&verified.artifact, &release);
    assert!(!artifact.root.join("tmp/pglite/lib/postgresql/stray.so").exists());
    assert_eq!(server.n_hits("/cdn/postgres.wasm"), 2, "the rotten download was fetched again");
    assert_eq!(verified.n_files, 3 + crate::support::GUEST_FILES.len());

    let again = verify_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap();
    assert_eq!(again.repaired, []);
}

#[tokio::test]
async fn a_rotten_data_bundle_is_fetched_again_before_anything_is_extracted_from_it() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    let artifact = ensure_with_pins(&opts, &release.pins).await.unwrap();
    rot(&artifact.data, 20);
    std::fs::remove_file(artifact.root.join("tmp/pglite/bin/initdb")).unwrap();

    let repaired = ensure_with_pins(&opts, &release.pins).await.unwrap();

    assert_good(&repaired, &release);
    assert_eq!(server.n_hits("/cdn/postgres.data"), 2);
}

#[tokio::test]
async fn verify_fails_when_a_damaged_download_cannot_be_fetched_again() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let artifact = ensure_with_pins(&cache.opts(vec![server.source("/cdn")]), &release.pins).await.unwrap();
    rot(&artifact.js, 10);

    let err = verify_with_pins(&cache.opts(vec![dead_source()]), &release.pins).await.unwrap_err();

    assert!(matches!(err, pglite_fetch::Error::AllSourcesFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("postgres.js"), "{err}");
}

#[tokio::test]
async fn damaged_extension_trees_are_unpacked_again() {
    let (server, cache, release) = (Server::start(), TestCache::new(), release());
    server.serve_release("/cdn", &release);
    let opts = cache.opts(vec![server.source("/cdn")]);
    ensure_with_pins(&opts, &release.pins).await.unwrap();
    let extension = ensure_extensions_with_pins(&opts, &release.pins, &["pgcrypto"]).await.unwrap().remove(0);
    let library = extension.root.join("lib/postgresql/pgcrypto.so");
    let control = extension.root.join("share/postgresql/extension/pgcrypto.control");
    let (library_bytes, control_bytes) = (std::fs::read(&library).unwrap(), std::fs::read(&control).unwrap());
    assert_eq!(mtime(&library), stamp());

    // A start: a deleted file is noticed.
    std::fs::remove_file(&library).unwrap();
    ensure_extensions_with_pins(&opts, &release.pins, &["pgcrypto"]).await.unwrap();
    assert_eq!(std::fs::read(&library).unwrap(), library_bytes);

    // A tree unpacked before manifests existed is checked against its bundle and kept.
    let manifest = cache.version_dir().join("extensions/pgcrypto.manifest");
    std::fs::remove_file(&manifest).unwrap();
    ensure_extensions_with_pins(&opts, &release.pins, &["pgcrypto"]).await.unwrap();
    assert!(std::fs::read_to_string(&manifest).unwrap().contains("lib/postgresql/pgcrypto.so"));

    // Bit rot: only verify sees it.
    rot(&control, 2);
    let verified = verify_with_pins(&opts, &release.pins).await.unwrap();
    let found: Vec<&Utf8Path> = verified.repaired.iter().map(|damage| damage.path.as_path()).collect();
    assert_eq!(found, [control.as_path()]);
    assert_eq!(std::fs::read(&control).unwrap(), control_bytes);
    assert_eq!(server.n_hits("/cdn/pgcrypto.tar.gz"), 1, "repairs come from the cached bundle");
}
