//! Integration tests for pglite-fetch (one test binary; modules per concern).
