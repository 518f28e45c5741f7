//! The native baselines: a throwaway PostgreSQL cluster (initdb in the scratch space, Unix
//! socket only, default settings so fsync is on) and PgBouncer in transaction mode with a pool
//! of one in front of it.
//!
//! Binaries come from `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
//! Both servers refuse to run as root, so as root they run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;

use super::nself::{Starts, median_ms, ms};
use super::procs::{Proc, RunAs, log_tail, wait_ready};
use super::{Ctx, Endpoint};

/// Where `initdb`, `postgres` and `pgbench` are, or `None` if PostgreSQL is not installed.
pub(crate) fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").exists())
        .collect();
    dirs.sort();
    if let Some((_, bin)) = dirs.pop() {
        return Some(bin);
    }
    let on_path = which("postgres")?;
    on_path.parent().map(Path::to_owned)
}

/// `name` in `pg_bin`, else on `PATH`.
pub(crate) fn pg_tool(name: &str) -> Option<PathBuf> {
    pg_bin().map(|bin| bin.join(name)).filter(|path| path.exists()).or_else(|| which(name))
}

/// `name` on `PATH` (and in the sbin directories, where Debian puts pgbouncer).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `<tool> --version`'s first line.
pub(crate) fn version_of(tool: &Path) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|out| out.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A native cluster: its data directory and socket directory; [`NativePg::start`] runs it.
pub(crate) struct NativeCluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    name: String,
}

impl NativeCluster {
    /// Runs initdb (trust, UTF8, C locale) in a new scratch directory.
    pub(crate) fn init(ctx: &Ctx, name: &str) -> anyhow::Result<NativeCluster> {
        let bin = pg_bin().context("PostgreSQL is not installed (set PG_BIN)")?;
        let dir = ctx.scratch_dir(name)?;
        RunAs::make_dir(ctx.run_as, &dir)?;
        let (data, socket_dir) = (dir.join("data"), dir.join("socket"));
        RunAs::make_dir(ctx.run_as, &socket_dir)?;
        let log = ctx.log(&format!("{name}-initdb"));
        let mut cmd = Command::new(bin.join("initdb"));
        cmd.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
        RunAs::apply(ctx.run_as, &mut cmd);
        let out = std::fs::File::create(&log)?;
        let status = cmd.stdout(out.try_clone()?).stderr(out).status().context("running initdb")?;
        if !status.success() {
            bail!("initdb failed ({status}):\n{}", log_tail(&log));
        }
        Ok(NativeCluster { bin, data, socket_dir, name: name.to_owned() })
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint::unix(&self.socket_dir, 5432)
    }

    /// The server's socket file, for the bridge proxy.
    pub(crate) fn socket_file(&self) -> PathBuf {
        self.socket_dir.join(".s.PGSQL.5432")
    }

    /// Starts the server and waits for the first answered `SELECT 1`; returns the time taken.
    pub(crate) fn start(&self, ctx: &Ctx) -> anyhow::Result<(Proc, Duration)> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D").arg(&self.data).arg("-k").arg(&self.socket_dir).args(["-c", "listen_addresses=", "-p", "5432"]);
        RunAs::apply(ctx.run_as, &mut cmd);
        let started = Instant::now();
        // SIGINT is PostgreSQL's fast shutdown: clients are disconnected, not waited for.
        let mut proc = Proc::spawn(&self.name, cmd, &ctx.log(&self.name), Signal::INT)?;
        let ready = wait_ready(&ctx.rt, &self.endpoint(), &mut proc, Duration::from_secs(120))?;
        Ok((proc, ready - started))
    }
}

/// PgBouncer, transaction pooling with a pool of one, in front of the server at `upstream`;
/// `None` when the `pgbouncer` binary is not installed. `name` names its scratch directory.
pub(crate) fn start_pgbouncer(ctx: &Ctx, upstream: &Endpoint, name: &str) -> anyhow::Result<Option<(Proc, Endpoint)>> {
    let Some(pgbouncer) = which("pgbouncer") else {
        return Ok(None);
    };
    let dir = ctx.scratch_dir(name)?;
    RunAs::make_dir(ctx.run_as, &dir)?;
    let port = 6432;
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
    let ini = format!(
        "[databases]\n\
         postgres = host={socket_dir} port={upstream_port} dbname=postgres user=postgres\n\
         [pgbouncer]\n\
         unix_socket_dir = {dir}\n\
         listen_port = {port}\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = 1\n\
         max_client_conn = 200\n\
         ignore_startup_parameters = extra_float_digits\n",
        socket_dir = upstream.dir.display(),
        upstream_port = upstream.port,
        dir = dir.display(),
    );
    let ini_path = dir.join("pgbouncer.ini");
    std::fs::write(&ini_path, ini)?;
    let mut cmd = Command::new(pgbouncer);
    cmd.arg(&ini_path);
    RunAs::apply(ctx.run_as, &mut cmd);
    // SIGINT is the safe shutdown (exit 0 once no client is left); SIGTERM exits with 1.
    let mut proc = Proc::spawn("pgbouncer", cmd, &ctx.log(name), Signal::INT)?;
    let endpoint = Endpoint::unix(&dir, port);
    wait_ready(&ctx.rt, &endpoint, &mut proc, Duration::from_secs(30))?;
    Ok(Some((proc, endpoint)))
}

/// New database (initdb + start) once, then warm restarts (medians); the last restart keeps
/// running. Native has no first run: there is nothing to compile or download.
pub(crate) fn measure_starts(ctx: &Ctx, repeats: usize) -> anyhow::Result<Starts> {
    eprintln!("bench: native PostgreSQL: initdb and restarts");
    let started = Instant::now();
    let cluster = NativeCluster::init(ctx, "e2e-native")?;
    let (mut server, _) = cluster.start(ctx)?;
    let new_database = ms(started.elapsed());
    let mut restarts = Vec::new();
    for index in 0..repeats + 2 {
        server.stop()?;
        let (running, elapsed) = cluster.start(ctx)?;
        // The first restart after initdb may still find the OS cache cold.
        if index > 0 {
            restarts.push(elapsed);
        }
        server = running;
    }
    Ok(Starts {
        first_run: None,
        new_database,
        warm_restart: median_ms(&restarts),
        server,
        endpoint: cluster.endpoint(),
    })
}
