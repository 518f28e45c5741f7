//! The disk edge: cache layout, the fill lock, verified writes, receipts, extracted trees.
//!
//! Invariants: a file only appears under its final name after its SHA-256 matched the pin
//! (staged in a unique temp file in the same directory, fsynced, renamed, directory
//! fsynced); `root/` only counts as complete when `root.receipt` names the data bundle's
//! digest; receipts are hints that let a warm start skip hashing, never a substitute for a
//! pin. Extracted trees are made only from bytes hashed just before, replaced whole (a
//! staging directory renamed into place) and checked at every start against what they
//! should hold (see `tree.rs`): `root/` against the verified glue's file list, an extension's
//! tree against the manifest written with it. Layout of `<cache>/<version>/`:
//!
//! ```text
//! .lock                  OS lock held while filling or repairing
//! postgres.wasm ...      verified release files (+ `.<file>.receipt`)
//! root/                  the data bundle unpacked (guest absolute paths, mode 0755)
//! root.receipt           `<data sha256> <file count>`; written last
//! extensions/            verified `<name>.tar.gz` bundles (+ receipts)
//! extensions/<name>/     a bundle unpacked (`lib/`, `share/`); complete when
//!                        `extensions/<name>.unpacked` names the bundle's digest
//! extensions/<name>.manifest  its files' sizes, written just before that receipt
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
    tree::{self, Damage, Problem},
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

/// The quick check of `<dir>/root` against the verified file list: no locks, no writes.
pub(crate) fn root_quick_check(dir: &Utf8Path, files: &[PackageFile]) -> tree::Quick {
    tree::quick_check(&dir.join("root"), files.iter().map(|file| (file.relative_path(), file.len())))
}

/// `None` when `root/` is whole, else what is wrong with it (nothing listed when it was never
/// completely extracted). Files written since extraction are compared with the data bundle;
/// those still equal to it are stamped again, if the cache can be written. Needs no lock: a
/// file caught in the middle of another process's repair shows as damage, and the caller then
/// takes the lock and looks again.
pub(crate) fn root_damage(dir: &Utf8Path, data: &FilePin, files: &[PackageFile]) -> Result<Option<Vec<Damage>>, Error> {
    if !is_root_complete(dir, data, files) {
        return Ok(Some(Vec::new()));
    }
    let quick = root_quick_check(dir, files);
    if quick.is_whole() {
        return Ok(None);
    }
    let written: Vec<&PackageFile> = quick.written.iter().map(|&idx| &files[idx]).collect();
    let mut damage = quick.damage;
    damage.extend(compare_root(dir, data, &written)?);
    Ok((!damage.is_empty()).then_some(damage))
}

/// Compares `files` of `root/` byte for byte with their ranges of the data bundle (verified by
/// the caller); stamps again those that are equal and returns the others.
pub(crate) fn compare_root(dir: &Utf8Path, data: &FilePin, files: &[&PackageFile]) -> Result<Vec<Damage>, Error> {
    let root = dir.join("root");
    let data_path = dir.join(&data.name);
    let mut data_file = File::open(&data_path).map_err(cache_err(&data_path))?;
    let mut res = Vec::new();
    for file in files {
        let path = root.join(file.relative_path());
        data_file.seek(SeekFrom::Start(file.start)).map_err(cache_err(&data_path))?;
        let mut original = (&mut data_file).take(file.len());
        match tree::compare_file(&path, file.len(), &mut original).map_err(cache_err(&path))? {
            None => tree::restamp(&path),
            Some(problem) => res.push(Damage { path, problem }),
        }
    }
    Ok(res)
}

/// Unpacks the verified data bundle into `<dir>/root/`, atomically: extract into a temp
/// directory beside it, fsync, rename, then write `root.receipt`. Call under the lock.
pub(crate) fn extract_root(dir: &Utf8Path, data: &FilePin, files: &[PackageFile]) -> Result<(), Error> {
    let receipt = dir.join("root.receipt");
    publish_tree(dir, &dir.join("root"), &[&receipt], |staging| {
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
    })?;
    write_small(dir, &receipt, &render_root_receipt(data, files))
}

