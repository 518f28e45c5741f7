//! The cache as a user meets it, on every release, through the real command and a damaged copy
//! of the test cache: the next `start` repairs what it can see (files deleted or truncated from
//! the extracted tree, a template missing a file) and says so in its log; bit rot (same size,
//! same mtime) in a download, an extracted file, the template or the compiled module is found
//! by `fetch --verify`, which repairs it and exits 5, then 0; a new runtime directory that fails
//! to boot on a damaged template says to run it; damage that cannot be repaired exits 1.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use crate::support::{RELEASES, cache_root, command, guest_prefix, psql, text};

/// Bounds a start that may build the template or compile the module on a slow machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// A copy of the test cache (the releases and the compiled modules), mtimes kept, to damage.
struct CacheCopy {
    dir: tempfile::TempDir,
}

impl CacheCopy {
    fn new() -> CacheCopy {
        for version in RELEASES {
            bring_up_to_date(version);
        }
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&cache_root().join("pglite"), &dir.path().join("pglite"));
        CacheCopy { dir }
    }

    /// `NSELF_CACHE_DIR` for the command.
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn version_dir(&self, version: &str) -> PathBuf {
        self.dir.path().join("pglite").join(version)
    }

    /// A file of the extracted tree, by its guest path.
    fn package_file(&self, version: &str, guest_path: &str) -> PathBuf {
        self.version_dir(version).join("root").join(guest_path.trim_start_matches('/'))
    }

    fn template_file(&self, version: &str, relative: &str) -> PathBuf {
        self.version_dir(version).join("template").join(relative)
    }

    /// The release's wasm and the compiled form of it.
    fn wasm_and_compiled(&self, version: &str) -> (PathBuf, PathBuf) {
        let release = pglite_fetch::pinned_release(version).unwrap();
        let wasm = self.version_dir(version).join(&release.wasm.name);
        // The entry this build loads (the cache may hold others, of earlier builds).
        let artifact = pglite_host::Artifact {
            version: version.to_owned(),
            wasm: wasm.clone(),
            wasm_sha256: release.wasm.sha256.clone(),
            package_root: self.version_dir(version).join("root"),
            initdb: None,
        };
        let compiled = pglite_host::compiled_module_path(&artifact, &self.dir.path().join("pglite/modules"));
        assert!(compiled.is_file(), "the test cache holds the compiled module");
        (wasm, compiled)
    }

    /// `nself-embedded <args>` on this cache.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = command(args);
        cmd.env("NSELF_CACHE_DIR", self.root());
        cmd
    }
}

/// Makes the shared test cache's `version` whole and current before it is copied: a start
/// builds again a template made by an earlier version, which would otherwise happen in the
/// copy and hide the damage a test put there.
fn bring_up_to_date(version: &str) {
    let mut opts = pglite_fetch::FetchOptions::new(version);
    opts.cache_dir = camino::Utf8PathBuf::from_path_buf(cache_root().join("pglite")).unwrap();
    let fetched = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(pglite_fetch::ensure(&opts)).expect("fetching PGlite")
            })
            .join()
            .unwrap()
    });
    let artifact = pglite_host::Artifact {
        version: fetched.version,
        wasm: fetched.wasm.into(),
        wasm_sha256: fetched.wasm_sha256,
        package_root: fetched.root.clone().into(),
        initdb: fetched.initdb.map(|(path, sha256)| (path.into(), sha256)),
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = pglite_host::Config::new(data.path());
    config.module_cache_dir = Some(cache_root().join("pglite/modules"));
    config.template_dir = Some(fetched.dir.as_std_path().join("template"));
    let pg = pglite_host::Pglite::start(artifact, config).expect("PGlite starts on the test cache");
    pg.stop().unwrap();
}

/// Copies `from` to `to` recursively, keeping modes and mtimes (the cache's checks use them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
            continue;
        }
        // Other tests share the cache: a temporary file may be gone by now.
        match std::fs::copy(entry.path(), &target) {
            Ok(_) => set_mtime(&target, mtime(&entry.path())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("copying {}: {err}", entry.path().display()),
        }
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
}

/// Changes 8 bytes of `path` at `at` in place and puts its mtime back, as bit rot would
/// leave it: same size, same mtime, other bytes.
fn rot(path: &Path, at: usize) {
    let before = mtime(path);
    let mut bytes = std::fs::read(path).unwrap();
    for byte in &mut bytes[at..at + 8] {
        *byte ^= 0x5a;
    }
    std::fs::write(path, &bytes).unwrap();
    set_mtime(path, before);
}

/// `nself-embedded start` on `runtime_dir`, once it printed `ready:`.
struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(cache: &CacheCopy, runtime_dir: &Path, version: &str) -> Running {
        let dir = runtime_dir.to_str().unwrap();
        let mut child = cache
            .command(&["start", "--runtime-dir", dir, "--pglite-version", version])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nself-embedded");
        let mut child_stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut res = String::new();
            let _ = child_stderr.read_to_string(&mut res);
            res
        });
        let (ready_tx, ready) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready: ") {
                    let _ = ready_tx.send(());
                }
            }
        });
        match ready.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Running { child, stderr },
            Err(err) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("not ready ({err}, {status})\n{}", stderr.join().unwrap());
            }
        }
    }

    /// SIGTERM; what it wrote to standard error.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.join().unwrap();
        assert!(status.success(), "{status}\n{stderr}");
        stderr
    }
}

/// `nself-embedded start` on `runtime_dir`, expected to fail; its standard error. One that
/// gets as far as `ready:` is stopped and fails the test.
fn failed_start(cache: &CacheCopy, runtime_dir: &Path, version: &str) -> (Option<i32>, String) {
    let dir = runtime_dir.to_str().unwrap();
    let mut child = cache
        .command(&["start", "--runtime-dir", dir, "--pglite-version", version])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nself-embedded");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.starts_with("ready: "));
        if ready {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        ready
    });
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!reader.join().unwrap(), "{version}: started on a damaged cache\n{stderr}");
    (status.code(), stderr)
}

