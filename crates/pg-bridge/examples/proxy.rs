//! The bridge as a filtering proxy in front of a native PostgreSQL server: every client on
//! `<LISTEN_DIR>/.s.PGSQL.5432` shares one session on the upstream server. `cargo xtask bench
//! bridge` runs it to measure the bridge's own overhead against PgBouncer's.
//!
//! ```text
//! cargo run --release -p pg-bridge --example proxy -- UPSTREAM_SOCKET LISTEN_DIR [USER [DATABASE]]
//! ```
//!
//! UPSTREAM_SOCKET is the server's socket file, e.g. `/run/postgresql/.s.PGSQL.5432`; the
//! session logs in as USER (default `postgres`) to DATABASE (default `postgres`), which is
//! also the one database the proxy serves. It prints `ready: <socket>` once clients can
//! connect and stops cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;

use pg_bridge::{Bridge, Config, UpstreamAddr, UpstreamBackend, UpstreamConfig};
use tokio::signal::unix::{SignalKind, signal};

// One thread, like PgBouncer: there is one upstream session to serve, and a second worker only
// adds cross-thread wake-ups.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), Some(listen_dir)) = (args.next(), args.next()) else {
        eprintln!("usage: proxy UPSTREAM_SOCKET LISTEN_DIR [USER [DATABASE]]");
        std::process::exit(2);
    };
    let user = args.next().unwrap_or_else(|| "postgres".to_owned());
    let database = args.next().unwrap_or_else(|| "postgres".to_owned());

    // Hooked first, so a signal that arrives while connecting is not lost.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let backend = UpstreamBackend::connect(UpstreamConfig {
        addr: UpstreamAddr::Unix(PathBuf::from(upstream)),
        user,
        database: database.clone(),
        password: None,
    })
    .await?;
    let mut config = Config::new(listen_dir);
    config.database = database;
    let bridge = Bridge::listen(backend, config).await?;
    println!("ready: {}", bridge.socket_path().display());

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    bridge.close().await?;
    Ok(())
}
