//! The disk edge: cache layout, the fill lock, verified writes, receipts, root extraction.
//!
//! Invariants: a file only appears under its final name after its SHA-256 matched the pin
//! (staged in a unique temp file in the same directory, fsynced, renamed, directory
//! fsynced); `root/` only counts as complete when `root.receipt` names the data bundle's
//! digest; receipts are hints that let a warm start skip hashing, never a substitute for a
//! pin. Layout of `<cache>/<version>/`:
//!
//! ```text
//! .lock                  OS lock held while filling
//! postgres.wasm ...      verified release files (+ `.<file>.receipt`)
//! root/                  the data bundle unpacked (guest absolute paths, mode 0755)
//! root.receipt           `<data sha256> <file count>`; written last
//! extensions/            verified `<name>.tar.gz` bundles (+ receipts)
//! extensions/<name>/     a bundle unpacked (`lib/`, `share/`); complete when
//!                        `extensions/<name>.unpacked` names the bundle's digest
//! ```

use std::{
    fs::{self, File},
    io::{self, BufWriter, Read, Seek, SeekFrom, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use camino::{Utf8Path, Utf8PathBuf};

use crate::{
    Error,
    error::Reason,
    glue::PackageFile,
    hash::{HashingWriter, sha256_hex},
    pin::FilePin,
};

const STAGE_PREFIX: &str = ".part-";
const ROOT_STAGE_PREFIX: &str = ".root-part-";
pub(crate) const ARCHIVE_PREFIX: &str = ".archive-part-";

pub(crate) fn cache_err(path: &Utf8Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Cache { path: path.to_owned(), source }
}

pub(crate) fn create_dir_all(dir: &Utf8Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(cache_err(dir))
}

/// Takes the exclusive OS lock on `<dir>/.lock`, blocking until it is free. Released when
/// the returned file is dropped (or the process dies, so a crash never wedges the cache).
pub(crate) fn lock(dir: &Utf8Path) -> Result<File, Error> {
    let path = dir.join(".lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(cache_err(&path))?;
    file.lock().map_err(cache_err(&path))?;
    Ok(file)
}

/// Removes temp files and directories that a crashed fill left behind. Call under the lock.
pub(crate) fn remove_leftovers(dir: &Utf8Path) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(cache_err(dir))? {
        let entry = entry.map_err(cache_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with(ROOT_STAGE_PREFIX) {
            let _ = fs::remove_dir_all(&path);
        } else if name.starts_with(STAGE_PREFIX) || name.starts_with(ARCHIVE_PREFIX) {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

/// Whether `<dir>/<pin.name>` is present and matches its pin. A matching receipt (pin
/// digest, size, mtime) avoids hashing; otherwise the file is hashed and, if good, stamped
/// and given a fresh receipt. A bad file is left for the fill to replace by rename.
pub(crate) fn is_verified(dir: &Utf8Path, pin: &FilePin) -> Result<bool, Error> {
    let path = dir.join(&pin.name);
    let metadata = match fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(cache_err(&path)(err)),
    };
    if !metadata.is_file() || metadata.len() != pin.size {
        return Ok(false);
    }
    let receipt_path = receipt_path(dir, &pin.name);
    let mtime = metadata.modified().map_err(cache_err(&path))?;
    if fs::read_to_string(&receipt_path).is_ok_and(|receipt| receipt == render_receipt(pin, mtime)) {
        return Ok(true);
    }
    let file = File::open(&path).map_err(cache_err(&path))?;
    let (actual, _) = sha256_hex(io::BufReader::new(file)).map_err(cache_err(&path))?;
    if actual != pin.sha256 {
        tracing::warn!(%path, expected = %pin.sha256, %actual, "cached file is corrupt; fetching it again");
        return Ok(false);
    }
    // The receipt only saves the next start some hashing: a read-only cache stays usable.
    let stamped = File::options().write(true).open(&path).and_then(|file| stamp(&file));
    if let Err(err) = stamped.and_then(|mtime| write_receipt(dir, pin, mtime)) {
        tracing::debug!(%path, %err, "no receipt recorded; the file will be hashed again next time");
    }
    Ok(true)
}

fn receipt_path(dir: &Utf8Path, name: &str) -> Utf8PathBuf {
    dir.join(format!(".{name}.receipt"))
}

fn render_receipt(pin: &FilePin, mtime: SystemTime) -> String {
    let mtime = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("v1 {} {} {}.{:09}\n", pin.sha256, pin.size, mtime.as_secs(), mtime.subsec_nanos())
}

/// Sets a verified file's mtime to a whole second in the past. Any later write moves the
/// mtime to "now", which cannot equal the stamp, so a receipt keyed on the stamp goes stale
/// even when the rewrite happens within the filesystem's timestamp granularity.
fn stamp(file: &File) -> io::Result<SystemTime> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mtime = UNIX_EPOCH + Duration::from_secs(now.as_secs().saturating_sub(1));
    file.set_modified(mtime)?;
    Ok(mtime)
}

fn write_receipt(dir: &Utf8Path, pin: &FilePin, mtime: SystemTime) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new().prefix(STAGE_PREFIX).tempfile_in(dir)?;
    tmp.write_all(render_receipt(pin, mtime).as_bytes())?;
    tmp.persist(receipt_path(dir, &pin.name)).map_err(|err| err.error)?;
    Ok(())
}

fn sync_dir(dir: &Utf8Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being received: hashed as it is written to a unique temp file next to its final
/// place. Dropping it without [`Staged::commit`] deletes the temp file.
pub(crate) struct Staged {
    dir: Utf8PathBuf,
    pin: FilePin,
    writer: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
}

impl Staged {
    pub(crate) fn new(dir: &Utf8Path, pin: &FilePin) -> Result<Staged, Error> {
        let tmp = tempfile::Builder::new().prefix(STAGE_PREFIX).tempfile_in(dir).map_err(cache_err(dir))?;
        Ok(Staged { dir: dir.to_owned(), pin: pin.clone(), writer: HashingWriter::new(BufWriter::new(tmp)) })
    }

    /// Checks the digest; only then fsyncs, renames into place and fsyncs the directory.
    pub(crate) fn commit(self) -> Result<(), Reason> {
        let received = self.writer.n_bytes();
        let (actual, writer) = self.writer.finish();
        if actual != self.pin.sha256 {
            return Err(Reason::HashMismatch { expected: self.pin.sha256.clone(), actual });
        }
        if received != self.pin.size {
            // Same digest, different size cannot happen with SHA-256; guard the pin table.
            return Err(Reason::TooLarge { limit: self.pin.size });
        }
        let tmp = writer.into_inner().map_err(|err| Reason::Io(err.into_error()))?;
        tmp.as_file().sync_all().map_err(Reason::Io)?;
        let mtime = stamp(tmp.as_file()).map_err(Reason::Io)?;
        let path = self.dir.join(&self.pin.name);
        tmp.persist(&path).map_err(|err| Reason::Io(err.error))?;
        sync_dir(&self.dir).map_err(Reason::Io)?;
        write_receipt(&self.dir, &self.pin, mtime).map_err(Reason::Io)?;
        Ok(())
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Whether `<dir>/root` is a complete extraction of the data bundle `data`.
pub(crate) fn is_root_complete(dir: &Utf8Path, data: &FilePin, files: &[PackageFile]) -> bool {
    let receipt = fs::read_to_string(dir.join("root.receipt"));
    receipt.is_ok_and(|receipt| receipt == render_root_receipt(data, files)) && dir.join("root").is_dir()
}

fn render_root_receipt(data: &FilePin, files: &[PackageFile]) -> String {
    format!("v1 {} {}\n", data.sha256, files.len())
}

/// Unpacks the verified data bundle into `<dir>/root/`, atomically: extract into a temp
/// directory beside it, fsync, rename, then write `root.receipt`. Call under the lock.
pub(crate) fn extract_root(dir: &Utf8Path, data: &FilePin, files: &[PackageFile]) -> Result<(), Error> {
    publish_tree(dir, &dir.join("root"), &dir.join("root.receipt"), &render_root_receipt(data, files), |staging| {
        let data_path = dir.join(&data.name);
        let mut data_file = File::open(&data_path).map_err(cache_err(&data_path))?;
        let mut dirs = std::collections::BTreeSet::new();
        for file in files {
            let path = staging.join(file.relative_path());
            let parent = path.parent().unwrap_or(staging);
            fs::create_dir_all(parent).map_err(cache_err(parent))?;
            dirs.insert(parent.as_std_path().to_path_buf());
            copy_range(&mut data_file, file, &path).map_err(cache_err(&path))?;
        }
        Ok(dirs)
    })
}

/// Replaces the tree `root` atomically: removes it and its `receipt`, lets `fill` populate a
/// staging directory beside it (returning the directories it wrote into), syncs them
/// (children before parents, so the rename publishes the whole tree), renames the staging
/// directory into place, then writes `receipt` last. Call under the lock.
fn publish_tree(
    dir: &Utf8Path,
    root: &Utf8Path,
    receipt: &Utf8Path,
    receipt_text: &str,
    fill: impl FnOnce(&Utf8Path) -> Result<std::collections::BTreeSet<std::path::PathBuf>, Error>,
) -> Result<(), Error> {
    match fs::remove_file(receipt) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(cache_err(receipt)(err)),
        _ => {}
    }
    if root.exists() {
        fs::remove_dir_all(root).map_err(cache_err(root))?;
    }
    let staging = tempfile::Builder::new().prefix(ROOT_STAGE_PREFIX).tempdir_in(dir).map_err(cache_err(dir))?;
    let staging_path = Utf8Path::from_path(staging.path()).ok_or_else(|| Error::NonUtf8Path(staging.path().into()))?;
    let mut dirs = fill(staging_path)?;
    dirs.insert(staging.path().to_path_buf());
    for synced in dirs.iter().rev() {
        File::open(synced).and_then(|f| f.sync_all()).map_err(cache_err(root))?;
    }
    let staged = staging.keep();
    fs::rename(&staged, root).map_err(cache_err(root))?;
    sync_dir(dir).map_err(cache_err(dir))?;
    let mut tmp = tempfile::Builder::new().prefix(STAGE_PREFIX).tempfile_in(dir).map_err(cache_err(dir))?;
    tmp.write_all(receipt_text.as_bytes()).map_err(cache_err(receipt))?;
    tmp.as_file().sync_all().map_err(cache_err(receipt))?;
    tmp.persist(receipt).map_err(|err| cache_err(receipt)(err.error))?;
    sync_dir(dir).map_err(cache_err(dir))
}

fn copy_range(data_file: &mut File, file: &PackageFile, path: &Utf8Path) -> io::Result<()> {
    data_file.seek(SeekFrom::Start(file.start))?;
    let mut out = File::create(path)?;
    let copied = io::copy(&mut (&mut *data_file).take(file.len()), &mut out)?;
    if copied != file.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "data bundle shorter than its file list"));
    }
    // initdb checks the exec bit on its siblings; PGlite's own FS marks every file 0755 too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(fs::Permissions::from_mode(0o755))?;
    }
    out.sync_all()
}

/// The unpacked tree of a verified extension bundle, unpacking it first if needed: into a
/// staging directory, synced, renamed into place, then a receipt naming the bundle's digest.
pub(crate) fn unpacked_extension(dir: &Utf8Path, pin: &FilePin) -> Result<Utf8PathBuf, Error> {
    let name = pin.name.strip_suffix(".tar.gz").unwrap_or(&pin.name);
    let root = dir.join(name);
    let receipt = dir.join(format!("{name}.unpacked"));
    if fs::read_to_string(&receipt).is_ok_and(|r| r.trim() == pin.sha256) && root.is_dir() {
        return Ok(root);
    }
    publish_tree(dir, &root, &receipt, &pin.sha256, |staging| {
        let archive_path = dir.join(&pin.name);
        let archive = File::open(&archive_path).map_err(cache_err(&archive_path))?;
        let written =
            crate::archive::unpack_bundle(io::BufReader::new(archive), staging.as_std_path()).map_err(|reason| {
                Error::Cache {
                    path: archive_path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, reason.to_string()),
                }
            })?;
        Ok(written.iter().filter_map(|p| p.parent().map(|p| p.to_path_buf())).collect())
    })?;
    Ok(root)
}
