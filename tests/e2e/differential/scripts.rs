//! Scripted sessions, simple protocol: multi-statement queries, empty queries, errors and
//! their fields, transaction states, savepoints, notices, session settings and the
//! `ParameterStatus` they cause, startup parameters, and what the bridge refuses by design
//! (COPY, LISTEN/NOTIFY), marked as documented differences. Each test runs its script on
//! every pinned release against native PostgreSQL of the same major.

use super::wire::{Msg, copy_data, copy_done, copy_fail, q, q_bytes};
use super::{Script, check};

#[test]
fn simple_multi_statement() {
    check(
        Script::new("simple_multi_statement")
            .query(
                "SELECT 1 AS a, 'x'::text AS b, NULL::int AS n, true AS t, 1.50::numeric(4,2) AS num, \
                 '{1,2}'::int[] AS arr, 'x'::varchar(10) AS vc",
            )
            .query("SELECT 1; SELECT 2 AS two; VALUES (1, 'a'), (2, 'b')")
            .query(
                "CREATE TABLE diff_multi (id int PRIMARY KEY, v text); \
                 INSERT INTO diff_multi VALUES (1, 'a'), (2, 'b'); \
                 UPDATE diff_multi SET v = 'c' WHERE id = 2; \
                 DELETE FROM diff_multi WHERE id = 1; \
                 SELECT * FROM diff_multi; \
                 DROP TABLE diff_multi",
            )
            .query("SELECT * FROM generate_series(1, 0) AS none")
            .query("CREATE TABLE diff_multi2 AS SELECT 1 AS x; SELECT x INTO diff_multi3 FROM diff_multi2")
            .query("DROP TABLE diff_multi2, diff_multi3")
            .query("SHOW server_encoding; SHOW client_encoding; SHOW lc_collate"),
    );
}

#[test]
fn simple_empty_queries() {
    check(
        Script::new("simple_empty_queries")
            .query("")
            .query(";")
            .query("  -- only a comment\n")
            .query("SELECT 1;;")
            .query("; ;SELECT 2"),
    );
}

#[test]
fn simple_errors() {
    check(
        Script::new("simple_errors")
            .query("SELECT 1; SELECT 1/0; SELECT 3")
            .query("SELEC 1")
            .query("SELECT nosuchcolumn FROM pg_class")
            .query("SELECT 'unterminated")
            .query("SELECT * FROM diff_no_such_table")
            .query("SELECT 'abc'::int")
            .query("SELECT 1 AS after_errors"),
    );
}

#[test]
fn simple_error_fields() {
    check(
        Script::new("simple_error_fields")
            .query("CREATE TABLE diff_fields (id int PRIMARY KEY, v text NOT NULL CHECK (v <> ''))")
            .query("INSERT INTO diff_fields VALUES (1, 'a')")
            .query("INSERT INTO diff_fields VALUES (1, 'b')")
            .query("INSERT INTO diff_fields VALUES (2, NULL)")
            .query("INSERT INTO diff_fields VALUES (3, '')")
            .query("CREATE FUNCTION diff_fail() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1/0; END $$")
            .query("SELECT diff_fail()")
            .query(
                "CREATE FUNCTION diff_internal() RETURNS void LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM nosuchcolumn FROM pg_class; END $$",
            )
            .query("SELECT diff_internal()")
            .query(
                "DO $$ BEGIN RAISE EXCEPTION 'boom %', 1 USING ERRCODE = '22012', DETAIL = 'the detail', \
                 HINT = 'the hint', SCHEMA = 's', TABLE = 't', COLUMN = 'c', DATATYPE = 'd', CONSTRAINT = 'n'; END $$",
            )
            .query("DROP TABLE diff_fields; DROP FUNCTION diff_fail(); DROP FUNCTION diff_internal()"),
    );
}

