//! The handle and its worker thread. All wasm runs on one dedicated thread with a large native
//! stack that owns the store; callers talk to it through a channel. The worker also owns the
//! data-directory lock, restarts a crashed instance from disk, and stops cleanly.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::instance::{Dirs, ExecError, Instance, initdb_bits};
use crate::profile::{self, Profile};
use crate::{Artifact, Config, Error, SESSION_BASELINE, engine, template};

/// Native stack of the worker thread: wasm frames (up to `MAX_WASM_STACK`) plus host frames.
const WORKER_STACK: usize = engine::MAX_WASM_STACK + (16 << 20);

/// The next command, polled briefly before sleeping: with several clients queued on the
/// bridge the next request follows a reply within microseconds, and a futex sleep and wake-up
/// costs tens of them on a small VM. The poll is bounded by a count (no clock reads), about
/// 10-30 µs. `None` when every handle is gone.
fn next_command(inbox: &mpsc::Receiver<Command>) -> Option<Command> {
    for _ in 0..2048 {
        match inbox.try_recv() {
            Ok(command) => return Some(command),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    inbox.recv().ok()
}

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

enum Command {
    Exec(Vec<u8>, Reply<Result<Vec<u8>, Error>>),
    Stop(Reply<Result<(), Error>>),
}

/// Where the worker sends an answer: a blocking caller waits on a std channel (safe on any
/// thread, a tokio worker included), an async caller awaits a oneshot.
enum Reply<T> {
    Blocking(mpsc::SyncSender<T>),
    Async(oneshot::Sender<T>),
}

impl<T> Reply<T> {
    fn send(self, value: T) {
        match self {
            Reply::Blocking(tx) => drop(tx.send(value)),
            Reply::Async(tx) => drop(tx.send(value)),
        }
    }
}

/// A running PGlite instance.
pub struct Pglite {
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    alive: Arc<AtomicBool>,
    info: BootInfo,
    max_request: usize,
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
        let (commands, inbox) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(false));
        let worker_alive = alive.clone();
        let timeout = config.startup_timeout;
        let thread = std::thread::Builder::new()
            .name("pglite".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let started = Instant::now();
                let mut worker = match Worker::open(artifact, config, profile) {
                    Ok(worker) => worker,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                worker_alive.store(true, Ordering::SeqCst);
                let mut info = worker.info.clone();
                info.total = started.elapsed();
                if ready_tx.send(Ok(info)).is_err() {
                    // The caller gave up waiting: stop cleanly instead of running unowned.
                    let _ = worker.stop();
                    worker_alive.store(false, Ordering::SeqCst);
                    return;
                }
                worker.serve(inbox, &worker_alive);
            })
            .map_err(|source| Error::Io { path: PathBuf::from("<thread>"), source })?;
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(info)) => {
                let max_request = profile.max_request();
                Ok(Pglite { commands, thread: Mutex::new(Some(thread)), alive, info, max_request })
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

    /// True while the worker is running an instance.
    pub fn healthy(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// One exchange, blocking the calling thread.
    pub fn exec_protocol(&self, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commands.send(Command::Exec(request, Reply::Blocking(tx))).map_err(|_| Error::NotRunning)?;
        rx.recv().map_err(|_| Error::NotRunning)?
    }

    /// One exchange, awaiting the worker without blocking an async runtime.
    pub async fn exec_protocol_async(&self, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Exec(request, Reply::Async(tx))).map_err(|_| Error::NotRunning)?;
        rx.await.map_err(|_| Error::NotRunning)?
    }

    /// Stops cleanly: Terminate, shutdown checkpoint, files synced and closed, lock released.
    /// Idempotent.
    pub fn stop(&self) -> Result<(), Error> {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let result = match self.commands.send(Command::Stop(Reply::Blocking(tx))) {
            Ok(()) => rx.recv().unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let _ = thread.join();
        result
    }

    /// [`stop`](Self::stop) for async callers: awaits the shutdown instead of blocking.
    pub async fn stop_async(&self) -> Result<(), Error> {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let result = match self.commands.send(Command::Stop(Reply::Async(tx))) {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        // The worker has answered and is returning: the join is immediate.
        let _ = thread.join();
        result
    }
}

impl Drop for Pglite {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "PGlite did not stop cleanly");
        }
    }
}

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
            match &config.template_dir {
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
            }
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

    fn serve(&mut self, inbox: mpsc::Receiver<Command>, alive: &AtomicBool) {
        while let Some(command) = next_command(&inbox) {
            match command {
                Command::Exec(request, reply) => {
                    let result = self.exec(&request);
                    if self.instance.is_none() {
                        alive.store(false, Ordering::SeqCst);
                    }
                    reply.send(result);
                }
                Command::Stop(reply) => {
                    let result = self.stop();
                    alive.store(false, Ordering::SeqCst);
                    reply.send(result);
                    return;
                }
            }
        }
        // Every handle is gone: stop anyway, so the cluster is checkpointed.
        let _ = self.stop();
        alive.store(false, Ordering::SeqCst);
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
                    Ok(()) => Err(Error::Restarted { cause: Box::new(cause) }),
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
