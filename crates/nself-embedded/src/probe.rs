//! The health probe: a real client session through the socket, so "healthy" means exactly
//! what a client would see (the socket accepts, the bridge answers startup, PostgreSQL answers
//! a query).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use pg_bridge::protocol::frame::frames;
use pg_bridge::protocol::frontend;

/// Connects to `sock_path`, logs in as `postgres` to `database`, runs `SELECT 1` and says
/// whether it all succeeded. Unbounded in time: the caller applies a timeout.
pub(crate) async fn query_through(sock_path: &Path, database: &str) -> bool {
    let Ok(mut stream) = UnixStream::connect(sock_path).await else {
        return false;
    };
    let startup =
        frontend::startup(&[("user", "postgres"), ("database", database), ("application_name", "nself-health")]);
    if stream.write_all(&startup).await.is_err() || !ready(&mut stream).await {
        return false;
    }
    if stream.write_all(&frontend::query("SELECT 1")).await.is_err() || !ready(&mut stream).await {
        return false;
    }
    let _ = stream.write_all(frontend::TERMINATE).await;
    true
}

/// Reads until `ReadyForQuery`; false on an `ErrorResponse`, a closed socket or garbage.
async fn ready(stream: &mut UnixStream) -> bool {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut complete = 0;
        for frame in frames(&buf) {
            match frame {
                Ok((b'Z', _)) => return true,
                Ok((b'E', _)) => return false,
                Ok((_, frame)) => complete += frame.len(),
                // A torn tail waits for more bytes, unless its length field is impossible.
                Err(_) => {
                    let rest = &buf[complete..];
                    if rest.len() >= 5 && u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) < 4 {
                        return false;
                    }
                }
            }
        }
        buf.drain(..complete);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}
