//! One client can neither stall nor crash the others: cancel requests, PostgreSQL's timeouts,
//! SIGTERM during a query, and recursion that runs out of stack, on every pinned release.
//! Each outcome is the one native PostgreSQL of the same major gives for the same session (for
//! PostgreSQL 19, which has no native server here, native 18's: see `native::oracle_major`),
//! and is also checked against what PostgreSQL documents.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::native::native;
use crate::support::{RELEASES, Server, connect, connect_watched, seed_dsn};

/// The PostgreSQL major a PGlite release runs.
fn major(release: &str) -> u32 {
    pglite_host::pg_major(release).expect("a pinned release")
}

/// Where a session runs on the native PostgreSQL that `major` is compared with.
fn native_dsn(major: u32) -> Option<String> {
    crate::native::oracle_major(major)
        .map(|major| format!("host={} user=postgres dbname=nself sslmode=disable", native(major).socket_dir.display()))
}

/// Asserts that the runtime's outcomes (first) are the native server's (second), when there
/// was one.
#[track_caller]
fn same_as_native<T: PartialEq + std::fmt::Debug>(seen: &[T], what: &str) {
    if let [runtime, native] = seen {
        assert_eq!(runtime, native, "{what}: runtime (left) and native PostgreSQL (right) differ");
    }
}

/// What a statement came to: `Ok` or the error's SQLSTATE, severity and message.
type Outcome = Result<(), (String, String, String)>;

fn outcome<T>(result: Result<T, tokio_postgres::Error>) -> Outcome {
    match result {
        Ok(_) => Ok(()),
        Err(err) => match err.as_db_error() {
            Some(db) => Err((db.code().code().to_owned(), db.severity().to_owned(), db.message().to_owned())),
            None => Err(("(none)".to_owned(), String::new(), err.to_string())),
        },
    }
}

async fn run(client: &Client, sql: &str) -> Outcome {
    outcome(client.simple_query(sql).await)
}

/// Cancels `client`'s running statement from outside and returns how it ended. The cancel is
/// sent again should it have arrived before the statement did (the server ignores a cancel
/// for a client with nothing in flight, as PostgreSQL does for an idle one).
async fn cancelled(client: Client, sql: &'static str) -> (Outcome, Client) {
    let token = client.cancel_token();
    let mut running = tokio::spawn(async move {
        let res = run(&client, sql).await;
        (res, client)
    });
    for _ in 0..100 {
        token.cancel_query(NoTls).await.expect("sending the cancel request");
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(100), &mut running).await {
            return done.expect("the query task");
        }
    }
    panic!("{sql} was not cancelled");
}

fn user_request() -> Outcome {
    Err(("57014".to_owned(), "ERROR".to_owned(), "canceling statement due to user request".to_owned()))
}

fn statement_timeout() -> Outcome {
    Err(("57014".to_owned(), "ERROR".to_owned(), "canceling statement due to statement timeout".to_owned()))
}

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_cancel_request_ends_only_its_clients_statement_on_socket_and_tcp() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().to_string();
        let server =
            Server::start_with(dir.path(), &["--pglite-version", release, "--tcp", &format!("127.0.0.1:{port}")]);
        let tcp = format!("host=127.0.0.1 port={port} dbname=nself user={} sslmode=disable", crate::support::os_user());
        for dsn in [seed_dsn(dir.path()), tcp].into_iter().chain(native_dsn(major(release))) {
            let (sleeper, _) = connect_watched(&dsn).await;
            let (other, _) = connect_watched(&dsn).await;
            let (ended, sleeper) = cancelled(sleeper, "SELECT pg_sleep(60)").await;
            assert_eq!(ended, user_request(), "{release} {dsn}");
            // Both sessions go on; the other client's statements were not touched.
            let x: i32 = sleeper.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
            assert_eq!(x, 42);
            let y: i32 = other.query_one("SELECT 7", &[]).await.unwrap().get(0);
            assert_eq!(y, 7);
            // Inside a transaction block the transaction is aborted, as in PostgreSQL.
            sleeper.batch_execute("BEGIN").await.unwrap();
            let (ended, sleeper) = cancelled(sleeper, "SELECT pg_sleep(60)").await;
            assert_eq!(ended, user_request(), "{release} {dsn}");
            let aborted = run(&sleeper, "SELECT 1").await;
            assert_eq!(aborted.map_err(|e| e.0), Err("25P02".to_owned()), "{release} {dsn}");
            sleeper.batch_execute("ROLLBACK").await.unwrap();
            // A CPU-bound statement is cancelled too, not only a sleep.
            let (ended, _) = cancelled(sleeper, "SELECT count(*) FROM generate_series(1, 1000000000)").await;
            assert_eq!(ended, user_request(), "{release} {dsn}");
        }
        drop(server);
    }
}

