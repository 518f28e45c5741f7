//! Unit tests of the compiled-module cache's keys, on a module small enough to compile at once.

use std::fs;

use super::{engine, load_main_module, sha256_hex};
use crate::{Artifact, Error};

/// The smallest valid module: the header and nothing else.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn artifact(dir: &std::path::Path, wasm_sha256: &str) -> Artifact {
    let wasm = dir.join("postgres.wasm");
    fs::write(&wasm, EMPTY_MODULE).unwrap();
    Artifact {
        version: "0.2.17".to_owned(),
        wasm,
        wasm_sha256: wasm_sha256.to_owned(),
        package_root: dir.to_owned(),
        initdb: None,
    }
}

fn cached_names(cache: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".cwasm"))
        .collect();
    names.sort();
    names
}

#[test]
fn warm_load_neither_reads_nor_hashes_the_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("modules");
    let artifact = artifact(dir.path(), &sha256_hex(EMPTY_MODULE).to_ascii_uppercase());
    load_main_module(engine(), &artifact, Some(&cache)).unwrap();
    let names = cached_names(&cache);
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(&sha256_hex(EMPTY_MODULE)[..32]), "{names:?}");

    fs::remove_file(&artifact.wasm).unwrap();
    load_main_module(engine(), &artifact, Some(&cache)).expect("loaded from the cache alone");
    let err = load_main_module(engine(), &artifact, None).expect_err("no cache: the wasm is read");
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn a_key_that_is_no_sha256_falls_back_to_hashing_the_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("modules");
    let artifact = artifact(dir.path(), "../not-a-hash");
    load_main_module(engine(), &artifact, Some(&cache)).unwrap();
    let names = cached_names(&cache);
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(&sha256_hex(EMPTY_MODULE)[..32]), "{names:?}");
}

#[test]
fn compile_errors_keep_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut artifact = artifact(dir.path(), "");
    fs::write(&artifact.wasm, b"\0asm\x01\0\0\0\x7f").unwrap();
    artifact.wasm_sha256 = sha256_hex(b"another module");
    let err = load_main_module(engine(), &artifact, None).expect_err("not a module");
    assert!(matches!(err, Error::Compile { .. }), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err}");
    assert!(err.to_string().starts_with("compiling the PostgreSQL module failed: "), "{err}");
}

/// Makes `path` (with its receipt and lock) look last read and written `days` ago.
fn cache_entry(path: &std::path::Path, days: u64) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 24 * 60 * 60);
    for file in [path.to_owned(), path.with_extension("cwasm.receipt"), path.with_extension("lock")] {
        fs::write(&file, b"x").unwrap();
        let times = fs::FileTimes::new().set_accessed(then).set_modified(then);
        fs::File::options().write(true).open(&file).unwrap().set_times(times).unwrap();
    }
}

#[test]
fn compiled_forms_of_the_module_unread_for_a_month_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("modules");
    fs::create_dir_all(&cache).unwrap();
    let sha = sha256_hex(EMPTY_MODULE);
    let artifact = artifact(dir.path(), &sha);
    // Another build's engine and an earlier patch: one unread for 31 days, one read today.
    let stale = cache.join(format!("{}-0000000000000000x0.cwasm", &sha[..32]));
    let recent = cache.join(format!("{}-1111111111111111x0.cwasm", &sha[..32]));
    // Another module's old entry is that module's to prune when it loads.
    let other = cache.join(format!("{}-0000000000000000x0.cwasm", "ab".repeat(16)));
    cache_entry(&stale, 31);
    cache_entry(&recent, 0);
    cache_entry(&other, 31);
    load_main_module(engine(), &artifact, Some(&cache)).unwrap();
    let mine = super::compiled_module_path(&artifact, &cache);
    let mut left: Vec<String> =
        fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    let name =
        |p: &std::path::Path, ext: &str| p.with_extension(ext).file_name().unwrap().to_string_lossy().into_owned();
    let mut expected = vec![
        name(&mine, "cwasm"),
        name(&mine, "cwasm.receipt"),
        name(&mine, "lock"),
        name(&recent, "cwasm"),
        name(&recent, "cwasm.receipt"),
        name(&recent, "lock"),
        name(&other, "cwasm"),
        name(&other, "cwasm.receipt"),
        name(&other, "lock"),
    ];
    expected.sort();
    assert_eq!(left, expected, "the stale entry, its receipt and its lock are gone; nothing else");
    // The module still loads from its own entry.
    load_main_module(engine(), &artifact, Some(&cache)).unwrap();
}
