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
pub(crate) const DEFAULT_VERSIONS: &[&str] = &["0.2.17", "0.3.16", "0.5.17", "0.6.1"];

/// Extensions PGlite publishes as npm packages of their own (from 0.5 on), pinned with the
/// release whose PostgreSQL major they are built for: `(release, package, version)`. Each
/// package's `dist/*.tar.gz` bundles join the release's extensions. The packages' latest
/// versions name PGlite 0.5.15 as their peer, PostgreSQL 18 like 0.5.17; none is built for
/// PostgreSQL 19 (0.6) yet, and PostgreSQL refuses a module built for another major.
const PACKAGED_EXTENSIONS: &[(&str, &str, &str)] = &[
    ("0.5.17", "@electric-sql/pglite-pgvector", "0.0.16"),
    ("0.5.17", "@electric-sql/pglite-age", "0.0.16"),
    ("0.5.17", "@electric-sql/pglite-pg_hashids", "0.0.16"),
    ("0.5.17", "@electric-sql/pglite-pg_ivm", "0.0.16"),
    ("0.5.17", "@electric-sql/pglite-pg_textsearch", "0.0.17"),
    ("0.5.17", "@electric-sql/pglite-pg_uuidv7", "0.0.16"),
    ("0.5.17", "@electric-sql/pglite-pgtap", "0.0.16"),
];

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
    let tgz = download(&opts, &url).await?;
    let mut release = pin_tarball(version, tgz).with_context(|| format!("reading {url}"))?;
    for (_, package, package_version) in PACKAGED_EXTENSIONS.iter().filter(|(release, ..)| *release == version) {
        eprintln!("  with {package}@{package_version}");
        let url = pglite_fetch::npm_package_tarball_url(registry, package, package_version);
        let tgz = download(&opts, &url).await?;
        let pins = dist_pins(tgz).with_context(|| format!("reading {url}"))?;
        let bundles: Vec<FilePin> = pins
            .into_iter()
            .filter(|pin| pin.name.ends_with(".tar.gz"))
            .map(|pin| FilePin::in_package(&pin.name, pin.size, &pin.sha256, package, package_version))
            .collect();
        if bundles.is_empty() {
            bail!("{package}@{package_version} has no dist/*.tar.gz");
        }
        for bundle in bundles {
            if release.extensions.iter().any(|pin| pin.name == bundle.name) {
                bail!("{} is both in the release and in {package}", bundle.name);
            }
            release.extensions.push(bundle);
        }
    }
    release.extensions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(release)
}

async fn download(opts: &FetchOptions, url: &str) -> anyhow::Result<std::fs::File> {
    let mut tgz = tempfile::tempfile()?;
    pglite_fetch::download(opts, url, &mut tgz).await.with_context(|| format!("downloading {url}"))?;
    Ok(tgz)
}

/// Hashes every regular `dist/*.wasm`, `.data`, `.js` and `.tar.gz` file in an npm tarball.
fn dist_pins(mut tgz: std::fs::File) -> anyhow::Result<Vec<FilePin>> {
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
        if entry.header().entry_type().is_file() && (is_core || name == "initdb.wasm" || name.ends_with(".tar.gz")) {
            let (sha256, size) = pglite_fetch::sha256_hex(entry)?;
            pins.push(FilePin::new(&name, size, &sha256));
        }
    }
    Ok(pins)
}

/// Hashes the core files and every `dist/*.tar.gz` extension bundle in an npm tarball.
fn pin_tarball(version: &str, tgz: std::fs::File) -> anyhow::Result<PinnedRelease> {
    let mut pins = dist_pins(tgz)?;
    let initdb = pins.iter().position(|pin| pin.name == "initdb.wasm").map(|index| pins.remove(index));
    let stem = if pins.iter().any(|pin| pin.name == "pglite.wasm") { "pglite" } else { "postgres" };
    let mut take = |ext: &str| {
        let name = format!("{stem}{ext}");
        let index = pins.iter().position(|pin| pin.name == name).with_context(|| format!("no dist/{name}"))?;
        anyhow::Ok(pins.remove(index))
    };
    let (wasm, data, js) = (take(".wasm")?, take(".data")?, take(".js")?);
    let mut extensions: Vec<FilePin> = pins.into_iter().filter(|pin| pin.name.ends_with(".tar.gz")).collect();
    extensions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PinnedRelease { version: version.to_owned(), wasm, data, js, initdb, extensions })
}

/// `0.10.2` sorts after `0.9.1`; pre-release suffixes sort by text after the numbers.
fn version_key(version: &str) -> (Vec<u64>, String) {
    let (numbers, rest) = version.split_once('-').unwrap_or((version, ""));
    (numbers.split('.').map(|part| part.parse().unwrap_or(0)).collect(), rest.to_owned())
}

fn render(releases: &[PinnedRelease]) -> String {
    let pin = |pin: &FilePin| match &pin.package {
        None => format!("FilePin::new({:?}, {}, {:?})", pin.name, pin.size, pin.sha256),
        Some(package) => format!(
            "FilePin::in_package({:?}, {}, {:?}, {:?}, {:?})",
            pin.name, pin.size, pin.sha256, package.name, package.version
        ),
    };
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
        res += &match &release.initdb {
            None => "initdb: None,\n".to_owned(),
            Some(initdb) => format!("initdb: Some({}),\n", pin(initdb)),
        };
        res += "extensions: vec![\n";
        for extension in &release.extensions {
            res += &format!("{},\n", pin(extension));
        }
        res += "],\n},\n";
    }
    res += "]\n}\n";
    res
}
