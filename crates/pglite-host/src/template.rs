//! New data directories without initdb: the first initdb of an artifact is kept as a pristine
//! cluster (a template) and copied for every new data directory.
//!
//! The template is only trusted while it is whole. Its completion marker holds its manifest
//! (every directory, and every file's size and SHA-256, taken when it was built) and every
//! file carries the mtime [`stamp`]. Before each use the template is checked quickly: sizes,
//! and the hash of any file whose mtime moved (something wrote to it). `verify_cache` hashes
//! every file, since bit rot keeps size and mtime. A template that is not whole, or that was
//! built by an earlier version without a manifest, is built again under the template's lock
//! and swapped in by rename.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::Error;

const COMPLETE: &str = ".nself-template-complete";

/// The first line of a manifest; a marker without it (the empty marker of earlier versions)
/// has no manifest.
const MANIFEST_HEADER: &str = "nself-template v1";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The mtime of every file of a template: 2000-01-01T00:00:00Z, a whole (even) second every
/// filesystem stores exactly. A write sets a file's mtime to the present, which cannot be this.
fn stamp() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

/// What is wrong with one file of the host's caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheProblem {
    /// The file or directory is not there (or is not what it was: a file for a directory).
    Missing,
    /// The file's size is not the one it was made with.
    Size { expected: u64, actual: u64 },
    /// Same size, other bytes than were written (its SHA-256 differs).
    Content,
    /// A file that was not in the template when it was built.
    Unexpected,
}

impl fmt::Display for CacheProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheProblem::Missing => f.write_str("missing"),
            CacheProblem::Size { expected, actual } => write!(f, "{actual} bytes, expected {expected}"),
            CacheProblem::Content => f.write_str("content differs from what was written"),
            CacheProblem::Unexpected => f.write_str("not part of it when it was made"),
        }
    }
}

/// A damaged file of the host's caches (template cluster, compiled modules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDamage {
    pub path: PathBuf,
    pub problem: CacheProblem,
}

impl fmt::Display for CacheDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// How closely to look at a template before trusting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Stat every file; hash only those whose mtime moved. Before every use.
    Quick,
    /// Hash every file and look for files that should not be there. On request.
    Full,
}

/// What [`ensure`] did.
#[derive(Debug, Default)]
pub(crate) struct Ensured {
    /// The template was built by this call.
    pub(crate) built: bool,
    /// What was damaged before it was built again.
    pub(crate) damage: Vec<CacheDamage>,
}

/// What a template on disk is.
enum State {
    Absent,
    /// Complete, but built by a version that wrote no manifest.
    Outdated,
    Whole,
    Damaged(Vec<CacheDamage>),
}

/// Makes sure `template` holds a whole cluster, checked as `check` says, building it with
/// `make` (which fills the empty directory it is given) when it is missing, outdated or
/// damaged. Concurrent callers, threads or processes, wait for one builder; what a crashed
/// build left behind is removed.
pub(crate) fn ensure(
    template: &Path,
    check: Check,
    make: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<Ensured, Error> {
    if check == Check::Quick && matches!(inspect(template, check)?, State::Whole) {
        return Ok(Ensured::default());
    }
    let parent = template.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let lock_path = template.with_extension("lock");
    let lock =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    remove_leftovers(template)?;
    let damage = match inspect(template, check)? {
        State::Whole => return Ok(Ensured::default()),
        State::Absent => Vec::new(),
        State::Outdated => {
            tracing::info!(template = %template.display(), "the template cluster has no manifest (made by an earlier version); building it again");
            Vec::new()
        }
        State::Damaged(damage) => {
            tracing::warn!(template = %template.display(), damaged = %summary(&damage), "the template cluster is damaged; building it again");
            damage
        }
    };
    build(template, make)?;
    if !damage.is_empty() {
        tracing::info!(template = %template.display(), n_files = damage.len(), "repaired the template cluster");
    }
    Ok(Ensured { built: true, damage })
}

/// Prefix of the directories a build of `template` stages in, beside it.
fn staging_prefix(template: &Path) -> String {
    let name = template.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}-build-")
}

/// Removes staging directories of `template` that a crashed build left. Call under the lock.
fn remove_leftovers(template: &Path) -> Result<(), Error> {
    let parent = template.parent().unwrap_or(Path::new("."));
    let prefix = staging_prefix(template);
    for entry in fs::read_dir(parent).map_err(io_err(parent))? {
        let entry = entry.map_err(io_err(parent))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Builds the template beside its place, stamps and lists it, writes the marker with the
/// manifest, syncs everything and swaps it in for the old one. Call under the lock.
fn build(template: &Path, make: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
    let parent = template.parent().unwrap_or(Path::new("."));
    let prefix = staging_prefix(template);
    let building = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent).map_err(io_err(parent))?;
    make(building.path())?;
    let manifest = make_manifest(building.path()).map_err(io_err(building.path()))?;
    let marker = building.path().join(COMPLETE);
    fs::write(&marker, manifest).map_err(io_err(&marker))?;
    sync_tree(building.path()).map_err(io_err(building.path()))?;
    let built = building.keep();
    if template.exists() {
        // Moved aside, then removed: the moment without a template is two renames long.
        let old = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent).map_err(io_err(parent))?;
        fs::rename(template, old.path().join("old")).map_err(io_err(template))?;
        fs::rename(&built, template).map_err(io_err(template))?;
        old.close().map_err(io_err(parent))?;
    } else {
        fs::rename(&built, template).map_err(io_err(template))?;
    }
    fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
    Ok(())
}

