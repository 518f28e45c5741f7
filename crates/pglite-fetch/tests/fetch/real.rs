//! The real thing: PGlite 0.2.17 from the npm registry the user's npm is configured with.
//!
//! Slow (about 10 MB), so it runs on CI (`CI` set) or with `RUN_SLOW_TESTS=1`.

use pglite_fetch::{FetchOptions, Source};

fn skip_slow() -> bool {
    let enabled = std::env::var_os("CI").is_some() || std::env::var("RUN_SLOW_TESTS").is_ok_and(|value| value == "1");
    if !enabled {
        eprintln!("skipping: set RUN_SLOW_TESTS=1 to download PGlite from the npm registry");
    }
    !enabled
}

#[tokio::test]
async fn downloads_0_2_17_from_the_npm_registry() {
    if skip_slow() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut opts = FetchOptions::new("0.2.17");
    opts.cache_dir = camino::Utf8Path::from_path(cache.path()).unwrap().to_owned();
    opts.sources = vec![Source::Npm(None)];

    let artifact = pglite_fetch::ensure(&opts).await.unwrap();

    let release = pglite_fetch::pinned_release("0.2.17").unwrap();
    for (path, pin) in [(&artifact.wasm, &release.wasm), (&artifact.data, &release.data), (&artifact.js, &release.js)] {
        let (sha256, size) = pglite_fetch::sha256_hex(std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!((sha256.as_str(), size), (pin.sha256.as_str(), pin.size), "{path}");
    }
    let postgres = artifact.root.join("tmp/pglite/bin/postgres");
    assert!(postgres.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&postgres).unwrap().permissions().mode() & 0o111, 0o111);
    }
    assert!(artifact.root.join("tmp/pglite/lib/postgresql/plpgsql.so").is_file());
    assert!(artifact.root.join("home/web_user/.pgpass").is_file());
    assert!(artifact.files.len() > 600);

    let extensions = pglite_fetch::ensure_extensions(&opts, &["pgcrypto"]).await.unwrap();
    assert!(extensions[0].archive.is_file());
    assert!(extensions[0].root.join("lib/postgresql/pgcrypto.so").is_file());
}

#[tokio::test]
async fn downloads_0_3_16_from_the_npm_registry() {
    if skip_slow() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut opts = FetchOptions::new("0.3.16");
    opts.cache_dir = camino::Utf8Path::from_path(cache.path()).unwrap().to_owned();
    opts.sources = vec![Source::Npm(None)];

    let artifact = pglite_fetch::ensure(&opts).await.unwrap();

    assert_eq!(artifact.wasm.file_name(), Some("pglite.wasm"));
    assert!(artifact.root.join("tmp/pglite/bin/postgres").is_file());
    assert!(artifact.root.join("tmp/pglite/lib/postgresql/plpgsql.so").is_file());
}
