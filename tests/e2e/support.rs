//! Shared fixtures: the test cache, the artifact, the `nself-embedded` command run as a child
//! process (readiness from its `ready:` line, never from sleeping), and client helpers.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nself_embedded::Artifact;

/// Every PGlite release the command supports; the client suites run on each (those that
/// compare with native PostgreSQL, on the releases whose major has a native server).
pub(crate) const RELEASES: [&str; 4] = ["0.2.17", "0.3.16", "0.5.17", "0.6.1"];

/// Where PGlite `version` keeps its installation in the guest (and in the extracted package).
pub(crate) fn guest_prefix(version: &str) -> &'static str {
    if pglite_host::pg_major(version).is_some_and(|major| major >= 18) { "/pglite" } else { "/tmp/pglite" }
}

/// The command under test (the same `main.rs` as the `nself-embedded` binary).
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_nself-embedded-e2e");

/// Bounds a cold start: download, compile and initdb on a slow CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Bounds a clean stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace's shared test cache root, `NSELF_CACHE_DIR` for the command; the host's
/// tests use the same one.
pub(crate) fn cache_root() -> PathBuf {
    match std::env::var_os("NSELF_TEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache"),
    }
}

/// The verified artifact of the default release in the test cache (fetched once per cache).
pub(crate) async fn artifact() -> Artifact {
    static ARTIFACT: tokio::sync::OnceCell<Artifact> = tokio::sync::OnceCell::const_new();
    ARTIFACT
        .get_or_init(|| async {
            let mut opts = pglite_fetch::FetchOptions::new(nself_embedded::DEFAULT_PGLITE_VERSION);
            opts.cache_dir = camino::Utf8PathBuf::from_path_buf(cache_root().join("pglite")).expect("utf-8 cache path");
            pglite_fetch::ensure(&opts).await.expect("fetching PGlite")
        })
        .await
        .clone()
}

/// `nself-embedded <args>` with the test cache and info logs.
pub(crate) fn command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env("NSELF_CACHE_DIR", cache_root())
        .env("RUST_LOG", "info")
        .env_remove("NSELF_RUNTIME_DIR")
        .env_remove("NSELF_PGLITE_VERSION")
        .stdin(Stdio::null());
    cmd
}

/// A running `nself-embedded start`; killed if dropped while still running.
pub(crate) struct Server {
    pub(crate) dir: PathBuf,
    pid: u32,
    /// Lines of standard output, as they come.
    lines: mpsc::Receiver<String>,
    /// Every standard output line seen so far.
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Reads standard error until the process closes it; joined once the process has exited,
    /// so nothing it wrote is still in flight when a test reads `stderr`.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    exit: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts the command on `dir` and waits for its `ready:` line.
    pub(crate) fn start(dir: &Path) -> Server {
        let mut server = Server::spawn(dir, &[]);
        server.wait_ready();
        server
    }

    /// The process id of the command.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// [`start`](Self::start) on a given PGlite release.
    pub(crate) fn start_release(dir: &Path, version: &str) -> Server {
        Server::start_with(dir, &["--pglite-version", version])
    }

