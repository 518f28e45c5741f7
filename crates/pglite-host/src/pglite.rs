//! The handle and the instance it runs. The store sits behind a mutex: whichever thread holds
//! it runs the guest inline, on a large stack borrowed for the call, so an exchange costs no
//! thread hand-off (on a small VM a futex wake-up each way cost more than PostgreSQL's own
//! work for a simple query). Boot runs on a short-lived thread so a start can time out. The
//! handle also owns the data-directory lock, restarts a crashed instance from disk, and stops
//! cleanly.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{CoroutineResult, ScopedCoroutine, Yielder};

use crate::instance::{Dirs, ExecError, Instance, initdb_bits};
use crate::profile::{self, Profile};
use crate::{Artifact, Config, Error, SESSION_BASELINE, engine, template};

/// Native stack the guest runs on: wasm frames (up to `MAX_WASM_STACK`) plus host frames.
/// Reserved, not committed: only the pages a call touches become resident.
const GUEST_STACK: usize = engine::MAX_WASM_STACK + (16 << 20);

/// File inside the data directory that the running host holds an OS lock on. PostgreSQL's own
/// `postmaster.pid` check cannot work here: inside the guest its pid is always 42.
const LOCK_FILE: &str = ".nself-host.lock";

/// How the data directory came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootKind {
    /// An existing cluster was resumed.
    Resumed,
    /// A new cluster was copied from the artifact's template.
    FromTemplate,
    /// initdb ran (first use of this artifact, or no template directory configured).
    Initdb,
}

/// Timings of a start.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub kind: BootKind,
    /// Loading (or compiling) the module.
    pub module_load: Duration,
    /// From the start call to a session ready for queries.
    pub total: Duration,
    pub version: String,
}

/// A running PGlite instance.
pub struct Pglite {
    shared: Arc<Shared>,
    info: BootInfo,
    max_request: usize,
}

/// What the handle shares with the blocking pool and the background trim.
struct Shared {
    core: Mutex<Core>,
    /// True while an instance is running.
    alive: AtomicBool,
    /// Callers blocked on `core`: the background trim gives way to them.
    waiting: AtomicUsize,
}

/// The instance and the stack its guest runs on.
struct Core {
    worker: Option<Worker>,
    stack: DefaultStack,
}

/// Runs `f` on `stack` on the current thread: the caller's own stack (a tokio worker's is
/// 2 MiB) may be too small for PostgreSQL's deepest recursion.
fn on_stack<R>(stack: &mut DefaultStack, f: impl FnOnce() -> R) -> R {
    let coroutine = ScopedCoroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| f());
    coroutine.scope(|mut coroutine| match coroutine.as_mut().resume(()) {
        CoroutineResult::Return(value) => value,
        CoroutineResult::Yield(()) => unreachable!("the guest never suspends"),
    })
}

impl Core {
    fn exec(&mut self, request: &[u8], alive: &AtomicBool) -> Result<Vec<u8>, Error> {
        let Core { worker, stack } = self;
        let worker = worker.as_mut().ok_or(Error::NotRunning)?;
        let result = on_stack(stack, || worker.exec(request));
        if worker.instance.is_none() {
            alive.store(false, Ordering::SeqCst);
        }
        result
    }

    fn stop(&mut self, alive: &AtomicBool) -> Result<(), Error> {
        let Some(mut worker) = self.worker.take() else {
            return Ok(());
        };
        let result = on_stack(&mut self.stack, || worker.stop());
        alive.store(false, Ordering::SeqCst);
        // Dropping the worker closes the files and releases the data-directory lock.
        drop(worker);
        result
    }
}

