//! The bridge's framer and message decoder on arbitrary client bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pg_bridge::fuzzing::frames(data));
