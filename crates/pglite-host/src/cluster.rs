//! One cluster on disk and the instance serving it: the data-directory lock, new clusters (from
//! the template or initdb), the database it serves and the roles that may log in, boot, restart
//! from disk after a crash, and a clean stop. Runs on whichever thread holds the handle's lock
//! (`pglite.rs`); knows nothing of threads. A new cluster that fails to come up is removed
//! again, so the next start makes it afresh. Also the full check of the host's caches on
//! request ([`verify_cache`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::instance::{Dirs, ExecError, Instance, initdb_bits, initdb_make_cluster};
use crate::interrupts::Remote;
use crate::profile::{Profile, Start};
use crate::sql::{self, Reply};
use crate::template::{CacheDamage, CacheProblem};
use crate::{Artifact, BootInfo, BootKind, Config, Error, engine, template};

/// File inside the data directory that the running host holds an OS lock on. PostgreSQL's own
/// `postmaster.pid` check cannot work here: inside the guest its pid is always 42.
pub(crate) const LOCK_FILE: &str = ".nself-host.lock";

/// File inside the data directory naming the database the cluster serves by default. Clusters
/// made before it existed have none and serve `postgres`.
const DATABASE_FILE: &str = ".nself-database";

/// The guest's scratch file system (its `/`, less PGDATA and the package): a directory of the
/// data directory, whose lock says nobody else uses it, emptied at each open and removed at
/// close. In the system's temporary directory, every killed process left one behind.
const SCRATCH_DIR: &str = ".nself-scratch";

/// [`SCRATCH_DIR`] of an open cluster.
struct Scratch(PathBuf);

impl Scratch {
    /// Makes `data_dir`'s scratch directory anew.
    fn make(data_dir: &Path) -> Result<Scratch, Error> {
        let path = data_dir.join(SCRATCH_DIR);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::Io { path, source: err }),
        }
        fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            tracing::debug!(%err, path = %self.0.display(), "scratch directory left behind; emptied at the next open");
        }
    }
}

/// The database initdb makes, which a new cluster's database is renamed from.
const INITDB_DATABASE: &str = "postgres";

/// The bootstrap superuser: PGlite's initdb makes it as `PGUSER` names it (`instance/boot.rs`).
const BOOTSTRAP_SUPERUSER: &str = "postgres";

/// A database every cluster has and the backend can always boot into to set the others up.
const SETUP_DATABASE: &str = "template1";

/// Everything one running cluster needs: the compiled module, the live instance (rebuilt from
/// disk after a crash), its scratch directory and the data-directory lock.
pub(crate) struct Cluster {
    module: wasmtime::Module,
    profile: &'static Profile,
    artifact: Artifact,
    config: Config,
    pub(crate) instance: Option<Instance>,
    /// What other threads interrupt the serving instance through, whichever it is.
    pub(crate) remote: Arc<Remote>,
    scratch: Scratch,
    /// Held for the cluster's lifetime; dropping it releases the OS lock.
    /// (Declared after `scratch`, so the scratch directory goes while the lock is held.)
    _lock: fs::File,
    pub(crate) info: BootInfo,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

impl Cluster {
    /// Locks the data directory, makes the cluster if there is none, sets up its database and
    /// roles, and boots the instance that serves it.
    pub(crate) fn open(artifact: Artifact, config: Config, profile: &'static Profile) -> Result<Cluster, Error> {
        let started = Instant::now();
        if config.postgres_password.as_deref() == Some("") {
            return Err(Error::EmptyPassword);
        }
        let lock = lock_data_dir(&config.data_dir)?;
        check_compatible(&config.data_dir, profile, &artifact.version)?;

        let module = engine::load_main_module(engine::engine(), &artifact, config.module_cache_dir.as_deref())?;
        let module_load = started.elapsed();

        let fresh = !config.data_dir.join("PG_VERSION").exists();
        let made = if fresh { make_data_dir(&module, profile, &artifact, &config) } else { Ok(BootKind::Resumed) };
        let kind = match made {
            Ok(kind) => kind,
            Err(err) => return Err(discard_new_cluster(&config.data_dir, err)),
        };
        let scratch = Scratch::make(&config.data_dir)?;
        let version = artifact.version.clone();
        let mut cluster = Cluster {
            module,
            profile,
            artifact,
            config,
            instance: None,
            remote: Arc::default(),
            scratch,
            _lock: lock,
            info: BootInfo { kind, module_load, total: Duration::ZERO, version, database: String::new() },
        };
        match cluster.start(fresh) {
            Ok(()) => Ok(cluster),
            Err(err) if fresh => {
                // Close the instance's files first; the lock is held until `cluster` drops.
                cluster.instance = None;
                Err(discard_new_cluster(&cluster.config.data_dir, err))
            }
            Err(err) => Err(err),
        }
    }

