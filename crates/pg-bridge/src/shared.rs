//! State shared by every connection of one bridge: the backend, the configuration, the lease
//! on the backend session, the cancel keys and the startup cache. Connections hold it in an
//! `Arc`; everything here is either immutable after start or behind its own lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::scram;
use crate::session::{Baseline, Session, Started};
use crate::settings::Settings;

/// A registered client, for cancel requests.
pub(crate) struct CancelEntry {
    pub(crate) secret: i32,
    pub(crate) running: Arc<AtomicBool>,
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
    pub(crate) verifier: Option<scram::Verifier>,
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
}