#[tokio::test]
async fn statement_timeout_fires_per_statement_with_postgres_text() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let mut seen = Vec::new();
        for dsn in std::iter::once(seed_dsn(dir.path())).chain(native_dsn(major(release))) {
            let (client, _) = connect_watched(&dsn).await;
            let mut results = Vec::new();
            // Set in its own statement, then in the same query string as the statement.
            results.push(run(&client, "SET statement_timeout = '200ms'").await);
            results.push(run(&client, "SELECT pg_sleep(30)").await);
            results.push(
                run(&client, "RESET statement_timeout; SET statement_timeout = '200ms'; SELECT pg_sleep(30)").await,
            );
            // Per statement: ten 50 ms statements in one query string are not one 500 ms one.
            results.push(run(&client, &"SELECT pg_sleep(0.05);".repeat(10)).await);
            // Through the extended protocol too.
            results.push(outcome(client.query("SELECT pg_sleep($1)", &[&30.0f64]).await));
            // A timed-out statement in a transaction block aborts it.
            results.push(run(&client, "BEGIN; SELECT pg_sleep(30)").await);
            results.push(run(&client, "SELECT 1").await.map_err(|e| (e.0, String::new(), String::new())));
            results.push(run(&client, "ROLLBACK; RESET statement_timeout; SELECT pg_sleep(0.3)").await);
            assert_eq!(results[1], statement_timeout(), "{release} {dsn}");
            seen.push(results);
        }
        assert_eq!(seen[0][2], statement_timeout(), "{release}");
        assert_eq!(seen[0][4], statement_timeout(), "{release}");
        same_as_native(&seen, &format!("{release} statement_timeout"));
        drop(server);
    }
}

#[tokio::test]
async fn a_server_wide_statement_timeout_is_the_default_reset_returns_to() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with(dir.path(), &["--pglite-version", release, "--statement-timeout", "250ms"]);
        let client = connect(dir.path()).await;
        let shown: String = client.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
        assert_eq!(shown, "250ms", "{release}");
        assert_eq!(run(&client, "SELECT pg_sleep(30)").await, statement_timeout(), "{release}");
        client.batch_execute("SET statement_timeout = 0").await.unwrap();
        assert_eq!(run(&client, "SELECT pg_sleep(0.4)").await, Ok(()), "{release}");
        client.batch_execute("RESET statement_timeout").await.unwrap();
        assert_eq!(run(&client, "SELECT pg_sleep(30)").await, statement_timeout(), "{release}");
        drop(server);
    }
}

/// What ends a connection that waits: the FATAL its connection task saw.
async fn ended_while_idle(done: tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>) -> Outcome {
    outcome(done.await.expect("the connection task reports"))
}

