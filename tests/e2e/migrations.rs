//! sqlx through the command's printed `DATABASE_URL`: migrations applied once (advisory lock,
//! bookkeeping table, multi-statement files), then ordinary queries from a small pool.

use std::path::Path;

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use crate::support::Server;

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_migrations_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Server::start(dir.path()));
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
    assert_eq!(applied, [20240101000000, 20240102000000]);

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
    assert_eq!(count, 8);
    let err = sqlx::query("INSERT INTO users (email) VALUES ('no-at-sign')").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("23514"));

    pool.close().await;
    drop(server);
}
