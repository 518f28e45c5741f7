//! Per-client session state on the one shared backend (scenarios 6, 7, 8, 9).

use std::time::Duration;

use crate::harness::{bridge, bridge_with, client_config, connect, connect_with, table};
use crate::raw::{Raw, bind, describe_statement, error, execute, flush, parse, query, rows, sync, tags};

async fn count(client: &tokio_postgres::Client, t: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_is_rolled_back() {
    let bridge = bridge().await;
    let setup = connect(&bridge).await;
    let t = table("midtx");
    setup.simple_query(&format!("CREATE TABLE {t}(a int)")).await.unwrap();

    // Dropped connection, Terminate, and a kill in failed state.
    for how in ["drop", "terminate", "failed"] {
        let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
        raw.send(&query(&format!("BEGIN; INSERT INTO {t} VALUES (1)"))).await;
        assert_eq!(raw.until_ready().await.last().unwrap().body, b"T");
        match how {
            "terminate" => raw.send(&crate::raw::msg(b'X', b"")).await,
            "failed" => {
                raw.send(&query("SELECT 1/0")).await;
                assert_eq!(raw.until_ready().await.last().unwrap().body, b"E");
            }
            _ => {}
        }
        drop(raw);
        let mut next = Raw::startup(&bridge.socket_path(), &[]).await;
        next.send(&query(&format!("SELECT count(*) FROM {t}"))).await;
        let msgs = next.until_ready().await;
        assert_eq!(rows(&msgs), [[Some("0".to_owned())]], "{how}");
        assert_eq!(msgs.last().unwrap().body, b"I");
        next.send(&query("BEGIN")).await;
        let msgs = next.until_ready().await;
        assert!(!tags(&msgs).contains('N'), "no 'already a transaction' warning: {msgs:?}");
        next.send(&query("ROLLBACK")).await;
        next.until_ready().await;
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_extended_query_leaves_nothing_behind() {
    let bridge = bridge().await;
    let setup = connect(&bridge).await;
    let t = table("midext");
    setup.simple_query(&format!("CREATE TABLE {t}(a int)")).await.unwrap();

    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut group = parse("s1", "SELECT $1::int");
    group.extend(bind("", "s1", &["1"]));
    group.extend(parse("ins", &format!("INSERT INTO {t} VALUES (1)")));
    group.extend(bind("", "ins", &[]));
    group.extend(execute(""));
    group.extend(flush());
    raw.send(&group).await;
    // ParseComplete, BindComplete, ParseComplete, BindComplete, CommandComplete.
    for expected in [b'1', b'2', b'1', b'2', b'C'] {
        assert_eq!(raw.recv().await.unwrap().tag, expected);
    }
    drop(raw);

    let mut next = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut group = parse("s1", "SELECT 'other'");
    group.extend(bind("", "s1", &[]));
    group.extend(execute(""));
    group.extend(parse("", "SELECT 5"));
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(sync());
    next.send(&group).await;
    let msgs = next.until_ready().await;
    assert_eq!(error(&msgs), None, "{msgs:?}");
    assert_eq!(rows(&msgs), [[Some("other".to_owned())], [Some("5".to_owned())]]);
    assert_eq!(msgs.last().unwrap().body, b"I");
    assert_eq!(count(&setup, &t).await, 0, "the unsynced insert was never committed");
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_prepared_statements_stay_with_their_client() {
    let bridge = bridge().await;
    let a = connect(&bridge).await;
    let b = connect(&bridge).await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET search_path = foo; PREPARE p AS SELECT 1").await.unwrap();
    let tz_b: String = b.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_ne!(tz_b, "Asia/Tokyo");
    let path_b: String = b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path_b, "\"$user\", public");
    let err = b.simple_query("EXECUTE p").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "26000");
    let tz_a: String = a.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz_a, "Asia/Tokyo");
    let path_a: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path_a, "foo");
    a.simple_query("EXECUTE p").await.unwrap();

    // A fresh client afterwards starts clean too.
    let c = connect(&bridge).await;
    let tz_c: String = c.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz_c, tz_b);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_apply_to_their_client_only_and_survive_reset_all() {
    let bridge = bridge().await;
    let mut config = client_config(&bridge);
    config.options("-c search_path=auth -c statement_timeout=12345");
    let a = connect_with(&config).await.unwrap();
    let b = connect(&bridge).await;
    for _ in 0..2 {
        let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "auth");
        let path: String = b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "\"$user\", public");
    }
    a.batch_execute("SET search_path = elsewhere; SET statement_timeout = 5").await.unwrap();
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "elsewhere");
    a.batch_execute("RESET ALL").await.unwrap();
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "auth", "RESET ALL returns to the startup value, as in PostgreSQL");
    let timeout: String = a.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
    assert_eq!(timeout, "12345ms");
    a.batch_execute("SET search_path = x2").await.unwrap();
    a.batch_execute("RESET search_path").await.unwrap();
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "auth");

    let mut bad = client_config(&bridge);
    bad.options("-c no_such_setting_at_all=1");
    assert!(connect_with(&bad).await.is_err());
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_goes_only_to_the_client_that_changed_it() {
    let bridge = bridge().await;
    let mut a = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut b = Raw::startup(&bridge.socket_path(), &[]).await;
    a.send(&query("SET application_name = 'changed_by_a'")).await;
    let msgs = a.until_ready().await;
    assert!(tags(&msgs).contains('S'), "{msgs:?}");
    b.send(&query("SELECT 1")).await;
    let msgs = b.until_ready().await;
    assert!(!tags(&msgs).contains('S'), "B must not see A's ParameterStatus: {msgs:?}");
    b.send(&query("SHOW application_name")).await;
    assert_eq!(rows(&b.until_ready().await), [[Some(String::new())]]);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_statement_names_from_different_clients_do_not_collide() {
    let bridge = bridge().await;
    let mut a = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut b = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut prep_a = parse("s0", "SELECT 'from a'");
    prep_a.extend(describe_statement("s0"));
    prep_a.extend(sync());
    let mut prep_b = parse("s0", "SELECT 'from b', 2");
    prep_b.extend(describe_statement("s0"));
    prep_b.extend(sync());
    a.send(&prep_a).await;
    assert_eq!(error(&a.until_ready().await), None);
    b.send(&prep_b).await;
    assert_eq!(error(&b.until_ready().await), None);
    for _ in 0..3 {
        let mut run = bind("", "s0", &[]);
        run.extend(execute(""));
        run.extend(sync());
        a.send(&run).await;
        b.send(&run).await;
        assert_eq!(rows(&a.until_ready().await), [[Some("from a".to_owned())]]);
        assert_eq!(rows(&b.until_ready().await), [[Some("from b".to_owned()), Some("2".to_owned())]]);
    }
    // Same name, same SQL (pgx's stmtcache_<hash>), on two clients.
    for raw in [&mut a, &mut b] {
        let mut prep = parse("stmtcache_1234", "SELECT 42");
        prep.extend(sync());
        raw.send(&prep).await;
        assert_eq!(error(&raw.until_ready().await), None);
    }
    // DEALLOCATE ALL (psycopg after every rollback) only drops the sender's statements.
    a.send(&query("DEALLOCATE ALL")).await;
    let msgs = a.until_ready().await;
    assert_eq!(error(&msgs), None);
    let complete = msgs.iter().find(|m| m.tag == b'C').unwrap();
    assert_eq!(complete.body, b"DEALLOCATE ALL\0");
    let mut run = bind("", "s0", &[]);
    run.extend(execute(""));
    run.extend(sync());
    b.send(&run).await;
    assert_eq!(rows(&b.until_ready().await), [[Some("from b".to_owned()), Some("2".to_owned())]]);
    a.send(&run).await;
    assert_eq!(error(&a.until_ready().await).as_deref(), Some("26000"));
    // So does DISCARD ALL.
    b.send(&query("DISCARD ALL")).await;
    let msgs = b.until_ready().await;
    assert_eq!(error(&msgs), None, "{msgs:?}");
    b.send(&run).await;
    assert_eq!(error(&b.until_ready().await).as_deref(), Some("26000"));
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_clients_with_prepared_statements_get_their_own_results() {
    let bridge = bridge().await;
    let mut tasks = Vec::new();
    for n in 0..4i32 {
        let client = connect(&bridge).await;
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&format!("SELECT $1::int4 * {n}")).await.unwrap();
            for i in 0..200i32 {
                let got: i32 = client.query_one(&stmt, &[&i]).await.unwrap().get(0);
                assert_eq!(got, i * n);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    bridge.close().await;
}

const MY_ADVISORY_LOCKS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()";

/// Whether `task` is still waiting after a while. Used only to show that a client is held back
/// (it cannot finish until the test lets it); a wrong bridge lets it finish at once.
async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), task).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_session_advisory_locks_keeps_the_backend_until_it_lets_go() {
    let bridge = bridge().await;
    let a = connect(&bridge).await;
    let b = connect(&bridge).await;
    // Prepared and executed in separate exchanges, as drivers do.
    let locked: bool = a.query_one("SELECT pg_try_advisory_lock($1)", &[&4242i64]).await.unwrap().get(0);
    assert!(locked);
    // On the one backend session B would see A's lock as its own, and could take it again.
    let mut b_task = tokio::spawn(async move {
        let n: i64 = b.query_one(MY_ADVISORY_LOCKS, &[]).await.unwrap().get(0);
        (b, n)
    });
    assert!(still_waiting(&mut b_task).await, "B ran while A held a session-level advisory lock");
    // A's unlock-all releases its own lock only, and with it the backend.
    a.simple_query("SELECT pg_advisory_unlock_all()").await.unwrap();
    let (b, n) = b_task.await.unwrap();
    assert_eq!(n, 0);

    // Leaving while holding one releases it; DISCARD ALL releases them too.
    let c = connect(&bridge).await;
    c.simple_query("SELECT pg_advisory_lock(4343)").await.unwrap();
    drop(c);
    let n: i64 = b.query_one(MY_ADVISORY_LOCKS, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "a departed client's lock was released");
    b.simple_query("SELECT pg_advisory_lock(4444)").await.unwrap();
    b.simple_query("DISCARD ALL").await.unwrap();
    let n: i64 = b.query_one(MY_ADVISORY_LOCKS, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "DISCARD ALL released the lock");
    // Transaction-level locks end with their transaction and hold nothing back.
    b.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(4545); COMMIT").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_cursors_keep_the_backend_and_close_all_closes_only_its_own() {
    let bridge = bridge().await;
    let a = connect(&bridge).await;
    let b = connect(&bridge).await;
    a.simple_query("DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)").await.unwrap();
    // B's cursor of the same name would collide with A's on the shared session.
    let mut b_task = tokio::spawn(async move {
        let res = b.simple_query("DECLARE c CURSOR WITH HOLD FOR SELECT 'b'").await.map(|_| ());
        (b, res)
    });
    assert!(still_waiting(&mut b_task).await, "B ran while A held a cursor");
    let rows = a.simple_query("FETCH 2 FROM c").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 2);
    a.simple_query("CLOSE ALL").await.unwrap();
    let (b, res) = b_task.await.unwrap();
    res.expect("B declares its own cursor once A's is closed");
    let rows = b.simple_query("FETCH ALL FROM c").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["b"]);
    b.simple_query("CLOSE c").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_holding_session_locks_is_ended() {
    let bridge = bridge_with(|c| c.idle_in_transaction_timeout = Duration::from_millis(200)).await;
    let mut a = Raw::startup(&bridge.socket_path(), &[]).await;
    a.send(&query("SELECT pg_advisory_lock(4646)")).await;
    assert_eq!(a.until_ready().await.last().unwrap().body, b"I");
    // B queues behind A and proceeds once A is ended and its lock released.
    let b = connect(&bridge).await;
    let n: i64 = b.query_one(MY_ADVISORY_LOCKS, &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    a.expect_fatal("57P05").await;
    bridge.close().await;
}
