//! State shared by every connection of one bridge: the backend, the configuration, the lease
//! on the backend session, the cancel keys and the startup cache. Connections hold it in an
//! `Arc`; everything here is either immutable after start or behind its own lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::session::{Baseline, Session, Started};
use crate::settings::Settings;

/// A registered client, for cancel requests.
pub(crate) struct CancelEntry {
    pub(crate) secret: i32,
    pub(crate) run: Arc<RunState>,
}

/// Whether a client has a request in flight (queued for the backend or running on it), and
/// the flag that cancels it.
#[derive(Default)]
pub(crate) struct RunState {
    pub(crate) running: AtomicBool,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl RunState {
    /// A request is on its way: a cancel from now on is for it. Ended by dropping the guard.
    pub(crate) fn start(self: &Arc<Self>) -> RunGuard {
        self.cancel.store(false, Ordering::SeqCst);
        self.running.store(true, Ordering::SeqCst);
        RunGuard(self.clone())
    }

    /// Raises the cancel flag if a request is in flight; returns whether one was.
    pub(crate) fn cancel(&self) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        if running {
            self.cancel.store(true, Ordering::SeqCst);
        }
        running
    }
}

/// Marks the end of a request in flight when dropped.
pub(crate) struct RunGuard(Arc<RunState>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// State shared by all connections of one bridge.
pub(crate) struct Shared<B> {
    pub(crate) backend: B,
    pub(crate) config: Config,
    /// The lease: whoever holds the guard owns the backend. tokio's mutex queues waiters in
    /// FIFO order, which is the fairness we promise.
    pub(crate) lease: Arc<tokio::sync::Mutex<Session>>,
    /// What every client starts from.
    pub(crate) baseline: Baseline,
    /// Random per bridge: the mock SCRAM salts of roles that cannot authenticate derive from
    /// it, so they are stable for a name but not predictable.
    pub(crate) mock_secret: [u8; 32],
    pub(crate) cancel_keys: StdMutex<HashMap<i32, CancelEntry>>,
    /// What clients' login settings came to, once the backend accepted them: a pool's next
    /// connection then starts without waiting for the lease, which an open transaction may
    /// hold for long.
    pub(crate) startup_cache: StdMutex<HashMap<Settings, Started>>,
    pub(crate) next_client: AtomicU32,
    pub(crate) slots: Arc<Semaphore>,
    /// The backend's request cap (`Backend::max_request`), read once.
    pub(crate) max_request: Option<usize>,
    /// Set when the backend failed for good.
    pub(crate) gone: Arc<std::sync::atomic::AtomicBool>,
    /// Clients queued on the lease.
    pub(crate) waiting: AtomicUsize,
    /// Set when the bridge begins to stop, from whatever thread: no client starts anything
    /// more.
    pub(crate) stopping: AtomicBool,
    /// What is refused: the configuration's, with LISTEN and NOTIFY where the backend cannot
    /// deliver notifications.
    pub(crate) refuse: crate::Refuse,
    /// Who listens on which channel.
    pub(crate) hub: crate::notify::Hub,
}
