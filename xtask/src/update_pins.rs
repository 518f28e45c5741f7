//! `cargo xtask update-pins`: recompute PGlite pins from the npm registry and regenerate
//! `crates/pglite-fetch/src/pins.rs`.
//!
//! The registry is the one the user's npm is configured with (pglite-fetch's discovery), and
//! the download goes through pglite-fetch's own HTTP client, so pins are computed over
//! exactly the bytes a cold `ensure` would see. Versions not being updated keep their pins.

use std::io::{BufReader, Seek};

use anyhow::{Context, bail};
use pglite_fetch::{FetchOptions, FilePin, PinnedRelease};
use xshell::{Shell, cmd};

/// Versions pinned when none are given.
pub(crate) const DEFAULT_VERSIONS: &[&str] = &["0.2.17", "0.3.16"];

const PINS_PATH: &str = "crates/pglite-fetch/src/pins.rs";

pub(crate) fn run(versions: &[String], check: bool) -> anyhow::Result<()> {
    let versions: Vec<String> = if versions.is_empty() {
        DEFAULT_VERSIONS.iter().map(|version| (*version).to_owned()).collect()
    } else {
        versions.to_vec()
    };
    let registry = pglite_fetch::npm_registry()
        .context("no npm registry: set NPM_CONFIG_REGISTRY, add `registry=` to ~/.npmrc or install npm")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut releases: Vec<PinnedRelease> =
        pglite_fetch::pinned_releases().into_iter().filter(|release| !versions.contains(&release.version)).collect();
    for version in &versions {
        eprintln!("pinning @electric-sql/pglite@{version} from {registry}");
        let release = runtime.block_on(pin_release(&registry, version))?;
        releases.push(release);
    }
    releases.sort_by_key(|release| version_key(&release.version));

    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    let text = render(&releases);
    let text = cmd!(sh, "rustfmt --edition 2024 --emit stdout").stdin(&text).read()?;
    let text = format!("{}\n", text.trim_end());
    let current = sh.read_file(PINS_PATH).unwrap_or_default();
    if check {
        if current != text {
            bail!("{PINS_PATH} is stale: run cargo xtask update-pins");
        }
        eprintln!("{PINS_PATH} is up to date");
    } else if current != text {
        sh.write_file(PINS_PATH, &text)?;
        eprintln!("wrote {PINS_PATH}");
    } else {
        eprintln!("{PINS_PATH} unchanged");
    }
    Ok(())
}

async fn pin_release(registry: &str, version: &str) -> anyhow::Result<PinnedRelease> {
    let url = pglite_fetch::npm_tarball_url(registry, version);
    let opts = FetchOptions::new(version);
    let mut tgz = tempfile::tempfile()?;
    pglite_fetch::download(&opts, &url, &mut tgz).await.with_context(|| format!("downloading {url}"))?;
    pin_tarball(version, tgz).with_context(|| format!("reading {url}"))
}

/// Hashes the core files and every `dist/*.tar.gz` extension bundle in an npm tarball.
fn pin_tarball(version: &str, mut tgz: std::fs::File) -> anyhow::Result<PinnedRelease> {
    tgz.rewind()?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(tgz)));
    let mut pins = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let path_bytes = entry.path_bytes().into_owned();
        let path = pglite_fetch::validate_entry_path(&path_bytes)?;
        let Some(name) = pglite_fetch::dist_file_name(path).map(str::to_owned) else {
            continue;
        };
        let is_core = ["postgres", "pglite"]
            .iter()
            .any(|stem| [".wasm", ".data", ".js"].iter().any(|ext| name == format!("{stem}{ext}")));
        if entry.header().entry_type().is_file() && (is_core || name.ends_with(".tar.gz")) {
            let (sha256, size) = pglite_fetch::sha256_hex(entry)?;
            pins.push(FilePin { name, size, sha256 });
        }
    }
    let stem = if pins.iter().any(|pin| pin.name == "pglite.wasm") { "pglite" } else { "postgres" };
    let mut take = |ext: &str| {
        let name = format!("{stem}{ext}");
        let index = pins.iter().position(|pin| pin.name == name).with_context(|| format!("no dist/{name}"))?;
        anyhow::Ok(pins.remove(index))
    };
    let (wasm, data, js) = (take(".wasm")?, take(".data")?, take(".js")?);
    let mut extensions: Vec<FilePin> = pins.into_iter().filter(|pin| pin.name.ends_with(".tar.gz")).collect();
    extensions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PinnedRelease { version: version.to_owned(), wasm, data, js, extensions })
}

/// `0.10.2` sorts after `0.9.1`; pre-release suffixes sort by text after the numbers.
fn version_key(version: &str) -> (Vec<u64>, String) {
    let (numbers, rest) = version.split_once('-').unwrap_or((version, ""));
    (numbers.split('.').map(|part| part.parse().unwrap_or(0)).collect(), rest.to_owned())
}

fn render(releases: &[PinnedRelease]) -> String {
    let pin = |pin: &FilePin| format!("FilePin::new({:?}, {}, {:?})", pin.name, pin.size, pin.sha256);
    let mut res = String::from(
        "//! Pinned PGlite releases: size and SHA-256 of every file the host may need.\n\
         //!\n\
         //! generated by cargo xtask update-pins; do not edit\n\n\
         use crate::pin::{FilePin, PinnedRelease};\n\n\
         pub(crate) fn releases() -> Vec<PinnedRelease> {\nvec![\n",
    );
    for release in releases {
        res += &format!("PinnedRelease {{\nversion: {:?}.into(),\n", release.version);
        res += &format!("wasm: {},\ndata: {},\njs: {},\n", pin(&release.wasm), pin(&release.data), pin(&release.js));
        res += "extensions: vec![\n";
        for extension in &release.extensions {
            res += &format!("{},\n", pin(extension));
        }
        res += "],\n},\n";
    }
    res += "]\n}\n";
    res
}
