//! `EmbeddedPgRuntime`: one PGlite instance and the bridge in front of it, started once and
//! stopped cleanly.
//!
//! Layout of a runtime directory: the cluster in `data/`, the socket `.s.PGSQL.5432` beside it,
//! so `psql -h <runtime_dir>` connects. Caches live next to the artifact: compiled modules in
//! `<cache_dir>/modules`, the pristine cluster in `<cache_dir>/<version>/template`.
//!
//! The lifecycle state sits behind an async mutex: `start` holds it for the whole boot, so
//! concurrent starters queue behind the first and find the server running; `stop` holds it
//! while it closes the bridge (rolling back open transactions), then stops the host (shutdown
//! checkpoint). Nothing here spawns tasks of its own: the bridge's task is owned by the bridge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use pglite_host::Pglite;
use tokio::time::Instant;

use crate::{Artifact, BridgeConfig, Error, PgSocketBridge, PgliteBackend, probe};

/// The socket's file name: the one `psql -h <dir>` looks for with the default port.
pub use pg_bridge::DEFAULT_SOCKET_NAME as SOCKET_NAME;

/// Longest socket path the platform accepts (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

/// How long [`EmbeddedPgRuntime::healthy`] waits for its query to be answered.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded PostgreSQL server of one runtime directory.
///
/// Methods take `&self`; share it with an `Arc` to start, probe and stop from several tasks.
/// Call [`stop`](Self::stop) before dropping a started runtime: dropping it still stops the
/// server, but without waiting for clients to be ended.
pub struct EmbeddedPgRuntime {
    runtime_dir: PathBuf,
    artifact: pglite_host::Artifact,
    host_config: pglite_host::Config,
    bridge_config: BridgeConfig,
    state: tokio::sync::Mutex<Option<Running>>,
    /// What is running, for `healthy` and `tcp_addr` (which must not queue behind a start or
    /// a stop).
    serving: StdMutex<Option<Serving>>,
}

#[derive(Clone)]
struct Serving {
    host: Arc<Pglite>,
    tcp_addr: Option<SocketAddr>,
    interrupter: pg_bridge::Interrupter,
}

struct Running {
    host: Arc<Pglite>,
    bridge: PgSocketBridge,
}

impl EmbeddedPgRuntime {
    /// A runtime keeping its data in `<runtime_dir>/data` and listening on
    /// `<runtime_dir>/.s.PGSQL.5432`. Nothing happens until [`start`](Self::start).
    pub fn new(runtime_dir: impl Into<PathBuf>, artifact: Artifact) -> EmbeddedPgRuntime {
        let runtime_dir = runtime_dir.into();
        let cache_dir = artifact.dir.parent().map(|dir| dir.as_std_path().to_path_buf());
        let mut host_config = pglite_host::Config::new(runtime_dir.join("data"));
        host_config.module_cache_dir = cache_dir.map(|dir| dir.join("modules"));
        host_config.template_dir = Some(artifact.dir.as_std_path().join("template"));
        host_config.new_database = crate::DEFAULT_DATABASE.to_owned();
        // As initdb does, the OS user running the server is a superuser, so connection
        // strings that name no user (libpq then sends the OS user's name) work.
        host_config.superusers = os_user_name().into_iter().filter(|name| name != "postgres").collect();
        let mut bridge_config = BridgeConfig::new(&runtime_dir);
        bridge_config.busy_poll = Duration::from_micros(crate::DEFAULT_BUSY_POLL_US);
        let artifact = pglite_host::Artifact {
            version: artifact.version,
            wasm: artifact.wasm.into_std_path_buf(),
            wasm_sha256: artifact.wasm_sha256,
            package_root: artifact.root.into_std_path_buf(),
            initdb: artifact.initdb.map(|(path, sha256)| (path.into(), sha256)),
        };
        EmbeddedPgRuntime {
            runtime_dir,
            artifact,
            host_config,
            bridge_config,
            state: tokio::sync::Mutex::new(None),
            serving: StdMutex::new(None),
        }
    }

