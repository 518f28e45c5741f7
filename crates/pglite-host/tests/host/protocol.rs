//! The transfer itself: extended protocol, limits, and recovery from a dead instance.

use pglite_host::Error;

use crate::support::{Outcome, messages, outcome, query, run, scalar, start};

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn extended_protocol_pipeline_in_one_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
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
}

#[test]
fn oversize_request_is_refused_and_the_instance_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    let sql = format!("SELECT length('{}')", "y".repeat(16 * 1024 * 1024));
    let err = pg.exec_protocol(query(&sql)).unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
    assert_eq!(scalar(&pg, "SELECT 'fine'"), "fine");
    // Just under the cap still works.
    let sql = format!("SELECT length('{}')", "y".repeat(14 * 1024 * 1024));
    assert_eq!(scalar(&pg, &sql), (14 * 1024 * 1024).to_string());
}

#[test]
fn reply_overflow_restarts_the_instance_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    scalar(&pg, "CREATE TABLE survivor(x int); INSERT INTO survivor VALUES (7); SELECT 1");
    let err = pg.exec_protocol(query("SELECT repeat('z', 20 * 1024 * 1024)")).unwrap_err();
    assert!(matches!(err, Error::Restarted { .. }), "{err}");
    assert!(pg.healthy());
    assert_eq!(scalar(&pg, "SELECT x FROM survivor"), "7");
}

#[test]
fn malformed_message_gets_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    // The length field says 13, one short of the NUL-terminated text.
    let reply = pg.exec_protocol(b"Q\0\0\0\x0dSELECT 1;".to_vec()).unwrap();
    assert_eq!(outcome(&reply), Outcome::Error("08P01".into()));
    assert_eq!(run(&pg, "SELECT 2"), Outcome::Rows(vec![vec![Some("2".into())]]));
}

#[test]
fn a_trap_restarts_the_instance_and_only_that_request_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    scalar(&pg, "CREATE TABLE kept(x int); INSERT INTO kept VALUES (1); SELECT 1");
    // An SSLRequest is a startup packet: its leading 0 byte traps the backend. Bridges never
    // send one; the host must survive it anyway.
    let result = pg.exec_protocol(b"\0\0\0\x08\x04\xd2\x16\x2f".to_vec());
    assert!(matches!(result, Err(Error::Restarted { .. })), "{result:?}");
    assert!(pg.healthy());
    assert_eq!(scalar(&pg, "SELECT x FROM kept"), "1");
}
