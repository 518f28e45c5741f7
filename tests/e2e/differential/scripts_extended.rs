//! Scripted sessions, extended protocol: Parse/Bind/Describe/Execute/Close/Sync with unnamed
//! and named statements and portals, several Sync groups in one write, errors mid-pipeline,
//! row limits, batches ended by `Flush`, binary formats, the fast-path function call, large
//! parameters, and (on the lines that can answer them) large results.

use super::wire::{
    Param, bind, close_portal, close_statement, copy_data, copy_done, copy_fail, describe_portal, describe_statement,
    execute, flush, function_call, parse, q, sync, t,
};
use super::{Script, check};

#[test]
fn extended_unnamed_statement_and_portal() {
    check(
        Script::new("extended_unnamed_statement_and_portal")
            .step([
                parse("", "SELECT $1::int + 1 AS x", &[]),
                bind("", "", &[t("41")], &[]),
                describe_portal(""),
                execute("", 0),
                sync(),
            ])
            .step([parse("", "SELECT $1 AS untyped", &[]), describe_statement(""), sync()])
            .step([
                parse("", "SELECT $1::int4 AS a, $2::text AS b, $3 AS c", &[0, 0, 20]),
                describe_statement(""),
                sync(),
            ])
            .step([bind("", "", &[t("1"), t("x"), Param::Null], &[]), execute("", 0), sync()])
            .step([execute("", 0), sync()]),
    );
}

#[test]
fn extended_named_statements_and_portals() {
    check(
        Script::new("extended_named_statements_and_portals")
            .step([parse("diff_s1", "SELECT generate_series(1, $1) AS n", &[23]), sync()])
            .step([describe_statement("diff_s1"), sync()])
            .step([
                bind("diff_p1", "diff_s1", &[t("3")], &[]),
                describe_portal("diff_p1"),
                execute("diff_p1", 0),
                close_portal("diff_p1"),
                sync(),
            ])
            .step([bind("", "diff_s1", &[t("2")], &[]), execute("", 0), sync()])
            .step([parse("diff_s1", "SELECT 1", &[]), sync()])
            .step([close_statement("diff_s1"), close_statement("diff_s1"), close_portal("diff_no_portal"), sync()])
            .step([bind("", "diff_s1", &[t("1")], &[]), sync()])
            .step([describe_statement("diff_no_statement"), sync()])
            .step([describe_portal("diff_no_portal"), sync()])
            .step([execute("diff_no_portal", 0), sync()])
            .step([parse("diff_s2", "SELECT 2 AS two", &[]), sync()])
            .query("SELECT name, statement, parameter_types FROM pg_prepared_statements ORDER BY name")
            .query("DEALLOCATE diff_s2")
            .step([bind("", "diff_s2", &[], &[]), execute("", 0), sync()]),
    );
}

#[test]
fn extended_pipelined_sync_groups() {
    check(Script::new("extended_pipelined_sync_groups").step([
        parse("", "SELECT 1 AS a", &[]),
        bind("", "", &[], &[]),
        execute("", 0),
        sync(),
        parse("", "SELECT 2 AS b", &[]),
        bind("", "", &[], &[]),
        execute("", 0),
        sync(),
        q("SELECT 3 AS c"),
        parse("diff_pipe", "SELECT $1::int * 2 AS d", &[]),
        sync(),
        bind("", "diff_pipe", &[t("21")], &[]),
        execute("", 0),
        sync(),
        sync(),
    ]));
}

