//! Unit tests for `message`.
