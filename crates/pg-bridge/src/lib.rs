//! pg-bridge (placeholder while the crate is written).
