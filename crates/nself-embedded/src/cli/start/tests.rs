//! Unit tests of `cli/start.rs`.

use super::{shell_quote, url_encode};

#[test]
fn quoting_leaves_plain_paths_alone() {
    assert_eq!(shell_quote("/srv/x.y-1"), "/srv/x.y-1");
    assert_eq!(shell_quote("/srv/a b"), "'/srv/a b'");
    assert_eq!(shell_quote("/srv/it's"), r"'/srv/it'\''s'");
}

#[test]
fn url_encoding_keeps_slashes() {
    assert_eq!(url_encode("/srv/a b&c"), "/srv/a%20b%26c");
}
