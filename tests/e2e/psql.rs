//! psql through the command: meta-commands (which run catalog queries of their own), DDL and
//! DML (`\copy` is in `copy.rs`).

use crate::support::{RELEASES, Server, os_user, psql, text};

#[test]
fn meta_commands_ddl_and_dml() {
    for version in RELEASES {
        meta_commands_ddl_and_dml_on(version);
    }
}

fn meta_commands_ddl_and_dml_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_release(dir.path(), version);
    let script = r"
CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL DEFAULT 'x', tags text[]);
COMMENT ON COLUMN t.name IS 'display name';
CREATE INDEX t_name ON t (name);
CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i + 1';
INSERT INTO t (id, name, tags) VALUES (1, 'one', '{a,b}'), (2, 'two', NULL);
UPDATE t SET name = 'TWO' WHERE id = 2;
DELETE FROM t WHERE id = 1;
SELECT id, name, add_one(id) AS next FROM t ORDER BY id;
\conninfo
\d
\d+ t
\dt
\df add_one
";
    let out = psql(dir.path(), &["-v", "ON_ERROR_STOP=1"], script);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "psql failed\n{stdout}\n{stderr}");
    let owner = format!("public | t    | table | {}", os_user());
    for expected in [
        "CREATE TABLE",
        "INSERT 0 2",
        "UPDATE 1",
        "DELETE 1",
        " 2 | TWO  |    3",
        // \conninfo names the socket directory (a sentence before psql 18, a table since).
        &dir.path().display().to_string(),
        &owner,
        "display name",
        "\"t_pkey\" PRIMARY KEY, btree (id)",
        "\"t_name\" btree (name)",
        "name   | text    |           | not null | 'x'::text",
        "add_one | integer          | i integer",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}\n{stderr}");
    }
    assert!(!stderr.contains("arrived from server"), "protocol noise:\n{stderr}");
    drop(server);
}
