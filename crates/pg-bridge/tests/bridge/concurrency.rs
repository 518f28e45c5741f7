//! Many clients on one backend: interleaving, waiting, timeouts, limits (scenarios 10, 11,
//! 12, 16, 18).

use std::time::{Duration, Instant};

use crate::harness::{bridge, bridge_with, client_config, connect, connect_with, table};
use crate::raw::{Raw, bind, error, execute, parse, query, rows, sync, tags};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_unnamed_extended_queries_each_get_their_own_answer() {
    let bridge = bridge().await;
    let (n_conns, n_iters) = (20, 1000);
    let mut tasks = Vec::new();
    for conn in 0..n_conns {
        let socket = bridge.socket_path();
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::startup(&socket, &[]).await;
            for i in 0..n_iters {
                let value = (conn * 1_000_000 + i).to_string();
                let mut group = parse("", "SELECT $1::int");
                group.extend(bind("", "", &[&value]));
                group.extend(execute(""));
                group.extend(sync());
                raw.send(&group).await;
                let msgs = raw.until_ready().await;
                assert_eq!(rows(&msgs), [[Some(value)]], "{msgs:?}");
            }
            // Parse once, then Bind the unnamed statement in later groups while others
            // replace the backend's unnamed statement in between.
            let mut group = parse("", "SELECT $1::int + 1");
            group.extend(sync());
            raw.send(&group).await;
            raw.until_ready().await;
            for i in 0..50 {
                let mut group = bind("", "", &[&(conn * 1000 + i).to_string()]);
                group.extend(execute(""));
                group.extend(sync());
                raw.send(&group).await;
                let msgs = raw.until_ready().await;
                assert_eq!(rows(&msgs), [[Some((conn * 1000 + i + 1).to_string())]], "{msgs:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_transaction_waits_for_the_first() {
    let bridge = bridge().await;
    let t = table("twotx");
    let a = connect(&bridge).await;
    a.batch_execute(&format!("CREATE TABLE {t}(a int); INSERT INTO {t} VALUES (1)")).await.unwrap();
    a.batch_execute(&format!("BEGIN; UPDATE {t} SET a = 2")).await.unwrap();
    let b = connect(&bridge).await;
    let t2 = t.clone();
    let waiting = tokio::spawn(async move {
        let v: i32 = b.query_one(&format!("SELECT a FROM {t2}"), &[]).await.unwrap().get(0);
        v
    });
    // A keeps working in its transaction while B waits its turn.
    for _ in 0..5 {
        a.batch_execute(&format!("UPDATE {t} SET a = a + 0")).await.unwrap();
    }
    assert!(!waiting.is_finished(), "B ran inside A's transaction");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), 2, "B sees A's committed row");
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_owner_is_ended_and_rolled_back() {
    let bridge = bridge_with(|c| c.idle_in_transaction_timeout = Duration::from_millis(200)).await;
    let t = table("idletx");
    let setup = connect(&bridge).await;
    setup.batch_execute(&format!("CREATE TABLE {t}(a int)")).await.unwrap();
    let mut a = Raw::startup(&bridge.socket_path(), &[]).await;
    a.send(&query(&format!("BEGIN; INSERT INTO {t} VALUES (1)"))).await;
    assert_eq!(a.until_ready().await.last().unwrap().body, b"T");
    let started = Instant::now();
    // B queues behind A and proceeds once A times out.
    let n: i64 = setup.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    a.expect_fatal("25P03").await;
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_errors_recover_at_sync() {
    let bridge = bridge().await;
    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    let mut group = parse("", "SELECT 1");
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(parse("", "SELECT 1/0"));
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(parse("", "SELECT 3"));
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(sync());
    group.extend(parse("", "SELECT 4"));
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(sync());
    raw.send(&group).await;
    let first = raw.until_ready().await;
    // `1/0` is folded when the unnamed statement is planned, at Bind.
    assert_eq!(tags(&first), "12DC1EZ");
    assert_eq!(error(&first).as_deref(), Some("22012"));
    let second = raw.until_ready().await;
    assert_eq!(rows(&second), [[Some("4".to_owned())]]);

    raw.send(&query("BEGIN")).await;
    raw.until_ready().await;
    raw.send(&query("SELECT 1/0")).await;
    assert_eq!(raw.until_ready().await.last().unwrap().body, b"E");
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(raw.until_ready().await.last().unwrap().body, b"I");

    // tokio-postgres pipelining success / error / success.
    let client = connect(&bridge).await;
    let (ok1, bad, ok2) = tokio::join!(
        client.query_one("SELECT 1::int4", &[]),
        client.query_one("SELECT 1/0", &[]),
        client.query_one("SELECT 3::int4", &[]),
    );
    assert_eq!(ok1.unwrap().get::<_, i32>(0), 1);
    assert!(bad.is_err());
    assert_eq!(ok2.unwrap().get::<_, i32>(0), 3);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_transact_with_exact_counts() {
    // A hundred workers plus the one that sets up and counts.
    let bridge = bridge_with(|c| c.max_connections = 101).await;
    let t = table("hundred");
    let setup = connect(&bridge).await;
    setup.batch_execute(&format!("CREATE TABLE {t}(client int, i int)")).await.unwrap();
    let (n_clients, n_tx) = (100, 20);
    let mut tasks = Vec::new();
    for c in 0..n_clients {
        let client = connect(&bridge).await;
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n_tx {
                client.batch_execute("BEGIN").await.unwrap();
                client.execute(&format!("INSERT INTO {t} VALUES ($1, $2)"), &[&c, &i]).await.unwrap();
                let mine: i64 = client
                    .query_one(&format!("SELECT count(*) FROM {t} WHERE client = $1"), &[&c])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(mine, i64::from(i + 1), "no cross-talk");
                client.batch_execute("COMMIT").await.unwrap();
            }
            let stmt = client.prepare("SELECT $1::int4").await.unwrap();
            for i in 0..10 {
                assert_eq!(client.query_one(&stmt, &[&i]).await.unwrap().get::<_, i32>(0), i);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: i64 = setup.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(total, i64::from(n_clients * n_tx));
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_limit_get_53300() {
    let bridge = bridge_with(|c| c.max_connections = 2).await;
    let a = connect(&bridge).await;
    let b = connect(&bridge).await;
    let err = connect_with(&client_config(&bridge)).await.expect_err("third client refused");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    drop(a);
    b.simple_query("SELECT 1").await.unwrap();
    // A slot frees up once a client leaves.
    let mut retries = 0;
    let c = loop {
        match connect_with(&client_config(&bridge)).await {
            Ok(c) => break c,
            Err(_) if retries < 100 => {
                retries += 1;
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    };
    c.simple_query("SELECT 1").await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_the_right_key_cancels_only_that_query() {
    let bridge = bridge().await;
    let client = connect(&bridge).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(20)").await });
    // Wait until the query is running on the backend: another client's query queues behind
    // it, so once the sleeping client's batch is sent, this one is still pending.
    let observer = connect(&bridge).await;
    let mut rounds = 0;
    while rounds < 100 {
        let probe = tokio::time::timeout(Duration::from_millis(50), observer.simple_query("SELECT 1")).await;
        if probe.is_err() {
            break;
        }
        rounds += 1;
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    bridge.close().await;
}

/// Bounds a wait that only a broken bridge would make endless.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut).await.unwrap_or_else(|_| panic!("{what} never finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_only_itself() {
    let bridge = bridge_with(|c| c.idle_in_transaction_timeout = Duration::from_millis(300)).await;
    let t = table("slowreader");
    let other = connect(&bridge).await;
    other.batch_execute(&format!("CREATE TABLE {t}(a int)")).await.unwrap();
    // Far more than socket buffers hold; neither reader below ever reads it.
    let big = "SELECT repeat('x', 1000000) FROM generate_series(1, 32)";

    // Outside a transaction the reply waits for its client without the backend.
    let mut idle = Raw::startup(&bridge.socket_path(), &[]).await;
    idle.send(&query(big)).await;
    let n: i64 =
        within("a query behind an idle slow reader", other.query_one("SELECT 41::int8 + 1", &[])).await.unwrap().get(0);
    assert_eq!(n, 42);

    // Inside one, it is ended like an idle owner and rolled back; the others go on.
    let mut owner = Raw::startup(&bridge.socket_path(), &[]).await;
    owner.send(&query(&format!("BEGIN; INSERT INTO {t} VALUES (1); {big}"))).await;
    let n: i64 = within(
        "a query behind a slow reader in a transaction",
        other.query_one(&format!("SELECT count(*) FROM {t}"), &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(n, 0, "the stuck owner's insert was rolled back");
    drop((idle, owner));
    bridge.close().await;
}

// One thread for the bridge and both clients: a connection that polled without giving way
// would starve the other, and the bridge could not close.
#[tokio::test(flavor = "current_thread")]
async fn a_client_polling_for_its_next_message_holds_up_nobody() {
    let bridge = bridge_with(|config| config.busy_poll = Duration::from_secs(3600)).await;
    let a = connect(&bridge).await;
    let b = connect(&bridge).await;
    for i in 0..20 {
        // After each reply, a's connection polls for its next message for an hour.
        let v: i32 = a.query_one("SELECT $1::int", &[&i]).await.unwrap().get(0);
        assert_eq!(v, i);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
        let answer = b.query_one("SELECT $1::int + 1", &params);
        let row = tokio::time::timeout(Duration::from_secs(60), answer).await.expect("b was held up by a's polling");
        let v: i32 = row.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
    tokio::time::timeout(Duration::from_secs(60), bridge.close()).await.expect("close waited for a polling connection");
}
