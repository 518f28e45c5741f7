//! Unit tests for `classify`.
