//! Boots the embedded PostgreSQL in a temporary directory, connects with tokio-postgres over
//! its Unix socket, runs a few statements and stops cleanly.
//!
//! ```text
//! cargo run -p nself-embedded --example connect
//! ```
//!
//! The first run downloads PGlite into the cache (`$NSELF_CACHE_DIR/pglite`, by default
//! `~/.nself/cache/pglite`), compiles it and runs initdb; later runs start in about a second.

use std::time::Duration;

use nself_embedded::{DEFAULT_PGLITE_VERSION, EmbeddedPgRuntime, fetch_or_cached};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Fetch (or find in the cache) the verified PGlite release.
    let artifact = fetch_or_cached(DEFAULT_PGLITE_VERSION).await?;

    // The runtime directory holds the cluster (`data/`) and the socket (`.s.PGSQL.5432`).
    let runtime_dir = tempfile::tempdir()?;
    let runtime = EmbeddedPgRuntime::new(runtime_dir.path(), artifact);
    runtime.start(Duration::from_secs(300)).await?;
    println!("listening on {}", runtime.sock_path().display());

    // Any PostgreSQL client works: the socket's directory is the host.
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(runtime.runtime_dir())
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    let connection = tokio::spawn(connection);

    client.batch_execute("CREATE TABLE greetings (id serial PRIMARY KEY, text text NOT NULL)").await?;
    client.execute("INSERT INTO greetings (text) VALUES ($1), ($2)", &[&"hello", &"world"]).await?;
    for row in client.query("SELECT id, text FROM greetings ORDER BY id", &[]).await? {
        let (id, text): (i32, String) = (row.get(0), row.get(1));
        println!("{id}: {text}");
    }
    let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    println!("{version}");

    // Ends every client (rolling back open transactions), checkpoints and removes the socket.
    drop(client);
    runtime.stop().await?;
    let _ = connection.await;
    Ok(())
}