#[test]
fn simple_transaction_states() {
    check(
        Script::new("simple_transaction_states")
            .query("BEGIN")
            .query("SELECT 1")
            .query("COMMIT")
            .query("BEGIN; SELECT 1")
            .query("SELECT 1/0")
            .query("SELECT 1")
            .query("COMMIT")
            .query("COMMIT")
            .query("ROLLBACK")
            .query("BEGIN")
            .query("BEGIN")
            .query("ROLLBACK")
            .query("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY; SHOW transaction_isolation")
            .query("CREATE TABLE diff_read_only (x int)")
            .query("ROLLBACK")
            .query("SELECT 1; BEGIN; SELECT 2")
            .query("COMMIT; SELECT 1/0")
            .query("BEGIN; SELECT 1/0; SELECT 3")
            .query("ROLLBACK; SELECT 4")
            .query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .query("SELECT 1; COMMIT; SELECT 2"),
    );
}

#[test]
fn simple_savepoints() {
    check(
        Script::new("simple_savepoints")
            .query("SAVEPOINT outside")
            .query("BEGIN")
            .query("SAVEPOINT a")
            .query("SELECT 1/0")
            .query("ROLLBACK TO SAVEPOINT a")
            .query("SELECT 2")
            .query("SAVEPOINT b; RELEASE SAVEPOINT b")
            .query("RELEASE SAVEPOINT nosuch")
            .query("ROLLBACK TO a")
            .query("SELECT 3")
            .query("COMMIT"),
    );
}

#[test]
fn rolled_back_writes() {
    check(
        Script::new("rolled_back_writes")
            .query("CREATE TABLE diff_rollback (x int)")
            .query("BEGIN; INSERT INTO diff_rollback VALUES (1)")
            .query("ROLLBACK")
            .query("BEGIN")
            .query("INSERT INTO diff_rollback VALUES (2)")
            .query("SELECT 1/0")
            .query("ROLLBACK")
            .query("INSERT INTO diff_rollback VALUES (3); SELECT 1/0")
            .query("SELECT count(*) FROM diff_rollback")
            .query("DROP TABLE diff_rollback"),
    );
}

#[test]
fn notices() {
    check(
        Script::new("notices")
            .query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
            .query("DO $$ BEGIN RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'a hint'; END $$")
            .query("DO $$ BEGIN RAISE INFO 'info'; RAISE LOG 'log'; RAISE DEBUG 'debug'; END $$")
            .query("DROP TABLE IF EXISTS diff_no_such_table")
            .query("SET client_min_messages = warning")
            .query("DO $$ BEGIN RAISE NOTICE 'hidden'; RAISE WARNING 'shown'; END $$")
            .query("RESET client_min_messages")
            .query("SELECT 1; DO $$ BEGIN RAISE NOTICE 'between'; END $$; SELECT 2"),
    );
}

#[test]
fn discard_all_inside_a_transaction() {
    check(
        Script::new("discard_all_inside_a_transaction")
            .query("BEGIN")
            .query("DISCARD ALL")
            .query("ROLLBACK")
            .query("SELECT 1; DISCARD ALL")
            .query("DISCARD ALL")
            .query("SHOW search_path; SHOW enable_seqscan"),
    );
}

#[test]
fn prepare_transaction() {
    check(
        Script::new("prepare_transaction")
            .query("BEGIN")
            .query("PREPARE TRANSACTION 'diff_x'")
            .query("SELECT 1")
            .query("COMMIT PREPARED 'diff_x'")
            .query("SHOW max_prepared_transactions"),
    );
}

