//! Unit tests for reading backend messages and building the bridge's own.

use super::{Replies, Severity, TxStatus, data_row, field, first_error, parameter_status, ready_status, text_rows};
use crate::protocol::frame::frames;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut res = vec![tag];
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(body);
    res
}

#[test]
fn data_rows_read_text_and_nulls_and_reject_torn_bodies() {
    let row = frame(b'D', &[&[0, 2][..], &3i32.to_be_bytes(), b"abc", &(-1i32).to_be_bytes()].concat());
    assert_eq!(data_row(&row), Some(vec![Some(&b"abc"[..]), None]));
    assert_eq!(data_row(&row[..9]), None);
    // A value longer than the body, and bytes after the last value.
    assert_eq!(data_row(&frame(b'D', &[&[0, 1][..], &9i32.to_be_bytes(), b"ab"].concat())), None);
    assert_eq!(data_row(&frame(b'D', &[&[0, 0][..], b"x"].concat())), None);
    let output = [row.clone(), frame(b'C', b"SELECT 1\0"), row].concat();
    assert_eq!(text_rows(&output), vec![vec![Some("abc".to_owned()), None]; 2]);
}

#[test]
fn error_fields_are_read_by_code() {
    let error = frame(b'E', b"SERROR\0C0A000\0Mnope\0P7\0\0");
    assert_eq!(field(&error, b'C').as_deref(), Some("0A000"));
    assert_eq!(field(&error, b'P').as_deref(), Some("7"));
    assert_eq!(field(&error, b'H'), None);
    let output = [frame(b'N', b"SNOTICE\0C00000\0Mhi\0\0"), error, frame(b'Z', b"I")].concat();
    assert_eq!(first_error(&output), Some(("0A000".to_owned(), "nope".to_owned())));
}

#[test]
fn parameter_status_and_ready_status() {
    let status = frame(b'S', b"TimeZone\0Asia/Tokyo\0");
    assert_eq!(parameter_status(&status), Some(("TimeZone".to_owned(), "Asia/Tokyo".to_owned())));
    assert_eq!(ready_status(&frame(b'Z', b"T")), Some(TxStatus::InTransaction));
    assert_eq!(ready_status(&frame(b'Z', b"?")), None);
}

#[test]
fn built_replies_are_well_formed_frames() {
    let mut replies = Replies::new();
    replies.error_with_hint(Severity::Fatal, "3D000", "database \"x\" does not exist", Some("try y")).unwrap();
    replies.ready(TxStatus::Idle).unwrap();
    let bytes = replies.into_bytes();
    let tags: Vec<u8> = frames(&bytes).map(|frame| frame.unwrap().0).collect();
    assert_eq!(tags, b"EZ");
    let (_, error) = frames(&bytes).next().unwrap().unwrap();
    assert_eq!(field(error, b'S').as_deref(), Some("FATAL"));
    assert_eq!(field(error, b'H').as_deref(), Some("try y"));
}
