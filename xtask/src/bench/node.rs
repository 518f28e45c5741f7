//! The PGlite-in-Node baseline: `@electric-sql/pglite-socket`'s `pglite-server`, installed
//! with npm into `<target>/bench/node` and serving a Unix socket.
//!
//! pglite-socket pins its PGlite peer exactly, and its first release needs PGlite 0.3.1: PGlite
//! 0.2.x cannot take a client's startup message through `execProtocolRaw` (tried: it answers
//! "invalid frontend message type 0"), so 0.2.17 has no Node baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;

use super::native::which;
use super::nself::{Starts, median_ms};
use super::procs::{Proc, wait_ready};
use super::{Ctx, Endpoint};

/// The PGlite release the Node baseline runs and the pglite-socket release built for it.
pub(crate) const PGLITE: &str = "0.3.16";
const PGLITE_SOCKET: &str = "0.0.22";

/// Installs the two packages unless they are there already; returns the server script.
pub(crate) fn install(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    if which("node").is_none() || which("npm").is_none() {
        bail!("node and npm are not installed");
    }
    let dir = ctx.out_dir.join("node");
    let modules = dir.join("node_modules/@electric-sql");
    let script = modules.join("pglite-socket/dist/scripts/server.js");
    let installed = |package: &str, version: &str| {
        let manifest = std::fs::read_to_string(modules.join(package).join("package.json")).unwrap_or_default();
        manifest.contains(&format!("\"version\": \"{version}\""))
    };
    if installed("pglite", PGLITE) && installed("pglite-socket", PGLITE_SOCKET) && script.exists() {
        return Ok(script);
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("package.json"), "{ \"private\": true }\n")?;
    eprintln!("bench: npm install @electric-sql/pglite@{PGLITE} @electric-sql/pglite-socket@{PGLITE_SOCKET}");
    let status = Command::new("npm")
        .current_dir(&dir)
        .args(["install", "--no-audit", "--no-fund", "--save-exact"])
        // Standard output is the report's.
        .stdout(std::io::stderr())
        .arg(format!("@electric-sql/pglite@{PGLITE}"))
        .arg(format!("@electric-sql/pglite-socket@{PGLITE_SOCKET}"))
        .status()
        .context("running npm install")?;
    if !status.success() {
        bail!("npm install failed ({status})");
    }
    if !script.exists() {
        bail!("{} is missing after npm install", script.display());
    }
    Ok(script)
}

/// `pglite-server` on the database directory `db`; returns the guard, its endpoint and the
/// time from spawn to the first answered `SELECT 1`.
pub(crate) fn start(
    ctx: &Ctx,
    script: &Path,
    db: &Path,
    socket_dir: &Path,
) -> anyhow::Result<(Proc, Endpoint, Duration)> {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .arg(format!("--db={}", db.display()))
        .arg(format!("--path={}", socket_dir.join(".s.PGSQL.5432").display()))
        // The default is one connection at a time; pgbench runs eight.
        .arg("--max-connections=100");
    let endpoint = Endpoint { dir: socket_dir.to_owned(), port: 5432, password: Some("postgres".to_owned()) };
    let started = Instant::now();
    let mut proc = Proc::spawn("pglite-server (Node)", cmd, &ctx.log("node"), Signal::TERM)?;
    let ready = wait_ready(&ctx.rt, &endpoint, &mut proc, Duration::from_secs(300))?;
    Ok((proc, endpoint, ready - started))
}

/// New databases (a new `--db` directory each), then warm restarts of the last one (medians);
/// the last restart keeps running.
pub(crate) fn measure_starts(ctx: &Ctx, script: &Path, repeats: usize) -> anyhow::Result<Starts> {
    eprintln!("bench: PGlite in Node ({}): new databases and restarts", node_version());
    let mut new_database = Vec::new();
    let mut db = PathBuf::new();
    for index in 0..repeats {
        db = ctx.scratch_dir(&format!("node-db{index}"))?.join("pgdata");
        let socket_dir = ctx.scratch_dir(&format!("node-new{index}"))?;
        let (server, _, elapsed) = start(ctx, script, &db, &socket_dir)?;
        new_database.push(elapsed);
        server.stop()?;
    }
    let mut restarts = Vec::new();
    let mut running = None;
    for index in 0..repeats + 2 {
        if let Some((server, _)) = running.take() {
            Proc::stop(server)?;
        }
        // A fresh socket directory each time: no stale socket file to trip over.
        let socket_dir = ctx.scratch_dir(&format!("node-restart{index}"))?;
        let (server, endpoint, elapsed) = start(ctx, script, &db, &socket_dir)?;
        if index > 0 {
            restarts.push(elapsed);
        }
        running = Some((server, endpoint));
    }
    let (server, endpoint) = running.context("no server left running")?;
    Ok(Starts {
        first_run: None,
        new_database: median_ms(&new_database),
        warm_restart: median_ms(&restarts),
        server,
        endpoint,
    })
}

/// `node --version`.
pub(crate) fn node_version() -> String {
    super::native::version_of(Path::new("node"))
}

/// `SELECT 1` through PGlite's own `execProtocolRaw` in Node (no socket), in µs per round
/// trip: the in-process figure the host's `exec_protocol` is compared with. Installs
/// `@electric-sql/pglite@<version>` into `<target>/bench/node-<version>`.
pub(crate) fn exec_protocol_round_trip(ctx: &Ctx, version: &str) -> anyhow::Result<f64> {
    if which("node").is_none() || which("npm").is_none() {
        bail!("node and npm are not installed");
    }
    let dir = ctx.out_dir.join(format!("node-{version}"));
    let manifest = dir.join("node_modules/@electric-sql/pglite/package.json");
    if !std::fs::read_to_string(&manifest).unwrap_or_default().contains(&format!("\"version\": \"{version}\"")) {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("package.json"), "{ \"private\": true, \"type\": \"module\" }\n")?;
        eprintln!("bench: npm install @electric-sql/pglite@{version}");
        let status = Command::new("npm")
            .current_dir(&dir)
            .args(["install", "--no-audit", "--no-fund", "--save-exact"])
            .arg(format!("@electric-sql/pglite@{version}"))
            .stdout(std::io::stderr())
            .status()
            .context("running npm install")?;
        if !status.success() {
            bail!("npm install failed ({status})");
        }
    }
    let script = dir.join("rtt.mjs");
    std::fs::write(&script, RTT_SCRIPT)?;
    let output = Command::new("node").current_dir(&dir).arg(&script).output().context("running node")?;
    if !output.status.success() {
        bail!("node failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.trim().parse::<f64>().with_context(|| format!("unexpected output from node: {stdout}"))
}

/// Times 20 000 `SELECT 1` Query messages through `execProtocolRaw`, after 1 000 to warm up.
const RTT_SCRIPT: &str = r"import { PGlite } from '@electric-sql/pglite';
const pg = await PGlite.create();
const sql = Buffer.from('SELECT 1\0');
const msg = Buffer.alloc(5 + sql.length);
msg.write('Q', 0);
msg.writeUInt32BE(sql.length + 4, 1);
sql.copy(msg, 5);
const query = new Uint8Array(msg);
for (let i = 0; i < 1000; i++) await pg.execProtocolRaw(query);
const n = 20000;
const start = process.hrtime.bigint();
for (let i = 0; i < n; i++) await pg.execProtocolRaw(query);
console.log((Number(process.hrtime.bigint() - start) / 1000 / n).toFixed(3));
await pg.close();
";
