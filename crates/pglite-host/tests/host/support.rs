//! Shared fixtures: the artifact, a started instance on a fresh data directory, and helpers
//! that speak just enough of the wire protocol to check results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use pglite_host::{Artifact, Config, Pglite};

/// The workspace's shared test cache (artifact, compiled modules, templates).
pub(crate) fn cache_root() -> PathBuf {
    match std::env::var_os("NSELF_TEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"),
    }
}

/// Runs a fetch to completion on a thread of its own, so that callers inside an async test
/// (whose runtime cannot be blocked on) can use it too.
fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future))
            .join()
            .unwrap()
    })
}

/// Every pinned PGlite release the host runs; most tests run on each.
pub(crate) fn releases() -> Vec<String> {
    pglite_fetch::pinned_releases()
        .into_iter()
        .map(|release| release.version)
        .filter(|version| pglite_host::pg_major(version).is_some())
        .collect()
}

/// Where `version` keeps its installation in the guest (and so in the extracted package).
pub(crate) fn guest_prefix(version: &str) -> &'static str {
    if pglite_host::pg_major(version).is_some_and(|major| major >= 18) { "/pglite" } else { "/tmp/pglite" }
}

/// The verified, extracted artifact of `version` (fetched once per cache).
pub(crate) fn artifact(version: &str) -> Artifact {
    static ARTIFACTS: OnceLock<Mutex<HashMap<String, Artifact>>> = OnceLock::new();
    let artifacts = ARTIFACTS.get_or_init(Default::default);
    let mut artifacts = artifacts.lock().unwrap();
    artifacts
        .entry(version.to_owned())
        .or_insert_with(|| {
            let mut opts = pglite_fetch::FetchOptions::new(version);
            opts.cache_dir = camino::Utf8PathBuf::from_path_buf(cache_root().join("pglite")).expect("utf-8 cache path");
            let fetched = block_on(pglite_fetch::ensure(&opts)).expect("fetching PGlite");
            Artifact {
                version: fetched.version,
                wasm: fetched.wasm.into(),
                wasm_sha256: fetched.wasm_sha256,
                package_root: fetched.root.into(),
                initdb: fetched.initdb.map(|(path, sha256)| (path.into(), sha256)),
            }
        })
        .clone()
}

pub(crate) fn config(version: &str, data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir);
    // The same layout the facade uses under NSELF_CACHE_DIR, so e2e tests share it.
    config.module_cache_dir = Some(cache_root().join("pglite/modules"));
    config.template_dir = Some(cache_root().join(format!("pglite/{version}/template")));
    config
}

/// Unpacked extension bundles of `version`, fetched into the shared cache.
pub(crate) fn extensions(version: &str, names: &[&str]) -> Vec<std::path::PathBuf> {
    let mut opts = pglite_fetch::FetchOptions::new(version);
    opts.cache_dir = camino::Utf8PathBuf::from_path_buf(cache_root().join("pglite")).expect("utf-8 cache path");
    let fetched = block_on(pglite_fetch::ensure_extensions(&opts, names)).expect("fetching extensions");
    fetched.into_iter().map(|ext| ext.root.into()).collect()
}

pub(crate) fn start(version: &str, data_dir: &Path) -> Pglite {
    Pglite::start(artifact(version), config(version, data_dir)).expect("PGlite starts")
}

/// Runs `check` on a new instance of every release, each in a fresh data directory.
pub(crate) fn on_each_release(check: impl Fn(&str, &Pglite)) {
    for version in releases() {
        let dir = tempfile::tempdir().unwrap();
        let pg = start(&version, dir.path());
        check(&version, &pg);
    }
}

/// A simple-protocol Query.
pub(crate) fn query(sql: &str) -> Vec<u8> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}

/// Splits backend output into (type, body) messages; panics on a torn frame.
pub(crate) fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "torn message header");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert!(bytes.len() > len, "torn message body");
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The outcome of one simple query: text rows, or the SQLSTATE of its error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Rows(Vec<Vec<Option<String>>>),
    Error(String),
}

pub(crate) fn outcome(reply: &[u8]) -> Outcome {
    let msgs = messages(reply);
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "reply must end in ReadyForQuery: {msgs:?}");
    let mut rows = Vec::new();
    for (ty, body) in &msgs {
        match ty {
            b'E' => {
                let code = body.split(|&b| b == 0).find(|f| f.first() == Some(&b'C')).expect("SQLSTATE field");
                return Outcome::Error(String::from_utf8_lossy(&code[1..]).into_owned());
            }
            b'D' => rows.push(data_row(body)),
            _ => {}
        }
    }
    Outcome::Rows(rows)
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                return None;
            }
            let value = String::from_utf8_lossy(&body[at..at + len as usize]).into_owned();
            at += len as usize;
            Some(value)
        })
        .collect()
}

/// Runs `sql` and returns its outcome.
pub(crate) fn run(pg: &Pglite, sql: &str) -> Outcome {
    outcome(&pg.exec_protocol(query(sql)).expect("exchange succeeds"))
}

/// Runs `sql` and returns the single value of its single row.
pub(crate) fn scalar(pg: &Pglite, sql: &str) -> String {
    match run(pg, sql) {
        Outcome::Rows(rows) if rows.len() == 1 && rows[0].len() == 1 => rows[0][0].clone().unwrap_or_default(),
        other => panic!("{sql}: expected one value, got {other:?}"),
    }
}