/// Replaces the tree `root` atomically: removes its `receipts` (the caller writes them again
/// once this returns), lets `fill` populate a staging directory beside it (returning the
/// directories it wrote into), syncs them (children before parents, so the rename publishes
/// the whole tree), moves the old tree aside, renames the staging directory into place and
/// removes the old tree. Moving aside before removing shrinks the moment without a tree to
/// two renames, for processes that read it meanwhile. Call under the lock.
fn publish_tree(
    dir: &Utf8Path,
    root: &Utf8Path,
    receipts: &[&Utf8Path],
    fill: impl FnOnce(&Utf8Path) -> Result<std::collections::BTreeSet<std::path::PathBuf>, Error>,
) -> Result<(), Error> {
    for path in receipts {
        match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(cache_err(path)(err)),
            _ => {}
        }
    }
    let staging = tempfile::Builder::new().prefix(ROOT_STAGE_PREFIX).tempdir_in(dir).map_err(cache_err(dir))?;
    let staging_path = Utf8Path::from_path(staging.path()).ok_or_else(|| Error::NonUtf8Path(staging.path().into()))?;
    let mut dirs = fill(staging_path)?;
    dirs.insert(staging.path().to_path_buf());
    for synced in dirs.iter().rev() {
        File::open(synced).and_then(|f| f.sync_all()).map_err(cache_err(root))?;
    }
    // The old tree goes into a directory named like a staging one, so that a crash before it
    // is removed leaves something `remove_leftovers` clears.
    let old = if root.exists() {
        let old = tempfile::Builder::new().prefix(ROOT_STAGE_PREFIX).tempdir_in(dir).map_err(cache_err(dir))?;
        fs::rename(root, old.path().join("old")).map_err(cache_err(root))?;
        Some(old)
    } else {
        None
    };
    let staged = staging.keep();
    fs::rename(&staged, root).map_err(cache_err(root))?;
    sync_dir(dir).map_err(cache_err(dir))?;
    if let Some(old) = old {
        let old_path = old.path().to_owned();
        old.close()
            .map_err(|err| cache_err(dir)(io::Error::new(err.kind(), format!("{}: {err}", old_path.display()))))?;
    }
    Ok(())
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
    out.set_modified(tree::stamp())?;
    out.sync_all()
}

/// Whether a cached file still hashes to its pin, receipts ignored: a file of the right size
/// and mtime may still have rotted. Reads the whole file.
pub(crate) fn hash_state(dir: &Utf8Path, pin: &FilePin) -> Result<Option<Problem>, Error> {
    let path = dir.join(&pin.name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Some(Problem::Missing)),
        Err(err) => return Err(cache_err(&path)(err)),
    };
    let (actual, size) = sha256_hex(io::BufReader::new(file)).map_err(cache_err(&path))?;
    if size != pin.size {
        return Ok(Some(Problem::Size { expected: pin.size, actual: size }));
    }
    Ok((actual != pin.sha256).then_some(Problem::Content))
}

/// Where extension bundle `pin` is unpacked, its receipt and its manifest.
fn extension_paths(dir: &Utf8Path, pin: &FilePin) -> (Utf8PathBuf, Utf8PathBuf, Utf8PathBuf) {
    let name = pin.name.strip_suffix(".tar.gz").unwrap_or(&pin.name);
    (dir.join(name), dir.join(format!("{name}.unpacked")), dir.join(format!("{name}.manifest")))
}

/// The state of extension bundle `pin`'s unpacked tree, under the lock.
#[derive(Debug)]
pub(crate) enum Unpacked {
    /// Not unpacked (or cut short before its receipt was written).
    No,
    /// Unpacked and whole.
    Whole(Utf8PathBuf),
    /// Unpacked, then damaged.
    Damaged(Vec<Damage>),
}

