//! Listening and shutdown: [`Bridge`], [`bind`] and [`serve`].
//!
//! `serve` takes its listeners and a shutdown future from the caller (mini-redis style) and owns
//! every connection task in a `JoinSet`, so nothing outlives it. `Bridge::listen` is the
//! convenience wrapper: it creates the sockets and runs `serve` on a task whose handle it keeps;
//! `Bridge::close` stops accepting, lets each connection finish the message it is running,
//! ends the rest with `57P01` (rolling back their transactions) and waits for all of it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex as StdMutex};

use rand::Rng;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::acceptor::Acceptor;
use crate::config::{Config, TcpAuth, socket_dir_mode};
use crate::session::Session;
use crate::shared::Shared;
use crate::{Backend, Error, startup};

/// The sockets `serve` accepts on.
#[derive(Debug)]
pub struct Listeners {
    /// The Unix socket (trust authentication).
    pub unix: UnixListener,
    /// The optional TCP socket (see [`Config::tcp_auth`]).
    pub tcp: Option<TcpListener>,
}

/// A running bridge: its sockets and the task serving them.
pub struct Bridge {
    socket_path: PathBuf,
    tcp_addr: Option<SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    interrupter: Interrupter,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("socket_path", &self.socket_path).field("tcp_addr", &self.tcp_addr).finish()
    }
}

/// Cancels what every client is running and stops the bridge, from any thread (see
/// [`Bridge::interrupter`]).
#[derive(Clone)]
pub struct Interrupter {
    all: Arc<dyn InterruptAll>,
    shutdown: Arc<watch::Sender<bool>>,
}

trait InterruptAll: Send + Sync {
    fn interrupt_all(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    fn begin_stop(&self);
}

impl<B: Backend> InterruptAll for Shared<B> {
    fn begin_stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn interrupt_all(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let any = {
                let keys = self.cancel_keys.lock().unwrap_or_else(|p| p.into_inner());
                // Every client's flag, not just up to the first running one.
                keys.values().filter(|entry| entry.run.cancel()).count() > 0
            };
            if any {
                self.backend.cancel().await;
            }
        })
    }
}

impl Interrupter {
    /// Cancels every client's request in flight (queued or running), as a cancel request
    /// from each would.
    pub async fn interrupt_all(&self) {
        self.all.interrupt_all().await;
    }

    /// Begins the bridge's stop: no client starts anything more (each is ended with `57P01`
    /// at its next message) and what they are running is cancelled. [`Bridge::close`] then
    /// finishes the stop.
    pub async fn stop_serving(&self) {
        self.all.begin_stop();
        let _ = self.shutdown.send(true);
        self.interrupt_all().await;
    }
}

impl Bridge {
    /// Prepares the backend session, creates the sockets and starts serving; returns as soon
    /// as clients can connect.
    pub async fn listen<B: Backend>(backend: B, config: Config) -> Result<Bridge, Error> {
        let listeners = bind(&config).await?;
        let socket_path = config.socket_path();
        let tcp_addr = match &listeners.tcp {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let shared = prepare(backend, config).await?;
        let (shutdown, mut signal) = watch::channel(false);
        let shutdown = Arc::new(shutdown);
        let interrupter = Interrupter { all: shared.clone(), shutdown: shutdown.clone() };
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = signal.wait_for(|stop| *stop).await;
            };
            run(listeners, shared, stop).await
        });
        Ok(Bridge { socket_path, tcp_addr, shutdown, task: Some(task), interrupter })
    }

    /// What cancels every client's request in flight, usable from any thread, for as long as
    /// the process lives: a signal handler on a thread of its own can cut short a query the
    /// serving runtime is busy with.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// The Unix socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The TCP address actually bound, if TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting, cancels what clients are running, ends every connection once its
    /// current message is done (open transactions are rolled back) and waits until all are
    /// gone.
    pub async fn close(mut self) -> Result<(), Error> {
        self.interrupter.stop_serving().await;
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|join| Err(Error::Io(std::io::Error::other(format!("bridge task failed: {join}"))))),
            None => Ok(()),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping without `close` still stops the service; it just is not awaited.
        let _ = self.shutdown.send(true);
    }
}

