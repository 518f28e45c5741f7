//! The public handle, [`Pglite`]. The cluster and its instance (`cluster.rs`) sit behind a
//! mutex: whichever thread holds it runs the guest inline, on a large stack borrowed for the
//! call, so an exchange costs no thread hand-off (on a small VM a futex wake-up each way cost
//! more than PostgreSQL's own work for a simple query). Boot runs on a short-lived thread so a
//! start can time out; after it, the pages boot left resident and zero are handed back to the
//! OS in the background.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{CoroutineResult, ScopedCoroutine, Yielder};

use crate::Interrupt;
use crate::cluster::Cluster;
use crate::interrupts::Remote;
use crate::{Artifact, Config, Error, engine, profile};

/// Native stack the guest runs on: wasm frames (up to `MAX_WASM_STACK`) plus host frames.
/// Reserved, not committed: only the pages a call touches become resident.
const GUEST_STACK: usize = engine::MAX_WASM_STACK + (16 << 20);

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
    /// The PGlite release.
    pub version: String,
    /// The database the backend serves.
    pub database: String,
}

/// A running PGlite instance.
pub struct Pglite {
    shared: Arc<Shared>,
    /// Reaches the running instance without waiting for the exchange to end.
    remote: Arc<Remote>,
    info: BootInfo,
    max_request: usize,
    notifications: bool,
    streams: bool,
}

/// What the handle shares with the blocking pool and the background trim.
struct Shared {
    core: Mutex<Core>,
    /// True while an instance is running.
    alive: AtomicBool,
    /// Callers blocked on `core`: the background trim gives way to them.
    waiting: AtomicUsize,
    /// How many times a caller has taken `core`: the background trim waits for it to stand
    /// still.
    taken: AtomicU64,
}

/// The cluster and the stack its guest runs on.
struct Core {
    cluster: Option<Cluster>,
    stack: DefaultStack,
}

/// Runs `f` on `stack` on the current thread: the caller's own stack (a tokio worker's is
/// 2 MiB) may be too small for PostgreSQL's deepest recursion.
fn on_stack<R>(stack: &mut DefaultStack, f: impl FnOnce() -> R) -> R {
    let coroutine = ScopedCoroutine::with_stack(stack, move |_: &Yielder<(), ()>, ()| {
        let _top = crate::interrupts::mark_stack_top();
        f()
    });
    coroutine.scope(|mut coroutine| match coroutine.as_mut().resume(()) {
        CoroutineResult::Return(value) => value,
        CoroutineResult::Yield(()) => unreachable!("the guest never suspends"),
    })
}

impl Core {
    /// Runs `f` on the cluster, on the guest's stack; an instance that died and could not be
    /// rebuilt leaves the handle not alive.
    fn run<T>(&mut self, alive: &AtomicBool, f: impl FnOnce(&mut Cluster) -> Result<T, Error>) -> Result<T, Error> {
        let Core { cluster, stack } = self;
        let cluster = cluster.as_mut().ok_or(Error::NotRunning)?;
        let result = on_stack(stack, || f(cluster));
        if cluster.instance.is_none() {
            alive.store(false, Ordering::SeqCst);
        }
        result
    }

    fn exec(&mut self, request: &[u8], interrupt: Interrupt, alive: &AtomicBool) -> Result<Vec<u8>, Error> {
        self.run(alive, |cluster| cluster.exec(request, interrupt))
    }

    fn stop(&mut self, alive: &AtomicBool) -> Result<(), Error> {
        let Some(mut cluster) = self.cluster.take() else {
            return Ok(());
        };
        let result = on_stack(&mut self.stack, || cluster.stop());
        alive.store(false, Ordering::SeqCst);
        // Dropping the cluster closes the files and releases the data-directory lock.
        drop(cluster);
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
        self.taken.fetch_add(1, Ordering::Relaxed);
        guard
    }

