//! Verdict table for the command filter.

use super::{StatementKind, Verdict, classify};
use crate::Refuse;
use crate::lexer::LexOptions;

/// A compact verdict, with every command the bridge can refuse refused.
fn verdict(sql: &str, options: LexOptions) -> String {
    verdict_with(sql, options, Refuse::all())
}

/// A compact verdict: `refuse COPY`, or the statement kinds joined by `;`.
fn verdict_with(sql: &str, options: LexOptions, refuse: Refuse) -> String {
    match classify(sql.as_bytes(), options, refuse) {
        Verdict::Refuse { command } => format!("refuse {command}"),
        Verdict::Allow { statements } => statements
            .iter()
            .map(|s| match &s.kind {
                StatementKind::Plain => "plain".to_owned(),
                StatementKind::Copy { from_stdin: true } => "copy-in".to_owned(),
                StatementKind::Copy { from_stdin: false } => "copy".to_owned(),
                StatementKind::DiscardAll => "discard-all".to_owned(),
                StatementKind::DeallocateAll => "deallocate-all".to_owned(),
                StatementKind::NamedStatement { name, value } => {
                    format!("named {}={}", &sql[name.clone()], String::from_utf8_lossy(value))
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[track_caller]
fn check(table: &[(&str, &str)]) {
    for (sql, expected) in table {
        assert_eq!(verdict(sql, LexOptions::default()), *expected, "for {sql:?}");
    }
}

#[test]
fn copy_variants_are_refused() {
    check(&[
        ("COPY t FROM STDIN", "refuse COPY"),
        ("copy t to stdout", "refuse COPY"),
        ("  /* c /* nested */ */ -- x\n\tCoPy t TO STDOUT", "refuse COPY"),
        ("COPY (SELECT 1) TO STDOUT", "refuse COPY"),
        ("COPY t TO '/tmp/x'", "refuse COPY"),
        (";;COPY t FROM STDIN", "refuse COPY"),
        ("COPY/**/t FROM STDIN", "refuse COPY"),
        ("SELECT 1; COPY t TO STDOUT; SELECT 2", "refuse COPY"),
        ("SELECT 1;\ncopy\nt from stdin", "refuse COPY"),
        ("SELECT 'it''s'; COPY t TO STDOUT", "refuse COPY"),
        ("SELECT E'\\\\'; COPY t TO STDOUT", "refuse COPY"),
        ("SELECT $$a$$; COPY t TO STDOUT", "refuse COPY"),
    ]);
}

#[test]
fn copy_is_told_apart_when_allowed() {
    for (sql, expected) in [
        ("COPY t FROM STDIN", "copy-in"),
        ("copy t (a, b) from/**/stdin with (format csv)", "copy-in"),
        ("COPY t (stdin) FROM '/f'", "copy"),
        ("COPY (SELECT 1 FROM stdin) TO STDOUT", "copy"),
        ("  /* c */ CoPy (SELECT 1) TO STDOUT", "copy"),
        ("SELECT 1; COPY t TO STDOUT", "plain; copy"),
        ("SELECT 'COPY t FROM STDIN'", "plain"),
        ("LISTEN ch; NOTIFY ch", "plain; plain"),
    ] {
        assert_eq!(verdict_with(sql, LexOptions::default(), Refuse::none()), expected, "for {sql:?}");
    }
}

#[test]
fn listen_and_notify_are_refused() {
    check(&[
        ("LISTEN ch", "refuse LISTEN"),
        ("listen\"ch\"", "refuse LISTEN"),
        ("NOTIFY ch, 'x'", "refuse NOTIFY"),
        ("NOTIFY\tch", "refuse NOTIFY"),
        ("SELECT 1; listen x", "refuse LISTEN"),
    ]);
}

#[test]
fn near_misses_are_allowed() {
    check(&[
        ("SELECT ';COPY t FROM STDIN'", "plain"),
        ("SELECT $$;COPY$$", "plain"),
        ("SELECT $fn$ ; copy t to stdout; $fn$", "plain"),
        ("SELECT E'\\';COPY'", "plain"),
        ("SELECT e'\\'' ; 'x'", "plain; plain"),
        ("SELECT U&'d\\0061t'; SELECT 1", "plain; plain"),
        ("SELECT 1 AS \"copy\"", "plain"),
        ("\"COPY\" t", "plain"),
        ("CREATE TABLE copy_log(listen int)", "plain"),
        ("SELECT * FROM notify_queue", "plain"),
        ("copy_log", "plain"),
        ("SELECT pg_notify('ch', 'x')", "plain"),
        ("-- COPY t FROM STDIN\nSELECT 1", "plain"),
        ("/* COPY /* nested */ still comment ; COPY */ SELECT 1", "plain"),
        ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $fn$BEGIN COPY t TO STDOUT; NOTIFY x; END$fn$", "plain"),
        ("SELECT $1::int; SELECT a$b FROM t", "plain; plain"),
        ("SELECT B'101', X'ff', N'copy'", "plain"),
        ("UNLISTEN *", "plain"),
        ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", "plain; plain; plain; plain"),
    ]);
}

#[test]
fn session_statements_are_recognised() {
    check(&[
        // Settings, locks and cursors are learnt from the backend, not from the text.
        ("SELECT pg_advisory_lock(42)", "plain"),
        ("SET TimeZone = 'UTC'", "plain"),
        ("RESET ALL", "plain"),
        ("DISCARD ALL", "discard-all"),
        ("DISCARD PLANS", "plain"),
        ("DEALLOCATE ALL", "deallocate-all"),
        ("deallocate prepare all", "deallocate-all"),
        ("PREPARE Foo AS SELECT 1", "named Foo=foo"),
        ("EXECUTE \"Foo\"(1)", "named \"Foo\"=Foo"),
        ("DEALLOCATE PREPARE p1", "named p1=p1"),
        ("EXPLAIN EXECUTE p1(2)", "named p1=p1"),
        ("explain (analyze, costs off, timing off) execute P1", "named P1=p1"),
        ("CREATE TEMP TABLE copy AS EXECUTE \"p1\"", "named \"p1\"=p1"),
        ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "plain"),
        ("create event trigger e on ddl_command_start execute procedure f()", "plain"),
        ("EXPLAIN SELECT 1", "plain"),
        ("PREPARE TRANSACTION 'x'", "plain"),
        ("", ""),
        (";", ""),
    ]);
}

#[test]
fn backslash_strings_follow_the_session() {
    let old = LexOptions { standard_strings: false };
    // With standard_conforming_strings off, \' escapes the quote: the COPY is outside.
    let sql = "SELECT '\\'' ; COPY t TO STDOUT; -- '";
    assert_eq!(verdict(sql, old), "refuse COPY");
    assert_eq!(verdict(sql, LexOptions::default()), "plain");
}
