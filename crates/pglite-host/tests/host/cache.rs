//! A damaged cache is repaired, on every release, with the real artifacts: files missing from
//! the extracted tree are extracted again at the next `ensure` (so plpgsql and the time zones
//! work), a template that is not whole is built again before a new cluster is copied from it,
//! and bit rot, which a start cannot see, fails a new cluster cleanly and is found and repaired
//! by [`pglite_host::verify_cache`]. Each test damages a copy of the shared test cache.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pglite_host::{Artifact, BootKind, CacheProblem, Config, Error, Pglite};

use crate::support::{Outcome, cache_root, guest_prefix, releases, run, scalar};

/// A copy of one release of the shared test cache, mtimes kept, for a test to damage.
struct CacheCopy {
    dir: tempfile::TempDir,
    version: String,
}

impl CacheCopy {
    fn new(version: &str) -> CacheCopy {
        // A start on the shared cache first: what it copies is then whole and current (a
        // template made by an earlier version is built again on first use).
        let scratch = tempfile::tempdir().unwrap();
        drop(crate::support::start(version, scratch.path()));
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&cache_root().join("pglite").join(version), &dir.path().join("pglite").join(version));
        CacheCopy { dir, version: version.to_owned() }
    }

    fn version_dir(&self) -> PathBuf {
        self.dir.path().join("pglite").join(&self.version)
    }

    /// A file of the extracted tree, by its guest path.
    fn package_file(&self, guest_path: &str) -> PathBuf {
        self.version_dir().join("root").join(guest_path.trim_start_matches('/'))
    }

    fn template_file(&self, relative: &str) -> PathBuf {
        self.version_dir().join("template").join(relative)
    }

    /// `pglite_fetch::ensure` on the copy, with no source to fetch from: repairs come from the
    /// cache's own verified files.
    fn ensure(&self) -> Artifact {
        let mut opts = pglite_fetch::FetchOptions::new(&self.version);
        opts.cache_dir = camino::Utf8PathBuf::from_path_buf(self.dir.path().join("pglite")).unwrap();
        opts.sources = vec![pglite_fetch::Source::Url("http://127.0.0.1:1/{file}".to_owned())];
        let fetched = block_on(pglite_fetch::ensure(&opts)).expect("ensure repairs from the cache");
        Artifact {
            version: fetched.version,
            wasm: fetched.wasm.into(),
            wasm_sha256: fetched.wasm_sha256,
            package_root: fetched.root.into(),
            initdb: fetched.initdb.map(|(path, sha256)| (path.into(), sha256)),
        }
    }

    /// A module cache of the copy's own holding only `artifact`'s compiled main module (copied
    /// from the shared one), for tests that check or damage it.
    fn own_modules(&self, artifact: &Artifact) -> PathBuf {
        let modules = self.dir.path().join("pglite/modules");
        std::fs::create_dir_all(&modules).unwrap();
        let shared = cache_root().join("pglite/modules");
        let prefix = &artifact.wasm_sha256[..32];
        for entry in std::fs::read_dir(&shared).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && (name.ends_with(".cwasm") || name.ends_with(".cwasm.receipt")) {
                copy_file(&shared.join(&name), &modules.join(&name));
            }
        }
        modules
    }

    /// The copy's template, and the shared compiled modules (this copy does not damage them).
    fn config(&self, data_dir: &Path) -> Config {
        let mut config = Config::new(data_dir);
        config.module_cache_dir = Some(cache_root().join("pglite/modules"));
        config.template_dir = Some(self.version_dir().join("template"));
        config
    }
}

fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future))
            .join()
            .unwrap()
    })
}

/// Copies `from` to `to` recursively, keeping modes (`fs::copy`) and mtimes (the cache's
/// checks look at them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            copy_file(&entry.path(), &target);
        }
    }
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let mtime = mtime(from);
    std::fs::File::options().write(true).open(to).unwrap().set_modified(mtime).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Overwrites the first bytes of `path` in place and puts its mtime back, as bit rot would
/// leave it: same size, same mtime, other bytes.
fn rot(path: &Path) {
    let before = mtime(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[..8].copy_from_slice(b"XXXXXXXX");
    std::fs::write(path, &bytes).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(before).unwrap();
}

const DO_BLOCK: &str = "DO $$ BEGIN PERFORM 1; END $$";

#[test]
fn a_deleted_plpgsql_is_extracted_again_and_do_blocks_run() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        std::fs::remove_file(cache.package_file(&format!("{}/lib/postgresql/plpgsql.so", guest_prefix(&version))))
            .unwrap();

        let artifact = cache.ensure();

        assert!(
            cache.package_file(&format!("{}/lib/postgresql/plpgsql.so", guest_prefix(&version))).is_file(),
            "{version}"
        );
        let data = tempfile::tempdir().unwrap();
        let pg = Pglite::start(artifact, cache.config(data.path())).unwrap();
        assert_eq!(run(&pg, DO_BLOCK), Outcome::Rows(vec![]), "{version}");
        let function = "CREATE FUNCTION two() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 2; END $$";
        assert_eq!(run(&pg, function), Outcome::Rows(vec![]), "{version}");
        assert_eq!(scalar(&pg, "SELECT two()"), "2", "{version}");
    }
}