impl Shared {
    /// Locks the core, counted as a waiter meanwhile.
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = match self.core.lock() {
            Ok(guard) => guard,
            Err(poisoned) => self.recover(poisoned.into_inner()),
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// A panic while the guest ran (a host bug) leaves PostgreSQL in an unknown state: its
    /// instance is dropped, so later calls fail cleanly and stop still releases the lock.
    fn recover<'a>(&'a self, mut guard: MutexGuard<'a, Core>) -> MutexGuard<'a, Core> {
        if let Some(worker) = guard.worker.as_mut() {
            worker.instance = None;
        }
        self.alive.store(false, Ordering::SeqCst);
        self.core.clear_poison();
        guard
    }

    fn exec(&self, request: &[u8]) -> Result<Vec<u8>, Error> {
        self.lock().exec(request, &self.alive)
    }

    fn stop(&self) -> Result<(), Error> {
        self.lock().stop(&self.alive)
    }
}

/// Boot zeroes the whole buffer pool; handing those pages back to the OS takes ~20 ms, so it
/// is done after the start returns, a slice at a time under the lock, giving way to callers.
fn release_zero_pages_in_background(shared: &Arc<Shared>) {
    const SLICE: usize = 8 << 20;
    let shared = shared.clone();
    let spawned = std::thread::Builder::new().name("pglite-trim".into()).spawn(move || {
        let mut offset = 0;
        loop {
            // Let a caller woken by the last unlock take the lock first (bounded: a caller
            // may be waiting behind a long query instead).
            for _ in 0..100 {
                if shared.waiting.load(Ordering::SeqCst) == 0 {
                    break;
                }
                std::thread::yield_now();
            }
            let mut core = match shared.core.lock() {
                Ok(core) => core,
                Err(_) => return,
            };
            let Some(instance) = core.worker.as_mut().and_then(|worker| worker.instance.as_mut()) else {
                return;
            };
            match instance.release_zero_pages(offset, SLICE) {
                Some(next) => offset = next,
                None => return,
            }
        }
    });
    if let Err(err) = spawned {
        tracing::debug!(%err, "no thread to release zero pages; memory stays resident");
    }
}

impl Pglite {
    /// Boots PGlite on `config.data_dir`: resumes an existing cluster, or makes a new one
    /// (from the template when there is one). Blocks until a session is ready, an error, or
    /// `config.startup_timeout`.
    pub fn start(artifact: Artifact, config: Config) -> Result<Pglite, Error> {
        let profile = profile::for_version(&artifact.version)
            .ok_or_else(|| Error::UnsupportedVersion { version: artifact.version.clone() })?;
        for dir in &config.extensions {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some((_, reason)) = profile.broken_extensions.iter().find(|(broken, _)| *broken == name) {
                let version = artifact.version.clone();
                return Err(Error::ExtensionUnavailable { name, version, reason: (*reason).to_owned() });
            }
        }
        let stack = DefaultStack::new(GUEST_STACK).map_err(|source| Error::Io { path: "<stack>".into(), source })?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let timeout = config.startup_timeout;
        let thread = std::thread::Builder::new()
            .name("pglite-boot".into())
            .stack_size(GUEST_STACK)
            .spawn(move || {
                let started = Instant::now();
                let mut worker = match Worker::open(artifact, config, profile) {
                    Ok(worker) => worker,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                worker.info.total = started.elapsed();
                if let Err(mpsc::SendError(Ok(mut worker))) = ready_tx.send(Ok(worker)) {
                    // The caller gave up waiting: stop cleanly instead of leaving it unowned.
                    let _ = worker.stop();
                }
            })
            .map_err(|source| Error::Io { path: PathBuf::from("<thread>"), source })?;
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(worker)) => {
                let _ = thread.join();
                let info = worker.info.clone();
                let shared = Arc::new(Shared {
                    core: Mutex::new(Core { worker: Some(worker), stack }),
                    alive: AtomicBool::new(true),
                    waiting: AtomicUsize::new(0),
                });
                release_zero_pages_in_background(&shared);
                Ok(Pglite { shared, info, max_request: profile.max_request() })
            }
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::StartupTimeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(Error::NotRunning)
            }
        }
    }

    /// How the instance started, and how long it took.
    pub fn boot_info(&self) -> &BootInfo {
        &self.info
    }

    /// The largest request [`exec_protocol`](Self::exec_protocol) accepts (0.2: 15 MiB).
    pub fn max_request(&self) -> usize {
        self.max_request
    }

    /// True while an instance is running.
    pub fn healthy(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// One exchange on the calling thread, waiting for any exchange in progress first.
    pub fn exec_protocol(&self, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.shared.exec(&request)
    }

    /// One exchange for async callers. When the instance is free it runs right here (an
    /// exchange is usually tens of microseconds, and there is only one instance to run it on);
    /// when another caller holds it, this waits on tokio's blocking pool instead of blocking
    /// the runtime.
    pub async fn exec_protocol_async(&self, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        let shared = &self.shared;
        // The guard must not live across the await below (it is not Send).
        let inline = match shared.core.try_lock() {
            Ok(mut core) => Some(core.exec(&request, &shared.alive)),
            Err(TryLockError::Poisoned(poisoned)) => {
                Some(shared.recover(poisoned.into_inner()).exec(&request, &shared.alive))
            }
            Err(TryLockError::WouldBlock) => None,
        };
        match inline {
            Some(result) => result,
            None => {
                let shared = shared.clone();
                off_runtime(move || shared.exec(&request)).await
            }
        }
    }

    /// Stops cleanly: Terminate, shutdown checkpoint, files synced and closed, lock released.
    /// Idempotent.
    pub fn stop(&self) -> Result<(), Error> {
        self.shared.stop()
    }

    /// [`stop`](Self::stop) for async callers: waits on tokio's blocking pool.
    pub async fn stop_async(&self) -> Result<(), Error> {
        let shared = self.shared.clone();
        off_runtime(move || shared.stop()).await
    }
}

/// Runs `f` on tokio's blocking pool when there is a runtime, else right here.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn_blocking(f).await.map_err(|_| Error::NotRunning)?,
        Err(_) => f(),
    }
}

