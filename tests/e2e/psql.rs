//! psql through the command: meta-commands (which run catalog queries of their own), DDL and
//! DML, and `\copy` refused without breaking the session.

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

#[test]
fn copy_is_refused_and_the_session_goes_on() {
    for version in RELEASES {
        copy_is_refused_and_the_session_goes_on_on(version);
    }
}

fn copy_is_refused_and_the_session_goes_on_on(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start_release(dir.path(), version);
    let data = dir.path().join("rows.txt");
    std::fs::write(&data, "1\n2\n").unwrap();
    let script = format!(
        "CREATE TABLE c (x int);\n\\copy c FROM '{}'\n\\copy c TO stdout\nSELECT 'still here' AS alive, count(*) FROM c;\n",
        data.display()
    );
    let out = psql(dir.path(), &[], &script);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stderr.matches("0A000").count(),
        2,
        "{version}: both COPYs must be refused with 0A000\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("still here |     0"), "{version}: the session must still work\n{stdout}\n{stderr}");
    assert!(!stderr.contains("arrived from server"), "protocol noise:\n{stderr}");
}
