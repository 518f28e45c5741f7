//! SQL behaviour through the host, on every release: errors, plpgsql, text search,
//! transactions, large results.

use crate::support::{Outcome, on_each_release, run, scalar};

#[test]
fn sql_error_leaves_the_session_usable() {
    on_each_release(|_, pg| {
        assert_eq!(run(pg, "SELECT 1/0"), Outcome::Error("22012".into()));
        assert_eq!(run(pg, "SELECT * FROM no_such_table"), Outcome::Error("42P01".into()));
        assert_eq!(run(pg, "SELEC 1"), Outcome::Error("42601".into()));
        assert_eq!(scalar(pg, "SELECT 'still here'"), "still here");
    });
}

#[test]
fn plpgsql_do_blocks_and_functions() {
    on_each_release(|_, pg| {
        assert_eq!(run(pg, "DO $$ BEGIN PERFORM 1; END $$"), Outcome::Rows(vec![]));
        scalar(
            pg,
            "CREATE FUNCTION fib(n int) RETURNS int LANGUAGE plpgsql AS $$ \
             BEGIN IF n < 2 THEN RETURN n; END IF; RETURN fib(n - 1) + fib(n - 2); END $$; SELECT 1",
        );
        assert_eq!(scalar(pg, "SELECT fib(15)"), "610");
        // An error raised inside plpgsql unwinds through the function; the session survives.
        assert_eq!(
            run(pg, "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = 'P0001'; END $$"),
            Outcome::Error("P0001".into())
        );
        assert_eq!(
            scalar(
                pg,
                "DO $$ BEGIN BEGIN PERFORM 1/0; EXCEPTION WHEN division_by_zero THEN NULL; END; END $$; SELECT 'caught'"
            ),
            "caught"
        );
    });
}

#[test]
fn deep_plpgsql_recursion() {
    on_each_release(|_, pg| {
        // 0.3's JS runtime gives C code a 64 KiB stack that depth ~60 overruns; the host's is 8 MiB.
        scalar(
            pg,
            "CREATE FUNCTION depth(n int) RETURNS int LANGUAGE plpgsql AS $$ \
             BEGIN IF n = 0 THEN RETURN 0; END IF; RETURN 1 + depth(n - 1); END $$; SELECT 1",
        );
        assert_eq!(scalar(pg, "SELECT depth(200)"), "200");
        // The guest runs on the caller's thread but on its own stack: a caller with a small
        // one (a tokio worker has 2 MiB) must not overflow.
        let small = std::thread::scope(|scope| {
            let thread = std::thread::Builder::new().stack_size(128 << 10);
            thread.spawn_scoped(scope, || scalar(pg, "SELECT depth(200)")).unwrap().join().unwrap()
        });
        assert_eq!(small, "200");
        assert_eq!(scalar(pg, "SELECT 'alive'"), "alive");
    });
}

#[test]
fn english_text_search() {
    on_each_release(|_, pg| {
        assert_eq!(scalar(pg, "SELECT to_tsvector('english', 'The running dogs')::text"), "'dog':3 'run':2");
        assert_eq!(scalar(pg, "SELECT to_tsvector('english', 'cats') @@ to_tsquery('english', 'cat')"), "t");
    });
}

#[test]
fn transactions_commit_and_roll_back() {
    on_each_release(|_, pg| {
        scalar(pg, "CREATE TABLE acct(id int, balance int); INSERT INTO acct VALUES (1, 100); SELECT 1");
        scalar(pg, "BEGIN; UPDATE acct SET balance = 0; ROLLBACK; SELECT 1");
        assert_eq!(scalar(pg, "SELECT balance FROM acct"), "100");
        scalar(pg, "BEGIN; UPDATE acct SET balance = 50; COMMIT; SELECT 1");
        assert_eq!(scalar(pg, "SELECT balance FROM acct"), "50");
        // An error inside a transaction aborts it until ROLLBACK.
        run(pg, "BEGIN");
        assert_eq!(run(pg, "SELECT 1/0"), Outcome::Error("22012".into()));
        assert_eq!(run(pg, "SELECT 1"), Outcome::Error("25P02".into()));
        run(pg, "ROLLBACK");
        assert_eq!(scalar(pg, "SELECT balance FROM acct"), "50");
    });
}

#[test]
fn ten_megabyte_result() {
    on_each_release(|_, pg| {
        let value = scalar(pg, "SELECT repeat('x', 10 * 1024 * 1024)");
        assert_eq!(value.len(), 10 * 1024 * 1024);
        assert!(value.bytes().all(|b| b == b'x'));
        assert_eq!(scalar(pg, "SELECT count(*) FROM generate_series(1, 100000)"), "100000");
    });
}

#[test]
fn encoding_conversions_work_on_every_release() {
    on_each_release(|version, pg| {
        assert_eq!(scalar(pg, "SELECT encode(convert_to('é', 'LATIN1'), 'hex')"), "e9", "{version}");
        assert_eq!(scalar(pg, "SELECT encode(convert_to('Ж', 'WIN1251'), 'hex')"), "c6", "{version}");
        assert_eq!(scalar(pg, "SELECT encode(convert_to('日本', 'SJIS'), 'hex')"), "93fa967b", "{version}");
        assert_eq!(scalar(pg, "SELECT convert_from('\\xe9'::bytea, 'LATIN1')"), "é", "{version}");
        assert_eq!(run(pg, "SELECT convert_to('日', 'LATIN1')"), Outcome::Error("22P05".into()), "{version}");
    });
}
