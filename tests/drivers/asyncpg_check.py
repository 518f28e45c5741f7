#!/usr/bin/env python3
"""asyncpg against a PostgreSQL server, checking exact results.

Usage: asyncpg_check.py [--keep-going] [--only=TEXT] [--list] [HOST [DATABASE [USER]]]

The connection comes from the arguments, else from PGHOST (the socket directory), PGDATABASE
and PGUSER (default `postgres` for both). Each scenario prints one line, `ok   NAME` or
`FAIL NAME: what was wrong`; the program stops at the first failure with exit status 1
(`--keep-going` runs the remaining scenarios too, to see every failure at once; `--only=TEXT`
runs only the scenarios whose names contain TEXT; `--list` prints their names). Every
expectation is what native PostgreSQL of the same major does: the program must pass against
it unchanged.

asyncpg speaks the extended protocol only, with binary results, a statement cache (every query
is a named prepared statement) and Flush messages while it prepares, and it keeps the
parameters the server reports (`Connection.get_settings()`).
"""

import asyncio
import faulthandler
import hashlib
import io
import math
import os
import random
import sys
import traceback
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg

# A scenario that has not finished after this long is stuck (a reply that never comes).
SCENARIO_TIMEOUT_S = 180

# Parameters PostgreSQL 16 and 17 report to the client (GUC_REPORT) at startup and whenever
# they change.
REPORTED = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "in_hot_standby",
    "scram_iterations",
    "default_transaction_read_only",
]

# Every table and role this program makes starts with this, so that programs for other drivers
# can share a database with it.
PREFIX = "drv_asyncpg"

args = [a for a in sys.argv[1:] if not a.startswith("--")]
KEEP_GOING = "--keep-going" in sys.argv[1:]
ONLY = next((a.removeprefix("--only=") for a in sys.argv[1:] if a.startswith("--only=")), "")
HOST = args[0] if len(args) > 0 else os.environ.get("PGHOST", "")
DATABASE = args[1] if len(args) > 1 else os.environ.get("PGDATABASE", "postgres")
USER = args[2] if len(args) > 2 else os.environ.get("PGUSER", "postgres")

UTC = timezone.utc


class Failure(Exception):
    """A wrong result: what was expected and what came instead."""


def same(actual, expected):
    """Equal values of the same types, recursively; NaN equals NaN."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(actual)
    if isinstance(expected, Decimal):
        return str(actual) == str(expected)
    if isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    if isinstance(expected, datetime) and expected.tzinfo is not None:
        return actual == expected and actual.utcoffset() == expected.utcoffset()
    return actual == expected


def check(actual, expected, what):
    if not same(actual, expected):
        raise Failure(f"{what}: got {short(actual)}, expected {short(expected)}")


def short(value):
    text = repr(value)
    return text if len(text) <= 400 else text[:400] + "..."


async def expect_error(sqlstate, what, awaitable):
    """Awaits `awaitable`, which must fail with `sqlstate`; returns the error."""
    try:
        result = await awaitable
    except asyncpg.PostgresError as err:
        if err.sqlstate != sqlstate:
            raise Failure(f"{what}: got {type(err).__name__} {err.sqlstate} ({err}), expected SQLSTATE {sqlstate}")
        return err
    raise Failure(f"{what}: succeeded with {short(result)}, expected SQLSTATE {sqlstate}")


async def connect(**kwargs):
    return await asyncpg.connect(host=HOST, database=DATABASE, user=USER, timeout=30, **kwargs)


def records(rows):
    return [tuple(row) for row in rows]


def reported(conn):
    settings = conn.get_settings()
    return {name: getattr(settings, name, None) for name in REPORTED}


async def check_reported(conn, what):
    """Every parameter the driver was told about equals the server's current setting."""
    rows = await conn.fetch("SELECT n, current_setting(n) FROM unnest($1::text[]) n", REPORTED)
    mine = reported(conn)
    for name, setting in rows:
        check(mine[name], setting, f"{what}: ParameterStatus {name} against current_setting")


SCENARIOS = []


def scenario(name):
    def register(fn):
        SCENARIOS.append((name, fn))
        return fn

    return register