    /// Locks the core if it is free (the inline path of an exchange). Counted as taken either
    /// way: a caller that finds it busy takes it from the blocking pool soon after.
    fn try_lock(&self) -> std::sync::TryLockResult<MutexGuard<'_, Core>> {
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.core.try_lock()
    }

    /// A panic while the guest ran (a host bug) leaves PostgreSQL in an unknown state: its
    /// instance is dropped, so later calls fail cleanly and stop still releases the lock.
    fn recover<'a>(&'a self, mut guard: MutexGuard<'a, Core>) -> MutexGuard<'a, Core> {
        if let Some(cluster) = guard.cluster.as_mut() {
            cluster.instance = None;
        }
        self.alive.store(false, Ordering::SeqCst);
        self.core.clear_poison();
        guard
    }

    fn exec(&self, request: &[u8], interrupt: Interrupt) -> Result<Vec<u8>, Error> {
        self.lock().exec(request, interrupt, &self.alive)
    }

    fn stop(&self) -> Result<(), Error> {
        self.lock().stop(&self.alive)
    }
}

/// Boot makes memory resident 2 MiB at a time, about half of it zero (see
/// `Instance::release_zero_pages`); handing those pages back to the OS reads all of the
/// memory, so it waits for a quiet spell: it starts once no caller has taken the
/// lock for [`QUIET`] and goes a slice at a time, back to waiting as soon as a caller comes. A
/// client that connects right after the start does not share the machine with it. A database
/// that is never quiet that long is trimmed after [`PATIENCE`] spells anyway, a slice (~1 ms)
/// per spell.
fn release_zero_pages_in_background(shared: &Arc<Shared>) {
    const SLICE: usize = 8 << 20;
    const QUIET: std::time::Duration = std::time::Duration::from_millis(20);
    const PATIENCE: u32 = 100;
    let shared = shared.clone();
    let spawned = std::thread::Builder::new().name("pglite-trim".into()).spawn(move || {
        let mut offset = 0;
        let mut seen = shared.taken.load(Ordering::Relaxed);
        let mut spells: u32 = 0;
        // Whether a caller came since `seen` was read, or blocks on the lock now.
        let busy = |seen: &mut u64| {
            let taken = shared.taken.load(Ordering::Relaxed);
            let came = taken != *seen;
            *seen = taken;
            came || shared.waiting.load(Ordering::SeqCst) != 0
        };
        loop {
            std::thread::sleep(QUIET);
            spells = spells.saturating_add(1);
            if !shared.alive.load(Ordering::SeqCst) {
                return;
            }
            if busy(&mut seen) && spells < PATIENCE {
                continue;
            }
            // Quiet (or out of patience): slice after slice, until a caller comes.
            loop {
                let mut core = match shared.core.lock() {
                    Ok(core) => core,
                    Err(_) => return,
                };
                let Some(instance) = core.cluster.as_mut().and_then(|cluster| cluster.instance.as_mut()) else {
                    return;
                };
                match instance.release_zero_pages(offset, SLICE) {
                    Some(next) => offset = next,
                    None => return,
                }
                drop(core);
                if busy(&mut seen) {
                    break;
                }
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
                let _top = crate::interrupts::mark_stack_top();
                let started = Instant::now();
                let mut cluster = match Cluster::open(artifact, config, profile) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                cluster.info.total = started.elapsed();
                if let Err(mpsc::SendError(Ok(mut cluster))) = ready_tx.send(Ok(cluster)) {
                    // The caller gave up waiting: stop cleanly instead of leaving it unowned.
                    let _ = cluster.stop();
                }
            })
            .map_err(|source| Error::Io { path: PathBuf::from("<thread>"), source })?;
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(cluster)) => {
                let _ = thread.join();
                let info = cluster.info.clone();
                let remote = cluster.remote.clone();
                let shared = Arc::new(Shared {
                    core: Mutex::new(Core { cluster: Some(cluster), stack }),
                    alive: AtomicBool::new(true),
                    waiting: AtomicUsize::new(0),
                    taken: AtomicU64::new(0),
                });
                release_zero_pages_in_background(&shared);
                Ok(Pglite {
                    shared,
                    remote,
                    info,
                    max_request: profile.max_request(),
                    notifications: profile.notifications,
                    streams: profile.streams(),
                })
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

    /// Whether the session's own notifications (`LISTEN` + `NOTIFY` on the one session) come
    /// out in its replies, as `NotificationResponse`s at commit. False on 0.2, which garbles
    /// them: never let it `LISTEN` there.
    pub fn delivers_notifications(&self) -> bool {
        self.notifications
    }

    /// True while an instance is running.
    pub fn healthy(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// One exchange on the calling thread, waiting for any exchange in progress first.
    pub fn exec_protocol(&self, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.shared.exec(&request, Interrupt::default())
    }

    /// One exchange for async callers. When the instance is free it runs right here (an
    /// exchange is usually tens of microseconds, and there is only one instance to run it on);
    /// when another caller holds it, this waits on tokio's blocking pool instead of blocking
    /// the runtime.
    ///
    /// `interrupt` says how the caller may cancel the statement running (see [`Interrupt`]).
    pub async fn exec_protocol_async(&self, request: Vec<u8>, interrupt: Interrupt) -> Result<Vec<u8>, Error> {
        let shared = &self.shared;
        // The guard must not live across the await below (it is not Send).
        let (inline, interrupt) = match shared.try_lock() {
            Ok(mut core) => (Some(core.exec(&request, interrupt, &shared.alive)), Interrupt::default()),
            Err(TryLockError::Poisoned(poisoned)) => (
                Some(shared.recover(poisoned.into_inner()).exec(&request, interrupt, &shared.alive)),
                Interrupt::default(),
            ),
            Err(TryLockError::WouldBlock) => (None, interrupt),
        };
        match inline {
            Some(result) => result,
            None => {
                let shared = shared.clone();
                off_runtime(move || shared.exec(&request, interrupt)).await
            }
        }
    }

    /// Whether [`exec_streamed_async`](Self::exec_streamed_async) streams: 0.3 and later.
    pub fn streams(&self) -> bool {
        self.streams
    }

    /// An exchange whose request goes on with what `stream` gives while it runs, and whose
    /// reply's COPY data leaves through `stream` as it is made, so a COPY of any size passes in
    /// bounded memory (see [`Stream`](crate::Stream)). What is left of the reply is returned.
    /// Always runs on tokio's blocking pool: the stream may wait for a client. Refused with
    /// [`Error::NoStreaming`] where the release cannot stream (0.2).
    pub async fn exec_streamed_async(
        &self,
        request: Vec<u8>,
        stream: crate::Stream,
        interrupt: Interrupt,
    ) -> Result<Vec<u8>, Error> {
        let shared = self.shared.clone();
        off_runtime(move || {
            shared.lock().run(&shared.alive, |cluster| cluster.exec_streamed(&request, stream, interrupt))
        })
        .await
    }

    /// The session's timeouts as the backend has them after the last exchange.
    pub fn session_timeouts(&self) -> crate::SessionTimeouts {
        self.shared.lock().cluster.as_ref().map(Cluster::session_timeouts).unwrap_or_default()
    }

    /// Makes a running exchange look at its cancel flag now (see
    /// [`exec_protocol_async`](Self::exec_protocol_async)). Cheap; harmless when nothing runs.
    pub fn interrupt(&self) {
        self.remote.interrupt();
    }

    /// Makes `settings` the session's connection defaults, as PostgreSQL does with the
    /// options of a client's startup packet and its login role (`session_authorization`):
    /// `RESET` and `DISCARD ALL` return to them. Call only between transactions, with values
    /// already found valid (a refused one is not set; its name is returned).
    pub fn set_connection_defaults(&self, settings: &[(String, String)]) -> Result<Vec<String>, Error> {
        self.shared.lock().run(&self.shared.alive, |cluster| cluster.set_connection_defaults(settings))
    }

    /// What may have changed session state since the last call: the utility commands that
    /// ran, at any depth, and the builtins that change settings or session locks (see
    /// [`SessionEvents`](crate::SessionEvents)). Cheap: no guest code runs.
    pub fn take_session_events(&self) -> crate::SessionEvents {
        let mut core = self.shared.lock();
        core.cluster.as_mut().map(Cluster::take_events).unwrap_or_default()
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
