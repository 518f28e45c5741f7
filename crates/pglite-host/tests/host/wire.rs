//! What the host passes through for whoever speaks to it on behalf of clients: the version
//! each release runs, COPY in both directions and notifications, which PGlite 0.5+ carry
//! over the wire natively (the bridge decides whether clients may use them).

use crate::support::{messages, on_each_release, query, scalar};

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether PGlite `version` runs its backend one message at a time (0.5 on).
fn single_user_line(version: &str) -> bool {
    pglite_host::pg_major(version).is_some_and(|major| major >= 18)
}

#[test]
fn each_release_runs_its_postgresql_version() {
    on_each_release(|version, pg| {
        let expected = match version {
            "0.2.17" => "PostgreSQL 16.4",
            "0.3.16" => "PostgreSQL 17.5",
            "0.5.17" => "PostgreSQL 18.7",
            "0.6.1" => "PostgreSQL 19.0",
            other => panic!("no expectation for {other}"),
        };
        let text = scalar(pg, "SELECT version()");
        assert!(text.starts_with(&format!("{expected} ")), "{version}: {text}");
        assert_eq!(scalar(pg, "SHOW server_version_num")[..2], expected[11..13]);
    });
}

#[test]
fn copy_in_and_out_and_notifications_pass_through_on_single_user_lines() {
    on_each_release(|version, pg| {
        if !single_user_line(version) {
            return;
        }
        scalar(pg, "CREATE TABLE copied(x int, t text); SELECT 1");
        // COPY FROM STDIN with its data and end in the same request.
        let mut req = frame(b'Q', b"COPY copied FROM STDIN\0");
        req.extend(frame(b'd', b"1\tone\n2\ttwo\n"));
        req.extend(frame(b'd', b"3\tthree\n"));
        req.extend(frame(b'c', b""));
        let reply = pg.exec_protocol(req).unwrap();
        let types: Vec<u8> = messages(&reply).iter().map(|m| m.0).collect();
        assert_eq!(types, b"GCZ", "{version}");
        assert_eq!(messages(&reply)[1].1, b"COPY 3\0");
        assert_eq!(scalar(pg, "SELECT string_agg(t, ',' ORDER BY x) FROM copied"), "one,two,three");

        // A CopyFail ends it with an error and the session goes on.
        let mut req = frame(b'Q', b"COPY copied FROM STDIN\0");
        req.extend(frame(b'd', b"4\tfour\n"));
        req.extend(frame(b'f', b"client gave up\0"));
        let reply = pg.exec_protocol(req).unwrap();
        let types: Vec<u8> = messages(&reply).iter().map(|m| m.0).collect();
        assert_eq!(types, b"GEZ", "{version}");
        assert_eq!(scalar(pg, "SELECT count(*) FROM copied"), "3");

        let reply = pg.exec_protocol(query("COPY (SELECT x FROM copied ORDER BY x) TO STDOUT")).unwrap();
        let msgs = messages(&reply);
        let types: Vec<u8> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(types, b"HdddcCZ", "{version}");
        let data: Vec<u8> = msgs.iter().filter(|m| m.0 == b'd').flat_map(|m| m.1.clone()).collect();
        assert_eq!(data, b"1\n2\n3\n");

        // Delivered when the transaction that sent it commits, to a listener.
        let reply = pg.exec_protocol(query("LISTEN ch; NOTIFY ch, 'hello'")).unwrap();
        let msgs = messages(&reply);
        let notification = msgs.iter().find(|m| m.0 == b'A').expect("a notification");
        assert!(notification.1.ends_with(b"ch\0hello\0"), "{:?}", notification.1);
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
        let reply = pg.exec_protocol(query("UNLISTEN ch; NOTIFY ch, 'unheard'")).unwrap();
        assert!(messages(&reply).iter().all(|m| m.0 != b'A'), "{version}");
    });
}
