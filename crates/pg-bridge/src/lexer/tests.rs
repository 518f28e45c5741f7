//! Unit tests for `lexer`.
