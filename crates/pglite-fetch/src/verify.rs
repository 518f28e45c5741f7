//! The full check on request (`nself-embedded fetch --verify`): every byte of one release's
//! cache against what vouches for it, receipts and stamps ignored, since bit rot changes
//! neither a file's size nor its mtime. Downloads are hashed against their pins, `root/` is
//! compared with its ranges of the (just hashed) data bundle and each unpacked extension with
//! its bundle; a file that should not be in a tree is damage too. What is damaged is repaired
//! as a start repairs it (fetched again, extracted again), under the same lock.

use camino::Utf8Path;

use crate::{
    Artifact, Error, FetchOptions, FilePin, PackageFile, PinnedRelease, blocking, cache, fill, pinned_release,
    read_file_list,
    tree::{self, Damage, Problem},
    version_dir,
};

/// What a full check of one release's cache did.
#[derive(Debug)]
pub struct Verified {
    /// The release, whole.
    pub artifact: Artifact,
    /// How many files were checked, byte for byte.
    pub n_files: usize,
    /// What was found damaged, every item of it since repaired.
    pub repaired: Vec<Damage>,
}

/// Checks every file of `opts.version`'s cache (downloads, the extracted tree, unpacked
/// extensions) byte for byte and repairs what is damaged; fetches what is missing. An error
/// means something could not be repaired (each damaged file was logged as it was found).
pub async fn verify(opts: &FetchOptions) -> Result<Verified, Error> {
    let release = pinned_release(&opts.version)?;
    verify_with_pins(opts, &release).await
}

/// [`verify`] against an explicit pin table entry; for tests that serve synthetic files.
#[doc(hidden)]
pub async fn verify_with_pins(opts: &FetchOptions, release: &PinnedRelease) -> Result<Verified, Error> {
    let dir = version_dir(opts, release)?;
    cache::create_dir_all(&dir)?;
    let lock = {
        let dir = dir.clone();
        blocking(move || cache::lock(&dir)).await?
    };
    let mut repaired = Vec::new();

    let core: Vec<FilePin> = release.core_files().into_iter().cloned().collect();
    let n_downloads = core.len();
    let refetch = {
        let dir = dir.clone();
        blocking(move || {
            cache::remove_leftovers(&dir)?;
            hash_each(&dir, core)
        })
        .await?
    };
    refill(opts, &dir, refetch, &mut repaired).await?;

    let (files, damage) = {
        let (dir, release) = (dir.clone(), release.clone());
        blocking(move || verify_root(&dir, &release)).await?
    };
    report(&damage);
    repaired.extend(damage);
    let mut n_files = n_downloads + files.len();

    let ext_dir = dir.join("extensions");
    for pin in &release.extensions {
        let name = crate::pin::extension_name(&pin.name);
        if !ext_dir.join(&pin.name).exists() && !ext_dir.join(name).exists() {
            continue;
        }
        let refetch = {
            let (ext_dir, pin) = (ext_dir.clone(), pin.clone());
            blocking(move || {
                cache::remove_leftovers(&ext_dir)?;
                hash_each(&ext_dir, vec![pin])
            })
            .await?
        };
        refill(opts, &ext_dir, refetch, &mut repaired).await?;
        let (n_checked, damage) = {
            let (ext_dir, pin) = (ext_dir.clone(), pin.clone());
            blocking(move || verify_extension(&ext_dir, &pin)).await?
        };
        report(&damage);
        repaired.extend(damage);
        n_files += 1 + n_checked;
    }
    drop(lock);
    tracing::info!(version = %release.version, n_files, n_repaired = repaired.len(), "verified the cache");
    Ok(Verified { artifact: crate::artifact(&dir, release, files), n_files, repaired })
}

/// Pins whose files are missing or do not hash to them, with what is wrong (`None`: missing,
/// which is a fill, not damage).
fn hash_each(dir: &Utf8Path, pins: Vec<FilePin>) -> Result<Vec<(FilePin, Option<Damage>)>, Error> {
    let mut res = Vec::new();
    for pin in pins {
        match cache::hash_state(dir, &pin)? {
            None => {}
            Some(Problem::Missing) => res.push((pin, None)),
            Some(problem) => {
                let damage = Damage { path: dir.join(&pin.name), problem };
                res.push((pin, Some(damage)));
            }
        }
    }
    Ok(res)
}

/// Fetches the files `hash_each` found wanting, recording the damaged ones as repaired.
async fn refill(
    opts: &FetchOptions,
    dir: &Utf8Path,
    wanting: Vec<(FilePin, Option<Damage>)>,
    repaired: &mut Vec<Damage>,
) -> Result<(), Error> {
    if wanting.is_empty() {
        return Ok(());
    }
    let damage: Vec<Damage> = wanting.iter().filter_map(|(_, damage)| damage.clone()).collect();
    report(&damage);
    fill::fill(opts, dir, wanting.into_iter().map(|(pin, _)| pin).collect()).await?;
    repaired.extend(damage);
    Ok(())
}

fn report(damage: &[Damage]) {
    for damage in damage {
        tracing::warn!(path = %damage.path, problem = %damage.problem, "damaged; repairing");
    }
}

/// Compares all of `root/` with the data bundle (hashed just before) and looks for files the
/// release does not have; extracts it again if anything differs or it was never complete.
fn verify_root(dir: &Utf8Path, release: &PinnedRelease) -> Result<(Vec<PackageFile>, Vec<Damage>), Error> {
    let files = read_file_list(dir, release)?;
    let complete = cache::is_root_complete(dir, &release.data, &files);
    let mut damage = Vec::new();
    if complete {
        let all: Vec<&PackageFile> = files.iter().collect();
        damage = cache::compare_root(dir, &release.data, &all)?;
        let root = dir.join("root");
        let expected = files.iter().map(PackageFile::relative_path).collect();
        damage.extend(tree::unexpected(&root, &expected).map_err(cache::cache_err(&root))?);
    }
    if !complete || !damage.is_empty() {
        cache::extract_root(dir, &release.data, &files)?;
    }
    Ok((files, damage))
}

/// Compares an extension's unpacked tree with its bundle (hashed just before), unpacking it
/// again when anything differs; returns how many files it holds and what was damaged.
fn verify_extension(dir: &Utf8Path, pin: &FilePin) -> Result<(usize, Vec<Damage>), Error> {
    if let cache::Unpacked::No = cache::unpacked_extension(dir, pin)? {
        cache::unpack_extension(dir, pin)?;
        let (found, _) = cache::compare_extension(dir, pin, false)?;
        return Ok((found.len(), Vec::new()));
    }
    let (found, damage) = cache::compare_extension(dir, pin, true)?;
    if !damage.is_empty() {
        cache::unpack_extension(dir, pin)?;
    }
    Ok((found.len(), damage))
}
