//! Extensions through the command, and what clients see when PGlite crashes or a request is
//! too large for the release.

use crate::support::{Server, command, connect};

fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|db| db.code().code().to_owned())
}

#[tokio::test]
async fn extensions_on_0_3_with_pgcrypto() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(dir.path(), &["--pglite-version", "0.3.16", "--extensions", "pgcrypto,uuid-ossp"]);
    server.wait_ready();
    let client = connect(dir.path()).await;
    client.batch_execute("CREATE EXTENSION pgcrypto; CREATE EXTENSION \"uuid-ossp\"").await.unwrap();
    let row =
        client.query_one("SELECT encode(digest('abc', 'sha256'), 'hex'), uuid_generate_v4()::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(row.get::<_, String>(1).len(), 36);
    let version: String = client.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    assert!(version.starts_with("17."), "{version}");
    drop(client);
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn pgcrypto_on_0_2_and_unknown_extensions_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().to_str().unwrap();
    let out =
        command(&["start", "--runtime-dir", runtime_dir, "--pglite-version", "0.2.17", "--extensions", "pgcrypto"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pgcrypto") && stderr.contains("0.3.16"), "{stderr}");

    let out = command(&["start", "--runtime-dir", runtime_dir, "--extensions", "no_such_thing"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no_such_thing") && stderr.contains("hstore"), "lists the available ones: {stderr}");
}

#[tokio::test]
async fn a_crash_ends_the_sessions_it_destroyed_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_release(dir.path(), "0.2.17");
    let holder = connect(dir.path()).await;
    holder.batch_execute("CREATE TABLE kept(x int); INSERT INTO kept VALUES (1)").await.unwrap();
    let statement = holder.prepare("SELECT x FROM kept").await.unwrap();

    // A 20 MB reply overruns PGlite 0.2's transfer buffer: the host restarts the instance.
    let crasher = connect(dir.path()).await;
    let err = crasher.simple_query("SELECT repeat('x', 20 * 1024 * 1024)").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P02"), "{err}");
    // The holder's prepared statement died with the old session: it is told so.
    let err = holder.query(&statement, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P02"), "{err}");

    let fresh = connect(dir.path()).await;
    assert_eq!(fresh.query_one("SELECT x FROM kept", &[]).await.unwrap().get::<_, i32>(0), 1);
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn an_oversize_request_is_an_ordinary_error() {
    let dir = tempfile::tempdir().unwrap();
    // PGlite 0.2's transfer buffer takes 15 MiB at most.
    let server = Server::start_release(dir.path(), "0.2.17");
    let client = connect(dir.path()).await;
    let big = "y".repeat(16 * 1024 * 1024);
    let err = client.query_one("SELECT length($1::text)", &[&big]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err}");
    assert_eq!(client.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    drop(client);
    let (status, _) = server.terminate();
    assert!(status.success());
}
