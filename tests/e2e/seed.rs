//! The seed's consumers out of the box: its connection string (`dbname=nself`, no user) on a
//! new runtime directory, `CREATE EXTENSION pgcrypto` on the default release, `postgres` as
//! another name of the served database, clusters made by another release or with another
//! database, and the socket opened to a group for containers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::{Server, client, os_user, psql, seed_dsn, text};

/// Runs `sql` through psql with the seed's connection string; returns unaligned, tuples-only
/// output and standard error.
fn seed_query(dir: &Path, sql: &str) -> (String, String) {
    let out = psql(dir, &["-At", "-q", "-v", "ON_ERROR_STOP=1"], sql);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "psql failed\n{stdout}\n{stderr}");
    (stdout.trim().to_owned(), stderr)
}

/// psql with explicit `-U user -d database`.
fn psql_as(dir: &Path, user: &str, database: &str, sql: &str) -> std::process::Output {
    let host = dir.to_str().unwrap();
    client("psql", &["-X", "-At", "-h", host, "-U", user, "-d", database, "-v", "VERBOSITY=verbose", "-c", sql], "")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_connection_string_creates_pgcrypto_on_the_default_release() {
    let dir = tempfile::tempdir().unwrap();
    let _server = tokio::task::block_in_place(|| Server::start(dir.path()));
    let (out, _) = seed_query(
        dir.path(),
        "CREATE EXTENSION pgcrypto;
         SELECT current_database(), current_user, session_user, encode(digest('abc', 'sha256'), 'hex'),
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);",
    );
    let user = os_user();
    assert_eq!(
        out,
        format!("nself|{user}|{user}|ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad|t"),
        "the OS user logs in as a superuser, in database nself"
    );

    // `postgres` is another name for the served database; the role `postgres` still exists.
    let out = psql_as(dir.path(), "postgres", "postgres", "SELECT current_database(), current_user");
    assert_eq!(text(&out).0.trim(), "nself|postgres", "{:?}", text(&out));
    // Any other database is refused the way PostgreSQL refuses it, naming the served one.
    let mut config: tokio_postgres::Config = seed_dsn(dir.path()).parse().unwrap();
    let err = config.dbname("other").connect(tokio_postgres::NoTls).await.err().expect("refused");
    let err = err.as_db_error().expect("an error from the server");
    assert_eq!(err.code(), &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME);
    assert_eq!(err.message(), "database \"other\" does not exist");
    assert!(err.hint().is_some_and(|hint| hint.contains("\"nself\"")), "the hint names the served database: {err}");
}

#[test]
fn a_cluster_made_by_an_earlier_release_keeps_its_release_and_database() {
    let dir = tempfile::tempdir().unwrap();
    // What earlier versions of the command made: PGlite 0.2.17 serving `postgres`, and no
    // record of the database in the data directory.
    let server = Server::start_with(dir.path(), &["--pglite-version", "0.2.17", "--database", "postgres"]);
    let out = psql_as(dir.path(), "postgres", "postgres", "CREATE TABLE kept AS SELECT 42 AS x");
    assert!(out.status.success(), "{:?}", text(&out));
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    std::fs::remove_file(dir.path().join("data/.nself-database")).unwrap();

    let server = Server::start(dir.path());
    assert!(
        server.stderr().contains("pglite=0.2.17"),
        "the release that runs the cluster is logged\n{}",
        server.stderr()
    );
    let (out, _) =
        seed_query(dir.path(), "SELECT current_database(), x, current_setting('server_version_num') FROM kept;");
    assert_eq!(out, "postgres|42|160004", "data intact, on PostgreSQL 16 in its own database");
    drop(server);
}

#[test]
fn a_cluster_no_pinned_release_runs_is_refused_with_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/PG_VERSION"), "12\n").unwrap();
    let mut server = Server::spawn(dir.path(), &[]);
    let status = server.wait_exit();
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PostgreSQL 12"), "{stderr}");
    assert!(stderr.contains(nself_embedded::DEFAULT_PGLITE_VERSION), "the supported releases are named: {stderr}");
}

#[test]
fn a_database_named_on_the_command_is_created_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--database", "app"]);
    assert!(server.stdout().iter().any(|line| line.contains("dbname=app")), "{:?}", server.stdout());
    let out = psql_as(dir.path(), "postgres", "app", "CREATE TABLE t AS SELECT current_database() AS db");
    assert!(out.status.success(), "{:?}", text(&out));
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    // A restart with no --database serves the database the cluster was made with.
    let server = Server::start(dir.path());
    let out = psql_as(dir.path(), "postgres", "app", "SELECT db FROM t");
    assert_eq!(text(&out).0.trim(), "app", "{:?}", text(&out));
    // Asking for another one by name creates it beside the first.
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    let _server = Server::start_with(dir.path(), &["--database", "second"]);
    let out = psql_as(dir.path(), "postgres", "second", "SELECT current_database(), count(*) FROM pg_database");
    assert_eq!(text(&out).0.trim(), "second|4", "{:?}", text(&out));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_socket_is_private_by_default_and_can_be_opened_to_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    // A directory found wider than it should be is narrowed.
    std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = Server::start(&runtime_dir);
    assert_eq!(mode(&runtime_dir), 0o700);
    assert_eq!(mode(&server.sock_path()), 0o600);
    assert!(server.stderr().contains("narrowed"), "{}", server.stderr());
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    // The group of the OS user's own primary group, or for root a group another user is in.
    let root = nix_is_root();
    let group = if root { "nogroup".to_owned() } else { primary_group() };
    let server = Server::start_with(&runtime_dir, &["--socket-mode", "0660", "--socket-group", &group]);
    let gid = group_id(&group);
    assert_eq!(mode(&runtime_dir), 0o710, "searchable by the group, nothing more");
    assert_eq!(mode(&server.sock_path()), 0o660);
    assert_eq!(std::fs::metadata(&runtime_dir).unwrap().gid(), gid);
    assert_eq!(std::fs::metadata(server.sock_path()).unwrap().gid(), gid);
    if root {
        // A process of another user in that group (a container's, say) connects.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let dsn = seed_dsn(&runtime_dir).replace("dbname=nself", "dbname=nself user=postgres");
        let out = client(
            "setpriv",
            &[
                "--reuid=nobody",
                &format!("--regid={gid}"),
                "--clear-groups",
                "psql",
                "-X",
                "-At",
                "-d",
                &dsn,
                "-c",
                "SELECT 7",
            ],
            "",
        );
        assert_eq!(text(&out).0.trim(), "7", "{:?}", text(&out));
    }
    drop(server);
}

fn nix_is_root() -> bool {
    crate::support::os_user() == "root"
}

fn primary_group() -> String {
    let out = std::process::Command::new("id").arg("-gn").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn group_id(name: &str) -> u32 {
    let out = std::process::Command::new("getent").args(["group", name]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    line.split(':').nth(2).and_then(|gid| gid.trim().parse().ok()).unwrap_or_else(|| panic!("no group {name}"))
}
