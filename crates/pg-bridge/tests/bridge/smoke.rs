//! Basic round trips through the bridge.

use crate::harness::{bridge, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_work() {
    let bridge = bridge().await;
    let client = connect(&bridge).await;
    let row = client.query_one("SELECT 1::int4 + $1::int4", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let rows = client.simple_query("SELECT 'a'; SELECT 'b'").await.unwrap();
    let n_rows = rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
    assert_eq!(n_rows, 2);
    let version: String = client.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    assert!(version.starts_with("17."), "{version}");
    drop(client);
    bridge.close().await;
}
