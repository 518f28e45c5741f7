//! Session isolation by any route: what one client sets (settings in `DO` blocks, functions,
//! protocol-level statements and fast-path calls, identity, locks, temporary objects) is not
//! seen by another, `RESET` and `DISCARD ALL` return to a fresh connection's defaults, roles
//! log in as themselves, and reported settings are reported. Each test runs on every release.

use std::path::Path;

use bytes::BytesMut;
use pg_bridge::protocol::backend::{field, parameter_status};
use pg_bridge::protocol::frame::frames;
use pg_bridge::protocol::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{RELEASES, Server, connect};

/// The value `client` sees for setting `name`, NULL when it has none.
async fn setting(client: &tokio_postgres::Client, name: &str) -> Option<String> {
    client.query_one("SELECT current_setting($1, true)", &[&name]).await.unwrap().get(0)
}

/// Starts the command on `version` and runs `check` with its directory.
async fn on_each_release<F, Fut>(check: F)
where
    F: Fn(String, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for version in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = tokio::task::block_in_place(|| Server::start_release(dir.path(), version));
        check(version.to_owned(), dir.path().to_owned()).await;
        drop(server);
    }
}

/// A raw protocol connection with the seed's login, for messages tokio-postgres does not send.
struct Raw {
    stream: tokio::net::UnixStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(dir: &Path) -> Raw {
        let stream = tokio::net::UnixStream::connect(dir.join(nself_embedded::SOCKET_NAME)).await.unwrap();
        let mut raw = Raw { stream, buf: BytesMut::new() };
        let user = crate::support::os_user();
        raw.send(&frontend::startup(&[("user", user.as_str()), ("database", "nself")])).await;
        raw.until_ready().await;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Every message up to and including the next ReadyForQuery, as (tag, whole frame).
    async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut res = Vec::new();
        loop {
            let mut used = 0;
            for (tag, frame) in frames(&self.buf).map_while(Result::ok) {
                used += frame.len();
                res.push((tag, frame.to_vec()));
                if tag == b'Z' {
                    let _ = self.buf.split_to(used);
                    return res;
                }
            }
            let _ = self.buf.split_to(used);
            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0, "connection closed: {res:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_changed_by_any_route_stay_with_their_client() {
    on_each_release(|version, dir| async move {
        let a = connect(&dir).await;
        a.batch_execute("SET app.tenant = '42'").await.unwrap();
        a.batch_execute("DO $$BEGIN SET work_mem = '77MB'; END$$").await.unwrap();
        a.batch_execute(
            "CREATE FUNCTION set_it() RETURNS text LANGUAGE sql AS $$SELECT set_config('statement_timeout', '61s', false)$$",
        )
        .await
        .unwrap();
        a.query_one("SELECT set_it()", &[]).await.unwrap();
        // A protocol-level statement executed after its Parse.
        let prepared = a.prepare("SELECT set_config('lock_timeout', '9s', false)").await.unwrap();
        a.query_one(&prepared, &[]).await.unwrap();
        // A fast-path FunctionCall of set_config (oid 2078).
        let mut raw = Raw::connect(&dir).await;
        let mut call = vec![];
        call.extend(2078i32.to_be_bytes());
        call.extend(0i16.to_be_bytes());
        call.extend(3i16.to_be_bytes());
        for arg in ["geqo_threshold", "3", "false"] {
            call.extend((arg.len() as i32).to_be_bytes());
            call.extend(arg.as_bytes());
        }
        call.extend(0i16.to_be_bytes());
        raw.send(&frontend::build(b'F', &[frontend::Part::Raw(&call)])).await;
        let reply = raw.until_ready().await;
        assert!(reply.iter().any(|(tag, _)| *tag == b'V'), "{version}: {reply:?}");
        // Set to empty, as pg_dump and pg_restore set search_path.
        a.batch_execute("SELECT pg_catalog.set_config('search_path', '', false)").await.unwrap();

        let b = connect(&dir).await;
        assert_eq!(setting(&b, "search_path").await.as_deref(), Some("\"$user\", public"), "{version}");
        assert!(setting(&b, "app.tenant").await.unwrap_or_default().is_empty(), "{version}");
        assert_eq!(setting(&b, "work_mem").await.as_deref(), Some("4MB"), "{version}");
        assert_eq!(setting(&b, "statement_timeout").await.as_deref(), Some("0"), "{version}");
        assert_eq!(setting(&b, "lock_timeout").await.as_deref(), Some("0"), "{version}");
        assert_eq!(setting(&b, "geqo_threshold").await.as_deref(), Some("12"), "{version}");
        // Each keeps its own, whoever ran in between.
        assert_eq!(setting(&a, "app.tenant").await.as_deref(), Some("42"), "{version}");
        assert_eq!(setting(&a, "work_mem").await.as_deref(), Some("77MB"), "{version}");
        assert_eq!(setting(&a, "statement_timeout").await.as_deref(), Some("61s"), "{version}");
        assert_eq!(setting(&a, "lock_timeout").await.as_deref(), Some("9s"), "{version}");
        assert_eq!(setting(&a, "search_path").await.as_deref(), Some(""), "{version}");
        raw.send(&frontend::query("SELECT current_setting('geqo_threshold')")).await;
        let reply = raw.until_ready().await;
        assert!(reply.iter().any(|(tag, frame)| *tag == b'D' && frame.ends_with(b"3")), "{version}: {reply:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_discard_return_to_a_fresh_connections_defaults() {
    on_each_release(|version, dir| async move {
        let fresh = "SELECT current_setting('search_path') || ' ' || current_setting('enable_seqscan') \
                     || ' ' || current_setting('TimeZone')";
        let mut config: tokio_postgres::Config = crate::support::seed_dsn(&dir).parse().unwrap();
        config.options("-c TimeZone=Asia/Tokyo");
        let (a, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        // plpgsql loaded (it defines settings of its own), then settings changed and reset.
        a.batch_execute("DO $$BEGIN PERFORM 1; END$$").await.unwrap();
        a.batch_execute("SET search_path = pg_catalog; SET enable_seqscan = off; SET TimeZone = 'UTC'").await.unwrap();
        a.batch_execute("RESET ALL").await.unwrap();
        let row = a.query_one(fresh, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "\"$user\", public on Asia/Tokyo", "{version}: back to its startup value");
        a.batch_execute("SET search_path = pg_catalog; SET TimeZone = 'UTC'").await.unwrap();
        a.batch_execute("DISCARD ALL").await.unwrap();
        let row = a.query_one(fresh, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "\"$user\", public on Asia/Tokyo", "{version}");
        // DISCARD ALL in a transaction block is refused as PostgreSQL refuses it.
        let err = a.batch_execute("BEGIN; DISCARD ALL").await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("25001"), "{version}: {err}");
        a.batch_execute("ROLLBACK").await.unwrap();
        // A new client with startup parameters after all that.
        let (b, connection) = config.options("-c DateStyle=German").connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let row =
            b.query_one("SELECT current_setting('DateStyle'), current_setting('search_path')", &[]).await.unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("German, DMY".to_owned(), "\"$user\", public".to_owned())
        );
        b.batch_execute("CREATE TABLE landed(x int)").await.unwrap();
        let schema: String = b
            .query_one("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'landed'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(schema, "public", "{version}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_roles() {
    on_each_release(|version, dir| async move {
        let admin = connect(&dir).await;
        admin.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE nologin NOLOGIN").await.unwrap();
        admin.batch_execute("SET ROLE app").await.unwrap();
        let other = connect(&dir).await;
        let row = other.query_one("SELECT current_user::text, session_user::text", &[]).await.unwrap();
        let me = crate::support::os_user();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (me.clone(), me.clone()), "{version}");
        other.batch_execute("SET SESSION AUTHORIZATION app").await.unwrap();
        let third = connect(&dir).await;
        let row = third.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), me, "{version}");
        // A role with LOGIN logs in as itself; others are refused as PostgreSQL refuses them.
        let mut config: tokio_postgres::Config = crate::support::seed_dsn(&dir).parse().unwrap();
        let (app, connection) = config.clone().user("app").connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let row = app.query_one("SELECT current_user::text, session_user::text", &[]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("app".to_owned(), "app".to_owned()));
        for (user, message) in
            [("nosuch", "role \"nosuch\" does not exist"), ("nologin", "role \"nologin\" is not permitted to log in")]
        {
            let err = config.user(user).connect(tokio_postgres::NoTls).await.err().expect("refused");
            let err = err.as_db_error().expect("a server error");
            assert_eq!((err.code().code(), err.message()), ("28000", message), "{version}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn advisory_locks_by_any_route_and_temporary_objects_stay_with_their_client() {
    on_each_release(|version, dir| async move {
        let a = connect(&dir).await;
        a.batch_execute(
            "CREATE FUNCTION grab(k bigint) RETURNS void LANGUAGE sql AS $$SELECT pg_advisory_lock(k)$$; \
             CREATE TEMP TABLE mine(x int)",
        )
        .await
        .unwrap();
        a.batch_execute("DO $$BEGIN PERFORM \"pg_advisory_lock\"(7); END$$").await.unwrap();
        a.query_one("SELECT grab(8)", &[]).await.unwrap();
        // B waits for the backend while A holds session state it cannot share; its try-lock
        // runs once A has let go, and then succeeds.
        let b = connect(&dir).await;
        let try_lock = tokio::spawn(async move {
            let row = b.query_one("SELECT pg_try_advisory_lock(7) AND pg_try_advisory_lock(8)", &[]).await.unwrap();
            (row.get::<_, bool>(0), b)
        });
        a.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
        assert!(!try_lock.is_finished(), "{version}: A's temporary table still holds the backend");
        drop(a);
        let (locked, b) = try_lock.await.unwrap();
        assert!(locked, "{version}");
        // A's temporary table went with it: B makes its own of the same name.
        b.batch_execute("SELECT pg_advisory_unlock_all(); CREATE TEMP TABLE mine(y text); DROP TABLE mine")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reported_settings_are_reported_when_they_change() {
    on_each_release(|version, dir| async move {
        let mut raw = Raw::connect(&dir).await;
        let reported = |reply: &[(u8, Vec<u8>)]| -> Vec<(String, String)> {
            reply.iter().filter(|(tag, _)| *tag == b'S').filter_map(|(_, frame)| parameter_status(frame)).collect()
        };
        raw.send(&frontend::query("SET DateStyle = 'German'; SET application_name = 'reporter'")).await;
        let reply = raw.until_ready().await;
        assert_eq!(
            reported(&reply),
            [
                ("DateStyle".to_owned(), "German, DMY".to_owned()),
                ("application_name".to_owned(), "reporter".to_owned())
            ],
            "{version}: {reply:?}"
        );
        // Before the ReadyForQuery, as PostgreSQL sends them.
        assert_eq!(reply.last().map(|(tag, _)| *tag), Some(b'Z'));
        raw.send(&frontend::query("SELECT 1")).await;
        assert!(reported(&raw.until_ready().await).is_empty(), "{version}: nothing changed");
        // In a function, and undone by ROLLBACK.
        raw.send(&frontend::query("BEGIN; SELECT set_config('TimeZone', 'Asia/Tokyo', false)")).await;
        assert_eq!(reported(&raw.until_ready().await), [("TimeZone".to_owned(), "Asia/Tokyo".to_owned())]);
        raw.send(&frontend::query("ROLLBACK")).await;
        // PGlite's default: GMT on 0.2 and 0.3, UTC (its driver's PGTZ) from 0.5 on.
        let zone = if pglite_host::pg_major(&version).is_some_and(|major| major >= 18) { "UTC" } else { "GMT" };
        assert_eq!(reported(&raw.until_ready().await), [("TimeZone".to_owned(), zone.to_owned())], "{version}");
        // An error leaves the session usable and reports nothing.
        raw.send(&frontend::query("SET DateStyle = 'Nonsense'")).await;
        let reply = raw.until_ready().await;
        let error = reply.iter().find(|(tag, _)| *tag == b'E').expect("an error");
        assert_eq!(field(&error.1, b'C').as_deref(), Some("22023"));
        assert!(reported(&reply).is_empty());
    })
    .await;
}

/// What a statement came to: its first value as text, or the error's SQLSTATE.
async fn outcome(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(messages) => messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
                _ => None,
            })
            .unwrap_or_else(|| "ok".to_owned()),
        Err(err) => err.code().map_or_else(|| err.to_string(), |code| code.code().to_owned()),
    }
}

/// Two clients with prepared statements made by every route (Parse, `PREPARE`, a `DO`
/// block), each using and deallocating its own while the other runs: what each sees.
async fn statements_session(dsn: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let a = crate::support::connect_watched(dsn).await.0;
    let b = crate::support::connect_watched(dsn).await.0;
    let by_parse = a.prepare("SELECT 1").await.unwrap();
    let listed = "SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements WHERE from_sql";
    for (who, client, sql) in [
        ("a", &a, "PREPARE mine(int) AS SELECT $1 + 1"),
        ("a", &a, "DO $$BEGIN EXECUTE 'PREPARE made_by_do AS SELECT 3'; END$$"),
        ("b", &b, listed),
        ("b", &b, "EXECUTE mine(1)"),
        ("b", &b, "PREPARE mine AS SELECT 'b'"),
        ("b", &b, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$"),
        ("a", &a, "EXECUTE mine(1)"),
        ("a", &a, "EXECUTE made_by_do"),
        ("a", &a, listed),
        ("b", &b, "EXECUTE mine"),
        ("b", &b, "PREPARE again AS SELECT 'b again'"),
        ("a", &a, "DEALLOCATE mine"),
        ("b", &b, "EXECUTE again"),
        ("a", &a, "EXECUTE mine(1)"),
        ("a", &a, "EXECUTE made_by_do"),
        ("a", &a, listed),
    ] {
        seen.push((format!("{who}: {sql}"), outcome(client, sql).await));
    }
    let row = a.query_one(&by_parse, &[]).await.unwrap();
    seen.push(("a: the Parse'd statement".to_owned(), row.get::<_, i32>(0).to_string()));
    seen.push(("a: DO DEALLOCATE ALL".to_owned(), outcome(&a, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$").await));
    let gone = a.query_one(&by_parse, &[]).await.map_err(|err| err.code().map(|c| c.code().to_owned()));
    seen.push(("a: the Parse'd statement after".to_owned(), format!("{:?}", gone.map(|row| row.get::<_, i32>(0)))));
    seen.push(("b: after a's DEALLOCATE ALL".to_owned(), outcome(&b, "EXECUTE again").await));
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_are_each_clients_own_by_any_route() {
    on_each_release(|version, dir| async move {
        let major = pglite_host::pg_major(&version).unwrap();
        let native = crate::native::native(crate::native::oracle_major(major).expect("a native server"));
        let native_dsn = format!("host={} user=postgres dbname=nself sslmode=disable", native.socket_dir.display());
        let ours = statements_session(&crate::support::seed_dsn(&dir)).await;
        let theirs = statements_session(&native_dsn).await;
        assert_eq!(ours, theirs, "{version}: runtime (left) and native PostgreSQL (right) differ");
        // And the session did what it says: b could not see or run a's, nor a's b's.
        assert!(ours.iter().any(|(step, out)| step == "b: EXECUTE mine(1)" && out == "26000"), "{ours:?}");
    })
    .await;
}