#[tokio::test]
async fn idle_and_transaction_timeouts_end_the_connection_as_postgres_does() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let mut scripts: Vec<(&str, Vec<&str>)> = vec![
            ("idle in transaction", vec!["SET idle_in_transaction_session_timeout = '200ms'", "BEGIN", "SELECT 1"]),
            ("idle session", vec!["SET idle_session_timeout = '200ms'", "SELECT 1"]),
        ];
        if major(release) >= 17 {
            scripts.push(("transaction, idle", vec!["SET transaction_timeout = '300ms'", "BEGIN", "SELECT 1"]));
            scripts.push(("transaction, running", vec!["SET transaction_timeout = '300ms'", "SELECT pg_sleep(30)"]));
        }
        for (what, statements) in scripts {
            let mut seen = Vec::new();
            for dsn in std::iter::once(seed_dsn(dir.path())).chain(native_dsn(major(release))) {
                let (client, done) = connect_watched(&dsn).await;
                let mut last = Ok(());
                for sql in &statements {
                    last = run(&client, sql).await;
                }
                // A statement cut short by the FATAL fails with it; either way the connection
                // task ends with the FATAL.
                let fatal = ended_while_idle(done).await;
                // What the client saw: the failed statement's error, else the FATAL the
                // connection ended with while idle.
                let seen_error = match last {
                    Err(error) if error.1 == "FATAL" => Err(error),
                    _ => fatal,
                };
                seen.push(seen_error.map_err(|(code, severity, _)| (code, severity)));
            }
            same_as_native(&seen, &format!("{release} {what}"));
            assert!(seen[0].as_ref().is_err_and(|e| e.1 == "FATAL"), "{release} {what}: {:?}", seen[0]);
        }
        // The server still serves, and the transactions were rolled back.
        let client = connect(dir.path()).await;
        let x: i32 = client.query_one("SELECT 3", &[]).await.unwrap().get(0);
        assert_eq!(x, 3);
        drop(server);
    }
}

#[tokio::test]
async fn sigterm_during_a_long_query_cancels_it_and_stops_cleanly() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start_release(dir.path(), release);
        let client = connect(dir.path()).await;
        client.batch_execute("CREATE TABLE kept AS SELECT 1 AS x").await.unwrap();
        let sleeper = connect(dir.path()).await;
        let running = tokio::spawn(async move { run(&sleeper, "SELECT pg_sleep(300)").await });
        // Whether the signal finds the query running (it is cancelled) or not yet read (it is
        // refused), the client is ended with 57P01 and the stop does not wait for it.
        tokio::task::yield_now().await;
        server.signal(rustix::process::Signal::TERM);
        let status = tokio::task::spawn_blocking(move || server.wait_exit()).await.unwrap();
        assert!(status.success(), "{release}: {status:?}");
        let ended = running.await.unwrap();
        assert!(
            matches!(&ended, Err((code, severity, _)) if code == "57P01" && severity == "FATAL")
                || matches!(&ended, Err((code, _, _)) if code == "(none)"),
            "{release}: the long query was not ended by the stop: {ended:?}"
        );
        // Nothing committed was lost.
        let server = Server::start_release(dir.path(), release);
        let client = connect(dir.path()).await;
        let x: i32 = client.query_one("SELECT x FROM kept", &[]).await.unwrap().get(0);
        assert_eq!(x, 1);
        drop(server);
    }
}

/// Statements that recurse until the stack runs out, each a different way.
const DEEP: [&str; 5] = [
    "SELECT deep_plpgsql(1000000)",
    "SELECT deep_sql(1000000)",
    "SELECT repeat('[', 1000000)::json",
    "SELECT repeat('[', 1000000)::jsonb",
    "DO $$ BEGIN EXECUTE 'SELECT 1' || repeat(' + 1', 200000); END $$",
];

const DEEP_SETUP: &str = "CREATE FUNCTION deep_plpgsql(n int) RETURNS int LANGUAGE plpgsql AS \
     'BEGIN IF n = 0 THEN RETURN 0; END IF; RETURN deep_plpgsql(n - 1) + 1; END'; \
     CREATE FUNCTION deep_sql(n int) RETURNS int LANGUAGE sql AS \
     'SELECT CASE WHEN n = 0 THEN 0 ELSE deep_sql(n - 1) + 1 END'";

