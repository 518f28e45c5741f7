//! Listening and shutdown: [`Config`], [`Bridge`] and [`serve`].
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::lease::{Session, bootstrap};
use crate::settings::Settings;
use crate::socket::Socket;
use crate::{Backend, Error, scram, startup};

/// How the bridge listens and treats clients.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the Unix socket; created with mode 0700 if it does not exist.
    pub socket_dir: PathBuf,
    /// File name of the Unix socket; the default lets `psql -h <socket_dir>` connect.
    pub socket_name: String,
    /// A TCP address to listen on too; off unless set (use a loopback address).
    pub tcp: Option<SocketAddr>,
    /// Password required over TCP (SCRAM-SHA-256); the Unix socket always trusts.
    pub tcp_password: Option<String>,
    /// The one database served; any other name (but `database_aliases`) gets `3D000`.
    pub database: String,
    /// Other names clients may connect with to reach `database`, such as `postgres` for
    /// tools that open the conventional maintenance database.
    pub database_aliases: Vec<String>,
    /// Permission bits of the Unix socket. Whoever can connect to it is trusted: grant
    /// access to a group or to everyone only where all of them may act as any database user.
    /// The socket's directory is made searchable for the same classes of users.
    pub socket_mode: u32,
    /// Group given ownership of the socket and its directory (a numeric gid), so that
    /// `socket_mode`'s group bits admit its members (containers running as another user).
    pub socket_group: Option<u32>,
    /// Most clients at once; one more gets `53300`.
    pub max_connections: usize,
    /// How long a client may hold the backend idle inside a transaction (or an unfinished
    /// extended-protocol sequence) before it is ended with `25P03` and rolled back.
    pub idle_in_transaction_timeout: Duration,
    /// How long a new connection may take to finish its startup phase.
    pub startup_timeout: Duration,
    /// After answering a client, how long to keep polling for its next message before the
    /// event loop may sleep (zero: sleep at once). Each reply may cost up to this much CPU. It
    /// pays off where a CPU that went idle comes back with cold caches, as virtual machines'
    /// do: with PGlite behind the bridge, a lone client's next query then runs up to twice as
    /// fast. Other clients are served while one polls.
    pub busy_poll: Duration,
    /// While other clients wait for the backend, how long the client holding it keeps polling
    /// for the backend's answer before the event loop may sleep (zero: sleep at once). Costs
    /// CPU only while clients queue, up to this much per exchange. It pays off with a backend
    /// that answers from another process (`UpstreamBackend`): the answer is read as it arrives,
    /// not after the CPU went idle and was woken, and the next client's request goes out that
    /// much sooner. In front of native PostgreSQL on a 2-vCPU virtual machine, eight pgbench
    /// clients got 1.1–2.3x PgBouncer's throughput, at 1.3–2.7x its CPU per transaction
    /// (`cargo xtask bench bridge`). A backend that answers inline never waits here.
    pub poll_while_queued: Duration,
}

impl Config {
    /// Defaults for a socket in `socket_dir`.
    pub fn new(socket_dir: impl Into<PathBuf>) -> Config {
        Config {
            socket_dir: socket_dir.into(),
            socket_name: ".s.PGSQL.5432".to_owned(),
            tcp: None,
            tcp_password: None,
            database: "postgres".to_owned(),
            database_aliases: Vec::new(),
            socket_mode: 0o600,
            socket_group: None,
            max_connections: 100,
            idle_in_transaction_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            busy_poll: Duration::ZERO,
            poll_while_queued: Duration::from_micros(100),
        }
    }

    /// The Unix socket's full path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(&self.socket_name)
    }
}

