//! The bridge's SQL lexer and command filter on arbitrary query text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pg_bridge::fuzzing::sql(data));
