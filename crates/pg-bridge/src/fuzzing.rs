//! Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`) and for the
//! randomised robustness tests: arbitrary bytes in, a panic only on a real defect.
#![cfg_attr(not(fuzzing), allow(unreachable_pub, reason = "public only to the fuzz targets"))]

use bytes::BytesMut;

use crate::classify::{Verdict, classify};
use crate::lexer::LexOptions;
use crate::protocol::frame::{split_frame, split_startup};
use crate::protocol::frontend::decode;

/// The framer and the structural decoder take any bytes: frames split off (never allocating
/// what a length field advertises) decode to a message or an error, never a panic.
pub fn frames(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 20) {
        let _ = decode(frame.tag(), frame.body());
    }
    let mut buf = BytesMut::from(bytes);
    let _ = split_startup(&mut buf);
    // Any tag with any body.
    let _ = decode(bytes.first().copied().unwrap_or(b'Q'), bytes.get(1..).unwrap_or_default());
}

/// The lexer and classifier take any bytes, and text inside a string literal is never taken
/// for a refused command.
pub fn sql(bytes: &[u8]) {
    for standard_strings in [true, false] {
        let _ = classify(bytes, LexOptions { standard_strings }, crate::Refuse::all());
    }
    let quoted: Vec<u8> = bytes.iter().filter(|&&b| b != b'\'' && b != 0 && b != b'\\').copied().collect();
    let mut wrapped = b"SELECT '".to_vec();
    wrapped.extend_from_slice(&quoted);
    wrapped.extend_from_slice(b"'");
    assert!(
        matches!(classify(&wrapped, LexOptions::default(), crate::Refuse::all()), Verdict::Allow { .. }),
        "refused a string literal: {:?}",
        String::from_utf8_lossy(&wrapped)
    );
}