/// Creates the Unix socket (and the TCP one if configured) as `Config` describes.
pub async fn bind(config: &Config) -> Result<Listeners, Error> {
    let dir = &config.socket_dir;
    if config.socket_mode & !0o777 != 0 {
        return Err(Error::Config { reason: format!("socket mode {:o} is not a permission mode", config.socket_mode) });
    }
    let dir_mode = socket_dir_mode(config.socket_mode);
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(dir_mode).create(dir)?;
    }
    if dir_mode != 0o700 || config.socket_group.is_some() {
        // Opening the directory up is asked for explicitly; narrowing it is the caller's.
        let current = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(current | dir_mode))?;
        if let Some(gid) = config.socket_group {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
        }
    }
    let path = config.socket_path();
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::Config { reason: format!("{} exists and is not a socket", path.display()) });
        }
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(Error::SocketInUse { path });
        }
        // A stale socket from a previous run.
        std::fs::remove_file(&path)?;
    }
    let unix = UnixListener::bind(&path)?;
    if let Some(gid) = config.socket_group {
        std::os::unix::fs::chown(&path, None, Some(gid))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))?;
    let tcp = match config.tcp {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    Ok(Listeners { unix, tcp })
}

/// Serves clients on `listeners` until `shutdown` completes, then ends every connection as
/// [`Bridge::close`] describes and returns.
pub async fn serve<B: Backend>(
    listeners: Listeners,
    backend: B,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let shared = prepare(backend, config).await?;
    run(listeners, shared, shutdown).await
}

async fn prepare<B: Backend>(backend: B, config: Config) -> Result<Arc<Shared<B>>, Error> {
    if let Some(addr) = config.tcp
        && config.tcp_auth == TcpAuth::Trust
        && !addr.ip().is_loopback()
    {
        return Err(Error::Config {
            reason: format!("a TCP listener on a non-loopback address ({addr}) needs password authentication"),
        });
    }
    let (session, baseline) = Session::bootstrap(&backend).await?;
    let gone = session.gone_flag();
    let max_request = backend.max_request();
    let notifications = backend.delivers_notifications();
    let refuse = crate::Refuse {
        listen: config.refuse.listen || !notifications,
        notify: config.refuse.notify || !notifications,
        ..config.refuse
    };
    Ok(Arc::new(Shared {
        gone,
        max_request,
        backend,
        slots: Arc::new(Semaphore::new(config.max_connections)),
        config,
        lease: Arc::new(tokio::sync::Mutex::new(session)),
        baseline,
        mock_secret: rand::rng().random(),
        cancel_keys: StdMutex::new(HashMap::new()),
        startup_cache: StdMutex::new(HashMap::new()),
        next_client: AtomicU32::new(1),
        waiting: AtomicUsize::new(0),
        stopping: std::sync::atomic::AtomicBool::new(false),
        refuse,
        hub: crate::notify::Hub::default(),
    }))
}

async fn run<B: Backend>(
    listeners: Listeners,
    shared: Arc<Shared<B>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let unix_path = listeners.unix.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let (greeted_tx, mut greeted) = mpsc::unbounded_channel();
    let acceptor = Acceptor::spawn(listeners, shared.clone(), greeted_tx, stop_rx.clone())?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(client) = greeted.recv() => {
                tasks.spawn(startup::run(shared.clone(), client, stop_rx.clone()));
            }
            Some(done) = tasks.join_next() => {
                if let Err(error) = done {
                    tracing::error!(%error, "a connection task failed");
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    acceptor.stopped().await;
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done {
            tracing::error!(%error, "a connection task failed");
        }
    }
    Ok(())
}