/// Runs `script` through psql on the server in `runtime_dir`; its output, trimmed.
fn query(runtime_dir: &Path, script: &str) -> String {
    let out = psql(runtime_dir, &["-At", "-q", "-v", "ON_ERROR_STOP=1"], script);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "psql failed\n{stdout}\n{stderr}");
    stdout.trim().to_owned()
}

const CHECKS: &str = "DO $$ BEGIN PERFORM 1; END $$;
    SET timezone = 'Asia/Tokyo';
    SELECT '2000-01-01 00:00+00'::timestamptz::text;";

#[test]
fn the_next_start_repairs_the_extracted_files_and_the_template_and_says_so() {
    let cache = CacheCopy::new();
    for version in RELEASES {
        let prefix = guest_prefix(version);
        std::fs::remove_file(cache.package_file(version, &format!("{prefix}/lib/postgresql/plpgsql.so"))).unwrap();
        let tokyo = cache.package_file(version, &format!("{prefix}/share/postgresql/timezone/Asia/Tokyo"));
        std::fs::File::options().write(true).open(&tokyo).unwrap().set_len(10).unwrap();
        std::fs::remove_file(cache.template_file(version, "PG_VERSION")).unwrap();
        let runtime_dir = tempfile::tempdir().unwrap();

        let server = Running::start(&cache, runtime_dir.path(), version);

        assert_eq!(query(runtime_dir.path(), CHECKS), "2000-01-01 09:00:00+09", "{version}");
        let stderr = server.stop();
        for expected in [
            "the extracted PGlite files are damaged",
            "plpgsql.so: missing",
            "Asia/Tokyo: 10 bytes, expected",
            "repaired the extracted PGlite files",
            "template/PG_VERSION: missing",
            "repaired the template cluster",
        ] {
            assert!(stderr.contains(expected), "{version}: {expected:?} in\n{stderr}");
        }
    }
}

#[test]
fn fetch_verify_finds_bit_rot_repairs_it_and_says_so_in_its_exit_code() {
    let cache = CacheCopy::new();
    for version in RELEASES {
        // A directory of the release's good files to fetch the rotten one again from.
        let sources = tempfile::tempdir().unwrap();
        let release = pglite_fetch::pinned_release(version).unwrap();
        for pin in release.core_files() {
            std::fs::copy(cache_root().join("pglite").join(version).join(&pin.name), sources.path().join(&pin.name))
                .unwrap();
        }
        let (wasm, compiled) = cache.wasm_and_compiled(version);
        let tokyo =
            cache.package_file(version, &format!("{}/share/postgresql/timezone/Asia/Tokyo", guest_prefix(version)));
        let pg_control = cache.template_file(version, "global/pg_control");
        rot(&wasm, 1 << 20);
        rot(&tokyo, 100);
        // The start of pg_control: its checksummed part.
        rot(&pg_control, 0);
        let runtime_dir = tempfile::tempdir().unwrap();

        // A start trusts sizes and dates, so a new runtime directory fails, pointing at the cure.
        let (code, stderr) = failed_start(&cache, runtime_dir.path(), version);
        assert_eq!(code, Some(1), "{version}\n{stderr}");
        assert!(stderr.contains("the cache may be damaged: run `nself-embedded fetch --verify`"), "{stderr}");

        // The compiled module rots too (after that start: running rotten machine code is no test).
        let middle = std::fs::metadata(&compiled).unwrap().len() as usize / 2;
        rot(&compiled, middle);
        let verify = ["fetch", "--verify", "--pglite-version", version];
        let verified = cache.command(&verify).env("NSELF_PGLITE_SOURCES", sources.path()).output().unwrap();
        let (stdout, stderr) = text(&verified);
        assert_eq!(verified.status.code(), Some(5), "{version}\n{stdout}\n{stderr}");
        assert_eq!(stdout.trim(), cache.version_dir(version).to_str().unwrap());
        for path in [&wasm, &tokyo, &pg_control, &compiled] {
            let line = format!("repaired: {}: ", path.display());
            assert!(stderr.contains(&line), "{version}: {line:?} in\n{stderr}");
        }

        let again = cache.command(&verify).env("NSELF_PGLITE_SOURCES", "/nonexistent").output().unwrap();
        let (_, stderr) = text(&again);
        assert_eq!(again.status.code(), Some(0), "{version}\n{stderr}");
        assert!(stderr.contains("all whole"), "{stderr}");

        // The same runtime directory starts now: the failed start left nothing to resume.
        let server = Running::start(&cache, runtime_dir.path(), version);
        assert_eq!(query(runtime_dir.path(), CHECKS), "2000-01-01 09:00:00+09", "{version}");
        server.stop();
    }
}

#[test]
fn fetch_verify_exits_1_when_damage_cannot_be_repaired() {
    let cache = CacheCopy::new();
    for version in RELEASES {
        let (wasm, _) = cache.wasm_and_compiled(version);
        rot(&wasm, 1 << 20);
        let nowhere = tempfile::tempdir().unwrap();

        let verify = ["fetch", "--verify", "--pglite-version", version];
        let out = cache.command(&verify).env("NSELF_PGLITE_SOURCES", nowhere.path()).output().unwrap();

        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{version}\n{stderr}");
        let name = wasm.file_name().unwrap().to_str().unwrap();
        assert!(stderr.contains(&format!("verifying PGlite {version}")), "{stderr}");
        assert!(stderr.contains(&format!("no source had a verified {name}")), "{stderr}");
    }
}
