//! The facade (placeholder).
