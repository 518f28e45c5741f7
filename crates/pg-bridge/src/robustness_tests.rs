//! Randomised robustness checks, run on every `cargo test`: the framer, the structural decoder
//! and the lexer/classifier take arbitrary bytes without panicking, without allocating what a
//! frame advertises, and never classify a string hiding a keyword as that keyword. Seeds are
//! fixed, so a failure reproduces. The same checks are the fuzz targets in `fuzz/`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fuzzing;

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
        fuzzing::frames(&noise(&mut rng, len));
    }
}

#[test]
fn lexer_takes_any_bytes_and_strings_never_hide_a_match() {
    let mut rng = StdRng::seed_from_u64(0x1e4e);
    for _ in 0..20_000 {
        let len = rng.random_range(0..80);
        fuzzing::sql(&noise(&mut rng, len));
    }
}
