//! A backend with a request cap (PGlite 0.2 takes 15 MiB at once): batches are split to fit,
//! and a single message over the cap is answered with 54000 without reaching the backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use pg_bridge::{Backend, Bridge, Config, Error, UpstreamBackend};

use crate::harness::{TestBridge, connect, upstream};

const CAP: usize = 4096;

struct Capped {
    inner: UpstreamBackend,
    largest: Arc<AtomicUsize>,
}

impl Backend for Capped {
    async fn exchange(&self, frames: Bytes) -> Result<BytesMut, Error> {
        self.largest.fetch_max(frames.len(), Ordering::SeqCst);
        if frames.len() > CAP {
            return Err(Error::Backend(format!("{} bytes sent past the cap", frames.len()).into()));
        }
        self.inner.exchange(frames).await
    }

    fn parameter_status(&self) -> Vec<(String, String)> {
        self.inner.parameter_status()
    }

    fn max_request(&self) -> Option<usize> {
        Some(CAP)
    }
}

async fn capped_bridge(largest: Arc<AtomicUsize>) -> TestBridge {
    let dir = tempfile::Builder::new().prefix("pg-bridge-sock").tempdir().unwrap();
    let backend = Capped { inner: upstream().await, largest };
    let bridge = Bridge::listen(backend, Config::new(dir.path())).await.unwrap();
    TestBridge { bridge: Some(bridge), dir }
}

fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|db| db.code().code().to_owned())
}

#[tokio::test]
async fn oversize_messages_are_refused_and_batches_split_to_fit() {
    let largest = Arc::new(AtomicUsize::new(0));
    let bridge = capped_bridge(largest.clone()).await;
    let client = connect(&bridge).await;
    let big = "x".repeat(CAP * 2);

    // A simple query over the cap.
    let err = client.simple_query(&format!("SELECT '{big}'")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err}");
    // A parameter over the cap (extended protocol), outside and inside a transaction.
    let err = client.query_one("SELECT length($1::text)", &[&big]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err}");
    client.batch_execute("BEGIN").await.unwrap();
    let err = client.query_one("SELECT length($1::text)", &[&big]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err}");
    // The transaction failed, as it would in PostgreSQL.
    let err = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();

    // Many pipelined queries whose total exceeds the cap all get their own answers.
    let client = Arc::new(client);
    let statement = client.prepare("SELECT $1::int, length($2::text)").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32i32 {
        let (client, statement) = (client.clone(), statement.clone());
        tasks.spawn(async move {
            let small = "y".repeat(CAP / 8);
            let row = client.query_one(&statement, &[&i, &small]).await.unwrap();
            (i, row.get::<_, i32>(0), row.get::<_, i32>(1))
        });
    }
    while let Some(res) = tasks.join_next().await {
        let (i, echoed, len) = res.unwrap();
        assert_eq!((echoed, len), (i, (CAP / 8) as i32));
    }
    assert_eq!(client.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    assert!(largest.load(Ordering::SeqCst) <= CAP);
    bridge.close().await;
}