#[test]
fn reset_all_and_discard_all() {
    check(
        Script::new("reset_all_and_discard_all")
            .query("SHOW search_path; SHOW enable_seqscan")
            .query("SET search_path = foo; SET enable_seqscan = off; SET application_name = 'changed'; SET DateStyle = 'German'")
            .query("RESET ALL")
            .query("SHOW search_path; SHOW enable_seqscan; SHOW application_name; SHOW DateStyle")
            .query("SET search_path = foo; SET enable_seqscan = off; SET TimeZone = 'Asia/Tokyo'")
            .query("DISCARD ALL")
            .query("SHOW search_path; SHOW enable_seqscan; SHOW TimeZone")
            .query("SET search_path = foo")
            .query("RESET search_path")
            .query("SHOW search_path")
            .query("SET enable_seqscan TO DEFAULT; SHOW enable_seqscan"),
    );
}

/// PostgreSQL 19 no longer accepts `standard_conforming_strings = off`.
#[test]
fn standard_conforming_strings() {
    const OFF_REFUSED: &str = "ErrorResponse S=\"ERROR\" V=\"ERROR\" C=\"0A000\" \
                               M=\"non-standard string literals are not supported\"";
    const OFF_WHAT: &str = "standard_conforming_strings = off is refused";
    check(
        Script::new("standard_conforming_strings")
            .changed_in(19, [q("SET standard_conforming_strings = off")], OFF_WHAT, &[OFF_REFUSED, "ReadyForQuery I"])
            .changed_in(
                19,
                [q("SELECT 'a\\b'")],
                "backslashes in literals stay ordinary characters",
                &[
                    "RowDescription \"?column?\"(table=0 col=0 type=25 len=-1 mod=-1 fmt=0)",
                    "DataRow \"a\\\\b\"",
                    "CommandComplete \"SELECT 1\"",
                    "ReadyForQuery I",
                ],
            )
            .changed_in(
                19,
                [q("SET standard_conforming_strings = on")],
                "the setting never changed, so is not reported",
                &["CommandComplete \"SET\"", "ReadyForQuery I"],
            )
            .query("SHOW standard_conforming_strings"),
    );
}

#[test]
fn session_settings_and_parameter_status() {
    check(
        Script::new("session_settings_and_parameter_status")
            .query("SET DateStyle = 'German, DMY'")
            .query("SET TimeZone = 'Asia/Tokyo'")
            .query("SET application_name = 'differential'")
            .query("SET IntervalStyle = 'postgres_verbose'")
            .query("SELECT '2024-01-02 03:04:05+00'::timestamptz, '2024-01-02'::date, interval '1 day 2 hours', 'a\\b'")
            .query(
                "SET DateStyle TO DEFAULT; SET TimeZone TO DEFAULT; \
                 SET IntervalStyle TO DEFAULT; SET application_name TO DEFAULT",
            )
            .query("SET DateStyle = 'SQL'; SET DateStyle = 'SQL'")
            .query("SET DateStyle = 'SQL'")
            .query("BEGIN; SET LOCAL TimeZone = 'UTC'; SELECT '2024-01-02 03:04:05+00'::timestamptz")
            .query("COMMIT")
            .query("BEGIN; SET TimeZone = 'Europe/Paris'")
            .query("ROLLBACK")
            .query("SET TimeZone = 'Europe/Paris'; SELECT 1/0")
            .query("SHOW TimeZone")
            .query("SELECT set_config('application_name', 'via_set_config', false)")
            .query("SET client_encoding = 'LATIN1'")
            .query("SET client_encoding = 'UTF8'")
            .query("SET work_mem = '1234kB'; SHOW work_mem")
            .query("SET default_transaction_read_only = on")
            .query("CREATE TABLE diff_read_only (x int)")
            .query("RESET default_transaction_read_only")
            .query("SET no_such_setting = 1")
            .query("SET diff.custom = 'x'; SHOW diff.custom"),
    );
}

#[test]
fn roles_and_session_authorization() {
    check(
        Script::new("roles_and_session_authorization")
            .query("CREATE ROLE diff_role")
            .query("SET ROLE diff_role")
            .query("SELECT current_user, session_user")
            .query("RESET ROLE")
            .query("SET SESSION AUTHORIZATION diff_role")
            .query("SELECT current_user, session_user")
            .query("RESET SESSION AUTHORIZATION")
            .query("DROP ROLE diff_role"),
    );
}

