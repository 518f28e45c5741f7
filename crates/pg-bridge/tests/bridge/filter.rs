//! COPY, LISTEN and NOTIFY are refused when the bridge is told to; look-alikes pass (scenarios
//! 13, 14, 15); COPY runs through the bridge otherwise.

use tokio_postgres::SimpleQueryMessage;

use pg_bridge::Refuse;

use crate::harness::{bridge, bridge_with, connect, table};
use crate::raw::{Raw, bind, error, execute, msg, parse, query, rows, sync, tags};

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_listen_notify_are_refused_and_the_connection_stays_usable() {
    let bridge = bridge_with(|config| config.refuse = Refuse::all()).await;
    let client = connect(&bridge).await;
    let t = table("copyvariants");
    client.simple_query(&format!("CREATE TABLE {t}(a int)")).await.unwrap();
    let refused = [
        format!("COPY {t} FROM STDIN"),
        format!("copy {t} to stdout"),
        format!("  /* c /* nested */ */ -- x\n\tCoPy {t} TO STDOUT"),
        "COPY (SELECT 1) TO STDOUT".to_owned(),
        format!("COPY {t} TO '/tmp/x'"),
        format!(";;COPY {t} FROM STDIN"),
        format!("COPY/**/{t} FROM STDIN"),
        format!("SELECT 1; COPY {t} TO STDOUT; SELECT 2"),
        "LISTEN ch".to_owned(),
        "listen\"ch\"".to_owned(),
        "NOTIFY ch, 'x'".to_owned(),
    ];
    for sql in &refused {
        let err = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), "0A000", "{sql}: {err}");
        let err = client.prepare(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), "0A000", "extended {sql}: {err}");
        assert_eq!(client.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0), 5);
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_succeed() {
    let bridge = bridge().await;
    let client = connect(&bridge).await;
    let t = table("copy_log");
    let sqls = [
        "SELECT ';COPY t FROM STDIN'".to_owned(),
        "SELECT $$;COPY$$".to_owned(),
        "SELECT E'\\';COPY'".to_owned(),
        "SELECT 1 AS \"copy\"".to_owned(),
        format!("CREATE TABLE {t}(listen int)"),
        format!(
            "CREATE FUNCTION {t}_f() RETURNS void LANGUAGE plpgsql AS $fn$BEGIN PERFORM 1; \
             -- COPY x FROM STDIN; NOTIFY y;\nEND$fn$"
        ),
        format!("SELECT * FROM {t}"),
        "SELECT pg_notify('ch', 'x')".to_owned(),
        "UNLISTEN *".to_owned(),
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;".to_owned(),
    ];
    for sql in &sqls {
        client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_inside_transactions_abort_them_like_postgres() {
    let bridge = bridge_with(|config| config.refuse = Refuse::all()).await;
    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    raw.send(&query("BEGIN")).await;
    assert_eq!(raw.until_ready().await.last().unwrap().body, b"T");
    raw.send(&query("COPY pg_class TO STDOUT")).await;
    let msgs = raw.until_ready().await;
    assert_eq!(error(&msgs).as_deref(), Some("0A000"));
    assert_eq!(msgs.last().unwrap().body, b"E", "the transaction is failed");
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(raw.until_ready().await.last().unwrap().body, b"I");

    // Extended: the group's messages up to Sync are discarded, then ReadyForQuery.
    let mut group = parse("", "COPY pg_class FROM STDIN");
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(sync());
    raw.send(&group).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(error(&msgs).as_deref(), Some("0A000"));
    assert_eq!(msgs.last().unwrap().body, b"I");

    // A refused Parse after a statement of the same group already ran: the group fails.
    let mut group = parse("", "SELECT 1");
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(parse("", "LISTEN x"));
    group.extend(bind("", "", &[]));
    group.extend(execute(""));
    group.extend(sync());
    raw.send(&group).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12DCEZ");
    assert_eq!(error(&msgs).as_deref(), Some("0A000"));
    raw.send(&query("SELECT 3")).await;
    assert_eq!(rows(&raw.until_ready().await), [[Some("3".to_owned())]]);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_run_from_a_function_is_the_clients_own() {
    let bridge = bridge().await;
    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    // As in PostgreSQL, the client that listened (through a function) hears the channel,
    // whoever notifies, itself included; another client does not.
    raw.send(&query("DO $$BEGIN EXECUTE 'LISTEN ch_from_do'; END$$")).await;
    let msgs = raw.until_ready().await;
    assert!(error(&msgs).is_none(), "{msgs:?}");
    let mut deaf = Raw::startup(&bridge.socket_path(), &[]).await;
    let other = connect(&bridge).await;
    other.simple_query("SELECT pg_notify('ch_from_do', 'x')").await.unwrap();
    raw.send(&query("SELECT pg_notify('ch_from_do', 'y'); SELECT 1")).await;
    let mut heard = raw.until_ready().await;
    // Its own notification comes at its commit; the next answer is a fence for it.
    raw.send(&query("SELECT 2")).await;
    heard.extend(raw.until_ready().await);
    let payloads: Vec<_> = heard.iter().filter(|m| m.tag == b'A').map(|m| m.body[4..].to_vec()).collect();
    assert_eq!(payloads, [b"ch_from_do\0x\0".to_vec(), b"ch_from_do\0y\0".to_vec()], "{}", tags(&heard));
    deaf.send(&query("SELECT 3")).await;
    let msgs = deaf.until_ready().await;
    assert!(!tags(&msgs).contains('A'), "{}", tags(&msgs));
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_reset_query_succeeds() {
    let bridge = bridge().await;
    let client = connect(&bridge).await;
    let res = client.simple_query("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;").await.unwrap();
    let completes = res.iter().filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))).count();
    assert_eq!(completes, 4);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_run_through_the_bridge() {
    let bridge = bridge().await;
    let t = table("copy_through");
    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    raw.send(&query(&format!("CREATE TABLE {t}(a int, b text)"))).await;
    assert_eq!(tags(&raw.until_ready().await), "CZ");
    for in_transaction in [false, true] {
        if in_transaction {
            raw.send(&query("BEGIN")).await;
            raw.until_ready().await;
        }
        raw.send(&query(&format!("COPY {t} FROM STDIN"))).await;
        assert_eq!(raw.recv().await.unwrap().tag, b'G');
        raw.send(&[msg(b'd', b"1\tone\n"), msg(b'd', b"2\ttwo\n"), msg(b'c', b"")].concat()).await;
        let msgs = raw.until_ready().await;
        assert_eq!(tags(&msgs), "CZ", "{msgs:?}");
        assert_eq!(msgs[0].body, b"COPY 2\0");
        let status: &[u8] = if in_transaction { b"T" } else { b"I" };
        assert_eq!(msgs.last().unwrap().body, status);
        // CopyFail rolls the COPY back; an open transaction is failed, as in PostgreSQL.
        raw.send(&query(&format!("COPY {t} FROM STDIN"))).await;
        assert_eq!(raw.recv().await.unwrap().tag, b'G');
        raw.send(&[msg(b'd', b"3\tthree\n"), msg(b'f', b"gave up\0")].concat()).await;
        let msgs = raw.until_ready().await;
        assert_eq!(error(&msgs).as_deref(), Some("57014"), "{msgs:?}");
        if in_transaction {
            assert_eq!(msgs.last().unwrap().body, b"E");
            raw.send(&query("ROLLBACK")).await;
            raw.until_ready().await;
        }
    }
    raw.send(&query(&format!("COPY (SELECT * FROM {t} ORDER BY a) TO STDOUT"))).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "HddcCZ", "{msgs:?}");
    assert_eq!(msgs[1].body, b"1\tone\n");
    raw.send(&query("SELECT 7")).await;
    assert_eq!(rows(&raw.until_ready().await), [[Some("7".to_owned())]]);
    bridge.close().await;
}
