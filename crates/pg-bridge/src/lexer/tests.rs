//! Unit tests for statement splitting.

use super::{LexOptions, statements};

fn split(sql: &str) -> Vec<&str> {
    statements(sql.as_bytes(), LexOptions::default()).iter().map(|s| sql[s.span.clone()].trim()).collect()
}

#[test]
fn statements_split_on_semicolons_outside_quotes() {
    assert_eq!(split("SELECT 1; SELECT 2"), ["SELECT 1", "SELECT 2"]);
    assert_eq!(split("SELECT ';'; SELECT \";\""), ["SELECT ';'", "SELECT \";\""]);
    assert_eq!(split("SELECT $$;$$; SELECT $a$ $$; $a$"), ["SELECT $$;$$", "SELECT $a$ $$; $a$"]);
    assert_eq!(split("SELECT 1 -- ;\n; /* ; /* ; */ ; */ SELECT 2"), ["SELECT 1 -- ;", "/* ; /* ; */ ; */ SELECT 2"]);
    assert_eq!(split("SELECT 1;"), ["SELECT 1"]);
    assert_eq!(split(";;SELECT 1"), ["", "", "SELECT 1"]);
}

#[test]
fn unterminated_constructs_run_to_the_end() {
    assert_eq!(split("SELECT 'abc; COPY"), ["SELECT 'abc; COPY"]);
    assert_eq!(split("SELECT $x$ abc; COPY"), ["SELECT $x$ abc; COPY"]);
    assert_eq!(split("SELECT /* abc; COPY"), ["SELECT /* abc; COPY"]);
    assert_eq!(split("SELECT E'\\"), ["SELECT E'\\"]);
}

#[test]
fn non_ascii_bytes_are_identifier_letters() {
    let sql = "SELECT \u{e9}t\u{e9}$x; SELECT 2".as_bytes();
    assert_eq!(statements(sql, LexOptions::default()).len(), 2);
    let latin1: &[u8] = b"SELECT '\xe9'; COPY t TO STDOUT";
    assert_eq!(statements(latin1, LexOptions::default()).len(), 2);
}
