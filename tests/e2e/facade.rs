//! The library facade without the command: lifecycle, health, and the PGlite backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nself_embedded::{EmbeddedPgRuntime, PgliteBackend};
use pg_bridge::Backend;

use crate::support::{artifact, connect};

const START: Duration = Duration::from_secs(600);

/// The PostgreSQL major version of the default release.
fn default_major() -> String {
    pglite_host::pg_major(nself_embedded::DEFAULT_PGLITE_VERSION).expect("a hosted default").to_string()
}

async fn runtime(dir: &std::path::Path) -> Arc<EmbeddedPgRuntime> {
    Arc::new(runtime_on(dir).await)
}

async fn runtime_on(dir: &std::path::Path) -> EmbeddedPgRuntime {
    EmbeddedPgRuntime::new(dir, artifact().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_boot_once_and_stop_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path()).await;
    assert!(!runtime.healthy().await, "healthy before start");
    runtime.stop().await.expect("stopping a runtime that never started");

    let starts: Vec<_> = (0..16)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.start(START).await })
        })
        .collect();
    // A second boot would have failed on the data directory's lock.
    for start in starts {
        start.await.unwrap().expect("every concurrent start succeeds");
    }
    assert!(runtime.sock_path().exists());
    assert!(runtime.healthy().await);
    let client = connect(dir.path()).await;
    let row = client.query_one("SELECT current_setting('server_version')", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0).split('.').next(), Some(default_major().as_str()));
    runtime.start(START).await.expect("start on a running runtime is a no-op");

    runtime.stop().await.expect("stop");
    assert!(!runtime.sock_path().exists(), "the socket is removed");
    assert!(!runtime.healthy().await, "healthy after stop");
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the client was disconnected");
    runtime.stop().await.expect("a second stop is a no-op");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_committed_data_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path()).await;
    runtime.start(START).await.unwrap();
    let client = connect(dir.path()).await;
    client.batch_execute("CREATE TABLE kept(x int); INSERT INTO kept VALUES (1), (2)").await.unwrap();
    let open = connect(dir.path()).await;
    open.batch_execute("BEGIN; INSERT INTO kept VALUES (99)").await.unwrap();
    runtime.stop().await.unwrap();

    runtime.start(START).await.expect("restart on the same directory");
    let client = connect(dir.path()).await;
    let rows = client.query("SELECT x FROM kept ORDER BY x", &[]).await.unwrap();
    assert_eq!(rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>(), [1, 2]);
    runtime.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_running_runtime_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path()).await;
    runtime.start(START).await.unwrap();
    connect(dir.path()).await.batch_execute("CREATE TABLE t(x int); INSERT INTO t VALUES (7)").await.unwrap();
    // Dropped on a runtime thread without `stop`: the instance must still stop (and release
    // the data directory) without blocking the async runtime into a panic.
    drop(runtime);

    let runtime = runtime_on(dir.path()).await;
    runtime.start(START).await.expect("the data directory was released");
    let client = connect(dir.path()).await;
    assert_eq!(client.query_one("SELECT x FROM t", &[]).await.unwrap().get::<_, i32>(0), 7);
    runtime.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn set_password_is_postgres_password_over_tcp_and_may_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut runtime = runtime_on(dir.path()).await;
    runtime.bridge_config_mut().tcp = Some("127.0.0.1:0".parse().unwrap());
    runtime.set_password("");
    let err = runtime.start(START).await.expect_err("an empty password fails the start");
    assert!(matches!(err, nself_embedded::Error::Host(pglite_host::Error::EmptyPassword)), "{err}");
    runtime.set_password("library pass");
    runtime.start(START).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(runtime.tcp_addr().unwrap().port()).user("postgres").dbname("nself");
    let (client, connection) = config.clone().password("library pass").connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let me: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(me, "postgres");
    let err = config.password("library").connect(tokio_postgres::NoTls).await.err().expect("a wrong password");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{err}");
    runtime.stop().await.unwrap();
}

