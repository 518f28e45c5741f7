//! The COPY rows of `bench e2e`: a million rows of two integer columns in (psql's `\copy ...
//! FROM` a file, i.e. `COPY ... FROM STDIN`) and out again (`\copy ... TO` a file, `COPY ... TO
//! STDOUT`), each timed around the psql process, into a table made anew for each system.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use super::Endpoint;
use super::native::pg_tool;

/// Rows per COPY.
pub(crate) const ROWS: u32 = 1_000_000;

/// Writes the rows once (`id<TAB>id % 1000`, 11.9 MB: within what PGlite 0.2.17 takes in
/// one COPY) and returns the file.
pub(crate) fn data_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("copy-rows.tsv");
    let mut data = String::with_capacity(12 * ROWS as usize);
    for id in 0..ROWS {
        data.push_str(&format!("{id}\t{}\n", id % 1000));
    }
    std::fs::write(&path, data)?;
    Ok(path)
}

/// One psql command on `endpoint`, failing on any error.
fn psql(endpoint: &Endpoint, command: &str) -> anyhow::Result<()> {
    let psql = pg_tool("psql").context("psql is not installed (set PG_BIN)")?;
    let mut cmd = Command::new(psql);
    cmd.arg("-X").args(["-v", "ON_ERROR_STOP=1", "-q"]).arg("-h").arg(&endpoint.dir).args([
        "-p",
        &endpoint.port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        command,
    ]);
    if let Some(password) = &endpoint.password {
        cmd.env("PGPASSWORD", password);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("psql -c {command:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// COPY in and out through `endpoint`: milliseconds for each. The rows that come out are
/// checked against those that went in.
pub(crate) fn run(endpoint: &Endpoint, data: &Path, scratch: &Path) -> anyhow::Result<(f64, f64)> {
    psql(endpoint, "DROP TABLE IF EXISTS bench_copy")?;
    psql(endpoint, "CREATE TABLE bench_copy (id int, v int)")?;
    let started = Instant::now();
    psql(endpoint, &format!("\\copy bench_copy FROM '{}'", data.display()))?;
    let copy_in = started.elapsed().as_secs_f64() * 1000.0;
    let out = scratch.join("copy-out.tsv");
    let started = Instant::now();
    psql(endpoint, &format!("\\copy bench_copy TO '{}'", out.display()))?;
    let copy_out = started.elapsed().as_secs_f64() * 1000.0;
    if std::fs::metadata(&out)?.len() != std::fs::metadata(data)?.len() {
        bail!("COPY TO gave back {} bytes for {} in", std::fs::metadata(&out)?.len(), std::fs::metadata(data)?.len());
    }
    std::fs::remove_file(&out)?;
    psql(endpoint, "DROP TABLE bench_copy")?;
    Ok((copy_in, copy_out))
}
