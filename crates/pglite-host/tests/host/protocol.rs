//! The transfer itself: extended protocol, limits, and recovery from a dead instance.

use pglite_host::Error;

use crate::support::{Outcome, messages, on_each_release, outcome, query, run, scalar};

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn extended_protocol_pipeline_in_one_exchange() {
    on_each_release(|_, pg| {
        let mut req = Vec::new();
        req.extend(frame(b'P', b"s1\0SELECT $1::int + 1\0\0\0"));
        req.extend(frame(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x0241\0\0"));
        req.extend(frame(b'D', b"P\0"));
        req.extend(frame(b'E', b"\0\0\0\0\0"));
        req.extend(frame(b'S', b""));
        let reply = pg.exec_protocol(req).unwrap();
        let types: Vec<u8> = messages(&reply).iter().map(|m| m.0).collect();
        assert_eq!(types, b"12TDCZ");
        assert_eq!(outcome(&reply), Outcome::Rows(vec![vec![Some("42".into())]]));
        // A failing Parse is answered at Sync and the session goes on.
        let mut req = frame(b'P', b"\0SELECT * FROM nowhere\0\0\0");
        req.extend(frame(b'S', b""));
        assert_eq!(outcome(&pg.exec_protocol(req).unwrap()), Outcome::Error("42P01".into()));
        assert_eq!(scalar(pg, "SELECT 3"), "3");
    });
}

#[test]
fn malformed_message_gets_a_protocol_error() {
    on_each_release(|_, pg| {
        // The length field says 13, one short of the NUL-terminated text.
        let reply = pg.exec_protocol(b"Q\0\0\0\x0dSELECT 1;".to_vec()).unwrap();
        assert_eq!(outcome(&reply), Outcome::Error("08P01".into()));
        assert_eq!(run(pg, "SELECT 2"), Outcome::Rows(vec![vec![Some("2".into())]]));
    });
}

#[test]
fn large_requests_and_replies() {
    on_each_release(|version, pg| {
        scalar(pg, "CREATE TABLE survivor(x int); INSERT INTO survivor VALUES (7); SELECT 1");
        let just_under = format!("SELECT length('{}')", "y".repeat(14 * 1024 * 1024));
        assert_eq!(scalar(pg, &just_under), (14 * 1024 * 1024).to_string());
        let over = format!("SELECT length('{}')", "y".repeat(16 * 1024 * 1024));
        let big_reply = "SELECT repeat('z', 20 * 1024 * 1024)";
        if version.starts_with("0.2.") {
            // 0.2's transfer buffer holds request plus reply in 16 MiB: a larger request is
            // refused up front, and the instance keeps working.
            let err = pg.exec_protocol(query(&over)).unwrap_err();
            assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
            assert_eq!(scalar(pg, "SELECT 'fine'"), "fine");
            // A reply that overflows it corrupts the instance, which restarts from disk.
            let err = pg.exec_protocol(query(big_reply)).unwrap_err();
            assert!(matches!(err, Error::Restarted { .. }), "{err}");
            assert!(pg.healthy());
        } else {
            // 0.3 moves bytes through callbacks: no such cap.
            assert_eq!(scalar(pg, &over), (16 * 1024 * 1024).to_string());
            assert_eq!(scalar(pg, big_reply).len(), 20 * 1024 * 1024);
        }
        assert_eq!(scalar(pg, "SELECT x FROM survivor"), "7");
    });
}

#[test]
fn startup_packets_never_reach_the_backend() {
    on_each_release(|_, pg| {
        scalar(pg, "CREATE TABLE kept(x int); INSERT INTO kept VALUES (1); SELECT 1");
        for packet in [&b"\0\0\0\x08\x04\xd2\x16\x2f"[..], b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02"] {
            let err = pg.exec_protocol(packet.to_vec()).unwrap_err();
            assert!(matches!(err, Error::StartupPacket), "{err}");
        }
        assert_eq!(scalar(pg, "SELECT x FROM kept"), "1");
    });
}

fn types(reply: &[u8]) -> String {
    messages(reply).iter().filter(|m| m.0 != b'N').map(|m| m.0 as char).collect()
}

#[test]
fn extended_protocol_errors_keep_the_session_in_step() {
    on_each_release(|_, pg| {
        let exchange = |parts: &[Vec<u8>]| types(&pg.exec_protocol(parts.concat()).unwrap());
        scalar(pg, "CREATE TABLE t(x int); SELECT 1");
        let bad_parse = frame(b'P', b"\0SELECT * FROM nowhere\0\0\0");
        let sync = frame(b'S', b"");
        // 0.2.17 leaves the rest of a failed call unread and replays it on the next call; the
        // host must hide that: the next request runs and gets its own answer.
        assert_eq!(exchange(&[bad_parse.clone(), sync.clone()]), "EZ");
        assert_eq!(exchange(&[query("INSERT INTO t VALUES (5)")]), "CZ");
        assert_eq!(scalar(pg, "SELECT count(*) FROM t"), "1");
        // An execution error, then a pipeline whose first group fails and second succeeds.
        let divide = [
            frame(b'P', b"\0SELECT 1/$1::int\0\0\0"),
            frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x010\0\0"),
            frame(b'E', b"\0\0\0\0\0"),
            sync.clone(),
        ];
        assert_eq!(exchange(&divide), "1EZ");
        let ok_group = [
            frame(b'P', b"\0SELECT 9\0\0\0"),
            frame(b'B', b"\0\0\0\0\0\0\0\0"),
            frame(b'E', b"\0\0\0\0\0"),
            sync.clone(),
        ];
        let mut pipeline =
            vec![bad_parse.clone(), frame(b'B', b"\0\0\0\0\0\0\0\0"), frame(b'E', b"\0\0\0\0\0"), sync.clone()];
        pipeline.extend(ok_group);
        assert_eq!(exchange(&pipeline), "EZ12DCZ");
        assert_eq!(exchange(&[bad_parse, sync, query("SELECT 7")]), "EZTDCZ");
        assert_eq!(scalar(pg, "SELECT 10"), "10");
    });
}

/// Callers on many threads and async tasks take turns on the one instance: each exchange gets
/// its own answer, whether it ran inline or waited on the blocking pool.
#[test]
fn concurrent_callers_each_get_their_own_answer() {
    for version in crate::support::releases() {
        concurrent_callers_on(&version);
    }
}

fn concurrent_callers_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pg = std::sync::Arc::new(crate::support::start(version, dir.path()));
    let select = |n: u32| (query(&format!("SELECT {n}")), Outcome::Rows(vec![vec![Some(n.to_string())]]));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4u32 {
        let pg = pg.clone();
        tasks.spawn_on(
            async move {
                for i in 0..200 {
                    let (request, expected) = select(10_000 + task * 1000 + i);
                    assert_eq!(outcome(&pg.exec_protocol_async(request, Default::default()).await.unwrap()), expected);
                }
            },
            runtime.handle(),
        );
    }
    std::thread::scope(|scope| {
        for thread in 0..3u32 {
            let pg = &pg;
            scope.spawn(move || {
                for i in 0..200 {
                    let (request, expected) = select(thread * 1000 + i);
                    assert_eq!(outcome(&pg.exec_protocol(request).unwrap()), expected);
                }
            });
        }
    });
    runtime.block_on(async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    assert_eq!(scalar(&pg, "SELECT 'alive'"), "alive");
}

/// What PostgreSQL answers to batches that do not end in Sync: one response per message and
/// no ReadyForQuery (asyncpg and postgres.js describe every new statement with Parse,
/// Describe, Flush). PGlite 0.2 ends every call with one; the host must not pass it on.
#[test]
fn batches_ending_in_flush_get_no_ready_for_query() {
    on_each_release(|version, pg| {
        let exchange = |parts: &[Vec<u8>]| types(&pg.exec_protocol(parts.concat()).unwrap());
        let flush = frame(b'H', b"");
        let sync = frame(b'S', b"");
        let describe = frame(b'D', b"S\0");
        assert_eq!(exchange(&[frame(b'P', b"\0SELECT 1\0\0\0"), describe.clone(), flush.clone()]), "1tT", "{version}");
        assert_eq!(exchange(std::slice::from_ref(&sync)), "Z", "{version}");
        let bind_execute = [frame(b'B', b"\0\0\0\0\0\0\0\0"), frame(b'E', b"\0\0\0\0\0")];
        assert_eq!(exchange(&[&bind_execute[..], std::slice::from_ref(&flush)].concat()), "2DC", "{version}");
        assert_eq!(exchange(std::slice::from_ref(&sync)), "Z", "{version}");
        // An error before Flush: the error, then nothing until Sync, which skips to itself.
        assert_eq!(exchange(&[frame(b'P', b"\0SELECT * FROM nowhere\0\0\0"), flush.clone()]), "E", "{version}");
        assert_eq!(exchange(&[&bind_execute[..], std::slice::from_ref(&sync)].concat()), "Z", "{version}");
        // The same in a transaction block, which the error fails.
        assert_eq!(exchange(&[query("BEGIN")]), "CZ");
        assert_eq!(
            exchange(&[
                frame(b'P', b"\0SELECT 1/0\0\0\0"),
                frame(b'B', b"\0\0\0\0\0\0\0\0"),
                frame(b'E', b"\0\0\0\0\0"),
                flush
            ]),
            // The division by zero is folded when the statement is planned, at Bind.
            "1E"
        );
        assert_eq!(exchange(&[frame(b'P', b"\0SELECT 2\0\0\0"), sync]), "Z");
        assert_eq!(exchange(&[query("ROLLBACK")]), "CZ");
        assert_eq!(scalar(pg, "SELECT 'in step'"), "in step");
    });
}

/// A batch sent in pieces (a large Bind before its Describe, Execute and Sync) gets exactly
/// one ReadyForQuery, at the Sync.
#[test]
fn a_large_bind_sent_apart_from_its_sync_gets_one_ready_for_query() {
    on_each_release(|version, pg| {
        let big = "x".repeat(1 << 20);
        let mut bind = b"\0\0\0\0\0\x01".to_vec();
        bind.extend((big.len() as u32).to_be_bytes());
        bind.extend(big.as_bytes());
        bind.extend(b"\0\0");
        let first = [frame(b'P', b"\0SELECT length($1::text)\0\0\0"), frame(b'B', &bind)].concat();
        assert_eq!(types(&pg.exec_protocol(first).unwrap()), "12", "{version}");
        let rest = [frame(b'D', b"P\0"), frame(b'E', b"\0\0\0\0\0"), frame(b'S', b"")].concat();
        let reply = pg.exec_protocol(rest).unwrap();
        assert_eq!(types(&reply), "TDCZ", "{version}");
        assert_eq!(outcome(&reply), Outcome::Rows(vec![vec![Some((1 << 20).to_string())]]));
    });
}

/// Messages that end exactly where PostgreSQL's 8 KiB receive buffer does, with more after
/// them: every message runs (PGlite 0.3 stopped reading there and dropped the rest).
#[test]
fn batches_with_messages_ending_on_the_receive_buffer_boundary_run_whole() {
    on_each_release(|version, pg| {
        scalar(pg, "CREATE TABLE many(x int); SELECT 1");
        let parse = frame(b'P', b"ins\0INSERT INTO many VALUES ($1::int)\0\0\0");
        let mut batch = parse.clone();
        let mut n = 0;
        // Bind/Execute pairs until the batch is a multiple of 8 KiB, padding with the value's
        // width, then more pairs after the boundary.
        while batch.len() < 8192 * 3 || n < 2000 {
            let value = n.to_string();
            let mut bind = b"\0ins\0\0\0\0\x01".to_vec();
            bind.extend((value.len() as u32).to_be_bytes());
            bind.extend(value.as_bytes());
            bind.extend(b"\0\0");
            batch.extend(frame(b'B', &bind));
            batch.extend(frame(b'E', b"\0\0\0\0\0"));
            n += 1;
        }
        batch.extend(frame(b'S', b""));
        let reply = pg.exec_protocol(batch).unwrap();
        let kinds = types(&reply);
        assert!(kinds.ends_with('Z') && kinds.matches('Z').count() == 1, "{version}: {kinds}");
        assert_eq!(scalar(pg, "SELECT count(*) FROM many"), n.to_string(), "{version}");
        // And a Bind ending exactly on the boundary, followed by the rest of its group.
        let head = [frame(b'P', b"\0SELECT length($1::text)\0\0\0")].concat();
        // Bind: type, length, two empty names, two counts, the value's length, the value, a count.
        let fixed = head.len() + 5 + 2 + 2 + 2 + 4 + 2;
        let value = "v".repeat(8192 - fixed);
        let mut bind = b"\0\0\0\0\0\x01".to_vec();
        bind.extend((value.len() as u32).to_be_bytes());
        bind.extend(value.as_bytes());
        bind.extend(b"\0\0");
        let mut request = [head, frame(b'B', &bind)].concat();
        assert_eq!(request.len(), 8192);
        request.extend([frame(b'D', b"P\0"), frame(b'E', b"\0\0\0\0\0"), frame(b'S', b"")].concat());
        let reply = pg.exec_protocol(request).unwrap();
        assert_eq!(types(&reply), "12TDCZ", "{version}");
    });
}
