//! Reads wanted files out of an npm tarball (`.tgz`) without unpacking anything else.
//!
//! Only regular-file entries named `<top>/dist/<file>` are handed out, and only to the
//! caller's callback (which verifies them before anything lands in the cache). Every entry's
//! path is checked first: an absolute path or a `..` component makes the whole archive
//! suspect, so it is refused rather than skipped. Sans-IO: works on any `impl Read`.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::error::Reason;

/// Accepts a tar entry path only when it is relative and has no `..` component.
pub fn validate_entry_path(path: &[u8]) -> Result<&str, Reason> {
    let unsafe_path = || Reason::UnsafeArchivePath(String::from_utf8_lossy(path).into_owned());
    let path = std::str::from_utf8(path).map_err(|_| unsafe_path())?;
    if path.starts_with('/') || path.contains('\\') || path.split('/').any(|component| component == "..") {
        return Err(unsafe_path());
    }
    Ok(path)
}

/// `package/dist/postgres.wasm` -> `postgres.wasm`; `None` for anything not directly in
/// `dist/`. npm tarballs put everything under one top directory, normally `package/`.
pub fn dist_file_name(path: &str) -> Option<&str> {
    let path = path.strip_prefix("./").unwrap_or(path);
    let (_top, rest) = path.split_once('/')?;
    let name = rest.strip_prefix("dist/")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Walks a gzipped tarball and calls `found(file_name, entry)` for every regular file in
/// `dist/` whose name `wanted` accepts. Fails on a corrupt archive or an unsafe entry path.
pub(crate) fn for_each_dist_file(
    tgz: impl Read,
    wanted: impl Fn(&str) -> bool,
    mut found: impl FnMut(&str, &mut dyn Read),
) -> Result<(), Reason> {
    let mut archive = tar::Archive::new(GzDecoder::new(tgz));
    for entry in archive.entries().map_err(Reason::Io)? {
        let mut entry = entry.map_err(Reason::Io)?;
        let path_bytes = entry.path_bytes().into_owned();
        let path = validate_entry_path(&path_bytes)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if let Some(name) = dist_file_name(path).filter(|name| wanted(name)) {
            let name = name.to_owned();
            found(&name, &mut entry);
        }
    }
    Ok(())
}

/// Walks an extension bundle and calls `found(relative_path, size, entry)` for every regular
/// file (`lib/postgresql/<name>.so`, `share/postgresql/extension/...`), in archive order.
/// Refuses unsafe paths and links; skips directories and dot files.
pub(crate) fn for_each_bundle_file(
    tgz: impl Read,
    mut found: impl FnMut(&str, u64, &mut dyn Read) -> Result<(), Reason>,
) -> Result<(), Reason> {
    let mut archive = tar::Archive::new(GzDecoder::new(tgz));
    for entry in archive.entries().map_err(Reason::Io)? {
        let mut entry = entry.map_err(Reason::Io)?;
        let path_bytes = entry.path_bytes().into_owned();
        let path = validate_entry_path(&path_bytes)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(Reason::UnsafeArchivePath(path.to_owned()));
        }
        let path = path.strip_prefix("./").unwrap_or(path);
        if path.is_empty() || path.starts_with('.') {
            continue;
        }
        let size = entry.size();
        found(path, size, &mut entry)?;
    }
    Ok(())
}

/// Unpacks every regular file of an extension bundle beneath `dest`, each synced and given
/// the mtime `mtime`; returns their relative paths and sizes, in archive order.
pub(crate) fn unpack_bundle(
    tgz: impl Read,
    dest: &std::path::Path,
    mtime: std::time::SystemTime,
) -> Result<Vec<(String, u64)>, Reason> {
    let mut written = Vec::new();
    for_each_bundle_file(tgz, |path, _, entry| {
        let target = dest.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(Reason::Io)?;
        }
        let mut file = std::fs::File::create(&target).map_err(Reason::Io)?;
        let size = std::io::copy(entry, &mut file).map_err(Reason::Io)?;
        file.set_modified(mtime).and_then(|()| file.sync_all()).map_err(Reason::Io)?;
        written.push((path.to_owned(), size));
        Ok(())
    })?;
    Ok(written)
}
