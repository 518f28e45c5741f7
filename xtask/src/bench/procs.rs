//! Child processes of the benchmark: servers behind a guard that stops them (also on error or
//! panic), the OS user PostgreSQL and PgBouncer run as, and readiness polling.
//!
//! Every server is started through [`Proc::spawn`] and nothing else, so nothing the benchmark
//! starts outlives it. Readiness is a bounded series of connection attempts, never a fixed wait.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

use super::Endpoint;

/// How long a server may take to stop after its stop signal before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server; stopped when dropped.
pub(crate) struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    stop_signal: Signal,
}

impl Proc {
    /// Starts `cmd` with standard output and error appended to `log`. `stop_signal` is the
    /// one that shuts the server down cleanly (SIGINT for PostgreSQL's fast shutdown).
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path, stop_signal: Signal) -> anyhow::Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc { name: name.to_owned(), child: Some(child), log: log.to_owned(), stop_signal })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails, with the end of the server's log, if it has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("the process was already stopped")?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("{} exited ({status}); the end of its log:\n{}", self.name, log_tail(&self.log));
        }
        Ok(())
    }

    /// Resident memory of the process now, in MiB (VmRSS).
    pub(crate) fn rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmRSS:")
    }

    /// The most resident memory the process has had, in MiB (VmHWM).
    pub(crate) fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} line in /proc/<pid>/status"))?;
        Ok(kib / 1024.0)
    }

    /// Stops the server cleanly and waits for it; an error if it had to be killed or failed.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() && status.code().is_some() {
            bail!("{} stopped with {status}; the end of its log:\n{}", self.name, log_tail(&self.log));
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("the process was already stopped")?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            return Ok(status);
        }
        let pid = Pid::from_raw(child.id() as i32).context("bad pid")?;
        kill_process(pid, self.stop_signal)?;
        let status = wait_exit(child, STOP_TIMEOUT)?;
        let res = match status {
            Some(status) => Ok(status),
            None => {
                child.kill()?;
                child.wait()?;
                Err(anyhow::anyhow!("{} did not stop within {STOP_TIMEOUT:?}; killed", self.name))
            }
        };
        self.child = None;
        res
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.terminate()
        {
            eprintln!("bench: stopping {}: {err:#}", self.name);
        }
    }
}

/// Waits up to `timeout` for `child` to exit, polling (a child has no waitable deadline).
fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The unprivileged account that runs PostgreSQL and PgBouncer when we are root (both refuse
/// to run as root); `None` when we are not root and run them as ourselves. The switch is made
/// in the child before exec (as `runuser` would), so the pid we hold is the server's own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    pub(crate) fn detect() -> anyhow::Result<Option<RunAs>> {
        if !rustix::process::geteuid().is_root() {
            return Ok(None);
        }
        let passwd = std::fs::read_to_string("/etc/passwd")?;
        let fields = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
            .context("running as root, but there is no `postgres` user to run PostgreSQL as")?;
        Ok(Some(RunAs { uid: fields[2].parse()?, gid: fields[3].parse()? }))
    }

    /// Makes `cmd` run as this user (std drops supplementary groups when root sets a uid).
    pub(crate) fn apply(run_as: Option<RunAs>, cmd: &mut Command) {
        if let Some(RunAs { uid, gid }) = run_as {
            cmd.uid(uid).gid(gid).env("USER", "postgres");
        }
    }

    /// Creates `dir` owned by this user.
    pub(crate) fn make_dir(run_as: Option<RunAs>, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(RunAs { uid, gid }) = run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

/// Connects with tokio-postgres and runs `SELECT 1` until it answers, checking that `proc`
/// is still alive between attempts; returns when the first answer came.
pub(crate) fn wait_ready(
    rt: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    proc: &mut Proc,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        match rt.block_on(select1(endpoint)) {
            Ok(()) => return Ok(Instant::now()),
            Err(err) => {
                proc.check_running()?;
                if Instant::now() >= deadline {
                    return Err(err.context(format!("{} not answering after {timeout:?}", proc.name)));
                }
            }
        }
        // Between attempts only: a refused connection returns at once, and a busy loop would
        // take a core from the server that is booting.
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn select1(endpoint: &Endpoint) -> anyhow::Result<()> {
    let client = endpoint.connect().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
