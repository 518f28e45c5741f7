//! Integration tests for pglite-fetch: one test binary, one module per concern.
//!
//! Everything is served from 127.0.0.1 with synthetic files and pins injected through
//! `ensure_with_pins` and `verify_with_pins`; only `real` touches the npm registry, and only on
//! CI or with `RUN_SLOW_TESTS=1`.

mod cache;
mod concurrency;
mod integrity;
mod npm;
mod real;
mod repair;
mod sources;
mod support;