    /// The bridge's settings (TCP listener and its authentication, connection limit, timeouts); changes
    /// apply at the next start. The socket is `socket_dir/socket_name`, by default
    /// [`sock_path`](Self::sock_path).
    pub fn bridge_config_mut(&mut self) -> &mut BridgeConfig {
        &mut self.bridge_config
    }

    /// Sets the password of the bootstrap superuser `postgres` at every start (stored in
    /// `pg_authid` as a SCRAM-SHA-256 secret) and makes TCP clients authenticate with their
    /// role's stored password ([`TcpAuth::Password`](crate::TcpAuth::Password)), which also lets the TCP
    /// listener use a non-loopback address. The Unix socket still trusts. An empty password
    /// fails the start.
    pub fn set_password(&mut self, password: impl Into<String>) {
        self.host_config.postgres_password = Some(password.into());
        self.bridge_config.tcp_auth = pg_bridge::TcpAuth::Password;
    }

    /// The host's settings (data directory, caches); changes apply at the next start. The
    /// start-up bound is always the one passed to [`start`](Self::start).
    pub fn host_config_mut(&mut self) -> &mut pglite_host::Config {
        &mut self.host_config
    }

    /// Serves database `name`, created at the next start if the cluster lacks it. By default
    /// a runtime serves the database its cluster was made with: [`DEFAULT_DATABASE`]
    /// (`nself`) for clusters made by this version, `postgres` for older ones.
    ///
    /// [`DEFAULT_DATABASE`]: crate::DEFAULT_DATABASE
    pub fn set_database(&mut self, name: impl Into<String>) {
        self.host_config.database = Some(name.into());
    }

    /// The database being served (known once started).
    pub fn database(&self) -> Option<String> {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving.as_ref().map(|serving| serving.host.boot_info().database.clone())
    }

    /// Makes these extension bundles (from [`fetch_extensions`](crate::fetch_extensions))
    /// available to `CREATE EXTENSION` from the next start.
    pub fn set_extensions(&mut self, extensions: &[pglite_fetch::Extension]) {
        self.host_config.extensions = extensions.iter().map(|ext| ext.root.clone().into_std_path_buf()).collect();
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// The cluster's directory.
    pub fn data_dir(&self) -> &Path {
        &self.host_config.data_dir
    }

    /// The PGlite release this runtime runs.
    pub fn pglite_version(&self) -> &str {
        &self.artifact.version
    }

    /// The Unix socket clients connect to; its directory is the `host` of a connection string
    /// (`host=<dir> dbname=nself sslmode=disable`).
    pub fn sock_path(&self) -> PathBuf {
        self.bridge_config.socket_path()
    }

    /// The TCP address actually bound while running with a TCP listener (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|serving| serving.tcp_addr)
    }

