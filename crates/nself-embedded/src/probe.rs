//! The health probe: a real client session through the socket, so "healthy" means exactly
//! what a client would see (the socket accepts, the bridge answers startup, PostgreSQL answers
//! a query).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::wire;

/// Connects to `sock_path`, logs in as `postgres` to `database`, runs `SELECT 1` and says
/// whether it all succeeded. Unbounded in time: the caller applies a timeout.
pub(crate) async fn query_through(sock_path: &Path, database: &str) -> bool {
    let Ok(mut stream) = UnixStream::connect(sock_path).await else {
        return false;
    };
    let startup = wire::startup(&[("user", "postgres"), ("database", database), ("application_name", "nself-health")]);
    if stream.write_all(&startup).await.is_err() || !ready(&mut stream).await {
        return false;
    }
    if stream.write_all(&wire::query("SELECT 1")).await.is_err() || !ready(&mut stream).await {
        return false;
    }
    let _ = stream.write_all(b"X\0\0\0\x04").await;
    true
}

/// Reads until `ReadyForQuery`; false on an `ErrorResponse`, a closed socket or garbage.
async fn ready(stream: &mut UnixStream) -> bool {
    let mut buf = Vec::with_capacity(1024);
    loop {
        while let Some(len) = wire::message_len(&buf) {
            match buf[0] {
                b'Z' => return true,
                b'E' => return false,
                _ => drop(buf.drain(..len)),
            }
        }
        if buf.len() >= 5
            && wire::message_len(&buf).is_none()
            && u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) < 4
        {
            return false;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}
