//! A backend that fails an exchange: clients with state on the old session are ended with
//! 57P02, new clients are served when the backend recovered, refused when it did not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use pg_bridge::{Backend, Bridge, Config, Error, UpstreamBackend};

use crate::harness::{TestBridge, client_config, connect, connect_with, upstream};

/// Wraps the real upstream; an exchange mentioning `crash-now` fails as a crash would.
struct Crashy {
    inner: UpstreamBackend,
    recovers: bool,
    crashed: Arc<AtomicBool>,
}

impl Backend for Crashy {
    async fn exchange(&self, frames: Bytes) -> Result<BytesMut, Error> {
        if frames.windows(9).any(|w| w == b"crash-now") {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(Error::Backend("simulated crash".into()));
        }
        self.inner.exchange(frames).await
    }

    fn parameter_status(&self) -> Vec<(String, String)> {
        self.inner.parameter_status()
    }

    async fn recovered(&self) -> bool {
        self.recovers
    }
}

async fn crashy_bridge(recovers: bool) -> TestBridge {
    let dir = tempfile::Builder::new().prefix("pg-bridge-sock").tempdir().unwrap();
    let backend = Crashy { inner: upstream().await, recovers, crashed: Arc::new(AtomicBool::new(false)) };
    let bridge = Bridge::listen(backend, Config::new(dir.path())).await.unwrap();
    TestBridge { bridge: Some(bridge), dir }
}

fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|db| db.code().code().to_owned())
}

#[tokio::test]
async fn after_a_recovered_crash_old_sessions_end_and_new_ones_work() {
    let bridge = crashy_bridge(true).await;
    let holder = connect(&bridge).await;
    let statement = holder.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(holder.query_one(&statement, &[&1i32]).await.unwrap().get::<_, i32>(0), 2);

    let crasher = connect(&bridge).await;
    let err = crasher.simple_query("SELECT 'crash-now'").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P02"), "{err}");

    // The holder's prepared statement lived on the old session: it is ended, not misled.
    let err = holder.query_one(&statement, &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P02"), "{err}");

    let fresh = connect(&bridge).await;
    assert_eq!(fresh.query_one("SELECT 40 + 2", &[]).await.unwrap().get::<_, i32>(0), 42);
    bridge.close().await;
}

#[tokio::test]
async fn after_an_unrecovered_crash_new_clients_are_refused() {
    let bridge = crashy_bridge(false).await;
    let crasher = connect(&bridge).await;
    let err = crasher.simple_query("SELECT 'crash-now'").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P02"), "{err}");
    let err = connect_with(&client_config(&bridge)).await.expect_err("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    bridge.close().await;
}
