//! The workspace's PostgreSQL wire codec, sans I/O: every message the bridge, the facade and
//! the upstream backend read or write goes through here, so a framing fix is made once.
//!
//! - `frame`: splitting bytes into frames and the size limits, before anything is decoded.
//! - `frontend`: frontend messages decoded structurally (borrowing, never over-reading) and
//!   built (the few the bridge rewrites or sends itself).
//! - `backend`: backend messages read (errors, parameter status, rows, ready status) and
//!   built (the bridge's own replies).
//!
//! Messages are built with rust-postgres' `postgres-protocol` where it has a builder (the
//! frontend side) and with pgwire's message types for the server side; parsing is done here,
//! on borrowed frames, because the bridge reads every backend message on the hot path.

pub mod backend;
pub mod frame;
pub mod frontend;
