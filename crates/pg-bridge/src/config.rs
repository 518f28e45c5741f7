//! [`Config`]: how the bridge listens and treats clients, with the defaults of a private Unix
//! socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The socket's file name by default: the one `psql -h <dir>` looks for with the default port.
pub const DEFAULT_SOCKET_NAME: &str = ".s.PGSQL.5432";

/// How the bridge listens and treats clients.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the Unix socket; created with mode 0700 if it does not exist.
    pub socket_dir: PathBuf,
    /// File name of the Unix socket; the default lets `psql -h <socket_dir>` connect.
    pub socket_name: String,
    /// A TCP address to listen on too; off unless set. A non-loopback address needs
    /// [`TcpAuth::Password`].
    pub tcp: Option<SocketAddr>,
    /// How clients on the TCP listener authenticate; the Unix socket always trusts.
    pub tcp_auth: TcpAuth,
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
    /// Commands answered with `0A000` instead of run, as the seed's bridge did with all three.
    /// `LISTEN` and `NOTIFY` are refused anyway where the backend cannot deliver its session's
    /// notifications ([`Backend::delivers_notifications`](crate::Backend::delivers_notifications)).
    pub refuse: Refuse,
}

/// Commands the bridge answers with `0A000` (`... is not supported by this server`) instead of
/// running them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refuse {
    pub copy: bool,
    pub listen: bool,
    pub notify: bool,
}

impl Default for Refuse {
    fn default() -> Refuse {
        Refuse::none()
    }
}

impl Refuse {
    /// Nothing refused.
    pub fn none() -> Refuse {
        Refuse { copy: false, listen: false, notify: false }
    }

    /// Each of the three.
    pub fn all() -> Refuse {
        Refuse { copy: true, listen: true, notify: true }
    }

    /// `copy,listen,notify` (any of them, comma separated; empty for none).
    pub fn parse(text: &str) -> Result<Refuse, String> {
        let mut res = Refuse::none();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "copy" => res.copy = true,
                "listen" => res.listen = true,
                "notify" => res.notify = true,
                other => return Err(format!("cannot refuse {other:?}: only copy, listen and notify")),
            }
        }
        Ok(res)
    }
}

/// How clients on the TCP listener authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcpAuth {
    /// Every client is trusted as the role it names, as on the Unix socket. Refused for a
    /// non-loopback address.
    #[default]
    Trust,
    /// Each role with the password stored for it in `pg_authid`, as `ALTER ROLE ... PASSWORD`
    /// stored it: SCRAM-SHA-256 for a SCRAM secret, MD5 for an md5 hash (PostgreSQL's `md5`
    /// method in `pg_hba.conf`). Read at every login, so a changed password applies at the
    /// next one. A role without a password (or with an expired one), or that does not exist,
    /// fails with `28P01` after an exchange that does not tell which. The backend's own role
    /// must be able to read `pg_authid` (a superuser).
    Password,
}

impl Config {
    /// Defaults for a socket in `socket_dir`.
    pub fn new(socket_dir: impl Into<PathBuf>) -> Config {
        Config {
            socket_dir: socket_dir.into(),
            socket_name: DEFAULT_SOCKET_NAME.to_owned(),
            tcp: None,
            tcp_auth: TcpAuth::Trust,
            database: "postgres".to_owned(),
            database_aliases: Vec::new(),
            socket_mode: 0o600,
            socket_group: None,
            max_connections: 100,
            idle_in_transaction_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            busy_poll: Duration::ZERO,
            poll_while_queued: Duration::from_micros(100),
            refuse: Refuse::default(),
        }
    }

    /// The Unix socket's full path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(&self.socket_name)
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
