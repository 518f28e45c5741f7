//! Extracted trees checked against what they should hold. A tree is only ever made from
//! verified bytes (the data bundle, an extension bundle) and every file in it gets the mtime
//! [`stamp`]. The quick check, run at every start, stats each expected file: one with its size
//! and the stamp is trusted, one whose mtime moved (something wrote to it) is compared with the
//! verified bytes by the caller. The full check compares every byte. Bit rot keeps both size and
//! mtime, so only the full check sees it. Nothing here repairs anything: the caller re-extracts,
//! under the lock, what these functions report.

use std::{
    collections::BTreeSet,
    fmt, fs,
    io::{self, Read},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use camino::{Utf8Path, Utf8PathBuf};

/// The mtime of every extracted file: 2000-01-01T00:00:00Z, a whole (even) second so that
/// every filesystem stores it exactly. Any write sets a file's mtime to the present, which
/// cannot be this, so a file that still bears it has not been written since it was extracted.
pub(crate) fn stamp() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

/// What is wrong with one file of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file is not there, or is not a regular file.
    Missing,
    /// The file's size is not the verified original's.
    Size {
        /// The original's size.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// Same size, other bytes than the verified original (or than its pinned SHA-256).
    Content,
    /// A file the release does not have, in a tree that is mounted into the guest.
    Unexpected,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::Size { expected, actual } => write!(f, "{actual} bytes, expected {expected}"),
            Problem::Content => f.write_str("content differs from the verified original"),
            Problem::Unexpected => f.write_str("not part of the release"),
        }
    }
}

/// A damaged file of the cache, as a check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub path: Utf8PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// At most a few damaged files, for one log line: a tree that lost everything would
/// otherwise log hundreds of paths.
pub(crate) fn summary(damage: &[Damage]) -> String {
    const SHOWN: usize = 5;
    let mut res: Vec<String> = damage.iter().take(SHOWN).map(ToString::to_string).collect();
    if damage.len() > SHOWN {
        res.push(format!("and {} more", damage.len() - SHOWN));
    }
    res.join("; ")
}

/// The outcome of a quick check of a tree.
#[derive(Debug, Default)]
pub(crate) struct Quick {
    /// Files missing or of the wrong size.
    pub(crate) damage: Vec<Damage>,
    /// Indexes (into the expected list) of files of the right size that were written since
    /// they were extracted: the caller compares them with the originals.
    pub(crate) written: Vec<usize>,
}

impl Quick {
    pub(crate) fn is_whole(&self) -> bool {
        self.damage.is_empty() && self.written.is_empty()
    }
}

/// Stats every expected file (relative path, size) beneath `root`.
pub(crate) fn quick_check<'a>(root: &Utf8Path, expected: impl IntoIterator<Item = (&'a str, u64)>) -> Quick {
    let mut res = Quick::default();
    for (idx, (path, size)) in expected.into_iter().enumerate() {
        let path = root.join(path);
        match fs::metadata(&path) {
            Ok(metadata) if !metadata.is_file() => res.damage.push(Damage { path, problem: Problem::Missing }),
            Ok(metadata) if metadata.len() != size => {
                res.damage.push(Damage { path, problem: Problem::Size { expected: size, actual: metadata.len() } });
            }
            Ok(metadata) => {
                if metadata.modified().ok() != Some(stamp()) {
                    res.written.push(idx);
                }
            }
            // An unreadable entry is as good as missing: re-extracting replaces it.
            Err(_) => res.damage.push(Damage { path, problem: Problem::Missing }),
        }
    }
    res
}

/// Compares the file at `path` with the verified original of `size` bytes that `original`
/// yields; `None` when they are equal.
pub(crate) fn compare_file(path: &Utf8Path, size: u64, original: &mut dyn Read) -> io::Result<Option<Problem>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Some(Problem::Missing)),
        Err(err) => return Err(err),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(Some(Problem::Missing));
    }
    if metadata.len() != size {
        return Ok(Some(Problem::Size { expected: size, actual: metadata.len() }));
    }
    let mut file = io::BufReader::new(file);
    let (mut ours, mut theirs) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(ours.len() as u64)).unwrap_or(ours.len());
        file.read_exact(&mut ours[..n])?;
        original.read_exact(&mut theirs[..n])?;
        if ours[..n] != theirs[..n] {
            return Ok(Some(Problem::Content));
        }
        left -= n as u64;
    }
    Ok(None)
}

/// Gives a file checked equal to its original the stamp again, so the next quick check
/// trusts it without comparing. Best effort: a read-only cache stays usable, only slower.
pub(crate) fn restamp(path: &Utf8Path) {
    if let Err(err) = fs::File::open(path).and_then(|file| file.set_modified(stamp())) {
        tracing::debug!(%path, %err, "could not restamp; it will be compared again next time");
    }
}

/// Every regular file beneath `root` whose relative path is not in `expected`.
pub(crate) fn unexpected(root: &Utf8Path, expected: &BTreeSet<&str>) -> io::Result<Vec<Damage>> {
    let mut res = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(path) = Utf8PathBuf::from_path_buf(entry.path()) else {
                res.push(Damage { path: dir.join("<non-UTF-8 name>"), problem: Problem::Unexpected });
                continue;
            };
            if entry.file_type()?.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).map(Utf8Path::as_str).unwrap_or_default();
            if !expected.contains(relative) {
                res.push(Damage { path, problem: Problem::Unexpected });
            }
        }
    }
    res.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(res)
}

/// An extension tree's manifest, `extensions/<name>.manifest`: the bundle's digest, then one
/// `<size> <relative path>` line per file, as unpacked.
pub(crate) fn render_manifest(bundle_sha256: &str, entries: &[(String, u64)]) -> String {
    let mut res = format!("v1 {bundle_sha256}\n");
    for (path, size) in entries {
        res.push_str(&format!("{size} {path}\n"));
    }
    res
}

/// The entries of a manifest written for the bundle with this digest; `None` when it is
/// malformed or for another bundle.
pub(crate) fn parse_manifest(text: &str, bundle_sha256: &str) -> Option<Vec<(String, u64)>> {
    let mut lines = text.lines();
    if lines.next()? != format!("v1 {bundle_sha256}") {
        return None;
    }
    lines
        .map(|line| {
            let (size, path) = line.split_once(' ')?;
            Some((path.to_owned(), size.parse().ok()?))
        })
        .collect()
}
