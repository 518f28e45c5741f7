//! `nself-embedded fetch --verify`: the full check of the cache, every byte of it, for the
//! releases asked for (by default every release the cache holds, and the default one).
//! pglite-fetch checks what it downloaded and extracted, pglite-host the template cluster and
//! the compiled modules; each repairs what it finds damaged. Standard output gets each
//! release's cache directory, as plain `fetch` prints it; standard error what was repaired.
//! The exit code says which: 0 whole, 5 repaired, 1 not repairable.

use std::path::PathBuf;

use anyhow::Context;

use super::{FetchArgs, exit, fetch_options};
use crate::{DEFAULT_PGLITE_VERSION, Error};

/// Checks the cache; returns the exit code (0 or [`exit::REPAIRED`]).
pub(super) async fn run(args: &FetchArgs) -> anyhow::Result<u8> {
    let versions = match &args.pglite_version {
        Some(version) => vec![version.clone()],
        None => versions_in_cache()?,
    };
    let (mut n_files, mut repaired) = (0, Vec::new());
    for version in &versions {
        let (opts, reporter) = fetch_options(version)?;
        let verified = pglite_fetch::verify(&opts).await;
        reporter.finish();
        let verified = verified.map_err(Error::Fetch).with_context(|| format!("verifying PGlite {version}"))?;
        n_files += verified.n_files;
        repaired.extend(verified.repaired.iter().map(ToString::to_string));

        let artifact = &verified.artifact;
        let template_dir = artifact.dir.as_std_path().join("template");
        // Where `EmbeddedPgRuntime` keeps compiled modules: beside the releases.
        let module_dir: Option<PathBuf> = artifact.dir.parent().map(|dir| dir.as_std_path().join("modules"));
        let host_artifact = pglite_host::Artifact {
            version: artifact.version.clone(),
            wasm: artifact.wasm.clone().into_std_path_buf(),
            wasm_sha256: artifact.wasm_sha256.clone(),
            package_root: artifact.root.clone().into_std_path_buf(),
            initdb: artifact.initdb.clone().map(|(path, sha256)| (path.into(), sha256)),
        };
        let host_damage = tokio::task::spawn_blocking(move || {
            pglite_host::verify_cache(&host_artifact, &template_dir, module_dir.as_deref())
        })
        .await
        .context("the check of the template and compiled modules panicked")?
        .map_err(Error::Host)
        .with_context(|| format!("verifying the template cluster and compiled modules of PGlite {version}"))?;
        repaired.extend(host_damage.iter().map(ToString::to_string));
        println!("{}", artifact.dir);
    }
    for damage in &repaired {
        eprintln!("repaired: {damage}");
    }
    eprintln!(
        "nself-embedded: checked {n_files} files of PGlite {}: {}",
        versions.join(", "),
        match repaired.len() {
            0 => "all whole".to_owned(),
            n => format!("{n} damaged, all repaired"),
        }
    );
    Ok(if repaired.is_empty() { 0 } else { exit::REPAIRED })
}

/// Every pinned release with a directory in the cache, and the default release.
fn versions_in_cache() -> anyhow::Result<Vec<String>> {
    let cache_dir = pglite_fetch::default_cache_dir().map_err(Error::Fetch)?;
    let mut res: Vec<String> = pglite_fetch::pinned_releases()
        .into_iter()
        .map(|release| release.version)
        .filter(|version| version == DEFAULT_PGLITE_VERSION || cache_dir.join(version).is_dir())
        .collect();
    if !res.iter().any(|version| version == DEFAULT_PGLITE_VERSION) {
        res.push(DEFAULT_PGLITE_VERSION.to_owned());
    }
    Ok(res)
}

/// The exit code of a check that failed: damage it could not repair, whatever the cause (a
/// source that could not be reached included), except a release that is not pinned.
pub(super) fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Error>() {
        Some(Error::Fetch(pglite_fetch::Error::UnpinnedVersion { .. })) => exit::NO_ARTIFACT,
        _ => exit::FAILURE,
    }
}