async fn deep_outcomes(dsn: &str, schema: &str) -> Vec<String> {
    let (client, _) = connect_watched(dsn).await;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}"
        ))
        .await
        .unwrap();
    client.batch_execute(DEEP_SETUP).await.unwrap();
    let mut res = Vec::new();
    for sql in DEEP {
        res.push(match run(&client, sql).await {
            Ok(()) => "ok".to_owned(),
            Err((code, _, _)) => code,
        });
    }
    // The session goes on.
    let x: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(x, 5);
    res
}

#[tokio::test]
async fn recursion_ends_in_54001_and_every_session_goes_on() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        // Another client with state on the backend (a prepared statement, a setting): it must
        // not notice.
        let bystander = connect(dir.path()).await;
        bystander.batch_execute("SET application_name = 'bystander'").await.unwrap();
        let statement = bystander.prepare("SELECT 9, current_setting('application_name')").await.unwrap();
        let ours = deep_outcomes(&seed_dsn(dir.path()), "deep").await;
        if let Some(native) = native_dsn(major(release)) {
            let theirs = deep_outcomes(&native, "deep").await;
            assert_eq!(ours, theirs, "{release}: runtime (left) and native (right) differ on {DEEP:?}");
        }
        assert!(ours.iter().all(|code| code == "54001"), "{release}: {ours:?}");
        let row = bystander.query_one(&statement, &[]).await.unwrap();
        assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (9, "bystander".to_owned()));
        assert!(!server.stderr().contains("died"), "{release}: the instance crashed:\n{}", server.stderr());
        drop(server);
    }
}

/// Runs the crash trigger (see `pglite-host`'s hooks): the backend traps on the spot.
const CRASH: &str = "SELECT pg_catalog.set_config('nself.crash', 'now', false)";

fn start_crashable(dir: &Path, release: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--pglite-version", release];
    args.extend_from_slice(extra);
    let mut server = Server::spawn_env(dir, &args, &[("NSELF_TEST_CRASH_TRIGGER", "1")]);
    server.wait_ready();
    server
}

#[tokio::test]
async fn a_crash_ends_only_the_sessions_whose_state_it_took() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = start_crashable(dir.path(), release, &[]);
        let with_statement = connect(dir.path()).await;
        let statement = with_statement.prepare("SELECT 1").await.unwrap();
        let with_settings = connect(dir.path()).await;
        with_settings.batch_execute("SET application_name = 'kept'; SET work_mem = '7MB'").await.unwrap();
        let plain = connect(dir.path()).await;
        plain.batch_execute("SELECT 1").await.unwrap();

        // A client with temporary objects keeps the backend to itself (others wait), so it is
        // the one to crash it; it has its transaction open too.
        let crasher = connect(dir.path()).await;
        crasher.batch_execute("CREATE TEMP TABLE t(x int); BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
        let crashed = run(&crasher, CRASH).await;
        assert_eq!(crashed.map_err(|e| e.0), Err("57P02".to_owned()), "{release}");

        let err = with_statement.query(&statement, &[]).await.unwrap_err();
        assert_eq!(err.as_db_error().map(|db| db.code().code()), Some("57P02"), "{release}: {err}");
        // The temporary table went with the crashed session, as in PostgreSQL.
        let gone = run(&plain, "SELECT count(*) FROM pg_class WHERE relname = 't' AND relpersistence = 't'").await;
        assert_eq!(gone, Ok(()));
        // Settings are re-applied on the new session; a client with nothing else carries on.
        let row = with_settings
            .query_one("SELECT current_setting('application_name'), current_setting('work_mem')", &[])
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("kept".to_owned(), "7MB".to_owned()));
        let x: i32 = plain.query_one("SELECT 2", &[]).await.unwrap().get(0);
        assert_eq!(x, 2);
        drop(server);
    }
}

/// What a worker committed: per table it created (and did not drop), its rows.
type Committed = std::collections::BTreeMap<String, i64>;