#[test]
fn cursors_and_sql_prepared_statements() {
    check(
        Script::new("cursors_and_sql_prepared_statements")
            .query("BEGIN")
            .query("DECLARE diff_c CURSOR FOR SELECT generate_series(1, 5) AS n")
            .query("FETCH 2 FROM diff_c; MOVE 1 IN diff_c; FETCH ALL FROM diff_c")
            .query("CLOSE diff_c")
            .query("COMMIT")
            .query("DECLARE diff_h CURSOR WITH HOLD FOR SELECT 1 AS held")
            .query("FETCH diff_h")
            .query("CLOSE ALL")
            .query("PREPARE diff_p(int) AS SELECT $1 + 1 AS next")
            .query("EXECUTE diff_p(1)")
            .query("DEALLOCATE diff_p")
            .query("EXECUTE diff_p(1)")
            .query("DEALLOCATE ALL"),
    );
}

#[test]
fn advisory_locks() {
    check(
        Script::new("advisory_locks")
            .query("SELECT pg_advisory_lock(42)")
            .query("SELECT pg_advisory_unlock(42)")
            .query("SELECT pg_advisory_unlock(42)")
            .query("SELECT pg_try_advisory_lock(7), pg_advisory_unlock_all()"),
    );
}

fn mask_version(msg: &mut Msg) {
    if msg.kind == "DataRow" {
        for part in &mut msg.parts {
            // Long values are rendered as `<N bytes fnv=… "their start"…>` (PGlite 0.5+'s is).
            if part.starts_with("\"PostgreSQL ") || (part.starts_with('<') && part.contains(" \"PostgreSQL ")) {
                *part = "<version()>".to_owned();
            }
        }
    }
}

#[test]
fn version_strings() {
    check(
        Script::new("version_strings")
            .query("SELECT version()")
            .query("SHOW server_version")
            .query("SHOW server_version_num")
            .allow(
                "the text of version()",
                "README: PGlite's build (compiler, platform) is not native PostgreSQL's; the version numbers match",
                mask_version,
            ),
    );
}

#[test]
fn startup_application_name() {
    check(
        Script::new("startup_application_name")
            .startup("application_name", "differential")
            .query("SHOW application_name"),
    );
}

#[test]
fn startup_long_application_name() {
    check(
        Script::new("startup_long_application_name")
            .startup("application_name", &"a123456789".repeat(7))
            .query("SHOW application_name"),
    );
}

#[test]
fn startup_timezone_and_datestyle() {
    check(
        Script::new("startup_timezone_and_datestyle")
            .startup("TimeZone", "Asia/Tokyo")
            .startup("DateStyle", "German, DMY")
            .query("SELECT '2024-01-02 03:04:05+00'::timestamptz, '2024-01-02'::date")
            .query("RESET ALL")
            .query("SHOW TimeZone; SHOW DateStyle"),
    );
}

#[test]
fn startup_options() {
    check(
        Script::new("startup_options")
            .startup("options", "-c search_path=foo -cwork_mem=1234kB --lock_timeout=5s")
            .query("SHOW search_path; SHOW work_mem; SHOW lock_timeout")
            .query("RESET ALL")
            .query("SHOW search_path; SHOW work_mem"),
    );
}

#[test]
fn startup_options_with_escaped_spaces() {
    check(
        Script::new("startup_options_with_escaped_spaces")
            .startup("options", "-c application_name=with\\ space -c search_path=a\\,b")
            .query("SHOW application_name; SHOW search_path"),
    );
}