    /// Sets up the database and roles and boots the instance that serves them.
    fn start(&mut self, fresh: bool) -> Result<(), Error> {
        self.info.database = self.set_up_database(fresh)?;
        self.boot()?;
        self.ensure_superusers()?;
        self.set_postgres_password()
    }

    fn dirs(&self) -> Dirs<'_> {
        Dirs {
            data: &self.config.data_dir,
            package: &self.artifact.package_root,
            scratch: self.scratch.path(),
            module_cache: self.config.module_cache_dir.clone(),
            extensions: &self.config.extensions,
            settings: &self.config.settings,
            wasm: &self.artifact.wasm,
            wasm_sha256: &self.artifact.wasm_sha256,
            remote: Some(&self.remote),
        }
    }

    /// Decides which database the backend serves and makes sure it exists, booting into
    /// `template1` when something must be looked up or changed: a new cluster's database is
    /// `postgres` renamed, a database asked for by name is created when missing, and a cluster
    /// that does not say which database it serves (made by an earlier version, or cut short
    /// before it could say) is asked.
    fn set_up_database(&self, fresh: bool) -> Result<String, Error> {
        let marker = self.config.data_dir.join(DATABASE_FILE);
        let recorded = match fs::read_to_string(&marker) {
            Ok(name) => Some(name.trim_end_matches('\n').to_owned()).filter(|name| !name.is_empty()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(Error::Io { path: marker, source: err }),
        };
        let own = match (&recorded, fresh) {
            (Some(name), _) => name.clone(),
            (None, true) => self.config.database.clone().unwrap_or_else(|| self.config.new_database.clone()),
            (None, false) => {
                // Made by a version that did not record it: `postgres`, unless this version
                // renamed it and was stopped before it could write the file.
                let mut setup = self.setup_session()?;
                let names = setup.databases()?;
                setup.finish()?;
                if names.iter().any(|name| name == INITDB_DATABASE) {
                    INITDB_DATABASE.to_owned()
                } else {
                    self.config.database.clone().unwrap_or_else(|| self.config.new_database.clone())
                }
            }
        };
        let served = self.config.database.clone().unwrap_or_else(|| own.clone());
        let rename = fresh && own != INITDB_DATABASE;
        if rename || served != own {
            let mut setup = self.setup_session()?;
            let names = setup.databases()?;
            if rename && !names.contains(&own) {
                setup.run(&format!("ALTER DATABASE {} RENAME TO {}", sql::ident(INITDB_DATABASE), sql::ident(&own)))?;
                tracing::info!(database = %own, "new cluster: database created");
            }
            if served != own && !names.contains(&served) {
                setup.run(&format!("CREATE DATABASE {}", sql::ident(&served)))?;
                tracing::info!(database = %served, "database created");
            }
            setup.finish()?;
        }
        if recorded.as_deref() != Some(own.as_str()) {
            write_synced(&marker, format!("{own}\n").as_bytes())?;
        }
        Ok(served)
    }

    /// A short-lived instance in `template1`, for setting up databases.
    fn setup_session(&self) -> Result<Setup, Error> {
        let (instance, rc) = Instance::boot(&self.module, self.profile, &self.dirs(), SETUP_DATABASE, true)?;
        if rc & initdb_bits::HAS_DB == 0 {
            return Err(Error::InitdbFailed { code: rc });
        }
        Ok(Setup { instance })
    }

    /// Resumes the cluster in its database.
    fn boot(&mut self) -> Result<(), Error> {
        let (instance, rc) = Instance::boot(&self.module, self.profile, &self.dirs(), &self.info.database, true)?;
        if rc & initdb_bits::HAS_DB == 0 {
            return Err(Error::InitdbFailed { code: rc });
        }
        self.instance = Some(instance);
        Ok(())
    }

    /// What may have changed session state since the last call.
    pub(crate) fn session_timeouts(&self) -> crate::SessionTimeouts {
        self.instance.as_ref().map(Instance::session_timeouts).unwrap_or_default()
    }

    pub(crate) fn take_events(&mut self) -> crate::SessionEvents {
        self.instance.as_mut().map(Instance::take_events).unwrap_or_default()
    }

    /// Makes the configured superusers exist (they log in with no password on the socket,
    /// like initdb's bootstrap superuser).
    fn ensure_superusers(&mut self) -> Result<(), Error> {
        if self.config.superusers.is_empty() {
            return Ok(());
        }
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        let wanted: Vec<String> = self.config.superusers.iter().map(|name| sql::literal(name)).collect();
        let existing = sql::run(
            instance,
            &format!("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ({})", wanted.join(", ")),
        )?;
        let existing: Vec<String> =
            existing.rows.into_iter().filter_map(|row| row.into_iter().next().flatten()).collect();
        for name in &self.config.superusers {
            if !existing.contains(name) {
                sql::run(instance, &format!("CREATE ROLE {} SUPERUSER LOGIN", sql::ident(name)))?;
                tracing::info!(role = %name, "superuser created");
            }
        }
        Ok(())
    }

    /// Stores the configured password of the bootstrap superuser: as a SCRAM-SHA-256 secret
    /// made here (as PostgreSQL makes one, with a fresh salt), so the password itself never
    /// reaches the backend, its logs or an error message.
    fn set_postgres_password(&mut self) -> Result<(), Error> {
        let Some(password) = &self.config.postgres_password else {
            return Ok(());
        };
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        let secret = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let sql = format!("ALTER ROLE {} PASSWORD {}", sql::ident(BOOTSTRAP_SUPERUSER), sql::literal(&secret));
        sql::run(instance, &sql).map_err(|err| match err {
            // Without the secret, which is as good as the password to an offline guesser.
            Error::Sql { code, message, .. } => {
                Error::Sql { sql: format!("ALTER ROLE {BOOTSTRAP_SUPERUSER} PASSWORD '…'"), code, message }
            }
            err => err,
        })?;
        tracing::info!(role = BOOTSTRAP_SUPERUSER, "password set");
        Ok(())
    }

    pub(crate) fn exec(&mut self, request: &[u8], interrupt: crate::Interrupt) -> Result<Vec<u8>, Error> {
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        let result = instance.exec(request, interrupt);
        self.settle(result)
    }

    /// [`exec`](Self::exec) of a streamed request; see [`Pglite::exec_streamed_async`].
    ///
    /// [`Pglite::exec_streamed_async`]: crate::Pglite::exec_streamed_async
    pub(crate) fn exec_streamed(
        &mut self,
        request: &[u8],
        stream: crate::Stream,
        interrupt: crate::Interrupt,
    ) -> Result<Vec<u8>, Error> {
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        let result = instance.exec_streamed(request, stream, interrupt);
        self.settle(result)
    }

    /// Sets the session's connection defaults; see [`Pglite::set_connection_defaults`].
    ///
    /// [`Pglite::set_connection_defaults`]: crate::Pglite::set_connection_defaults
    pub(crate) fn set_connection_defaults(&mut self, settings: &[(String, String)]) -> Result<Vec<String>, Error> {
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        let result = instance.set_connection_defaults(settings);
        self.settle(result)
    }

    /// Passes a result on, rebuilding the instance from disk first if it died.
    fn settle<T>(&mut self, result: Result<T, ExecError>) -> Result<T, Error> {
        match result {
            Ok(value) => Ok(value),
            Err(ExecError::Refused(err)) => Err(err),
            Err(ExecError::Dead(cause)) => {
                tracing::error!(%cause, "PostgreSQL instance died; restarting from disk");
                // Drop the dead store (closing its files) before recovering from the same files.
                self.instance = None;
                match self.boot() {
                    Ok(()) => {
                        if let Some(instance) = self.instance.as_mut() {
                            instance.release_zero_pages(0, usize::MAX);
                        }
                        Err(Error::Restarted { cause: Box::new(cause) })
                    }
                    Err(err) => {
                        tracing::error!(%err, "restart failed");
                        Err(cause)
                    }
                }
            }
        }
    }

    pub(crate) fn stop(&mut self) -> Result<(), Error> {
        match self.instance.take() {
            Some(instance) => instance.shutdown(),
            None => Ok(()),
        }
    }
}

/// An instance booted only to set up databases; shut down cleanly when done.
struct Setup {
    instance: Instance,
}

impl Setup {
    fn run(&mut self, statement: &str) -> Result<Reply, Error> {
        sql::run(&mut self.instance, statement)
    }

