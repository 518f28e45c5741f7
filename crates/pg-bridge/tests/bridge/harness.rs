//! Test harness: one throwaway PostgreSQL cluster per test binary, and bridges in front of it.
//!
//! The server is native PostgreSQL 17.5 from `cargo xtask tools` (`NSELF_NATIVE_PG17_BIN`, else
//! `target/tools/pg17/bin`; `PG_BIN` overrides). PostgreSQL refuses to run as root, so as root
//! the cluster runs as `NSELF_RUN_AS` (default `nobody`), through `setpriv`.
//! The server is started through a shell that stops it when this process's end of a pipe
//! closes, so it does not outlive the test binary even though statics are never dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pg_bridge::{Bridge, Config, UpstreamAddr, UpstreamBackend, UpstreamConfig};

pub(crate) struct Cluster {
    pub(crate) socket_dir: PathBuf,
    _server: Mutex<Child>,
}

fn pg_bin() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/pg17/bin");
    let dir = ["PG_BIN", "NSELF_NATIVE_PG17_BIN"]
        .iter()
        .find_map(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
        .map_or(tools, PathBuf::from);
    assert!(
        dir.join("postgres").exists() && dir.join("initdb").exists(),
        "PostgreSQL server binaries not found in {} (run `cargo xtask tools`: these tests need a \
         real server and must not pass without one)",
        dir.display()
    );
    dir
}

/// The OS user the server runs as when we are root.
fn run_as() -> String {
    std::env::var("NSELF_RUN_AS").ok().filter(|user| !user.is_empty()).unwrap_or_else(|| "nobody".to_owned())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// Runs `program` as [`run_as`] when we are root (with that user's primary group and no
/// other), directly otherwise.
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", run_as())).args(["--init-groups", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

pub(crate) fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster)
}

/// Starts the cluster the tests of this process share; the shell that runs it removes its
/// directory once the server stops (when this process exits and the pipe closes).
fn start_cluster() -> Cluster {
    let bin = pg_bin();
    let base = tempfile::Builder::new().prefix("pg-bridge-cluster").tempdir().unwrap().keep();
    let data = base.join("data");
    let socket_dir = base.join("sock");
    std::fs::create_dir_all(&socket_dir).unwrap();
    if is_root() {
        let status = Command::new("chown").arg("-R").arg(run_as()).arg(&base).status().unwrap();
        assert!(status.success(), "chown of the cluster directory to {} failed", run_as());
    }
    let out = as_pg_user(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

    let postgres = bin.join("postgres");
    let script = format!(
        "'{}' -D '{}' -k '{}' -c listen_addresses='' -c fsync=off -c max_connections=50 \
         -c synchronous_commit=off > '{}' 2>&1 & pid=$!; cat > /dev/null; kill -INT $pid; wait $pid; \
         rm -rf '{}'",
        postgres.display(),
        data.display(),
        socket_dir.display(),
        base.join("server.log").display(),
        base.display(),
    );
    let mut cmd = as_pg_user(Path::new("/bin/sh"));
    let server = cmd.arg("-c").arg(script).stdin(Stdio::piped()).spawn().unwrap();
    // Poll for readiness: the socket accepts connections before the server accepts sessions
    // (until then a session is refused with 57P03), and the tools may lack pg_isready.
    let socket = socket_dir.join(".s.PGSQL.5432");
    let mut ready = false;
    for _ in 0..400 {
        if socket.exists() && starts_a_session(&socket) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(ready, "PostgreSQL did not become ready; see {}", base.join("server.log").display());
    let _ = std::io::stderr().flush();
    Cluster { socket_dir, _server: Mutex::new(server) }
}

/// Whether the server at `socket` lets `postgres` log in: its first reply to a startup packet
/// is `AuthenticationOk`, not an error.
fn starts_a_session(socket: &Path) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request =
        pg_bridge::protocol::frontend::startup(&[("user", "postgres"), ("database", "postgres")]).to_vec();
    request.extend_from_slice(pg_bridge::protocol::frontend::TERMINATE);
    let mut first = [0u8; 1];
    stream.write_all(&request).is_ok() && stream.read_exact(&mut first).is_ok() && first[0] == b'R'
}

pub(crate) struct TestBridge {
    pub(crate) bridge: Option<Bridge>,
    pub(crate) dir: tempfile::TempDir,
}

impl TestBridge {
    pub(crate) fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn socket_path(&self) -> PathBuf {
        self.dir.path().join(".s.PGSQL.5432")
    }

    pub(crate) async fn close(mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.close().await.unwrap();
        }
    }
}

pub(crate) async fn upstream() -> UpstreamBackend {
    let cluster = cluster();
    UpstreamBackend::connect(UpstreamConfig {
        addr: UpstreamAddr::Unix(cluster.socket_dir.join(".s.PGSQL.5432")),
        user: "postgres".to_owned(),
        database: "postgres".to_owned(),
        password: None,
    })
    .await
    .expect("connecting to the test cluster")
}

pub(crate) async fn bridge_with(configure: impl FnOnce(&mut Config)) -> TestBridge {
    let dir = tempfile::Builder::new().prefix("pg-bridge-sock").tempdir().unwrap();
    let mut config = Config::new(dir.path());
    configure(&mut config);
    let bridge = Bridge::listen(upstream().await, config).await.unwrap();
    TestBridge { bridge: Some(bridge), dir }
}

pub(crate) async fn bridge() -> TestBridge {
    bridge_with(|_| {}).await
}

pub(crate) fn client_config(bridge: &TestBridge) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host_path(bridge.socket_dir()).port(5432).user("postgres").dbname("postgres");
    config
}

pub(crate) async fn connect_with(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub(crate) async fn connect(bridge: &TestBridge) -> tokio_postgres::Client {
    connect_with(&client_config(bridge)).await.expect("connecting through the bridge")
}

/// A table name unique to this test run.
pub(crate) fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}