#[test]
fn temporary_tables() {
    check(
        Script::new("temporary_tables")
            .query("CREATE TEMP TABLE diff_tmp (x int)")
            .query("INSERT INTO diff_tmp VALUES (1), (2); SELECT count(*) FROM diff_tmp")
            .query("BEGIN; CREATE TEMP TABLE diff_tmp_commit (x int) ON COMMIT DROP; INSERT INTO diff_tmp_commit VALUES (1)")
            .query("COMMIT")
            .query("SELECT * FROM diff_tmp_commit")
            .query("DISCARD TEMP")
            .query("SELECT * FROM diff_tmp"),
    );
}

#[test]
fn startup_client_encoding() {
    check(
        Script::new("startup_client_encoding")
            .startup("client_encoding", "LATIN1")
            .step([q_bytes(b"SELECT '\xe9t\xe9' AS v, length('\xe9t\xe9') AS n")])
            .query("SELECT 'snow: \u{2603}'")
            .query("SHOW client_encoding"),
    );
}

#[test]
fn startup_invalid_setting_value() {
    check(Script::new("startup_invalid_setting_value").startup("DateStyle", "nonsense").query("SELECT 1"));
}

#[test]
fn startup_unknown_setting() {
    check(Script::new("startup_unknown_setting").startup("diff_no_such_setting", "1").query("SELECT 1"));
}

#[test]
fn startup_custom_setting() {
    check(Script::new("startup_custom_setting").startup("diff.custom", "1").query("SHOW diff.custom"));
}

#[test]
fn startup_protocol_option() {
    check(Script::new("startup_protocol_option").startup("_pq_.diff_option", "1").query("SELECT 1"));
}

#[test]
fn startup_unknown_role() {
    check(Script::new("startup_unknown_role").user("diff_nobody").query("SELECT 1"));
}

fn drop_hint(msg: &mut Msg) {
    msg.parts.retain(|part| !part.starts_with("H="));
}

#[test]
fn startup_unknown_database() {
    check(Script::new("startup_unknown_database").database("diff_nope").query("SELECT 1").allow(
        "the HINT of FATAL 3D000",
        "README \"Connecting\": any other database gets FATAL 3D000 with a hint naming the served one",
        drop_hint,
    ));
}

#[test]
fn copy_in_and_out_as_native() {
    check(
        Script::new("copy_in_and_out_as_native")
            .query("CREATE TABLE diff_copy (id int, v text, b bytea)")
            .step([
                q("COPY diff_copy FROM STDIN"),
                copy_data(b"1\ta\t\\\\x00ff\n"),
                copy_data(b"2\tb\t\\N\n"),
                copy_done(),
            ])
            .step([
                q("COPY diff_copy (id, v) FROM STDIN (FORMAT csv, HEADER)"),
                copy_data(b"id,v\n3,\"x,\ny\"\n"),
                copy_done(),
            ])
            .step([q("COPY diff_copy (id) FROM STDIN WHERE id > 10"), copy_data(b"4\n20\n"), copy_done()])
            .step([q("COPY diff_copy FROM STDIN"), copy_fail("client gave up")])
            .step([q("COPY diff_copy FROM STDIN"), copy_data(b"5\tok\t\\N\nnot a number\tx\t\\N\n"), copy_done()])
            .step([q("COPY diff_copy FROM STDIN"), copy_data(b"6\ttoo\t\\N\textra\n"), copy_done()])
            .query("COPY diff_copy TO STDOUT")
            .query("COPY diff_copy TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)")
            .query("COPY diff_copy TO STDOUT (FORMAT binary)")
            .query("COPY (SELECT id * 10 FROM diff_copy WHERE id < 3 ORDER BY id) TO STDOUT")
            .query("COPY no_such_table FROM STDIN")
            .query("COPY diff_copy TO '/no/such/dir/file'")
            .query("SELECT 1 AS before; COPY (SELECT 2) TO STDOUT; SELECT 3 AS after")
            .query("BEGIN")
            .step([q("COPY diff_copy (id) FROM STDIN"), copy_data(b"7\n"), copy_done()])
            .query("SELECT count(*) FROM diff_copy")
            .step([q("COPY diff_copy (id) FROM STDIN"), copy_data(b"x\n"), copy_done()])
            .query("COPY diff_copy TO STDOUT")
            .query("ROLLBACK")
            .query("BEGIN")
            .query("SAVEPOINT s")
            .step([q("COPY diff_copy (id) FROM STDIN"), copy_fail("changed my mind")])
            .query("ROLLBACK TO SAVEPOINT s")
            .step([q("COPY diff_copy (id) FROM STDIN"), copy_data(b"8\n"), copy_done()])
            .query("COMMIT")
            .query("SELECT id, v, b FROM diff_copy ORDER BY id")
            .query("DROP TABLE diff_copy"),
    );
}

