//! End-to-end tests through the real `nself-embedded` command (placeholder).
