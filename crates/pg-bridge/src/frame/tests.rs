//! Unit tests for `frame`.
