//! Unit tests for structural decoding: every malformed body is an error, never a panic.

use super::{FrontendMessage, Part, build, decode};

#[test]
fn well_formed_messages_decode() {
    assert_eq!(decode(b'Q', b"SELECT 1\0"), Ok(FrontendMessage::Query { sql: b"SELECT 1" }));
    let parse = decode(b'P', b"s0\0SELECT $1\0\0\x01\0\0\0\x17").unwrap();
    assert_eq!(parse, FrontendMessage::Parse { statement: b"s0", sql: b"SELECT $1", param_types: b"\0\x01\0\0\0\x17" });
    let bind = decode(b'B', b"p\0s0\0\0\0\0\x02\0\0\0\x01a\xff\xff\xff\xff\0\0").unwrap();
    assert!(matches!(bind, FrontendMessage::Bind { portal: b"p", statement: b"s0", .. }));
    assert_eq!(decode(b'E', b"\0\0\0\0\0"), Ok(FrontendMessage::Execute { portal: b"", max_rows: 0 }));
    assert_eq!(decode(b'D', b"Sx\0"), Ok(FrontendMessage::Describe { kind: b'S', name: b"x" }));
    assert_eq!(decode(b'S', b""), Ok(FrontendMessage::Sync));
}

#[test]
fn malformed_messages_are_errors() {
    let cases: &[(u8, &[u8])] = &[
        (b'Q', b"SELECT 1"),                           // no NUL
        (b'Q', b"A\0JUNK"),                            // junk after the string
        (b'P', b""),                                   // empty Parse (panics pgwire 0.42)
        (b'P', b"s\0q\0\0\x05\0\0"),                   // more type OIDs than bytes
        (b'P', b"s\0q\0\xff\xff"),                     // negative count
        (b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0"),     // value longer than the frame
        (b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"), // length -2
        (b'D', b"Xname\0"),                            // bad kind
        (b'E', b"\0\0\0"),                             // short row count
        (b'S', b"x"),                                  // Sync with a body
        (b'z', b""),                                   // unknown type
    ];
    for (tag, body) in cases {
        assert!(decode(*tag, body).is_err(), "{} {:?}", tag.escape_ascii(), body.escape_ascii());
    }
}

#[test]
fn decoding_every_prefix_never_panics() {
    let bodies: &[(u8, &[u8])] = &[
        (b'B', b"p\0s0\0\0\x01\0\x01\0\x02\0\0\0\x01a\xff\xff\xff\xff\0\x01\0\x01"),
        (b'P', b"s0\0SELECT $1\0\0\x01\0\0\0\x17"),
        (b'F', b"\0\0\0\x01\0\x01\0\x01\0\x01\0\0\0\x02ab\0\x01"),
    ];
    for (tag, body) in bodies {
        assert!(decode(*tag, body).is_ok());
        for end in 0..body.len() {
            assert!(decode(*tag, &body[..end]).is_err());
        }
    }
}

#[test]
fn build_round_trips() {
    let frame = build(b'P', &[Part::Cstr(b"_pgb1_s0"), Part::Cstr(b"SELECT 1"), Part::Raw(&[0, 0])]);
    assert_eq!(
        decode(frame[0], &frame[5..]).unwrap(),
        FrontendMessage::Parse { statement: b"_pgb1_s0", sql: b"SELECT 1", param_types: &[0, 0] }
    );
    assert_eq!(u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize, frame.len() - 1);
}
