//! sqlx through the command's printed `DATABASE_URL`, on every release: migrations applied
//! once (advisory lock, bookkeeping table, multi-statement files), then ordinary queries from
//! a small pool.

use std::path::Path;

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use crate::support::{RELEASES, Server};

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_migrations_apply_once() {
    for version in RELEASES {
        sqlx_migrations_apply_once_on(version).await;
    }
}

async fn sqlx_migrations_apply_once_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let pool = PgPoolOptions::new().max_connections(4).connect(&server.database_url()).await.expect("sqlx connects");

    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/migrations");
    let migrator = sqlx::migrate::Migrator::new(migrations).await.expect("reading the migrations");
    migrator.run(&pool).await.expect("first run applies both migrations");
    migrator.run(&pool).await.expect("second run is a no-op");

    let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(applied, [20240101000000, 20240102000000], "{version}");

    let author: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind("first@example.com")
        .fetch_one(&pool)
        .await
        .unwrap();
    let inserts = (0..8).map(|n| {
        sqlx::query("INSERT INTO posts (author, title) VALUES ($1, $2)")
            .bind(author)
            .bind(format!("post {n}"))
            .execute(&pool)
    });
    for insert in inserts {
        insert.await.unwrap();
    }
    let count: i64 = sqlx::query_scalar("SELECT post_count($1)").bind(author).fetch_one(&pool).await.unwrap();
    assert_eq!(count, 8, "{version}");
    let err = sqlx::query("INSERT INTO users (email) VALUES ('no-at-sign')").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("23514"), "{version}");

    pool.close().await;
    drop(server);
}

/// Two deployments migrating at once: sqlx serialises them with a session-level advisory lock.
/// On the one shared PGlite session the second would take the "same" lock at once and apply
/// the migrations again; the bridge keeps the backend for the lock's holder instead.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrators_take_turns() {
    for version in RELEASES {
        concurrent_migrators_take_turns_on(version).await;
    }
}

async fn concurrent_migrators_take_turns_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
    let url = server.database_url();
    let connect = || PgPoolOptions::new().max_connections(2).connect(&url);
    let (a, b) = tokio::try_join!(connect(), connect()).expect("sqlx connects");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/migrations");
    let migrator = sqlx::migrate::Migrator::new(migrations).await.expect("reading the migrations");
    let (ra, rb) = tokio::join!(migrator.run(&a), migrator.run(&b));
    ra.expect("first migrator");
    rb.expect("second migrator");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&a).await.unwrap();
    assert_eq!(applied, 2, "{version}");
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetch_one(&b).await.unwrap();
    assert_eq!(locks, 0, "{version}: both migrators released their lock");
    a.close().await;
    b.close().await;
    drop(server);
}
