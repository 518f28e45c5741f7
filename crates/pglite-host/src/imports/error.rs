//! What host functions raise to unwind the guest, as errors through wasm frames: a longjmp
//! (caught by the nearest `invoke_*`), the guest ending itself (an exit, which is not a trap)
//! and an abort (the instance is dead). Mapping them to the crate's [`crate::Error`] is the
//! instance's business, not this module's.

use std::fmt;

/// Raised by `_emscripten_throw_longjmp`; caught by the nearest `invoke_*` on the stack.
#[derive(Debug)]
pub(crate) struct LongJmp;

impl fmt::Display for LongJmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("longjmp")
    }
}

impl std::error::Error for LongJmp {}

/// The guest ended itself: `exit`, `proc_exit` or `emscripten_force_exit`. Not a trap.
#[derive(Debug)]
pub(crate) struct GuestExit(pub(crate) i32);

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest exited with code {}", self.0)
    }
}

impl std::error::Error for GuestExit {}

/// The guest aborted (`abort()`, a failed assertion, PANIC): the instance is dead.
#[derive(Debug)]
pub(crate) struct Abort(pub(crate) String);

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest aborted: {}", self.0)
    }
}

impl std::error::Error for Abort {}