/// PGlite 0.2 takes a request whole and cannot stream: there the bridge runs a COPY FROM STDIN
/// only alone in its query (see `extended_copy_as_native` for the lines that stream).
#[test]
fn copy_from_stdin_with_other_statements_is_refused_on_0_2() {
    check(
        Script::new("copy_from_stdin_with_other_statements_is_refused_on_0_2")
            .only_on("0.2.17", "streams: see extended_copy_as_native")
            .query("CREATE TABLE diff_copy (id int, v text)")
            .documented(
                [
                    q("SELECT 1 AS before; COPY diff_copy FROM STDIN; SELECT 2 AS after"),
                    copy_data(b"3\tc\n"),
                    copy_done(),
                ],
                "a multi-statement query with COPY FROM STDIN in it is refused whole, before any of it runs",
                "README \"Many clients, one backend\": on PGlite 0.2, COPY FROM STDIN must be the only \
                 statement of its simple query",
                &[
                    "ErrorResponse S=\"ERROR\" V=\"ERROR\" C=\"0A000\" \
                     M=\"COPY FROM STDIN must be the only statement of its query on this server\"",
                    "ReadyForQuery I",
                ],
            )
            .query("DROP TABLE diff_copy"),
    );
}

#[test]
fn server_settings() {
    check(Script::new("server_settings").query(
        "SELECT name, setting FROM pg_settings WHERE name IN ('TimeZone', 'log_timezone', 'DateStyle', \
         'IntervalStyle', 'lc_messages', 'lc_monetary', 'lc_numeric', 'lc_time', 'lc_collate', 'lc_ctype', \
         'default_text_search_config', 'max_connections', 'max_wal_size', 'wal_segment_size', 'server_encoding', \
         'client_encoding', 'search_path', 'enable_seqscan', 'standard_conforming_strings', 'integer_datetimes', \
         'block_size', 'max_identifier_length', 'max_prepared_transactions', 'client_min_messages', \
         'allow_system_table_mods', 'exit_on_error', 'ignore_invalid_pages') ORDER BY name",
    ));
}

#[test]
fn client_encodings() {
    // The query texts are ASCII; what comes back is converted to each client encoding.
    let mut script = Script::new("client_encodings");
    for encoding in ["LATIN1", "WIN1252", "SJIS", "EUC_JP", "GBK", "WIN1251", "KOI8R", "LATIN2"] {
        script = script
            .query(&format!("SET client_encoding = '{encoding}'"))
            .query(
                "SELECT chr(233) AS e_acute, chr(8364) AS euro, convert_from('\\xe697a5e69cac', 'UTF8') AS nihon, \
                 convert_from('\\xd09fd180d0b8', 'UTF8') AS cyrillic, convert_to(chr(233), current_setting('client_encoding')) AS bytes",
            );
    }
    check(
        script
            .query("SET client_encoding = 'LATIN1'")
            .query("SELECT 'plain ascii' AS fine")
            .query("RESET client_encoding")
            .query("SELECT convert_to(chr(8364), 'LATIN1')")
            .query("SELECT convert_from('\\x8140', 'SJIS') AS sjis_space, convert_from('\\xff', 'UTF8')"),
    );
}
