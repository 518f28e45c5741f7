//! pglite-fetch (placeholder while the crate is written).
