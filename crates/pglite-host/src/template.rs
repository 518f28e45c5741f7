//! New data directories without initdb: the first initdb of an artifact is kept as a pristine
//! cluster (a template) and copied for every new data directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Error;

const COMPLETE: &str = ".nself-template-complete";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Makes sure `template` holds a complete cluster, building it with `make` (which fills the
/// empty directory it is given) when missing. Concurrent callers, threads or processes, wait
/// for one builder; a half-built template from a crash is discarded.
pub(crate) fn ensure(template: &Path, make: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
    if template.join(COMPLETE).exists() {
        return Ok(());
    }
    let parent = template.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let lock_path = template.with_extension("lock");
    let lock =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    if template.join(COMPLETE).exists() {
        return Ok(());
    }
    if template.exists() {
        fs::remove_dir_all(template).map_err(io_err(template))?;
    }
    let building = tempfile::Builder::new().prefix(".template-").tempdir_in(parent).map_err(io_err(parent))?;
    make(building.path())?;
    sync_tree(building.path()).map_err(io_err(building.path()))?;
    let marker = building.path().join(COMPLETE);
    fs::write(&marker, b"").map_err(io_err(&marker))?;
    let built = building.keep();
    fs::rename(&built, template).map_err(io_err(template))?;
    fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
    Ok(())
}

/// Copies the template into an empty `data` directory. `PG_VERSION` goes last, so a copy cut
/// short by a crash is recognised (no `PG_VERSION`) and redone.
pub(crate) fn copy_into(template: &Path, data: &Path) -> Result<(), Error> {
    copy_dir(template, data, true).map_err(io_err(data))?;
    sync_tree(data).map_err(io_err(data))?;
    let version = data.join("PG_VERSION");
    fs::copy(template.join("PG_VERSION"), &version).map_err(io_err(&version))?;
    fs::File::open(&version).and_then(|f| f.sync_all()).map_err(io_err(&version))?;
    fs::File::open(data).and_then(|d| d.sync_all()).map_err(io_err(data))?;
    Ok(())
}

/// Appends `lines` to the cluster's `postgresql.conf` (later lines win in PostgreSQL) and syncs
/// it. A crash before this leaves a cluster with the build's defaults, which is fine.
pub(crate) fn append_settings(data: &Path, lines: &str) -> Result<(), Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let conf = data.join("postgresql.conf");
    let mut file = fs::OpenOptions::new().append(true).open(&conf).map_err(io_err(&conf))?;
    file.write_all(format!("\n# Added by nself-embedded for this PGlite release\n{lines}").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&conf))
}

fn copy_dir(from: &Path, to: &Path, top: bool) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !to.exists() {
        fs::DirBuilder::new().mode(0o700).create(to)?;
    }
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if top && (name == COMPLETE || name == "PG_VERSION") {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target, false)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Makes everything written beneath `dir` durable (after writes that skipped per-file syncs).
/// One `syncfs` of the file system holding it is far cheaper than an fsync per file.
pub(crate) fn sync_tree(dir: &Path) -> io::Result<()> {
    let handle = fs::File::open(dir)?;
    rustix::fs::syncfs(&handle)?;
    Ok(())
}

/// Removes everything in `dir` except `keep` (a half-copied cluster before a new copy).
pub(crate) fn clear_except(dir: &Path, keep: &str) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name() == keep {
            continue;
        }
        let path: PathBuf = entry.path();
        let res = if entry.file_type().map_err(io_err(&path))?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        res.map_err(io_err(&path))?;
    }
    Ok(())
}