#[test]
fn extended_errors_mid_pipeline() {
    check(
        Script::new("extended_errors_mid_pipeline")
            .step([
                parse("", "SELECT 1 AS ok", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                parse("", "SELEC 1", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
                parse("", "SELECT 2 AS recovered", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .step([parse("", "SELECT 1/$1::int", &[]), bind("", "", &[t("0")], &[]), execute("", 0), sync()])
            .step([parse("", "SELECT $1::int", &[]), bind("", "", &[t("x")], &[]), execute("", 0), sync()])
            .step([parse("", "SELECT $1::int", &[]), bind("", "", &[], &[]), execute("", 0), sync()])
            .step([
                q("BEGIN"),
                parse("", "SELECT 1 AS in_tx", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                parse("", "SELECT nosuchcolumn", &[]),
                sync(),
                parse("", "SELECT 2", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
                q("ROLLBACK"),
            ])
            .query("CREATE TABLE diff_pipe_rollback (x int)")
            .step([
                parse("", "INSERT INTO diff_pipe_rollback VALUES (1)", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                parse("", "SELECT 1/0", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .query("SELECT count(*) FROM diff_pipe_rollback; DROP TABLE diff_pipe_rollback"),
    );
}

#[test]
fn extended_transaction_states() {
    let group = |sql: &str| [parse("", sql, &[]), bind("", "", &[], &[]), execute("", 0), sync()];
    check(
        Script::new("extended_transaction_states")
            .step(group("BEGIN"))
            .step(group("SELECT 1/0"))
            .step(group("SELECT 1"))
            .step(group("ROLLBACK"))
            .step(group("COMMIT"))
            .step(group("BEGIN"))
            .step(group("SAVEPOINT a"))
            .step(group("SELECT 1/0"))
            .step(group("ROLLBACK TO a"))
            .step(group("COMMIT"))
            .step(group("BEGIN"))
            .step(group("SELECT 1/0"))
            .step([parse("", "SELECT 1", &[]), describe_statement(""), sync()])
            .step([describe_portal(""), sync()])
            .step([q("ROLLBACK")]),
    );
}

#[test]
fn extended_row_limits() {
    check(
        Script::new("extended_row_limits")
            .query("BEGIN")
            .step([
                parse("diff_rows", "SELECT generate_series(1, 5) AS n", &[]),
                bind("diff_c", "diff_rows", &[], &[]),
                execute("diff_c", 2),
                execute("diff_c", 2),
                execute("diff_c", 2),
                execute("diff_c", 2),
                sync(),
            ])
            .step([bind("diff_c2", "diff_rows", &[], &[]), execute("diff_c2", 1), sync()])
            .step([execute("diff_c2", 3), sync()])
            .step([describe_portal("diff_c2"), execute("diff_c2", 0), sync()])
            .query("COMMIT")
            .step([bind("diff_c3", "diff_rows", &[], &[]), execute("diff_c3", 2), sync()])
            .step([execute("diff_c3", 2), sync()])
            .step([bind("", "diff_rows", &[], &[]), execute("", 1), execute("", 1), sync()])
            .step([bind("", "diff_rows", &[], &[]), execute("", -1), sync()])
            .query("CREATE TABLE diff_limits (x int)")
            .step([
                parse("", "INSERT INTO diff_limits SELECT generate_series(1, 3) RETURNING x", &[]),
                bind("", "", &[], &[]),
                execute("", 1),
                sync(),
            ])
            .query("SELECT count(*) FROM diff_limits; DROP TABLE diff_limits"),
    );
}

#[test]
fn extended_flush_describe_statement() {
    check(
        Script::new("extended_flush_describe_statement")
            .step([parse("diff_f", "SELECT $1::text AS t, $2::int8 AS i", &[]), describe_statement("diff_f"), flush()])
            .step([bind("", "diff_f", &[t("a"), t("7")], &[]), describe_portal(""), execute("", 0), flush()])
            .step([sync()])
            .step([parse("", "SELECT 1 AS one", &[]), flush()])
            .step([flush()])
            .step([bind("", "", &[], &[]), execute("", 0), flush()])
            .step([parse("", "SELEC", &[]), bind("", "", &[], &[]), flush()])
            .step([sync()])
            .step([parse("", "INSERT INTO pg_temp.nothing VALUES ($1)", &[23]), flush()])
            .step([sync()])
            .step([
                parse("", "DO $$ BEGIN RAISE NOTICE 'flushed notice'; END $$", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                flush(),
            ])
            .step([sync()]),
    );
}

#[test]
fn extended_flush_bind_execute() {
    check(
        Script::new("extended_flush_bind_execute")
            .step([
                parse("", "SELECT generate_series(1, 3) AS g", &[]),
                bind("", "", &[], &[]),
                describe_portal(""),
                execute("", 0),
                flush(),
            ])
            .step([sync()])
            .query("BEGIN")
            .step([
                parse("", "SELECT generate_series(1, 3) AS g", &[]),
                bind("diff_fp", "", &[], &[]),
                execute("diff_fp", 2),
                flush(),
            ])
            .step([execute("diff_fp", 2), flush()])
            .step([close_portal("diff_fp"), flush()])
            .step([sync()])
            .query("COMMIT"),
    );
}

#[test]
fn extended_describe() {
    check(
        Script::new("extended_describe")
            .query("CREATE TABLE diff_desc (id int PRIMARY KEY, v text)")
            .step([
                parse("diff_ins", "INSERT INTO diff_desc VALUES ($1, $2)", &[]),
                describe_statement("diff_ins"),
                sync(),
            ])
            .step([bind("", "diff_ins", &[t("1"), t("a")], &[]), describe_portal(""), execute("", 0), sync()])
            .step([
                parse("diff_upd", "UPDATE diff_desc SET v = $2 WHERE id = $1 RETURNING *", &[]),
                describe_statement("diff_upd"),
                sync(),
            ])
            .step([
                parse("diff_sel", "SELECT * FROM diff_desc WHERE id = $1", &[]),
                describe_statement("diff_sel"),
                sync(),
            ])
            .step([
                parse("", "SET search_path = \"$user\", public", &[]),
                describe_statement(""),
                bind("", "", &[], &[]),
                describe_portal(""),
                execute("", 0),
                sync(),
            ])
            .step([parse("", "SELECT $2::int", &[]), describe_statement(""), sync()])
            .step([parse("", "SELECT $1", &[]), describe_statement(""), sync()])
            .step([parse("", "SELECT $1", &[999_999]), sync()])
            .step([parse("", "SELECT 1", &[]), close_statement(""), close_portal(""), describe_statement(""), sync()])
            .query("DROP TABLE diff_desc"),
    );
}

#[test]
fn extended_binary_formats() {
    let params = [
        Param::Binary(42i32.to_be_bytes().to_vec()),
        Param::Binary((-5i64).to_be_bytes().to_vec()),
        Param::Binary(1.5f64.to_be_bytes().to_vec()),
        Param::Binary(vec![1]),
        Param::Binary(vec![0, 255, 1]),
        Param::Binary("h\u{e9}llo".as_bytes().to_vec()),
        t("mixed text"),
    ];
    let sql = "SELECT $1::int4 AS i4, $2::int8 AS i8, $3::float8 AS f8, $4::bool AS b, $5::bytea AS by, $6::text AS tx, $7::text AS t2";
    let types = [23, 20, 701, 16, 17, 25, 25];
    check(
        Script::new("extended_binary_formats")
            .step([
                parse("diff_bin", sql, &types),
                bind("", "diff_bin", &params, &[1]),
                describe_portal(""),
                execute("", 0),
                sync(),
            ])
            .step([bind("", "diff_bin", &params, &[0, 1, 0, 1, 0, 1, 0]), describe_portal(""), execute("", 0), sync()])
            .step([bind("", "diff_bin", &params, &[1, 0]), execute("", 0), sync()])
            .step([
                parse("", "SELECT $1::int4", &[23]),
                bind("", "", &[Param::Binary(vec![0, 0, 1])], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse(
                    "",
                    "SELECT '2024-01-02 03:04:05.123456+00'::timestamptz, 12.345::numeric, \
                     '6f1c1f8e-3c2a-4a4b-9a57-0c1d2e3f4a5b'::uuid, ARRAY[1, 2], '{\"a\": 1}'::jsonb, NULL::int",
                    &[],
                ),
                bind("", "", &[], &[1]),
                describe_portal(""),
                execute("", 0),
                sync(),
            ]),
    );
}

#[test]
fn extended_empty_and_multiple_statements() {
    check(
        Script::new("extended_empty_and_multiple_statements")
            .step([parse("", "", &[]), bind("", "", &[], &[]), describe_portal(""), execute("", 0), sync()])
            .step([parse("", "SELECT 1; SELECT 2", &[]), sync()])
            .step([sync(), sync(), sync()])
            .step([q("SELECT 1 AS q"), sync()])
            .step([flush()])
            .step([
                parse("", "DO $$ BEGIN RAISE NOTICE 'from extended'; END $$", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse("", "SET application_name = 'extended'", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]),
    );
}

#[test]
fn fast_path_function_call() {
    let one = Param::Binary(1i32.to_be_bytes().to_vec());
    let two = Param::Binary(2i32.to_be_bytes().to_vec());
    // 177 is int4pl, the function behind `int4 + int4`.
    check(
        Script::new("fast_path_function_call")
            .step([function_call(177, &[one.clone(), two.clone()], 1)])
            .step([function_call(177, &[t("1"), t("2")], 0)])
            .step([function_call(177, &[one, Param::Null], 1)])
            .step([function_call(4_000_000_000, std::slice::from_ref(&two), 1)])
            .query("BEGIN; SELECT 1/0")
            .step([function_call(177, &[two.clone(), two], 1)])
            .query("ROLLBACK"),
    );
}

/// COPY through the extended protocol, as drivers send it: pipelined with its data (the
/// differential harness), prepared first and its data sent once the `CopyInResponse` came
/// (tokio-postgres, libpq), without a Sync after the data (postgres.js); with triggers that
/// raise notices during the COPY, a bad row, a `CopyFail`, inside a transaction block; and in
/// simple queries with other statements.
#[test]
fn extended_copy_as_native() {
    check(
        Script::new("extended_copy_as_native")
            .skip_on("0.2.17", "0.2 cannot stream: see extended_copy_in_is_refused_on_0_2")
            .query("CREATE TABLE diff_copy_ext (id int, v text)")
            .query("INSERT INTO diff_copy_ext VALUES (1, 'a'), (2, 'b')")
            .step([
                parse("", "COPY (SELECT id FROM diff_copy_ext ORDER BY id) TO STDOUT", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse("s1", "COPY diff_copy_ext TO STDOUT (FORMAT csv)", &[]),
                describe_statement("s1"),
                bind("", "s1", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse("", "COPY diff_copy_ext FROM STDIN", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                copy_data(b"3\tc\n"),
                copy_done(),
                sync(),
            ])
            .query(
                "CREATE FUNCTION diff_copy_ext_note() RETURNS trigger LANGUAGE plpgsql AS \
                 $$BEGIN RAISE NOTICE 'row %', NEW.id; RETURN NEW; END$$",
            )
            .query(
                "CREATE TRIGGER diff_copy_ext_note BEFORE INSERT ON diff_copy_ext \
                 FOR EACH ROW EXECUTE FUNCTION diff_copy_ext_note()",
            )
            .step([
                parse("s2", "COPY diff_copy_ext (id) FROM STDIN (FORMAT csv)", &[]),
                describe_statement("s2"),
                sync(),
            ])
            .step([bind("", "s2", &[], &[]), execute("", 0), sync()])
            .step([copy_data(b"4\n"), copy_data(b"5\n"), copy_done(), sync()])
            .step([bind("", "s2", &[], &[]), execute("", 0), sync()])
            .step([copy_data(b"6\nx\n"), copy_done(), sync()])
            .step([bind("", "s2", &[], &[]), execute("", 0), sync()])
            .step([copy_data(b"7\n"), copy_fail("the client gave up"), sync()])
            .step([
                parse("", "COPY diff_copy_ext (id) FROM STDIN", &[]),
                describe_statement(""),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ])
            .step([copy_data(b"8\n"), copy_done()])
            .step([sync()])
            .query("BEGIN")
            .step([bind("", "s2", &[], &[]), execute("", 0), sync()])
            .step([copy_data(b"9\n"), copy_done(), sync()])
            .query("SELECT count(*) FROM diff_copy_ext")
            .query("ROLLBACK")
            .query("DROP TRIGGER diff_copy_ext_note ON diff_copy_ext")
            .query("BEGIN; COPY diff_copy_ext (id) FROM STDIN; COMMIT")
            .step([copy_data(b"10\n"), copy_done()])
            .step([
                q("COPY diff_copy_ext (id) FROM STDIN; COPY (SELECT id FROM diff_copy_ext ORDER BY id) TO STDOUT"),
                copy_data(b"11\n"),
                copy_done(),
            ])
            .step([
                q("SELECT 1 AS before; COPY diff_copy_ext (id, v) FROM STDIN; SELECT 2 AS after"),
                copy_data(b"12\tl\n"),
                copy_done(),
            ])
            .query("SELECT id, v FROM diff_copy_ext ORDER BY id")
            .query("DROP TABLE diff_copy_ext; DROP FUNCTION diff_copy_ext_note()"),
    );
}

/// PGlite 0.2 takes a request whole and cannot stream: a COPY FROM STDIN there runs only as a
/// simple query of its own (see `copy_in_and_out_as_native`).
#[test]
fn extended_copy_in_is_refused_on_0_2() {
    let refused = "ErrorResponse S=\"ERROR\" V=\"ERROR\" C=\"0A000\" M=\"COPY FROM STDIN through the extended \
                   query protocol is not supported by this server; send it as a simple query\"";
    check(
        Script::new("extended_copy_in_is_refused_on_0_2")
            .only_on("0.2.17", "streams: see extended_copy_as_native")
            .query("CREATE TABLE diff_copy_ext (id int)")
            .documented(
                [
                    parse("", "COPY diff_copy_ext FROM STDIN", &[]),
                    bind("", "", &[], &[]),
                    execute("", 0),
                    copy_data(b"3\n"),
                    copy_done(),
                    sync(),
                ],
                "COPY FROM STDIN through the extended protocol is refused on PGlite 0.2",
                "README \"Many clients, one backend\": 0.2 takes a request whole, and the client sends \
                 its data only once it saw the COPY begin",
                &[refused, "ReadyForQuery I"],
            )
            .query("DROP TABLE diff_copy_ext"),
    );
}

/// `len` bytes of a repeating pattern, so that truncation or reordering changes the digest.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] ^ u8::from(i % 7919 == 0)).collect()
}

#[test]
fn extended_large_parameters() {
    let text = pattern(5 << 20);
    let bytes: Vec<u8> = (0..(5usize << 20) + 3).map(|i| (i % 251) as u8).collect();
    check(
        Script::new("extended_large_parameters")
            .step([
                parse("", "SELECT length($1), md5($1)", &[25]),
                bind("", "", &[Param::Text(text.clone())], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse("", "SELECT length($1), md5($1)", &[17]),
                bind("", "", &[Param::Binary(bytes)], &[]),
                execute("", 0),
                sync(),
            ])
            .step([
                parse("", "SELECT $1::text AS echo", &[]),
                bind("", "", &[Param::Text(text[..(9 << 19)].to_vec())], &[]),
                execute("", 0),
                sync(),
            ])
            .query(&format!("SELECT length('{}')", String::from_utf8(text[..(4 << 20) + 1].to_vec()).unwrap())),
    );
}

#[test]
fn large_results() {
    check(
        Script::new("large_results")
            .skip_on(
                "0.2.17",
                "README: on 0.2.17 request plus reply must fit in 16 MiB; a larger reply crashes the instance",
            )
            .query("SELECT repeat('x', 17 << 20) AS big")
            .step([
                parse("", "SELECT i, repeat(md5(i::text), 600) FROM generate_series(1, 1000) AS i", &[]),
                bind("", "", &[], &[]),
                execute("", 0),
                sync(),
            ]),
    );
}
