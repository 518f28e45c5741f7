//! Real drivers through the command, on every pinned release: asyncpg, psycopg 3, node-postgres
//! and postgres.js, each driven by a program in `tests/drivers/` that checks exact results
//! (prepared statements reused, pipelining, typed round trips, errors inside transactions,
//! 4.5 MiB parameters, settings changed and read back through the driver's own view, pools).
//!
//! The programs hold what native PostgreSQL of the same major does, and pass against it
//! unchanged (`PGHOST=<socket dir> PGDATABASE=postgres PGUSER=postgres python3
//! tests/drivers/psycopg_check.py`); here they run against the command, which must behave the
//! same. Python with the drivers and the Node packages come from `cargo xtask tools`
//! (`NSELF_PYTHON`, `NSELF_NODE_PATH`, default `<workspace>/target/tools/...`); Node itself is
//! `node` on PATH.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::support::{RELEASES, Server};

/// Bounds one program's run. Each program gives up on a stuck scenario after 180 s by itself;
/// this catches a program that cannot even do that.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(20 * 60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tool `var` names, else its default under the workspace; panics if it is not there.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| workspace().join(default), PathBuf::from);
    assert!(path.exists(), "{} not found ({var}): run `cargo xtask tools`", path.display());
    path
}

fn python() -> PathBuf {
    tool("NSELF_PYTHON", "target/tools/venv/bin/python")
}

fn node_path() -> PathBuf {
    tool("NSELF_NODE_PATH", "target/tools/node/node_modules")
}

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers").join(name)
}

/// Runs `cmd` (a driver program) against `server` and returns its exit status and everything
/// it printed, standard error after standard output.
fn run(mut cmd: Command, server: &Server) -> (ExitStatus, String) {
    // libpq and the Node drivers read PG* variables (PGOPTIONS, PGTZ, PGAPPNAME, ...) that
    // would change what the programs check; the connection is given explicitly instead.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    cmd.env("PGHOST", &server.dir)
        .env("PGDATABASE", "nself")
        .env("PGUSER", "postgres")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {cmd:?} ({err}): run `cargo xtask tools`, and put Node 20 on PATH"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The child is waited for on a thread of its own, so the wait can be bounded.
    let pid = child.id();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done.recv_timeout(PROGRAM_TIMEOUT) {
        Ok(status) => status.expect("waiting for the driver program"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let status = done.recv().expect("the waiter reports").expect("waiting for the killed program");
            let output = format!("{}\n--- stderr\n{}", out.join().unwrap(), err.join().unwrap());
            panic!("{cmd:?} still running after {PROGRAM_TIMEOUT:?} ({status}); its output:\n{output}");
        }
    };
    (status, format!("{}\n--- stderr\n{}", out.join().unwrap(), err.join().unwrap()))
}

/// Starts the command on each release and runs the program `make` builds against it; fails
/// with the program's output (one line per scenario) and the server's log for every release it
/// failed on, after trying them all.
fn on_every_release(driver: &str, make: impl Fn(&str) -> Command) {
    let mut failures = Vec::new();
    for version in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), version);
        let (status, output) = run(make(version), &server);
        if status.success() {
            eprintln!("{driver} on PGlite {version}:\n{output}");
        } else {
            failures.push(format!(
                "{driver} on PGlite {version}: {status}\n{output}\n--- nself-embedded stderr\n{}",
                server.stderr()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn python_program(name: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(program(name));
    cmd
}

fn node_program(name: &str) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(program(name)).env("NODE_PATH", node_path());
    cmd
}

#[test]
fn asyncpg_gets_exact_results() {
    on_every_release("asyncpg", |_| python_program("asyncpg_check.py"));
}

#[test]
fn psycopg_gets_exact_results() {
    on_every_release("psycopg", |_| python_program("psycopg_check.py"));
}

#[test]
fn node_postgres_gets_exact_results() {
    on_every_release("node-postgres", |_| node_program("node_pg_check.js"));
}

#[test]
fn postgres_js_gets_exact_results() {
    on_every_release("postgres.js", |version| {
        let mut cmd = node_program("postgres_js_check.js");
        if version == "0.2.17" {
            // postgres.js sends COPY through the extended protocol, which PGlite 0.2 cannot
            // stream (README "Many clients, one backend"; the refusal is checked by
            // `differential::scripts_extended::extended_copy_in_is_refused_on_0_2`).
            cmd.arg("--skip=COPY");
        }
        cmd
    });
}