@scenario("prepared statements reused")
async def prepared_statements():
    a, b = await connect(), await connect()
    try:
        doubled = await a.prepare("SELECT $1::int8 * 2 AS doubled, $2::text || '/asyncpg-prepared' AS tagged")
        check([t.name for t in doubled.get_parameters()], ["int8", "text"], "parameter types")
        check([(x.name, x.type.name) for x in doubled.get_attributes()], [("doubled", "int8"), ("tagged", "text")],
              "result columns")
        for i in range(200):
            check(tuple(await doubled.fetchrow(i, f"n{i}")), (i * 2, f"n{i}/asyncpg-prepared"), f"round {i}")
        # Prepared once on the server, not once per execution.
        count = await a.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE $1",
                                 "%/asyncpg-prepared%")
        check(count, 1, "pg_prepared_statements rows for the reused statement")

        # asyncpg names statements __asyncpg_stmt_1__, ... per connection: the same name means
        # different statements on a and b, used in turns, through the statement cache.
        for i in range(50):
            check(await b.fetchval("SELECT 'B:' || $1::text", str(i)), f"B:{i}", f"b round {i}")
            check(tuple(await doubled.fetchrow(i, "a")), (i * 2, "a/asyncpg-prepared"), f"a round {i}")
            check(await a.fetchval("SELECT 'A:' || $1::text", str(i)), f"A:{i}", f"a round {i}")

        # A cursor over a prepared statement, fetched in pieces inside a transaction.
        async with a.transaction():
            cursor = await a.cursor("SELECT g, g * g FROM generate_series(1, $1::int) g", 100)
            first = await cursor.fetch(30)
            rest = await cursor.fetch(100)
        check(records(first + rest), [(g, g * g) for g in range(1, 101)], "rows through a cursor")
    finally:
        await a.close()
        await b.close()


@scenario("pipelined executemany")
async def pipelined():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_pipe")
        await c.execute(f"CREATE TABLE {PREFIX}_pipe (id serial PRIMARY KEY, n int NOT NULL UNIQUE, label text)")
        # executemany sends every Bind/Execute before one Sync.
        await c.executemany(f"INSERT INTO {PREFIX}_pipe (n, label) VALUES ($1, $2)", [(i, f"l{i}") for i in range(500)])
        check(tuple(await c.fetchrow(f"SELECT count(*), sum(n), min(id), max(id) FROM {PREFIX}_pipe")),
              (500, 124750, 1, 500), "rows after executemany")
        rows = await c.fetchmany(f"INSERT INTO {PREFIX}_pipe (n) VALUES ($1) RETURNING id, n * 10",
                                 [(i,) for i in range(500, 550)])
        check(records(rows), [(i + 1, i * 10) for i in range(500, 550)], "fetchmany RETURNING, in order")

        # One failing row fails the whole batch: it runs as one implicit transaction.
        err = await expect_error(
            "23505", "a duplicate in executemany",
            c.executemany(f"INSERT INTO {PREFIX}_pipe (n) VALUES ($1)", [(1000,), (1001,), (5,), (1002,)]),
        )
        check(type(err), asyncpg.UniqueViolationError, "error class")
        check(await c.fetchval(f"SELECT count(*) FROM {PREFIX}_pipe WHERE n >= 1000"), 0, "rows from the failed batch")
        check(await c.fetchval(f"SELECT count(*) FROM {PREFIX}_pipe"), 550, "rows in all")
        check(c.is_in_transaction(), False, "in a transaction after the failed batch")
        await c.execute(f"DROP TABLE {PREFIX}_pipe")
    finally:
        await c.close()


DOC = '{"a": [1, 2.5, "ü", null, true], "b": {"c": "🐘", "d": ""}}'
UID = uuid.UUID("6f1c1f8e-3c2a-4a4b-9a57-0c1d2e3f4a5b")
TEXT = "héllo wörld — 日本語 🐘 \t\n\\ '\" end"
TEXTS = ["a", "b c", "", None, 'q"uote', "back\\slash", "ü", "{}", "NULL"]