/// The sockets `serve` accepts on.
#[derive(Debug)]
pub struct Listeners {
    /// The Unix socket (trust authentication).
    pub unix: UnixListener,
    /// The optional TCP socket (SCRAM when a password is configured).
    pub tcp: Option<TcpListener>,
}

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
    /// All settings after the session baseline, in `current_setting` form.
    pub(crate) baseline: Settings,
    /// The settings the baseline SQL changed from the backend's own defaults, restored after
    /// `RESET`.
    pub(crate) baseline_changes: Settings,
    /// The backend's own role.
    pub(crate) backend_user: String,
    pub(crate) verifier: Option<scram::Verifier>,
    pub(crate) cancel_keys: StdMutex<HashMap<i32, CancelEntry>>,
    /// ParameterStatus values of clients by startup settings, once the backend accepted
    /// them: a pool's next connection then starts without waiting for the lease, which an
    /// open transaction may hold for long.
    pub(crate) startup_cache: StdMutex<HashMap<Settings, Settings>>,
    pub(crate) next_client: AtomicU32,
    pub(crate) slots: Arc<Semaphore>,
    /// The backend's request cap (`Backend::max_request`), read once.
    pub(crate) max_request: Option<usize>,
    /// Set when the backend failed for good.
    pub(crate) gone: Arc<std::sync::atomic::AtomicBool>,
    /// Clients queued on the lease.
    pub(crate) waiting: AtomicUsize,
}

/// A running bridge: its sockets and the task serving them.
#[derive(Debug)]
pub struct Bridge {
    socket_path: PathBuf,
    tcp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
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
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = signal.wait_for(|stop| *stop).await;
            };
            run(listeners, shared, stop).await
        });
        Ok(Bridge { socket_path, tcp_addr, shutdown, task: Some(task) })
    }

    /// The Unix socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The TCP address actually bound, if TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting, ends every connection once its current message is done (open
    /// transactions are rolled back) and waits until all are gone.
    pub async fn close(mut self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
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

/// The mode of the socket's directory for a socket with `socket_mode`: the owner's, plus
/// search permission for the classes of users the socket admits, so they can reach it
/// without being able to list or change the directory.
pub fn socket_dir_mode(socket_mode: u32) -> u32 {
    let mut mode = 0o700;
    if socket_mode & 0o060 != 0 {
        mode |= 0o010;
    }
    if socket_mode & 0o006 != 0 {
        mode |= 0o001;
    }
    mode
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
            return Err(Error::Config { reason: format!("another server is listening on {}", path.display()) });
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
    if config.tcp.is_some() && config.tcp_password.is_none() && !config.tcp.is_some_and(|a| a.ip().is_loopback()) {
        return Err(Error::Config { reason: "a TCP listener on a non-loopback address needs a password".to_owned() });
    }
    let boot = bootstrap(&backend).await?;
    let verifier = config.tcp_password.as_deref().map(scram::Verifier::new);
    let gone = boot.session.gone.clone();
    let max_request = backend.max_request();
    Ok(Arc::new(Shared {
        gone,
        max_request,
        backend,
        slots: Arc::new(Semaphore::new(config.max_connections)),
        config,
        lease: Arc::new(tokio::sync::Mutex::new(boot.session)),
        baseline: boot.baseline,
        baseline_changes: boot.baseline_changes,
        backend_user: boot.backend_user,
        verifier,
        cancel_keys: StdMutex::new(HashMap::new()),
        startup_cache: StdMutex::new(HashMap::new()),
        next_client: AtomicU32::new(1),
        waiting: AtomicUsize::new(0),
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listeners.unix.accept() => match accepted {
                Ok((stream, _)) => match Socket::unix(stream) {
                    Ok(stream) => {
                        tasks.spawn(startup::run(shared.clone(), stream, false, stop_rx.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "registering a unix connection"),
                },
                Err(error) => tracing::warn!(%error, "accepting on the unix socket"),
            },
            accepted = accept_tcp(&listeners.tcp) => match accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match Socket::tcp(stream) {
                        Ok(stream) => {
                            tasks.spawn(startup::run(shared.clone(), stream, true, stop_rx.clone()));
                        }
                        Err(error) => tracing::warn!(%error, "registering a tcp connection"),
                    }
                }
                Err(error) => tracing::warn!(%error, "accepting on the tcp socket"),
            },
            Some(done) = tasks.join_next() => {
                if let Err(error) = done {
                    tracing::error!(%error, "a connection task failed");
                }
            }
        }
    }
    drop(listeners);
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done {
            tracing::error!(%error, "a connection task failed");
        }
    }
    Ok(())
}

async fn accept_tcp(listener: &Option<TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}
