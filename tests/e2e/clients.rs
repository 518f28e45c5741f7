//! tokio-postgres through the command: prepared statements, transactions, binary types, and
//! eight connections working at once with exact results.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{RELEASES, Server, connect};

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_transactions_and_binary_types() {
    for version in RELEASES {
        prepared_statements_transactions_and_binary_types_on(version).await;
    }
}

async fn prepared_statements_transactions_and_binary_types_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let mut client = connect(dir.path()).await;

    client
        .batch_execute(
            "CREATE TABLE v (id int8 PRIMARY KEY, f float8, b bool, bytes bytea, tags text[], at timestamptz, \
             amount numeric(12,3), uid uuid)",
        )
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO v VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8::text::uuid)")
        .await
        .unwrap();
    let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let tags = vec!["a".to_owned(), "b c".to_owned(), "ünï".to_owned()];
    let bytes = vec![0u8, 1, 2, 255];
    let uid = "6f1c1f8e-3c2a-4a4b-9a57-0c1d2e3f4a5b";
    client.execute(&insert, &[&(1i64 << 40), &-1.5f64, &true, &bytes, &tags, &at, &"12345.678", &uid]).await.unwrap();

    let row = client
        .query_one("SELECT id, f, b, bytes, tags, at, amount::text, uid::text FROM v WHERE id = $1", &[&(1i64 << 40)])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1 << 40);
    assert_eq!(row.get::<_, f64>(1), -1.5);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Vec<u8>>(3), bytes);
    assert_eq!(row.get::<_, Vec<String>>(4), tags);
    assert_eq!(row.get::<_, SystemTime>(5), at);
    assert_eq!(row.get::<_, String>(6), "12345.678");
    assert_eq!(row.get::<_, String>(7), uid);

    // A statement prepared once and executed many times.
    let next = client.prepare("SELECT $1::int8 + 1").await.unwrap();
    for i in 0..20i64 {
        assert_eq!(client.query_one(&next, &[&i]).await.unwrap().get::<_, i64>(0), i + 1);
    }

    // Rolled back, then committed.
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO v (id) VALUES (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO v (id) VALUES (3)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> =
        client.query("SELECT id FROM v ORDER BY id", &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    assert_eq!(ids, [3, 1 << 40]);

    // An error inside a transaction aborts it, and the connection recovers.
    let tx = client.transaction().await.unwrap();
    let err = tx.execute("INSERT INTO v (id) VALUES (3)", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    drop(tx);
    assert_eq!(client.query_one("SELECT count(*) FROM v", &[]).await.unwrap().get::<_, i64>(0), 2);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_connections_at_once_get_exact_results() {
    for version in RELEASES {
        eight_connections_at_once_on(version).await;
    }
}

async fn eight_connections_at_once_on(version: &str) {
    const N_CONNS: i32 = 8;
    const N_TX: i32 = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let setup = connect(dir.path()).await;
    setup
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL); \
             INSERT INTO counters SELECT g, 0 FROM generate_series(0, 3) g; \
             CREATE TABLE log (worker int, seq int, PRIMARY KEY (worker, seq))",
        )
        .await
        .unwrap();

    let workers: Vec<_> = (0..N_CONNS)
        .map(|worker| {
            let dir = dir.path().to_owned();
            tokio::spawn(async move {
                let mut client = connect(&dir).await;
                // Per-connection settings must survive sharing one backend session.
                client.batch_execute(&format!("SET application_name = 'worker{worker}'")).await.unwrap();
                let bump = client.prepare("UPDATE counters SET n = n + 1 WHERE id = $1").await.unwrap();
                for seq in 0..N_TX {
                    let tx = client.transaction().await.unwrap();
                    tx.execute(&bump, &[&(worker % 4)]).await.unwrap();
                    tx.execute("INSERT INTO log VALUES ($1, $2)", &[&worker, &seq]).await.unwrap();
                    tx.commit().await.unwrap();
                }
                let name: String =
                    client.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
                assert_eq!(name, format!("worker{worker}"));
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let counters: Vec<(i32, i32)> = setup
        .query("SELECT id, n FROM counters ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let per_counter = N_CONNS / 4 * N_TX;
    assert_eq!(counters, (0..4).map(|id| (id, per_counter)).collect::<Vec<_>>(), "{version}");
    let logged: i64 = setup.query_one("SELECT count(*) FROM log", &[]).await.unwrap().get(0);
    assert_eq!(logged, i64::from(N_CONNS * N_TX), "{version}");
    drop(server);
}

/// COPY through tokio-postgres, which sends COPY FROM STDIN through the extended protocol: the
/// statement prepared, then Bind, Execute and Sync, and its data only once the
/// `CopyInResponse` came. Rows in and out, a bad row failing its COPY alone, a COPY rolled back
/// with its transaction. PGlite 0.2 cannot stream: refused there, the connection going on.
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_through_the_extended_protocol() {
    for version in RELEASES {
        copy_in_and_out_through_the_extended_protocol_on(version).await;
    }
}

async fn copy_in_and_out_through_the_extended_protocol_on(version: &str) {
    use futures_util::{SinkExt, TryStreamExt};
    let dir = tempfile::tempdir().unwrap();
    let _server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let mut client = connect(dir.path()).await;
    client.batch_execute("CREATE TABLE c (id int8, label text)").await.unwrap();
    let sink = client.copy_in::<_, bytes::Bytes>("COPY c FROM STDIN").await;
    if version == "0.2.17" {
        let err = sink.err().expect("refused on 0.2");
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED), "{err}");
        assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
        return;
    }
    let sink = sink.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in 0..100 {
        let data: String = (0..100).map(|i| format!("{}\trow {i}\n", chunk * 100 + i)).collect();
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 10_000, "{version}");
    let row = client.query_one("SELECT count(*), sum(id)::int8 FROM c", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10_000, 49_995_000), "{version}");

    let out = client.copy_out("COPY (SELECT id, label FROM c WHERE id < 3 ORDER BY id) TO STDOUT").await.unwrap();
    let out: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    assert_eq!(out.concat(), b"0\trow 0\n1\trow 1\n2\trow 2\n", "{version}");

    // A bad row fails its COPY, which changes nothing; the connection goes on.
    let mut bad = std::pin::pin!(client.copy_in::<_, bytes::Bytes>("COPY c (id) FROM STDIN").await.unwrap());
    bad.send(bytes::Bytes::from_static(b"1\nx\n")).await.unwrap();
    let err = bad.finish().await.expect_err("a bad row");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION), "{err}");

    // Rolled back with its transaction.
    let tx = client.transaction().await.unwrap();
    let mut sink = std::pin::pin!(tx.copy_in::<_, bytes::Bytes>("COPY c (id) FROM STDIN").await.unwrap());
    sink.send(bytes::Bytes::from_static(b"-1\n-2\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(tx.query_one("SELECT count(*) FROM c", &[]).await.unwrap().get::<_, i64>(0), 10_002);
    tx.rollback().await.unwrap();
    assert_eq!(client.query_one("SELECT count(*) FROM c", &[]).await.unwrap().get::<_, i64>(0), 10_000, "{version}");
}
