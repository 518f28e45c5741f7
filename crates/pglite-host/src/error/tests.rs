//! How wasmtime's errors become the crate's: an exit is not a trap, and a trap keeps its causes
//! both as a source and in its message.

use std::error::Error as _;

use super::Error;
use crate::imports::GuestExit;

#[test]
fn a_guest_exit_is_not_a_trap() {
    let err = Error::guest(wasmtime::Error::new(GuestExit(3)));
    assert!(matches!(err, Error::GuestExit { code: 3 }), "{err}");
}

#[test]
fn a_trap_keeps_its_causes() {
    let err = Error::guest(wasmtime::Error::msg("out of bounds memory access").context("in pg_initdb"));
    assert!(matches!(err, Error::Trap { .. }), "{err}");
    assert_eq!(err.to_string(), "PostgreSQL crashed: in pg_initdb: out of bounds memory access");
    let source = err.source().expect("the wasmtime error is the source");
    assert_eq!(source.to_string(), "in pg_initdb");
    assert_eq!(source.source().map(ToString::to_string).as_deref(), Some("out of bounds memory access"));
}