/// A running instance on `dir` and its backend, with the caches the facade uses.
async fn backend(dir: &std::path::Path) -> PgliteBackend {
    let artifact = artifact().await;
    let mut config = pglite_host::Config::new(dir.join("data"));
    config.module_cache_dir = artifact.dir.parent().map(|cache| cache.join("modules").into());
    config.template_dir = Some(artifact.dir.join("template").into());
    let host_artifact = pglite_host::Artifact {
        version: artifact.version.clone(),
        wasm: artifact.wasm.clone().into(),
        wasm_sha256: artifact.wasm_sha256.clone(),
        package_root: artifact.root.clone().into(),
        initdb: artifact.initdb.clone().map(|(path, sha256)| (path.into(), sha256)),
    };
    let host = tokio::task::spawn_blocking(move || pglite_host::Pglite::start(host_artifact, config))
        .await
        .unwrap()
        .expect("PGlite starts");
    PgliteBackend::new(Arc::new(host)).await.expect("reading the reported settings")
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut res = vec![tag];
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(body);
    res
}

fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// `P B E S` for `sql` with the unnamed statement and portal.
fn extended(sql: &str) -> Vec<u8> {
    [
        frame(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"].concat()),
        frame(b'B', &[0; 8]),
        frame(b'E', &[0; 5]),
        frame(b'S', b""),
    ]
    .concat()
}

/// Message tags of backend output, and the SQLSTATE of its first error.
fn summary(out: &[u8]) -> (String, Option<String>) {
    let mut tags = String::new();
    let mut code = None;
    let mut rest = out;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let body = &rest[5..1 + len];
        tags.push(rest[0] as char);
        if rest[0] == b'E' && code.is_none() {
            code = body
                .split(|&b| b == 0)
                .find(|field| field.first() == Some(&b'C'))
                .map(|field| String::from_utf8_lossy(&field[1..]).into_owned());
        }
        rest = &rest[1 + len..];
    }
    (tags, code)
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_reports_pglite_settings() {
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(dir.path()).await;
    let params = backend.parameter_status();
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(get("server_version").and_then(|v| v.split('.').next()), Some(default_major().as_str()));
    assert_eq!(get("server_encoding"), Some("UTF8"));
    assert_eq!(get("integer_datetimes"), Some("on"));
    assert_eq!(get("standard_conforming_strings"), Some("on"));
    assert!(get("DateStyle").is_some() && get("TimeZone").is_some(), "{params:?}");
    assert_eq!(backend.session_baseline(), "", "PostgreSQL's defaults are set inside the backend");
    assert!(!backend.reports_parameters() && backend.has_connection_defaults());
    assert!(backend.cancel().await, "PGlite cancels through the epoch interrupt");
    backend_stop(backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_copy_that_slips_through_is_aborted_within_the_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(dir.path()).await;
    let exchange = |bytes: Vec<u8>| backend.exchange(Bytes::from(bytes));
    assert_eq!(summary(&exchange(query("CREATE TABLE t(x int)")).await.unwrap()), ("CZ".into(), None));

    // Ordinary batches are answered exactly as without the guard.
    let out = exchange(extended("SELECT 1")).await.unwrap();
    assert_eq!(summary(&out), ("12DCZ".into(), None));
    let out = exchange([extended("SELECT 1/0"), extended("SELECT 2")].concat()).await.unwrap();
    assert_eq!(summary(&out), ("1EZ12DCZ".into(), Some("22012".into())), "{:?}", String::from_utf8_lossy(&out));

    // COPY FROM STDIN through the extended protocol: aborted with 57014, session usable.
    let out = exchange(extended("COPY t FROM STDIN")).await.unwrap();
    assert_eq!(summary(&out), ("12GEZ".into(), Some("57014".into())));
    let out = exchange(query("SELECT count(*) FROM t")).await.unwrap();
    assert_eq!(summary(&out), ("TDCZ".into(), None));
    backend_stop(backend).await;
}

async fn backend_stop(backend: PgliteBackend) {
    let host = backend.host().clone();
    tokio::task::spawn_blocking(move || host.stop()).await.unwrap().expect("clean stop");
}