/// One line of a manifest: `d <path>` or `f <size> <sha256> <path>`, paths relative with `/`.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir(String),
    File { path: String, size: u64, sha256: String },
}

/// Stamps every file beneath `dir` and returns the manifest listing it, sorted.
fn make_manifest(dir: &Path) -> io::Result<String> {
    let mut res = format!("{MANIFEST_HEADER}\n");
    for (relative, is_dir) in walk(dir)? {
        let path = dir.join(&relative);
        if is_dir {
            res.push_str(&format!("d {relative}\n"));
            continue;
        }
        let file = fs::File::open(&path)?;
        let (sha256, size) = sha256_file(&file)?;
        file.set_modified(stamp())?;
        res.push_str(&format!("f {size} {sha256} {relative}\n"));
    }
    Ok(res)
}

fn parse_manifest(text: &str) -> Option<Vec<Entry>> {
    let mut lines = text.lines();
    if lines.next()? != MANIFEST_HEADER {
        return None;
    }
    lines
        .map(|line| match line.split_once(' ')? {
            ("d", path) => Some(Entry::Dir(path.to_owned())),
            ("f", rest) => {
                let (size, rest) = rest.split_once(' ')?;
                let (sha256, path) = rest.split_once(' ')?;
                Some(Entry::File { path: path.to_owned(), size: size.parse().ok()?, sha256: sha256.to_owned() })
            }
            _ => None,
        })
        .collect()
}

/// Every file and directory beneath `dir` but the marker, relative, sorted; `true` for a
/// directory.
fn walk(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let mut res = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(dir.join(&relative))? {
            let entry = entry?;
            let child = relative.join(entry.file_name());
            let name = child.to_string_lossy().into_owned();
            if name == COMPLETE {
                continue;
            }
            let is_dir = entry.file_type()?.is_dir();
            if is_dir {
                pending.push(child);
            }
            res.push((name, is_dir));
        }
    }
    res.sort();
    Ok(res)
}

/// The SHA-256 (hex) and size of everything `file` holds.
pub(crate) fn sha256_file(mut file: &fs::File) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    let hex = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    Ok((hex, size))
}

/// Looks at `template` as `check` says. Reads, never writes.
fn inspect(template: &Path, check: Check) -> Result<State, Error> {
    if !template.exists() {
        return Ok(State::Absent);
    }
    let marker = template.join(COMPLETE);
    let text = match fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(State::Damaged(vec![CacheDamage { path: marker, problem: CacheProblem::Missing }]));
        }
        Err(err) => return Err(io_err(&marker)(err)),
    };
    let Some(entries) = parse_manifest(&text) else {
        if text.is_empty() {
            return Ok(State::Outdated);
        }
        return Ok(State::Damaged(vec![CacheDamage { path: marker, problem: CacheProblem::Content }]));
    };
    let mut damage = Vec::new();
    for entry in &entries {
        let (relative, problem) = match entry {
            Entry::Dir(relative) => (relative, (!template.join(relative).is_dir()).then_some(CacheProblem::Missing)),
            Entry::File { path: relative, size, sha256 } => {
                (relative, check_file(&template.join(relative), *size, sha256, check).map_err(io_err(template))?)
            }
        };
        if let Some(problem) = problem {
            damage.push(CacheDamage { path: template.join(relative), problem });
        }
    }
    if check == Check::Full {
        let listed: BTreeSet<&str> = entries
            .iter()
            .map(|entry| match entry {
                Entry::Dir(path) | Entry::File { path, .. } => path.as_str(),
            })
            .collect();
        for (relative, _) in walk(template).map_err(io_err(template))? {
            if !listed.contains(relative.as_str()) {
                damage.push(CacheDamage { path: template.join(relative), problem: CacheProblem::Unexpected });
            }
        }
    }
    Ok(if damage.is_empty() { State::Whole } else { State::Damaged(damage) })
}

/// What is wrong with one file of the template, if anything.
fn check_file(path: &Path, size: u64, sha256: &str, check: Check) -> io::Result<Option<CacheProblem>> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Ok(Some(CacheProblem::Missing)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Some(CacheProblem::Missing)),
        Err(err) => return Err(err),
    };
    if metadata.len() != size {
        return Ok(Some(CacheProblem::Size { expected: size, actual: metadata.len() }));
    }
    if check == Check::Quick && metadata.modified().ok() == Some(stamp()) {
        return Ok(None);
    }
    let (actual, _) = sha256_file(&fs::File::open(path)?)?;
    Ok((actual != sha256).then_some(CacheProblem::Content))
}

/// A few damaged files for one log line.
pub(crate) fn summary(damage: &[CacheDamage]) -> String {
    const SHOWN: usize = 5;
    let mut res: Vec<String> = damage.iter().take(SHOWN).map(ToString::to_string).collect();
    if damage.len() > SHOWN {
        res.push(format!("and {} more", damage.len() - SHOWN));
    }
    res.join("; ")
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