impl Drop for Pglite {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "PGlite did not stop cleanly");
        }
    }
}

/// Everything one running cluster needs: the compiled module, the live instance (rebuilt from
/// disk after a crash), its scratch directory and the data-directory lock.
struct Worker {
    module: wasmtime::Module,
    profile: &'static Profile,
    artifact: Artifact,
    config: Config,
    instance: Option<Instance>,
    scratch: tempfile::TempDir,
    /// Held for the worker's lifetime; dropping it releases the OS lock.
    _lock: fs::File,
    info: BootInfo,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

impl Worker {
    fn open(artifact: Artifact, config: Config, profile: &'static Profile) -> Result<Worker, Error> {
        let lock = lock_data_dir(&config.data_dir)?;
        check_compatible(&config.data_dir, profile, &artifact.version)?;

        let t0 = Instant::now();
        let wasm = fs::read(&artifact.wasm).map_err(io_err(&artifact.wasm))?;
        let module = engine::compile_cached(engine::engine(), &wasm, config.module_cache_dir.as_deref())
            .map_err(|e| Error::Compile { message: format!("{e:#}") })?;
        drop(wasm);
        let module_load = t0.elapsed();

        let kind = if config.data_dir.join("PG_VERSION").exists() {
            BootKind::Resumed
        } else {
            template::clear_except(&config.data_dir, LOCK_FILE)?;
            let make = |dir: &Path| make_cluster(&module, profile, &artifact, &config, dir);
            let kind = match &config.template_dir {
                Some(template_dir) => {
                    let built_here = !template_dir.exists();
                    template::ensure(template_dir, make)?;
                    template::copy_into(template_dir, &config.data_dir)?;
                    if built_here { BootKind::Initdb } else { BootKind::FromTemplate }
                }
                None => {
                    make(&config.data_dir)?;
                    BootKind::Initdb
                }
            };
            // Here rather than in the template, so templates cached by earlier versions give
            // new clusters these settings too.
            template::append_settings(&config.data_dir, profile.new_cluster_settings)?;
            kind
        };
        let scratch = tempfile::Builder::new().prefix("pglite-").tempdir().map_err(io_err(Path::new("<tempdir>")))?;
        let mut worker = Worker {
            module,
            profile,
            artifact,
            config,
            instance: None,
            scratch,
            _lock: lock,
            info: BootInfo { kind, module_load, total: Duration::ZERO, version: String::new() },
        };
        worker.info.version = worker.artifact.version.clone();
        worker.boot()?;
        Ok(worker)
    }

    fn dirs(&self) -> Dirs<'_> {
        Dirs {
            data: &self.config.data_dir,
            package: &self.artifact.package_root,
            scratch: self.scratch.path(),
            module_cache: self.config.module_cache_dir.clone(),
            extensions: &self.config.extensions,
        }
    }

    /// Resumes the cluster and applies the session baseline.
    fn boot(&mut self) -> Result<(), Error> {
        let (mut instance, rc) = Instance::boot(&self.module, self.profile, &self.dirs(), true)?;
        if rc & initdb_bits::HAS_DB == 0 {
            return Err(Error::InitdbFailed { code: rc });
        }
        let baseline = query_message(SESSION_BASELINE);
        instance.exec(&baseline).map_err(|e| match e {
            ExecError::Refused(e) | ExecError::Dead(e) => e,
        })?;
        self.instance = Some(instance);
        Ok(())
    }

    fn exec(&mut self, request: &[u8]) -> Result<Vec<u8>, Error> {
        let instance = self.instance.as_mut().ok_or(Error::NotRunning)?;
        match instance.exec(request) {
            Ok(reply) => Ok(reply),
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

    fn stop(&mut self) -> Result<(), Error> {
        match self.instance.take() {
            Some(instance) => instance.shutdown(),
            None => Ok(()),
        }
    }
}

/// Runs initdb into the empty directory `dir` and shuts the instance down, leaving a pristine
/// cluster. Per-write fsyncs are skipped; the caller syncs the tree once.
fn make_cluster(
    module: &wasmtime::Module,
    profile: &'static Profile,
    artifact: &Artifact,
    config: &Config,
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
        module_cache: config.module_cache_dir.clone(),
        // The template is a pristine cluster, whatever extensions this instance is given.
        extensions: &[],
    };
    let (instance, rc) = Instance::boot(module, profile, &dirs, false)?;
    if rc & initdb_bits::HAS_DB != 0 {
        return Err(Error::InitdbFailed { code: rc });
    }
    instance.shutdown()?;
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
    let Ok(found) = fs::read_to_string(dir.join("PG_VERSION")) else {
        return Ok(());
    };
    let found = found.trim().to_owned();
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

/// A simple-protocol Query message.
pub(crate) fn query_message(sql: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(sql.len() + 6);
    msg.push(b'Q');
    msg.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}