    fn databases(&mut self) -> Result<Vec<String>, Error> {
        let reply = self.run("SELECT datname FROM pg_catalog.pg_database")?;
        Ok(reply.rows.into_iter().filter_map(|row| row.into_iter().next().flatten()).collect())
    }

    fn finish(self) -> Result<(), Error> {
        self.instance.shutdown()
    }
}

/// Makes a new cluster in the (empty but for its lock) data directory: a copy of the template,
/// checked and if need be built again first, or initdb when there is no template.
fn make_data_dir(
    module: &wasmtime::Module,
    profile: &'static Profile,
    artifact: &Artifact,
    config: &Config,
) -> Result<BootKind, Error> {
    template::clear_except(&config.data_dir, LOCK_FILE)?;
    let module_cache = config.module_cache_dir.as_deref();
    let make = |dir: &Path| make_cluster(module, profile, artifact, module_cache, dir);
    let kind = match &config.template_dir {
        Some(template_dir) => {
            let ensured = template::ensure(template_dir, template::Check::Quick, make)?;
            template::copy_into(template_dir, &config.data_dir)?;
            if ensured.built { BootKind::Initdb } else { BootKind::FromTemplate }
        }
        None => {
            make(&config.data_dir)?;
            BootKind::Initdb
        }
    };
    // Here rather than in the template, so templates cached by earlier versions give new
    // clusters these settings too.
    template::append_settings(&config.data_dir, profile.new_cluster_settings)?;
    Ok(kind)
}

/// After a new cluster failed to come up: empties its data directory (it holds nothing yet,
/// and a half-made cluster with a `PG_VERSION` would be resumed, and fail, at every later
/// start), so that the next start makes it again, from a repaired cache if that was the
/// cause. Returns `err`.
fn discard_new_cluster(data_dir: &Path, err: Error) -> Error {
    // `PG_VERSION` first: should the clearing be cut short, what is left is not a cluster.
    let _ = fs::remove_file(data_dir.join("PG_VERSION"));
    if let Err(clear_err) = template::clear_except(data_dir, LOCK_FILE) {
        tracing::warn!(%clear_err, "could not empty the data directory of a cluster that failed to start");
    }
    err
}

/// Writes `bytes` to `path` through a temporary file renamed into place, synced.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp: PathBuf = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Runs initdb into the empty directory `dir` and shuts the instance down, leaving a pristine
/// cluster. Per-write fsyncs are skipped; the tree is synced once at the end.
fn make_cluster(
    module: &wasmtime::Module,
    profile: &'static Profile,
    artifact: &Artifact,
    module_cache: Option<&Path>,
    dir: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let scratch =
        tempfile::Builder::new().prefix("pglite-initdb-").tempdir().map_err(io_err(Path::new("<tempdir>")))?;
    let dirs = Dirs {
        data: dir,
        package: &artifact.package_root,
        scratch: scratch.path(),
        module_cache: module_cache.map(Path::to_path_buf),
        // The template is a pristine cluster, whatever extensions this instance is given.
        extensions: &[],
        settings: &[],
        wasm: &artifact.wasm,
        wasm_sha256: &artifact.wasm_sha256,
        remote: None,
    };
    match profile.start {
        Start::Exports { .. } => {
            let (instance, rc) = Instance::boot(module, profile, &dirs, INITDB_DATABASE, false)?;
            if rc & initdb_bits::HAS_DB != 0 {
                return Err(Error::InitdbFailed { code: rc });
            }
            instance.shutdown()?;
        }
        Start::SingleUser => {
            let (path, sha256) =
                artifact.initdb.as_ref().ok_or_else(|| Error::MissingInitdb { version: artifact.version.clone() })?;
            let initdb = engine::load_module(module.engine(), path, sha256, module_cache)?;
            initdb_make_cluster(module, &initdb, profile, &dirs)?;
        }
    }
    template::sync_tree(dir).map_err(io_err(dir))
}

fn lock_data_dir(dir: &Path) -> Result<fs::File, Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    }
    // PostgreSQL refuses a data directory readable by others.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.to_path_buf() }),
        Err(fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

fn check_compatible(dir: &Path, profile: &Profile, version: &str) -> Result<(), Error> {
    let Some(found) = cluster_major(dir)? else {
        return Ok(());
    };
    if found != profile.pg_major.to_string() {
        return Err(Error::IncompatibleDataDir {
            path: dir.to_path_buf(),
            found,
            expected: profile.pg_major,
            version: version.to_owned(),
        });
    }
    Ok(())
}

/// The PostgreSQL major version of the cluster in `dir` (its `PG_VERSION`), if there is one.
pub fn cluster_major(dir: &Path) -> Result<Option<String>, Error> {
    let path = dir.join("PG_VERSION");
    match fs::read_to_string(&path) {
        Ok(found) => Ok(Some(found.trim().to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::Io { path, source: err }),
    }
}

/// The full check of what the host caches for `artifact`, for `nself-embedded fetch --verify`:
/// every compiled module in `module_cache_dir` is hashed against its receipt (a damaged one is
/// removed, and the artifact's main module compiled again at once; side modules are compiled
/// again when next loaded), and every file of the template in `template_dir`, if there is one,
/// against its manifest (built again when anything differs). Returns what was damaged, all of it
/// repaired.
pub fn verify_cache(
    artifact: &Artifact,
    template_dir: &Path,
    module_cache_dir: Option<&Path>,
) -> Result<Vec<CacheDamage>, Error> {
    let profile = crate::profile::for_version(&artifact.version)
        .ok_or_else(|| Error::UnsupportedVersion { version: artifact.version.clone() })?;
    let mut damage = match module_cache_dir {
        Some(dir) => verify_modules(dir)?,
        None => Vec::new(),
    };
    // The main module's compiled form is named after the first half of the wasm's SHA-256.
    let main_prefix = artifact.wasm_sha256.get(..32).unwrap_or_default().to_ascii_lowercase();
    let main_damaged = damage.iter().any(|damage| {
        let name = damage.path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        !main_prefix.is_empty() && name.starts_with(&main_prefix)
    });
    if main_damaged {
        engine::load_main_module(engine::engine(), artifact, module_cache_dir)?;
    }
    if template_dir.exists() {
        let make = |dir: &Path| {
            let module = engine::load_main_module(engine::engine(), artifact, module_cache_dir)?;
            make_cluster(&module, profile, artifact, module_cache_dir, dir)
        };
        damage.extend(template::ensure(template_dir, template::Check::Full, make)?.damage);
    }
    Ok(damage)
}

/// Hashes every compiled module in `dir` against the SHA-256 its receipt (written by
/// `engine.rs` as `<size> <mtime> <sha256>`) records, each under that module's compile lock;
/// removes those that differ, or have no readable receipt, so they are compiled again.
fn verify_modules(dir: &Path) -> Result<Vec<CacheDamage>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::Io { path: dir.to_path_buf(), source: err }),
    };
    let mut paths: Vec<PathBuf> =
        entries.map(|entry| entry.map(|entry| entry.path()).map_err(io_err(dir))).collect::<Result<_, _>>()?;
    paths.retain(|path| path.extension().is_some_and(|ext| ext == "cwasm"));
    paths.sort();
    let mut res = Vec::new();
    for path in paths {
        let lock_path = path.with_extension("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .and_then(|file| file.lock().map(|()| file))
            .map_err(io_err(&lock_path))?;
        let receipt_path = path.with_extension("cwasm.receipt");
        let recorded = fs::read_to_string(&receipt_path)
            .ok()
            .and_then(|receipt| receipt.split_whitespace().nth(2).map(str::to_owned));
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            // Removed since it was listed: nothing to check.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::Io { path, source: err }),
        };
        let (actual, _) = template::sha256_file(&file).map_err(io_err(&path))?;
        drop(file);
        if recorded.as_deref() != Some(actual.as_str()) {
            let problem = if recorded.is_some() { CacheProblem::Content } else { CacheProblem::Missing };
            let damaged = if recorded.is_some() { path.clone() } else { receipt_path.clone() };
            tracing::warn!(path = %damaged.display(), %problem, "compiled module damaged; removing it to compile it again");
            for stale in [&path, &receipt_path] {
                match fs::remove_file(stale) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io_err(stale)(err)),
                    _ => {}
                }
            }
            res.push(CacheDamage { path: damaged, problem });
        }
        drop(lock);
    }
    Ok(res)
}