/// Checks an unpacked extension tree: quickly against its manifest, and, for files written
/// since or a tree unpacked before manifests were written, against the bundle (verified by the
/// caller). A tree found whole that way gets its manifest and stamps. Call under the lock.
pub(crate) fn unpacked_extension(dir: &Utf8Path, pin: &FilePin) -> Result<Unpacked, Error> {
    let (root, receipt, manifest) = extension_paths(dir, pin);
    if !fs::read_to_string(&receipt).is_ok_and(|r| r.trim() == pin.sha256) || !root.is_dir() {
        return Ok(Unpacked::No);
    }
    let entries = fs::read_to_string(&manifest).ok().and_then(|text| tree::parse_manifest(&text, &pin.sha256));
    if let Some(entries) = &entries {
        let quick = tree::quick_check(&root, entries.iter().map(|(path, size)| (path.as_str(), *size)));
        if quick.is_whole() {
            return Ok(Unpacked::Whole(root));
        }
        if !quick.damage.is_empty() {
            return Ok(Unpacked::Damaged(quick.damage));
        }
    }
    let (found, damage) = compare_extension(dir, pin, false)?;
    if !damage.is_empty() {
        return Ok(Unpacked::Damaged(damage));
    }
    if entries.as_ref() != Some(&found) {
        write_small(dir, &manifest, &tree::render_manifest(&pin.sha256, &found))?;
    }
    Ok(Unpacked::Whole(root))
}

/// Compares an unpacked extension tree with its (verified) bundle, every byte, and with
/// `unexpected` also looks for files the bundle lacks; stamps again the files that are equal.
/// Returns the bundle's files (relative path, size) and the damage.
#[expect(clippy::type_complexity, reason = "a pair of plain lists, named at the one caller each")]
pub(crate) fn compare_extension(
    dir: &Utf8Path,
    pin: &FilePin,
    unexpected: bool,
) -> Result<(Vec<(String, u64)>, Vec<Damage>), Error> {
    let (root, _, _) = extension_paths(dir, pin);
    let archive_path = dir.join(&pin.name);
    let archive = File::open(&archive_path).map_err(cache_err(&archive_path))?;
    let (mut found, mut damage) = (Vec::new(), Vec::new());
    let mut cache_error = None;
    let walked = crate::archive::for_each_bundle_file(io::BufReader::new(archive), |relative, size, entry| {
        let path = root.join(relative);
        found.push((relative.to_owned(), size));
        match tree::compare_file(&path, size, entry) {
            Ok(None) => tree::restamp(&path),
            Ok(Some(problem)) => damage.push(Damage { path, problem }),
            Err(err) => cache_error = Some(cache_err(&path)(err)),
        }
        Ok(())
    });
    if let Some(err) = cache_error {
        return Err(err);
    }
    walked
        .map_err(|reason| Error::Cache { path: archive_path.clone(), source: io::Error::other(reason.to_string()) })?;
    if unexpected {
        let expected = found.iter().map(|(path, _)| path.as_str()).collect();
        damage.extend(tree::unexpected(&root, &expected).map_err(cache_err(&root))?);
    }
    Ok((found, damage))
}

/// Unpacks the verified extension bundle `pin` into its tree, atomically (as `root/`), then
/// writes its manifest and, last, its receipt. Call under the lock.
pub(crate) fn unpack_extension(dir: &Utf8Path, pin: &FilePin) -> Result<Utf8PathBuf, Error> {
    let (root, receipt, manifest) = extension_paths(dir, pin);
    let mut written = Vec::new();
    publish_tree(dir, &root, &[&receipt, &manifest], |staging| {
        let archive_path = dir.join(&pin.name);
        let archive = File::open(&archive_path).map_err(cache_err(&archive_path))?;
        written =
            crate::archive::unpack_bundle(io::BufReader::new(archive), staging.as_std_path(), tree::stamp()).map_err(
                |reason| Error::Cache { path: archive_path.clone(), source: io::Error::other(reason.to_string()) },
            )?;
        Ok(written
            .iter()
            .filter_map(|(path, _)| staging.join(path).parent().map(|p| p.as_std_path().to_owned()))
            .collect())
    })?;
    write_small(dir, &manifest, &tree::render_manifest(&pin.sha256, &written))?;
    write_small(dir, &receipt, &pin.sha256)?;
    Ok(root)
}

/// Writes a small file (a receipt, a manifest) atomically: temp file, sync, rename, sync.
fn write_small(dir: &Utf8Path, path: &Utf8Path, text: &str) -> Result<(), Error> {
    let mut tmp = tempfile::Builder::new().prefix(STAGE_PREFIX).tempfile_in(dir).map_err(cache_err(dir))?;
    tmp.write_all(text.as_bytes()).map_err(cache_err(path))?;
    tmp.as_file().sync_all().map_err(cache_err(path))?;
    tmp.persist(path).map_err(|err| cache_err(path)(err.error))?;
    sync_dir(dir).map_err(cache_err(dir))
}
