//! Extensions through the command on every release, and what clients see when PGlite crashes
//! or a request is too large for the release.

use pglite_host::extension_unavailable;

use crate::support::{RELEASES, Server, command, connect};

fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|db| db.code().code().to_owned())
}

/// What `SELECT version()` begins with on each pinned release.
fn version_text(release: &str) -> &'static str {
    match release {
        "0.2.17" => "PostgreSQL 16.4 ",
        "0.3.16" => "PostgreSQL 17.5 ",
        "0.5.17" => "PostgreSQL 18.7 ",
        "0.6.1" => "PostgreSQL 19.0 ",
        _ => panic!("no expected version for PGlite {release}"),
    }
}

/// From an empty directory on every release that has pgcrypto: the extensions asked for on
/// the command (pgvector too where the release has it: bundled up to 0.3, a package of its own
/// with 0.5), plpgsql, and the PostgreSQL version the release names.
#[tokio::test]
async fn extensions_plpgsql_and_the_version_on_every_release_with_pgcrypto() {
    for release in RELEASES.into_iter().filter(|release| extension_unavailable(release, "pgcrypto").is_none()) {
        let with_vector = extension_unavailable(release, "vector").is_none();
        let extensions = if with_vector { "pgcrypto,uuid-ossp,vector" } else { "pgcrypto,uuid-ossp" };
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::spawn(dir.path(), &["--pglite-version", release, "--extensions", extensions]);
        server.wait_ready();
        let client = connect(dir.path()).await;
        client.batch_execute("CREATE EXTENSION pgcrypto; CREATE EXTENSION \"uuid-ossp\"").await.unwrap();
        let row = client
            .query_one("SELECT encode(digest('abc', 'sha256'), 'hex'), uuid_generate_v4()::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(row.get::<_, String>(1).len(), 36, "{release}");
        let crypt: bool =
            client.query_one("SELECT crypt('pw', gen_salt('bf', 4)) LIKE '$2a$04$%'", &[]).await.unwrap().get(0);
        assert!(crypt, "{release}: bcrypt through pgcrypto");
        if with_vector {
            client.batch_execute("CREATE EXTENSION vector").await.unwrap();
            let distance: f64 =
                client.query_one("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector", &[]).await.unwrap().get(0);
            assert_eq!(distance, 2.0, "{release}");
        }
        client
            .batch_execute(
                "CREATE TABLE t (n int); \
                 DO $$ BEGIN FOR i IN 1..3 LOOP INSERT INTO t VALUES (i * i); END LOOP; END $$",
            )
            .await
            .unwrap();
        let sum: i64 = client.query_one("SELECT sum(n) FROM t", &[]).await.unwrap().get(0);
        assert_eq!(sum, 14, "{release}: plpgsql");
        let version: String = client.query_one("SELECT version()", &[]).await.unwrap().get(0);
        assert!(version.starts_with(version_text(release)), "{release}: {version}");
        drop(client);
        let (status, _) = server.terminate();
        assert!(status.success(), "{release}");
    }
}

#[test]
fn pgcrypto_on_0_2_pgvector_on_0_6_and_unknown_extensions_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().to_str().unwrap();
    let out =
        command(&["start", "--runtime-dir", runtime_dir, "--pglite-version", "0.2.17", "--extensions", "pgcrypto"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pgcrypto") && stderr.contains("0.3.16"), "{stderr}");

    // PGlite publishes no pgvector built for PostgreSQL 19.
    let out = command(&["start", "--runtime-dir", runtime_dir, "--pglite-version", "0.6.1", "--extensions", "vector"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("vector") && stderr.contains("0.5.17"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "refused before a cluster was made");

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