# (SQL type, Python value, the server's text form of the value).
TYPED = [
    ("int8", -9223372036854775808, "-9223372036854775808"),
    ("int8", 9223372036854775807, "9223372036854775807"),
    ("int2", -32768, "-32768"),
    ("int4", 2147483647, "2147483647"),
    ("numeric", Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
    ("numeric", Decimal("-0.000001"), "-0.000001"),
    ("numeric", Decimal("NaN"), "NaN"),
    ("text", TEXT, TEXT),
    ("bytea", bytes(range(256)), "\\x" + bytes(range(256)).hex()),
    ("bool", True, "true"),
    ("bool", False, "false"),
    ("float8", 0.1, "0.1"),
    ("float8", -1.5e-300, "-1.5e-300"),
    ("float8", 1.7976931348623157e308, "1.7976931348623157e+308"),
    ("float8", math.inf, "Infinity"),
    ("float8", -math.inf, "-Infinity"),
    ("float8", math.nan, "NaN"),
    ("date", date(2024, 2, 29), "2024-02-29"),
    # asyncpg reads date.min and date.max as -infinity and infinity.
    ("date", date(1, 1, 2), "0001-01-02"),
    ("date", date(9999, 12, 30), "9999-12-30"),
    ("date", date.max, "infinity"),
    ("timestamp", datetime(2000, 1, 1, 0, 0, 0, 1), "2000-01-01 00:00:00.000001"),
    ("timestamptz", datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC), None),
    ("interval", timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=789000), "3 days 04:05:06.789"),
    ("interval", timedelta(days=-1, seconds=1), "-1 days +00:00:01"),
    ("jsonb", DOC, DOC),
    ("json", '{"b": 1,  "a": [2]}', '{"b": 1,  "a": [2]}'),
    ("int8[]", [1, None, -3], "{1,NULL,-3}"),
    ("text[]", TEXTS, '{a,"b c","",NULL,"q\\"uote","back\\\\slash",ü,"{}","NULL"}'),
    ("int4[]", [[1, 2], [3, 4]], "{{1,2},{3,4}}"),
    ("int4[]", [], "{}"),
    ("float8[]", [0.5, -0.0, math.inf], "{0.5,-0,Infinity}"),
]
NULLABLE = ["int8", "numeric", "text", "bytea", "bool", "float8", "date", "timestamptz", "interval", "jsonb", "uuid"]


@scenario("typed round trips")
async def typed_round_trips():
    c = await connect()
    try:
        for sqltype, obj, text in TYPED:
            got = await c.fetchrow(f"SELECT $1::{sqltype}, ($1::{sqltype})::text", obj)
            check(got[0], obj, f"{sqltype} {short(obj)} back")
            if text is not None:
                check(got[1], text, f"{sqltype} {short(obj)} as the server sees it")
                literal = await c.fetchval("SELECT quote_literal($1)", text)
                check(await c.fetchval(f"SELECT {literal}::{sqltype}"), obj, f"{sqltype} literal {short(text)}")
        # asyncpg returns its own UUID class; it compares equal to uuid.UUID and prints the same.
        got = await c.fetchval("SELECT $1::uuid", UID)
        check((got == UID, str(got)), (True, str(UID)), "uuid back")
        check(await c.fetchval("SELECT $1::uuid::text", UID), str(UID), "uuid as the server sees it")
        for sqltype in NULLABLE:
            check(tuple(await c.fetchrow(f"SELECT $1::{sqltype}", None)), (None,), f"NULL {sqltype}")
        # jsonb normalises the text it is given.
        check(await c.fetchval("""SELECT '{"b": 1,  "a": [2]}'::jsonb"""), '{"a": [2], "b": 1}', "jsonb normalised")
        check(await c.fetchval("SELECT to_char($1::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
                               datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)),
              "2024-02-29 23:59:59.123456", "timestamptz as the server sees it")

        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_types")
        await c.execute(
            f"""CREATE TABLE {PREFIX}_types (i8 int8, n numeric, t text, b bytea, ok bool, f float8, d date,
                at timestamptz, iv interval, j jsonb, tags text[], grid int4[])"""
        )
        row = (
            -(2**62), Decimal("-98765.43210"), TEXT, bytes(range(255, -1, -1)), True, -2.5e-10,
            date(1999, 12, 31), datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
            timedelta(days=40, seconds=1, microseconds=1), DOC, TEXTS, [[1, None], [None, 4]],
        )
        await c.execute(f"INSERT INTO {PREFIX}_types VALUES ({', '.join(f'${i + 1}' for i in range(len(row)))})", *row)
        await c.execute(f"INSERT INTO {PREFIX}_types (i8) VALUES (NULL)")
        got = records(await c.fetch(f"SELECT * FROM {PREFIX}_types ORDER BY i8 NULLS LAST"))
        check(got, [row, (None,) * len(row)], "table rows")
        await c.execute(f"DROP TABLE {PREFIX}_types")
    finally:
        await c.close()