#[test]
fn a_truncated_time_zone_is_extracted_again() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        let tokyo = cache.package_file(&format!("{}/share/postgresql/timezone/Asia/Tokyo", guest_prefix(&version)));
        let size = std::fs::metadata(&tokyo).unwrap().len();
        std::fs::File::options().write(true).open(&tokyo).unwrap().set_len(size / 2).unwrap();

        let artifact = cache.ensure();

        assert_eq!(std::fs::metadata(&tokyo).unwrap().len(), size, "{version}");
        let data = tempfile::tempdir().unwrap();
        let pg = Pglite::start(artifact, cache.config(data.path())).unwrap();
        assert_eq!(run(&pg, "SET timezone = 'Asia/Tokyo'"), Outcome::Rows(vec![]), "{version}");
        assert_eq!(scalar(&pg, "SELECT '2000-01-01 00:00+00'::timestamptz::text"), "2000-01-01 09:00:00+09");
    }
}

#[test]
fn a_template_without_pg_version_is_built_again_before_it_is_copied() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        std::fs::remove_file(cache.template_file("PG_VERSION")).unwrap();
        let artifact = cache.ensure();

        let data = tempfile::tempdir().unwrap();
        let pg = Pglite::start(artifact.clone(), cache.config(data.path())).unwrap();

        assert_eq!(pg.boot_info().kind, BootKind::Initdb, "{version}: the template was built again");
        assert_eq!(scalar(&pg, "SELECT 1"), "1");
        assert!(cache.template_file("PG_VERSION").is_file(), "{version}");
        let second = tempfile::tempdir().unwrap();
        let pg = Pglite::start(artifact, cache.config(second.path())).unwrap();
        assert_eq!(pg.boot_info().kind, BootKind::FromTemplate, "{version}: and is used as it is");
    }
}

#[test]
fn a_template_whose_pg_control_was_overwritten_is_built_again() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        let pg_control = cache.template_file("global/pg_control");
        let mut bytes = std::fs::read(&pg_control).unwrap();
        bytes[..8].copy_from_slice(b"XXXXXXXX");
        std::fs::write(&pg_control, &bytes).unwrap();
        let artifact = cache.ensure();

        let data = tempfile::tempdir().unwrap();
        let pg = Pglite::start(artifact, cache.config(data.path())).unwrap();

        assert_eq!(pg.boot_info().kind, BootKind::Initdb, "{version}");
        assert_eq!(scalar(&pg, "SELECT current_setting('server_version_num')::int / 10000 > 15"), "t");
    }
}

#[test]
fn bit_rot_in_the_template_fails_a_new_cluster_cleanly_and_verify_cache_repairs_it() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        let pg_control = cache.template_file("global/pg_control");
        rot(&pg_control);
        let artifact = cache.ensure();
        let data = tempfile::tempdir().unwrap();

        let err = Pglite::start(artifact.clone(), cache.config(data.path())).err().expect("the boot fails");

        assert!(
            matches!(
                err,
                Error::Trap { .. } | Error::GuestExit { .. } | Error::InitdbFailed { .. } | Error::BackendStart { .. }
            ),
            "{err}"
        );
        assert!(!data.path().join("PG_VERSION").exists(), "{version}: the failed new cluster is not left to resume");
        let config = cache.config(data.path());
        let template = config.template_dir.as_deref().unwrap();
        let modules = cache.own_modules(&artifact);
        let damage = pglite_host::verify_cache(&artifact, template, Some(&modules)).unwrap();
        let found: Vec<(&Path, &CacheProblem)> =
            damage.iter().map(|damage| (damage.path.as_path(), &damage.problem)).collect();
        assert_eq!(found, [(pg_control.as_path(), &CacheProblem::Content)], "{version}");
        let again = pglite_host::verify_cache(&artifact, template, Some(&modules)).unwrap();
        assert_eq!(again, [], "{version}: whole now");
        let pg = Pglite::start(artifact, config).unwrap();
        assert_eq!(pg.boot_info().kind, BootKind::FromTemplate, "{version}");
        assert_eq!(scalar(&pg, "SELECT 1"), "1");
    }
}

#[test]
fn verify_cache_compiles_a_rotten_compiled_module_again() {
    for version in releases() {
        let cache = CacheCopy::new(&version);
        let artifact = cache.ensure();
        let modules = cache.own_modules(&artifact);
        // The shared cache may also hold modules compiled by other builds of the host (another
        // engine configuration): this build's is the one to damage.
        let compiled = pglite_host::compiled_module_path(&artifact, &modules);
        if !compiled.exists() {
            let data = tempfile::tempdir().unwrap();
            let mut config = cache.config(data.path());
            config.module_cache_dir = Some(modules.clone());
            Pglite::start(artifact.clone(), config).unwrap().stop().unwrap();
        }
        assert!(compiled.exists(), "{version}: this build's compiled main module");
        let original = std::fs::read(&compiled).unwrap();
        // Well inside the file, where wasmtime's own header checks would not notice.
        let before = mtime(&compiled);
        let mut bytes = original.clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&compiled, &bytes).unwrap();
        std::fs::File::options().write(true).open(&compiled).unwrap().set_modified(before).unwrap();
        let template = cache.version_dir().join("template");

        let damage = pglite_host::verify_cache(&artifact, &template, Some(&modules)).unwrap();

        let found: Vec<&Path> = damage.iter().map(|damage| damage.path.as_path()).collect();
        assert_eq!(found, [compiled.as_path()], "{version}");
        assert_eq!(std::fs::read(&compiled).unwrap().len(), original.len(), "{version}: compiled again");
        assert_eq!(pglite_host::verify_cache(&artifact, &template, Some(&modules)).unwrap(), [], "{version}");
        let data = tempfile::tempdir().unwrap();
        let mut config = cache.config(data.path());
        config.module_cache_dir = Some(modules.clone());
        let pg = Pglite::start(artifact, config).unwrap();
        assert_eq!(scalar(&pg, "SELECT 1"), "1");
    }
}
