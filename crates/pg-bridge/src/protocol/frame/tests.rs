//! Unit tests for frame splitting and its limits.

use bytes::BytesMut;

use super::{FrameError, MAX_MESSAGE_LEN, frames, split_frame, split_startup};

#[test]
fn a_frame_is_split_only_when_complete() {
    let mut buf = BytesMut::from(&b"Q\0\0\0\x09SELE"[..]);
    assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN), Ok(None));
    buf.extend_from_slice(b"\0S\0\0\0\x04");
    let frame = split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
    assert_eq!((frame.tag(), frame.body()), (b'Q', &b"SELE\0"[..]));
    let sync = split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
    assert_eq!((sync.tag(), sync.body()), (b'S', &b""[..]));
    assert!(buf.is_empty());
}

#[test]
fn short_and_huge_lengths_are_errors_without_buffering() {
    for len in [0u32, 1, 3] {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, len as u8][..]);
        assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN), Err(FrameError::TooShort { len }));
    }
    for len in [0x7fff_ffffu32, 0xffff_ffff, MAX_MESSAGE_LEN as u32] {
        let mut buf = BytesMut::from(&[b'Q'][..]);
        buf.extend_from_slice(&len.to_be_bytes());
        let err = split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
        assert!(buf.capacity() < 1024, "must not allocate the advertised size");
    }
    // Exactly at the limit is fine (and incomplete).
    let mut buf = BytesMut::from(&[b'Q'][..]);
    buf.extend_from_slice(&(MAX_MESSAGE_LEN as u32 - 1).to_be_bytes());
    assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN), Ok(None));
    assert!(buf.capacity() < 1024);
}

#[test]
fn startup_packets_have_their_own_limits() {
    let mut buf = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x2f"[..]);
    assert_eq!(split_startup(&mut buf).unwrap().unwrap().as_ref(), b"\x04\xd2\x16\x2f");
    let mut buf = BytesMut::from(&b"\0\0\0\x07abc"[..]);
    assert_eq!(split_startup(&mut buf), Err(FrameError::TooShort { len: 7 }));
    let mut buf = BytesMut::from(&10_001u32.to_be_bytes()[..]);
    assert!(matches!(split_startup(&mut buf), Err(FrameError::TooLarge { .. })));
    // Direct TLS: a ClientHello's first bytes read as an absurd length.
    let mut buf = BytesMut::from(&b"\x16\x03\x01\x02\x00"[..]);
    assert!(matches!(split_startup(&mut buf), Err(FrameError::TooLarge { .. })));
}

#[test]
fn frames_reports_a_truncated_tail() {
    let out = b"1\0\0\0\x04Z\0\0\0\x05IC\0\0";
    let frames: Vec<_> = frames(out).collect();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0], Ok((b'1', &b"1\0\0\0\x04"[..])));
    assert_eq!(frames[1], Ok((b'Z', &b"Z\0\0\0\x05I"[..])));
    assert!(frames[2].is_err());
}