@scenario("errors inside transactions")
async def errors_in_transactions():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_err")
        await c.execute(f"CREATE TABLE {PREFIX}_err (id int PRIMARY KEY)")
        await c.execute(f"INSERT INTO {PREFIX}_err VALUES (1)")
        # Nothing below sends a notice on PostgreSQL: failing and rolling back is silent.
        notices = []
        c.add_log_listener(lambda _conn, msg: notices.append(f"{msg.severity} {msg.message}"))

        tx = c.transaction()
        await tx.start()
        await c.execute(f"INSERT INTO {PREFIX}_err VALUES ($1)", 2)
        err = await expect_error("23505", "duplicate key", c.execute(f"INSERT INTO {PREFIX}_err VALUES ($1)", 1))
        check(type(err), asyncpg.UniqueViolationError, "error class")
        check((err.message, err.detail, err.table_name, err.constraint_name),
              (f'duplicate key value violates unique constraint "{PREFIX}_err_pkey"', "Key (id)=(1) already exists.",
               f"{PREFIX}_err", f"{PREFIX}_err_pkey"), "error fields")
        await expect_error("25P02", "a statement in the failed transaction", c.fetchval("SELECT 1"))
        await tx.rollback()
        check(c.is_in_transaction(), False, "in a transaction after rollback")
        check(await c.fetchval(f"SELECT array_agg(id ORDER BY id) FROM {PREFIX}_err"), [1], "rows after rollback")

        # A nested transaction is a savepoint: it takes the error, the outer one commits.
        async with c.transaction():
            await c.execute(f"INSERT INTO {PREFIX}_err VALUES (3)")
            try:
                async with c.transaction():
                    await c.execute(f"INSERT INTO {PREFIX}_err VALUES (4)")
                    await c.execute(f"INSERT INTO {PREFIX}_err VALUES (1)")
                raise Failure("the duplicate in the savepoint succeeded")
            except asyncpg.UniqueViolationError:
                pass
            await c.execute(f"INSERT INTO {PREFIX}_err VALUES (5)")
        check(await c.fetchval(f"SELECT array_agg(id ORDER BY id) FROM {PREFIX}_err"), [1, 3, 5], "rows")

        # A prepared statement that fails is still usable afterwards, in and out of transactions.
        divide = await c.prepare("SELECT 10 / $1::int")
        for divisor in (0, 5, 0, 2):
            if divisor == 0:
                await expect_error("22012", "division by zero", divide.fetchval(divisor))
            else:
                check(await divide.fetchval(divisor), 10 // divisor, f"10 / {divisor}")
        async with c.transaction():
            check(await divide.fetchval(1), 10, "10 / 1 in a transaction")

        # Every field of a raised error arrives.
        err = await expect_error(
            "22023", "RAISE",
            c.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'drv custom ü', "
                      "DETAIL = 'the detail', HINT = 'the hint'; END $$"),
        )
        check((err.severity, err.message, err.detail, err.hint), ("ERROR", "drv custom ü", "the detail", "the hint"),
              "raised error fields")
        check(notices, [], "notices")

        # A deferred constraint fails at COMMIT, which ends the transaction.
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_deferred")
        await c.execute(f"CREATE TABLE {PREFIX}_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        tx = c.transaction()
        await tx.start()
        await c.execute(f"INSERT INTO {PREFIX}_deferred VALUES (1), (1)")
        await expect_error("23505", "COMMIT with a deferred unique violation", tx.commit())
        check(c.is_in_transaction(), False, "in a transaction after the failed commit")
        check(await c.fetchval(f"SELECT count(*) FROM {PREFIX}_deferred"), 0, "rows after the failed commit")
        await c.execute(f"DROP TABLE {PREFIX}_deferred")
        await c.execute(f"DROP TABLE {PREFIX}_err")
    finally:
        await c.close()


def big_text(size):
    """At least `size` bytes of UTF-8 with one-, two-, three- and four-byte characters."""
    unit = "0123456789abcdef ü€🐘\n"
    return unit * (size // len(unit.encode()) + 1)


@scenario("4.5 MiB text and bytea parameters")
async def large_parameters():
    size = 4 * 1024 * 1024 + 512 * 1024
    text = big_text(size)
    blob = random.Random(7).randbytes(size)
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    blob_sha = hashlib.sha256(blob).hexdigest()
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_large")
        await c.execute(f"CREATE TABLE {PREFIX}_large (id int PRIMARY KEY, t text, b bytea)")
        await c.execute(f"INSERT INTO {PREFIX}_large (id, t) VALUES (1, $1)", text)
        await c.execute(f"INSERT INTO {PREFIX}_large (id, b) VALUES (2, $1)", blob)
        got = records(await c.fetch(
            f"""SELECT id, octet_length(t), char_length(t), encode(sha256(convert_to(t, 'UTF8')), 'hex'),
                       octet_length(b), encode(sha256(b), 'hex') FROM {PREFIX}_large ORDER BY id"""
        ))
        check(got, [(1, len(text.encode()), len(text), text_sha, None, None),
                    (2, None, None, None, len(blob), blob_sha)], "lengths and SHA-256 on the server")
        got = await c.fetchval(f"SELECT t FROM {PREFIX}_large WHERE id = 1")
        check((len(got), hashlib.sha256(got.encode()).hexdigest()), (len(text), text_sha), "text read back")
        got = await c.fetchval(f"SELECT b FROM {PREFIX}_large WHERE id = 2")
        check((len(got), hashlib.sha256(got).hexdigest()), (len(blob), blob_sha), "bytea read back")
        got = await c.fetchval("SELECT $1::bytea", blob)
        check((len(got), hashlib.sha256(got).hexdigest()), (len(blob), blob_sha), "bytea echoed")
        await c.execute(f"DROP TABLE {PREFIX}_large")
    finally:
        await c.close()


@scenario("application_name at connect and by SET")
async def application_name():
    c = await connect(server_settings={"application_name": "drv-asyncpg-startup"})
    try:
        check(await c.fetchval("SELECT current_setting('application_name')"), "drv-asyncpg-startup", "current_setting")
        check(c.get_settings().application_name, "drv-asyncpg-startup", "reported at startup")
        await c.execute("SET application_name = 'drv-asyncpg-set'")
        check(await c.fetchval("SELECT current_setting('application_name')"), "drv-asyncpg-set",
              "current_setting after SET")
        check(c.get_settings().application_name, "drv-asyncpg-set", "reported after SET")
        await c.fetchval("SELECT set_config('application_name', 'drv-asyncpg-set-config', false)")
        check(c.get_settings().application_name, "drv-asyncpg-set-config", "reported after set_config")
        await check_reported(c, "after SET application_name")
    finally:
        await c.close()


@scenario("DateStyle changed by SET")
async def datestyle():
    day = date(2025, 12, 7)
    at = datetime(2025, 12, 7, 0, 30, 15, 250000, tzinfo=UTC)
    c = await connect()
    try:
        await c.execute("SET TimeZone = 'UTC'")
        for style, reported_as, day_text, at_text in (
            ("German", "German, DMY", "07.12.2025", "07.12.2025 00:30:15.25 UTC"),
            ("SQL, MDY", "SQL, MDY", "12/07/2025", "12/07/2025 00:30:15.25 UTC"),
            ("Postgres, DMY", "Postgres, DMY", "07-12-2025", "Sun 07 Dec 00:30:15.25 2025 UTC"),
            ("ISO", "ISO, DMY", "2025-12-07", "2025-12-07 00:30:15.25+00"),
        ):
            await c.execute(f"SET DateStyle = '{style}'")
            check(await c.fetchval("SELECT current_setting('DateStyle')"), reported_as,
                  f"current_setting after {style}")
            check(tuple(await c.fetchrow("SELECT $1::date, $2::timestamptz, $1::date::text, $2::timestamptz::text",
                                         day, at)),
                  (day, at, day_text, at_text), f"date and timestamptz under {style}")
            # Input is read in the style's field order too.
            check(await c.fetchval(f"SELECT '{day_text}'::date"), day, f"{day_text} read under {style}")
            check(c.get_settings().DateStyle, reported_as, f"DateStyle reported after SET {style}")
            await check_reported(c, f"after SET DateStyle {style}")
    finally:
        await c.close()


@scenario("TimeZone changed by SET")
async def timezone_set():
    at = datetime(2025, 12, 7, 0, 0, 0, tzinfo=UTC)
    c = await connect()
    try:
        await c.execute("SET TimeZone = 'Asia/Tokyo'")
        check(await c.fetchval("SELECT current_setting('TimeZone')"), "Asia/Tokyo", "current_setting")
        check(tuple(await c.fetchrow("SELECT $1::timestamptz, $1::timestamptz::text, '2025-12-07 09:00'::timestamptz",
                                     at)),
              (at, "2025-12-07 09:00:00+09", at), "timestamptz in Tokyo")
        check(await c.fetchval("SELECT extract(hour FROM $1::timestamptz)::int", at), 9, "the hour in Tokyo")
        check(c.get_settings().TimeZone, "Asia/Tokyo", "TimeZone reported after SET")
        await check_reported(c, "after SET TimeZone")
    finally:
        await c.close()


@scenario("TimeZone and DateStyle as startup parameters")
async def startup_parameters():
    at = datetime(2025, 12, 7, 0, 0, 0, tzinfo=UTC)
    c = await connect(server_settings={"TimeZone": "Asia/Tokyo", "DateStyle": "German",
                                       "application_name": "drv-asyncpg-startup"})
    try:
        check(tuple(await c.fetchrow("SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
                                     "current_setting('application_name'), $1::timestamptz::text", at)),
              ("Asia/Tokyo", "German, DMY", "drv-asyncpg-startup", "07.12.2025 09:00:00 JST"),
              "settings in the session")
        check(await c.fetchval("SELECT $1::timestamptz", at), at, "timestamptz")
        check((c.get_settings().TimeZone, c.get_settings().DateStyle, c.get_settings().application_name),
              ("Asia/Tokyo", "German, DMY", "drv-asyncpg-startup"), "reported at startup")
        await check_reported(c, "after startup parameters")
    finally:
        await c.close()


@scenario("client_encoding LATIN1")
async def client_encoding():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_enc")
        await c.execute(f"CREATE TABLE {PREFIX}_enc (id int PRIMARY KEY, t text)")
        await c.execute("SET client_encoding = 'LATIN1'")
        check(await c.fetchval("SELECT current_setting('client_encoding')"), "LATIN1", "current_setting")
        check(c.get_settings().client_encoding, "LATIN1", "client_encoding reported after SET")
        # asyncpg sends the query text itself as UTF-8 whatever the encoding, so the non-ASCII
        # text here travels as parameters and results only.
        check(await c.fetchval("SELECT chr(233) || chr(241) || chr(252)"), "éñü", "LATIN1 text from the server")
        check(await c.fetchval("SELECT $1::text", "naïve £"), "naïve £", "LATIN1 text both ways")
        await c.execute(f"INSERT INTO {PREFIX}_enc VALUES (1, $1)", "Größe")
        check(await c.fetchval(f"SELECT octet_length(convert_to(t, 'UTF8')) FROM {PREFIX}_enc WHERE id = 1"), 7,
              "stored as UTF-8 on the server")
        await expect_error("22P05", "a character LATIN1 lacks", c.fetchval("SELECT 'euro ' || chr(8364)"))
        await c.execute("RESET client_encoding")
        check(c.get_settings().client_encoding, "UTF8", "client_encoding reported after RESET")
        check(await c.fetchval(f"SELECT t || ' 日本 🐘' FROM {PREFIX}_enc WHERE id = 1"), "Größe 日本 🐘", "UTF-8 again")
        await c.execute(f"DROP TABLE {PREFIX}_enc")
    finally:
        await c.close()


@scenario("settings reverted by ROLLBACK and SET LOCAL")
async def settings_reverted_by_transactions():
    c = await connect()
    try:
        # The server side of each step is checked before what was reported, so that a wrong
        # setting is told apart from a missing report.
        initial, initial_reported = await session_view(c), reported(c)
        tx = c.transaction()
        await tx.start()
        await c.execute("SET application_name = 'drv-in-rolled-back-tx'")
        await c.execute("SET TimeZone = 'Asia/Tokyo'")
        check((await session_view(c))[1:3], ["Asia/Tokyo", "drv-in-rolled-back-tx"], "settings inside the transaction")
        check(c.get_settings().application_name, "drv-in-rolled-back-tx", "reported inside the transaction")
        await tx.rollback()
        check(await session_view(c), initial, "settings after ROLLBACK")
        async with c.transaction():
            await c.execute("SET LOCAL DateStyle = 'German'")
            check((await session_view(c))[0], "German, DMY", "DateStyle after SET LOCAL")
            check(c.get_settings().DateStyle, "German, DMY", "reported after SET LOCAL")
        check(await session_view(c), initial, "settings after COMMIT")
        check(reported(c), initial_reported, "reported after ROLLBACK and COMMIT")
        await check_reported(c, "after ROLLBACK and COMMIT")
    finally:
        await c.close()


@scenario("settings reverted by RESET ALL")
async def settings_reverted_by_reset():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_visible")
        await c.execute(f"CREATE TABLE {PREFIX}_visible (id int)")
        initial, initial_reported = await session_view(c), reported(c)
        check(initial[3:8], ['"$user", public', "0", "postgres", None, USER], "a new session's settings")
        # DISCARD ALL would drop the statements asyncpg has cached: RESET ALL is what its pool
        # runs.
        for reset in ("RESET ALL",):
            await c.execute("SET DateStyle = 'SQL, DMY'")
            await c.execute("SET TimeZone = 'America/New_York'")
            await c.execute("SET application_name = 'drv-before-reset'")
            await c.execute("SET search_path = drv_nowhere")
            await c.execute("SET statement_timeout = '17s'")
            await c.execute("SET IntervalStyle = 'iso_8601'")
            check(await c.fetchval("SELECT interval '1 day 2 hours'::text"), "P1DT2H", "interval under iso_8601")
            await c.execute(reset)
            # The server side first, so that a wrong setting is told apart from a missing report.
            check(await session_view(c), initial, f"settings after {reset}")
            check(await c.fetchval(f"SELECT count(*) FROM {PREFIX}_visible"), 0, f"a public table after {reset}")
            check(reported(c), initial_reported, f"reported after {reset}")
            await check_reported(c, f"after {reset}")
        await c.execute(f"DROP TABLE {PREFIX}_visible")
    finally:
        await c.close()


@scenario("a pool of connections at once")
async def pool_work():
    workers, rounds = 6, 10
    pool = await asyncpg.create_pool(host=HOST, database=DATABASE, user=USER, timeout=30, min_size=workers,
                                     max_size=workers, server_settings={"application_name": "drv-asyncpg-pool"})
    try:
        async with pool.acquire() as c:
            await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_counters")
            await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_log")
            await c.execute(f"CREATE TABLE {PREFIX}_counters (id int PRIMARY KEY, n int NOT NULL)")
            await c.execute(f"INSERT INTO {PREFIX}_counters SELECT g, 0 FROM generate_series(0, 2) g")
            await c.execute(f"CREATE TABLE {PREFIX}_log (task int, seq int, seen int, PRIMARY KEY (task, seq))")

        async def work(task):
            for seq in range(rounds):
                async with pool.acquire() as w:
                    async with w.transaction():
                        seen = await w.fetchval(f"UPDATE {PREFIX}_counters SET n = n + 1 WHERE id = $1 RETURNING n",
                                                task % 3)
                        await w.execute(f"INSERT INTO {PREFIX}_log VALUES ($1, $2, $3)", task, seq, seen)
                    check(await w.fetchval("SELECT current_setting('application_name')"), "drv-asyncpg-pool",
                          f"task {task}'s application_name")

        tasks = 4 * workers
        await asyncio.gather(*(work(task) for task in range(tasks)))
        async with pool.acquire() as c:
            per_counter = tasks // 3 * rounds
            check(records(await c.fetch(f"SELECT id, n FROM {PREFIX}_counters ORDER BY id")),
                  [(k, per_counter) for k in range(3)], "counters")
            # Every increment saw a distinct value: no two transactions interleaved on a counter.
            check(records(await c.fetch(
                f"SELECT task % 3, count(DISTINCT seen), min(seen), max(seen) FROM {PREFIX}_log GROUP BY 1 ORDER BY 1"
            )), [(k, per_counter, 1, per_counter) for k in range(3)], "values seen by the increments")
            await c.execute(f"DROP TABLE {PREFIX}_counters")
            await c.execute(f"DROP TABLE {PREFIX}_log")
    finally:
        await pool.close()


SESSION_VIEW = """SELECT current_setting('DateStyle'), current_setting('TimeZone'),
       current_setting('application_name'), current_setting('search_path'),
       current_setting('statement_timeout'), current_setting('IntervalStyle'),
       nullif(current_setting('drv.tenant', true), ''), current_user::text, '2025-12-07'::date::text"""


async def session_view(conn):
    """The settings as the server has them for this connection."""
    return list(await conn.fetchrow(SESSION_VIEW))


@scenario("settings of one pooled connection do not show on another")
async def settings_isolated():
    pool = await asyncpg.create_pool(host=HOST, database=DATABASE, user=USER, timeout=30, min_size=2, max_size=2)
    try:
        async with pool.acquire() as c:
            await c.execute(
                f"DO $$ BEGIN CREATE ROLE {PREFIX}_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        a, b = await pool.acquire(), await pool.acquire()
        try:
            before, before_reported = await session_view(b), reported(b)
            check(before[2:], ["", '"$user", public', "0", "postgres", None, USER, "2025-12-07"],
                  "b's settings, fresh from the pool")
            await a.execute("SET DateStyle = 'German'")
            await a.execute("SET TimeZone = 'Asia/Tokyo'")
            await a.execute("SET application_name = 'drv-asyncpg-a'")
            await a.execute("SET search_path = drv_nowhere, public")
            await a.execute("SET statement_timeout = '17s'")
            await a.execute("SET IntervalStyle = 'sql_standard'")
            await a.execute("SELECT set_config('drv.tenant', 'tenant-a', false)")
            await a.execute(f"SET ROLE {PREFIX}_role")
            # The server side first, so that a leak is told apart from a missing report.
            check(await session_view(b), before, "b's settings after a changed its own")
            a_after = ["German, DMY", "Asia/Tokyo", "drv-asyncpg-a", "drv_nowhere, public", "17s", "sql_standard",
                       "tenant-a", f"{PREFIX}_role", "07.12.2025"]
            check(await session_view(a), a_after, "a's own settings")
            for round_ in range(3):
                check(await session_view(b), before, f"b's settings while a has changed its own (round {round_})")
                async with b.transaction():
                    check(await session_view(b), before, "b's settings inside a transaction")
                check(await session_view(a), a_after, f"a's settings after b ran (round {round_})")
            check(reported(b), before_reported, "b's reported parameters")
            # The pool resets a connection when it is released (RESET ALL among others, which
            # leaves the role alone).
            await a.execute("RESET ROLE")
        finally:
            await pool.release(a)
            await pool.release(b)
        async with pool.acquire() as c1, pool.acquire() as c2:
            for c in (c1, c2):
                view = await session_view(c)
                # The placeholder drv.tenant may now exist in the session: reset, it reads as ''.
                if view[6] == "":
                    view[6] = None
                check(view, before, "settings after the pool reset the connections")
                check(reported(c), before_reported, "reported parameters after the pool reset the connections")
    finally:
        await pool.close()


@scenario("COPY in and out")
async def copy_rows():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {PREFIX}_copy; CREATE TABLE {PREFIX}_copy (id int8, label text)")
        status = await c.copy_records_to_table(f"{PREFIX}_copy", records=[(i, f"row {i}") for i in range(2000)])
        check(status, "COPY 2000", "copy_records_to_table")
        check(await c.fetchval(f"SELECT sum(id) FROM {PREFIX}_copy"), Decimal(1999000), "the rows copied in")
        out = io.BytesIO()
        status = await c.copy_from_query(f"SELECT id, label FROM {PREFIX}_copy WHERE id < 3 ORDER BY id", output=out)
        check((status, out.getvalue()), ("COPY 3", b"0\trow 0\n1\trow 1\n2\trow 2\n"), "copy_from_query")
        await c.execute(f"DROP TABLE {PREFIX}_copy")
    finally:
        await c.close()


@scenario("notices reach their own connection")
async def notices():
    a, b = await connect(), await connect()
    try:
        got = {"a": [], "b": []}
        a.add_log_listener(lambda _c, m: got["a"].append((m.severity, m.message)))
        b.add_log_listener(lambda _c, m: got["b"].append((m.severity, m.message)))
        for i in range(3):
            await a.execute(f"DO $$ BEGIN RAISE NOTICE 'for a %', {i}; END $$")
            await b.execute(f"DO $$ BEGIN RAISE WARNING 'for b %', {i}; END $$")
        # Log listeners are called soon after, not during, the query.
        await asyncio.sleep(0.1)
        check(got, {"a": [("NOTICE", f"for a {i}") for i in range(3)],
                    "b": [("WARNING", f"for b {i}") for i in range(3)]}, "notices per connection")
    finally:
        await a.close()
        await b.close()


async def main():
    chosen = [(name, fn) for name, fn in SCENARIOS if ONLY in name]
    if "--list" in sys.argv[1:]:
        print("\n".join(name for name, _ in chosen))
        return 0
    failed = []
    for name, fn in chosen:
        # The watchdog catches a hang even where asyncio cannot (a stuck event loop).
        faulthandler.dump_traceback_later(SCENARIO_TIMEOUT_S + 30, exit=True)
        try:
            await asyncio.wait_for(fn(), SCENARIO_TIMEOUT_S)
            print(f"ok   {name}", flush=True)
        except Failure as err:
            print(f"FAIL {name}: {err}", flush=True)
            failed.append(name)
        except Exception as err:
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
            failed.append(name)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if failed and not KEEP_GOING:
            break
    if failed:
        print(f"asyncpg {asyncpg.__version__}: {len(failed)} scenario(s) failed: {', '.join(failed)}", flush=True)
        return 1
    print(f"asyncpg {asyncpg.__version__}: all {len(chosen)} scenarios passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
