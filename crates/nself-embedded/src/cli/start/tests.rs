//! Unit tests of `cli/start.rs`.

use super::{shell_quote, url_encode};

#[test]
fn quoting_leaves_plain_paths_alone() {
    assert_eq!(shell_quote("/tmp/x.y-1"), "/tmp/x.y-1");
    assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
    assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
}

#[test]
fn url_encoding_keeps_slashes() {
    assert_eq!(url_encode("/tmp/a b&c"), "/tmp/a%20b%26c");
}