/// Creates, fills, indexes and drops tables in short transactions with the simple protocol
/// (no session state), until `stop`; reconnects should the bridge end it. Returns what
/// committed, as the server acknowledged it.
async fn worker(dir: std::path::PathBuf, id: usize, stop: tokio::sync::watch::Receiver<bool>) -> Committed {
    let mut committed = Committed::new();
    let mut client = connect(&dir).await;
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let table = format!("w{id}_{n}");
        let sql = format!(
            "BEGIN; CREATE TABLE {table}(id int PRIMARY KEY, v text); \
             INSERT INTO {table} SELECT g, repeat('v', g % 50) FROM generate_series(1, 200) g; \
             CREATE INDEX ON {table}(v); UPDATE {table} SET v = v || 'u' WHERE id % 3 = 0; \
             DELETE FROM {table} WHERE id % 7 = 0; COMMIT"
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {
                committed.insert(table.clone(), 200 - 200 / 7);
            }
            Err(err) if client.is_closed() => {
                // Ended (it should not be: it keeps no state); nothing of this transaction
                // was acknowledged.
                panic!("worker {id} was ended by a crash it had no state in: {err}");
            }
            Err(err) => panic!("worker {id}: {err}"),
        }
        if n % 3 == 0 {
            let victim = format!("w{id}_{}", n - 1);
            client.batch_execute(&format!("DROP TABLE {victim}")).await.unwrap();
            committed.remove(&victim);
        }
        if client.is_closed() {
            client = connect(&dir).await;
        }
    }
    committed
}

#[tokio::test]
async fn crashes_during_concurrent_ddl_lose_nothing_committed_and_leave_every_index_sound() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let mut server = start_crashable(dir.path(), release, &["--extensions", "amcheck"]);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let workers: Vec<_> = (0..3).map(|id| tokio::spawn(worker(dir.path().to_owned(), id, stop.clone()))).collect();
        for round in 0..6 {
            // The crasher's own uncommitted DDL and DML die with the instance.
            let crasher = connect(dir.path()).await;
            let sql = format!(
                "BEGIN; CREATE TABLE doomed{round}(x int PRIMARY KEY); \
                 INSERT INTO doomed{round} SELECT generate_series(1, 1000); CREATE INDEX ON doomed{round}(x); {CRASH}"
            );
            let crashed = run(&crasher, &sql).await;
            assert_eq!(crashed.map_err(|e| e.0), Err("57P02".to_owned()), "{release} round {round}");
        }
        stop_tx.send(true).unwrap();
        let mut committed = Committed::new();
        for worker in workers {
            committed.extend(worker.await.expect("a worker"));
        }
        assert!(!committed.is_empty(), "{release}: the workers committed nothing");

        // After the crashes, and again after a clean restart: every committed row is there,
        // nothing uncommitted is, and every btree index (catalog and user) agrees with its
        // table, every heap tuple included.
        for pass in ["after the crashes", "after a restart"] {
            let client = connect(dir.path()).await;
            for (table, rows) in &committed {
                let count: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
                assert_eq!(count, *rows, "{release} {pass}: {table}");
            }
            let doomed: i64 = client
                .query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'doomed%'", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(doomed, 0, "{release} {pass}: uncommitted tables survived");
            client.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck").await.unwrap();
            let checked: i64 = client
                .query_one(
                    "SELECT count(bt_index_check(c.oid, true)::text) FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
                     WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid",
                    &[],
                )
                .await
                .unwrap_or_else(|err| panic!("{release} {pass}: an index disagrees with its table: {err}"))
                .get(0);
            assert!(checked > 100, "{release} {pass}: only {checked} indexes checked");
            drop(client);
            if pass == "after the crashes" {
                let (status, _) = server.terminate();
                assert!(status.success(), "{release}");
                server = start_crashable(dir.path(), release, &["--extensions", "amcheck"]);
            }
        }
        drop(server);
    }
}
