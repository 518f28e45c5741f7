//! Randomised robustness checks, run on every `cargo test`: the framer, the structural decoder
//! and the lexer/classifier take arbitrary bytes without panicking, without allocating what a
//! frame advertises, and never classify a string hiding a keyword as that keyword. Seeds are
//! fixed, so a failure reproduces.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::classify::{Verdict, classify};
use crate::frame::{split_frame, split_startup};
use crate::lexer::LexOptions;
use crate::message::decode;

/// Bytes biased towards the protocol's and SQL's interesting values.
fn noise(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"\0\x01\xff\x7f$'\"/*-\\;EeUu&QPBDESHXCcdfp 0123456789COPYLISTENNOTIFYcopy";
    (0..len)
        .map(|_| if rng.random_bool(0.7) { ALPHABET[rng.random_range(0..ALPHABET.len())] } else { rng.random() })
        .collect()
}

#[test]
fn framer_and_decoder_take_any_bytes() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..64);
        let bytes = noise(&mut rng, len);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 20) {
            let _ = decode(frame.tag(), frame.body());
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = split_startup(&mut buf);
        // Any tag with any body decodes to a message or an error, never a panic.
        let _ = decode(bytes.first().copied().unwrap_or(b'Q'), bytes.get(1..).unwrap_or_default());
    }
}

#[test]
fn lexer_takes_any_bytes_and_strings_never_hide_a_match() {
    let mut rng = StdRng::seed_from_u64(0x1e4e);
    for _ in 0..20_000 {
        let len = rng.random_range(0..80);
        let sql = noise(&mut rng, len);
        let _ = classify(&sql, LexOptions::default());
        // The same noise inside a string literal, after a harmless statement, never refuses.
        let quoted: Vec<u8> = sql.iter().filter(|&&b| b != b'\'' && b != 0 && b != b'\\').copied().collect();
        let mut wrapped = b"SELECT '".to_vec();
        wrapped.extend_from_slice(&quoted);
        wrapped.extend_from_slice(b"'");
        assert!(
            matches!(classify(&wrapped, LexOptions::default()), Verdict::Allow { .. }),
            "{:?}",
            String::from_utf8_lossy(&wrapped)
        );
    }
}
