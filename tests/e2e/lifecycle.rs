//! The command's lifecycle: clean stop on SIGTERM and SIGINT with a client mid-transaction,
//! restart on the same directory, and the refusals a person must understand (a second
//! server on one directory, a TCP port in use, an unpinned version, an empty password, a
//! public TCP address without one).

use crate::support::{RELEASES, Server, cache_root, command, connect, text};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_rolls_back_open_transactions_stops_cleanly_and_restarts() {
    for version in RELEASES {
        sigterm_rolls_back_stops_cleanly_and_restarts_on(version).await;
    }
}

/// From an empty directory on `version`, then again without naming the release: the cluster's
/// own is the one that runs.
async fn sigterm_rolls_back_stops_cleanly_and_restarts_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let ready = format!("ready: psql -h {} nself", dir.path().display());
    assert_eq!(server.stdout().last(), Some(&ready));
    assert_eq!(server.database_url(), format!("postgres://postgres@localhost/nself?host={}", dir.path().display()));
    let dsn = format!("dsn: {}", crate::support::seed_dsn(dir.path()));
    assert!(server.stdout().contains(&dsn), "{:?}", server.stdout());
    let client = connect(dir.path()).await;
    client.batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)").await.unwrap();
    let open = connect(dir.path()).await;
    open.batch_execute("BEGIN; INSERT INTO kept VALUES (2)").await.unwrap();
    let sock_path = server.sock_path();

    let (status, stderr) = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "exit status {status}\n{stderr}");
    assert!(stderr.contains("PostgreSQL stopped"), "{stderr}");
    assert!(!sock_path.exists(), "the socket must be removed");
    assert!(open.batch_execute("COMMIT").await.is_err(), "the open transaction's client is disconnected");

    let server = tokio::task::block_in_place(|| Server::start(dir.path()));
    let client = connect(dir.path()).await;
    let rows: Vec<i32> =
        client.query("SELECT x FROM kept ORDER BY x", &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    assert_eq!(rows, [1], "{version}: committed data kept, the open transaction rolled back");
    assert!(server.stderr().contains("kind=Resumed"), "{version}: {}", server.stderr());
    let major: String = client.query_one("SELECT current_setting('server_version_num')", &[]).await.unwrap().get(0);
    assert_eq!(major.parse::<u32>().unwrap() / 10000, pglite_host::pg_major(version).unwrap(), "{version}'s major");
    drop(client);
    let (status, stderr) = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_second_start_on_one_directory_is_refused_and_sigint_stops_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path());
    let mut second = Server::spawn(dir.path(), &[]);
    let status = second.wait_exit();
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains(&dir.path().display().to_string()), "{stderr}");

    // The first one is unharmed, and SIGINT stops it as cleanly as SIGTERM.
    let out = crate::support::psql(dir.path(), &[], "SELECT 40 + 2 AS answer;");
    assert!(text(&out).0.contains("42"), "{:?}", text(&out));
    first.signal(rustix::process::Signal::INT);
    let status = first.wait_exit();
    assert!(status.success(), "{}", first.stderr());
    assert!(!first.sock_path().exists());
}

#[test]
fn a_tcp_port_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(dir.path(), &["--tcp", &addr]);
    let status = server.wait_exit();
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("in use"), "{stderr}");
    // Nothing is left behind that would stop a later start.
    drop(taken);
    let _ = Server::start(dir.path());
}

#[test]
fn fetch_prints_the_verified_cache_directory() {
    let out = command(&["fetch"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let dir = std::path::PathBuf::from(stdout.trim());
    assert_eq!(dir, cache_root().join("pglite").join(nself_embedded::DEFAULT_PGLITE_VERSION));
    let release = pglite_fetch::pinned_release(nself_embedded::DEFAULT_PGLITE_VERSION).unwrap();
    assert!(dir.join(&release.wasm.name).is_file(), "{dir:?}");
}

#[test]
fn an_unpinned_version_names_the_pinned_ones() {
    let out = command(&["fetch", "--pglite-version", "0.0.1"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("0.0.1") && stderr.contains(nself_embedded::DEFAULT_PGLITE_VERSION), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_clients_authenticate_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(dir.path(), &["--tcp", "127.0.0.1:0", "--password", "s3cret"]);
    tokio::task::block_in_place(|| server.wait_ready());
    let line =
        server.stdout().iter().find_map(|line| line.strip_prefix("tcp: postgres://postgres@")).expect("a tcp line");
    let addr: std::net::SocketAddr = line.split('/').next().unwrap().parse().expect("the bound address");
    assert_ne!(addr.port(), 0, "the real port is printed");

    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(addr.port()).user("postgres").dbname("postgres");
    let (client, connection) =
        config.clone().password("s3cret").connect(tokio_postgres::NoTls).await.expect("the right password");
    tokio::spawn(connection);
    assert_eq!(client.query_one("SELECT 6 * 7", &[]).await.unwrap().get::<_, i32>(0), 42);

    let err = config.password("wrong").connect(tokio_postgres::NoTls).await.err().expect("the wrong password fails");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{err}");
    drop(client);
    let (status, stderr) = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "{stderr}");
}

#[test]
fn an_empty_password_and_a_public_address_without_one_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, says) in [
        (&["--tcp", "127.0.0.1:0", "--password", ""][..], &[][..], "the password is empty"),
        (&["--tcp", "127.0.0.1:0"], &[("NSELF_PASSWORD", "")], "the password is empty"),
        (&["--tcp", "0.0.0.0:0"], &[], "--tcp 0.0.0.0:0 is not a loopback address"),
    ] {
        let mut server = Server::spawn_env(dir.path(), args, env);
        let status = server.wait_exit();
        let stderr = server.stderr();
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
    }
    assert!(!dir.path().join("data").exists(), "nothing was started");
}