    /// Boots PostgreSQL and starts listening; returns once clients can connect. Idempotent:
    /// when the server is already running, or another task is starting it, this waits for
    /// that and returns `Ok`. `timeout` bounds this start-up only, never the running server.
    pub async fn start(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let timed_out = |_| Error::StartupTimeout(timeout);
        let mut state = tokio::time::timeout_at(deadline, self.state.lock()).await.map_err(timed_out)?;
        if state.is_some() {
            return Ok(());
        }
        let sock_path = self.sock_path();
        let len = sock_path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong { path: sock_path, len, max: MAX_SOCKET_PATH });
        }

        let mut host_config = self.host_config.clone();
        host_config.startup_timeout = deadline.saturating_duration_since(Instant::now());
        let artifact = self.artifact.clone();
        // If this future is dropped mid-boot, the guard stops the instance once it is up.
        let mut guard = tokio::task::spawn_blocking(move || Pglite::start(artifact, host_config).map(StopGuard::new))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            .map_err(|err| match err {
                pglite_host::Error::StartupTimeout(_) => Error::StartupTimeout(timeout),
                err => Error::Host(err),
            })?;
        let host = guard.host.clone().expect("a new guard holds its instance");
        tracing::info!(
            version = %self.artifact.version,
            kind = ?host.boot_info().kind,
            took = ?host.boot_info().total,
            "PostgreSQL is up"
        );

        let mut bridge_config = self.bridge_config.clone();
        bridge_config.database = host.boot_info().database.clone();
        // Tools that open the conventional maintenance database reach the served one, and so
        // does the seed's connection string on clusters made before `nself` was the default.
        for alias in ["postgres", crate::DEFAULT_DATABASE] {
            if bridge_config.database != alias && !bridge_config.database_aliases.iter().any(|a| a == alias) {
                bridge_config.database_aliases.push(alias.to_owned());
            }
        }
        let database = bridge_config.database.clone();
        let listen = async {
            let backend = PgliteBackend::new(host.clone()).await?;
            Ok::<_, Error>(PgSocketBridge::listen(backend, bridge_config).await?)
        };
        let failure = match tokio::time::timeout_at(deadline, listen).await {
            Ok(Ok(bridge)) => {
                tracing::info!(socket = %sock_path.display(), %database, "accepting connections");
                let serving =
                    Serving { host: host.clone(), tcp_addr: bridge.tcp_addr(), interrupter: bridge.interrupter() };
                *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(serving);
                *state = Some(Running { host, bridge });
                guard.host = None;
                return Ok(());
            }
            Ok(Err(err)) => err,
            Err(_) => Error::StartupTimeout(timeout),
        };
        guard.host = None;
        if let Err(err) = stop_host(host).await {
            tracing::warn!(%err, "PostgreSQL did not stop cleanly after a failed start");
        }
        Err(failure)
    }

    /// While serving: what cancels every client's running query from any thread, so that a
    /// stop cannot wait for a long query (the CLI calls it from its signal thread before
    /// [`stop`](Self::stop)).
    pub fn interrupter(&self) -> Option<pg_bridge::Interrupter> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.interrupter.clone())
    }

    /// Stops accepting, ends every client (open transactions are rolled back), stops
    /// PostgreSQL with a shutdown checkpoint and removes the socket. Idempotent; a no-op when
    /// the server is not running.
    pub async fn stop(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let Some(Running { host, bridge }) = state.take() else {
            return Ok(());
        };
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).take();
        let bridge_result = bridge.close().await;
        let host_result = stop_host(host).await;
        let sock_path = self.sock_path();
        let socket_result = match std::fs::remove_file(&sock_path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path: sock_path, source: err }),
            _ => Ok(()),
        };
        tracing::info!("PostgreSQL stopped");
        bridge_result?;
        host_result?;
        socket_result
    }

    /// True only while the socket accepts connections and PostgreSQL answers a query through
    /// it within a few seconds (a client holding a long transaction can make this false).
    pub async fn healthy(&self) -> bool {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match serving {
            Some(serving) if serving.host.healthy() => {
                let sock_path = self.sock_path();
                let database = serving.host.boot_info().database.clone();
                let probe = probe::query_through(&sock_path, &database);
                tokio::time::timeout(HEALTH_TIMEOUT, probe).await.is_ok_and(|answered| answered)
            }
            _ => false,
        }
    }
}

impl Drop for EmbeddedPgRuntime {
    fn drop(&mut self) {
        if let Some(Running { host, bridge }) = self.state.get_mut().take() {
            // Stops accepting; the bridge's task ends its clients on its own.
            drop(bridge);
            if let Err(err) = host.stop() {
                tracing::warn!(%err, "PostgreSQL did not stop cleanly");
            }
        }
    }
}

/// The name of the OS user running this process, if it has one.
fn os_user_name() -> Option<String> {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => Some(user.name),
        _ => None,
    }
}

/// Stops the instance it holds when dropped, unless disarmed by taking `host`.
struct StopGuard {
    host: Option<Arc<Pglite>>,
}

impl StopGuard {
    fn new(host: Pglite) -> StopGuard {
        StopGuard { host: Some(Arc::new(host)) }
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Some(host) = self.host.take()
            && let Err(err) = host.stop()
        {
            tracing::warn!(%err, "PostgreSQL did not stop cleanly after an abandoned start");
        }
    }
}

/// Stops the host on a blocking thread: the shutdown checkpoint writes the cluster to disk.
async fn stop_host(host: Arc<Pglite>) -> Result<(), Error> {
    host.stop_async().await.map_err(Error::Host)
}
