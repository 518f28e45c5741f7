//! Unit tests of `wire.rs`.

use super::{data_row, error_fields, message_len, messages, query};

#[test]
fn query_frame_round_trips() {
    let frame = query("SELECT 1");
    assert_eq!(message_len(&frame), Some(frame.len()));
    assert_eq!(messages(&frame), Some(vec![(b'Q', &b"SELECT 1\0"[..])]));
}

#[test]
fn torn_messages_are_incomplete() {
    let frame = query("SELECT 1");
    assert_eq!(messages(&frame[..frame.len() - 1]), None);
    assert_eq!(messages(&frame[..3]), None);
}

#[test]
fn data_row_reads_text_and_nulls() {
    let body = [&[0, 2][..], &3i32.to_be_bytes(), b"abc", &(-1i32).to_be_bytes()].concat();
    assert_eq!(data_row(&body), Some(vec![Some("abc".to_owned()), None]));
    assert_eq!(data_row(&body[..5]), None);
}

#[test]
fn error_fields_pick_code_and_message() {
    let body = b"SERROR\0C0A000\0Mnope\0\0";
    assert_eq!(error_fields(body), ("0A000".to_owned(), "nope".to_owned()));
}