    /// [`start`](Self::start) with extra arguments.
    pub(crate) fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let mut server = Server::spawn(dir, extra);
        server.wait_ready();
        server
    }

    /// Starts the command on `dir` with extra arguments; does not wait.
    pub(crate) fn spawn(dir: &Path, extra: &[&str]) -> Server {
        Server::spawn_env(dir, extra, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub(crate) fn spawn_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir_arg = dir.to_str().expect("utf-8 temp dir");
        let mut args = vec!["start", "--runtime-dir", dir_arg];
        args.extend_from_slice(extra);
        let mut child = command(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nself-embedded");
        let pid = child.id();
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = child_stderr.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let status = wait(child);
            let _ = exit_tx.send(status);
        });
        Server {
            dir: dir.to_owned(),
            pid,
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
            exit,
            status: None,
        }
    }

    /// Waits for the `ready:` line; panics with the command's output if it exits first.
    pub(crate) fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("ready: ");
                    self.stdout.push(line);
                    if ready {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no ready line within {READY_TIMEOUT:?}\n{}", self.output())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit();
                    panic!("nself-embedded exited ({status}) before it was ready\n{}", self.output());
                }
            }
        }
    }

    /// Standard output lines seen so far.
    pub(crate) fn stdout(&self) -> &[String] {
        &self.stdout
    }

    /// Standard error so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn output(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout.join("\n"), self.stderr())
    }

    /// The `DATABASE_URL=` value it printed.
    pub(crate) fn database_url(&self) -> String {
        self.stdout
            .iter()
            .find_map(|line| line.strip_prefix("DATABASE_URL="))
            .unwrap_or_else(|| panic!("no DATABASE_URL line\n{}", self.output()))
            .to_owned()
    }

    /// The Unix socket's path.
    pub(crate) fn sock_path(&self) -> PathBuf {
        self.dir.join(nself_embedded::SOCKET_NAME)
    }

    /// Sends `signal` to the command.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("a real pid");
        rustix::process::kill_process(pid, signal).expect("signalling nself-embedded");
    }

    /// Waits (bounded) for the command to exit.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self
            .exit
            .recv_timeout(EXIT_TIMEOUT)
            .unwrap_or_else(|_| panic!("nself-embedded still running after {EXIT_TIMEOUT:?}\n{}", self.output()));
        self.status = Some(status);
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// SIGTERM, then the exit status and everything it wrote to standard error.
    pub(crate) fn terminate(mut self) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait_exit();
        (status, self.stderr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.status.is_none()
            && self.exit.try_recv().is_err()
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = self.exit.recv_timeout(EXIT_TIMEOUT);
        }
    }
}

fn wait(mut child: Child) -> ExitStatus {
    child.wait().expect("waiting for nself-embedded")
}

/// Runs a client program that CI installs; fails the test clearly when it is missing.
pub(crate) fn client(program: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "30")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}): install the PostgreSQL client tools (postgresql-client, pgbench)")
        });
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, stdin.as_bytes()));
    let output = child.wait_with_output().expect("waiting for the client");
    let _ = writer.join();
    output
}

/// The seed's connection string for the server in `dir`: no user (libpq sends the OS user's
/// name), database `nself`, no TLS.
pub(crate) fn seed_dsn(dir: &Path) -> String {
    format!("host={} dbname=nself sslmode=disable", dir.to_str().expect("utf-8 dir"))
}

/// The name of the OS user running the tests (the role the seed's connection string logs in
/// as).
pub(crate) fn os_user() -> String {
    let out = std::process::Command::new("id").arg("-un").output().expect("running id -un");
    String::from_utf8(out.stdout).expect("a utf-8 user name").trim().to_owned()
}

/// `psql` with the seed's connection string on the server's socket, running `script` from
/// standard input, with verbose errors (SQLSTATEs shown).
pub(crate) fn psql(dir: &Path, extra: &[&str], script: &str) -> Output {
    let dsn = seed_dsn(dir);
    let mut args = vec!["-X", "-d", dsn.as_str(), "-v", "VERBOSITY=verbose"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "-"]);
    client("psql", &args, script)
}

/// Standard output and error of a finished client, for assertions and failure messages.
pub(crate) fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A tokio-postgres connection with the seed's connection string on the socket in `dir`; the
/// connection task is spawned.
/// A tokio-postgres connection to `dsn`, and what its connection task ended with: a FATAL the
/// server sends while the client is idle surfaces there.
pub(crate) async fn connect_watched(
    dsn: &str,
) -> (tokio_postgres::Client, tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>) {
    let config: tokio_postgres::Config = dsn.parse().expect("a valid connection string");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connecting with tokio-postgres");
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(connection.await);
    });
    (client, done)
}

pub(crate) async fn connect(dir: &Path) -> tokio_postgres::Client {
    let config: tokio_postgres::Config = seed_dsn(dir).parse().expect("a valid connection string");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connecting with tokio-postgres");
    tokio::spawn(connection);
    client
}
