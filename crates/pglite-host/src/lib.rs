//! pglite-host (placeholder while the crate is written).
