#!/usr/bin/env python3
"""psycopg 3 against a PostgreSQL server, checking exact results.

Usage: psycopg_check.py [--keep-going] [--only=TEXT] [--list] [HOST [DATABASE [USER]]]

The connection comes from the arguments, else from PGHOST (the socket directory), PGDATABASE
and PGUSER (default `postgres` for both). Each scenario prints one line, `ok   NAME` or
`FAIL NAME: what was wrong`; the program stops at the first failure with exit status 1
(`--keep-going` runs the remaining scenarios too, to see every failure at once; `--only=TEXT`
runs only the scenarios whose names contain TEXT; `--list` prints their names). Every
expectation is what native PostgreSQL of the same major does: the program must pass against
it unchanged.

psycopg decodes dates, timestamps and text by what the server last reported in ParameterStatus
(DateStyle, TimeZone, client_encoding), so several scenarios fail when a server changes a
setting without reporting it.
"""

import faulthandler
import hashlib
import math
import os
import random
import sys
import threading
import traceback
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus
from psycopg.types.json import Json, Jsonb

# A scenario that has not finished after this long is stuck (a reply that never comes): the
# interpreter dumps every thread's stack and exits with status 1.
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
PREFIX = "drv_psycopg"

args = [a for a in sys.argv[1:] if not a.startswith("--")]
KEEP_GOING = "--keep-going" in sys.argv[1:]
ONLY = next((a.removeprefix("--only=") for a in sys.argv[1:] if a.startswith("--only=")), "")
HOST = args[0] if len(args) > 0 else os.environ.get("PGHOST", "")
DATABASE = args[1] if len(args) > 1 else os.environ.get("PGDATABASE", "postgres")
USER = args[2] if len(args) > 2 else os.environ.get("PGUSER", "postgres")


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
        raise Failure(f"{what}: got {actual!r}, expected {expected!r}")


def short(value):
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def expect_error(sqlstate, what, fn):
    """Runs `fn`, which must fail with `sqlstate`; returns the error."""
    try:
        result = fn()
    except psycopg.Error as err:
        if err.sqlstate != sqlstate:
            raise Failure(f"{what}: got {type(err).__name__} {err.sqlstate} ({err}), expected SQLSTATE {sqlstate}")
        return err
    raise Failure(f"{what}: succeeded with {short(result)}, expected SQLSTATE {sqlstate}")


def connect(**kwargs):
    params = {"host": HOST, "dbname": DATABASE, "user": USER, "connect_timeout": 30, "autocommit": True}
    params.update(kwargs)
    return psycopg.connect(**params)


def one(conn, sql, params=None, **kwargs):
    row = conn.execute(sql, params, **kwargs).fetchone()
    if row is None:
        raise Failure(f"{sql}: got no row")
    return row


def value(conn, sql, params=None, **kwargs):
    return one(conn, sql, params, **kwargs)[0]


def check_reported(conn, what):
    """Every parameter the driver was told about equals the server's current setting."""
    rows = conn.execute("SELECT n, current_setting(n) FROM unnest(%s::text[]) n", (REPORTED,)).fetchall()
    for name, setting in rows:
        check(conn.info.parameter_status(name), setting, f"{what}: ParameterStatus {name} against current_setting")


SCENARIOS = []


def scenario(name):
    def register(fn):
        SCENARIOS.append((name, fn))
        return fn

    return register


@scenario("prepared statements reused")
def prepared_statements():
    with connect() as a, connect(prepare_threshold=0) as b:
        doubled = "SELECT %s::int8 * 2, %s::text || '/psycopg-prepared'"
        for i in range(200):
            check(one(a, doubled, (i, f"n{i}"), prepare=True), (i * 2, f"n{i}/psycopg-prepared"), f"round {i}")
        # Prepared once on the server, not once per execution.
        count = value(
            a, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ("%/psycopg-prepared%",)
        )
        check(count, 1, "pg_prepared_statements rows for the reused statement")

        # psycopg names statements _pg3_0, _pg3_1, ... on every connection: the same name
        # means different statements on a and b, used in turns.
        for i in range(50):
            check(value(b, "SELECT 'B:' || %s::text", (str(i),)), f"B:{i}", f"b round {i}")
            check(one(a, doubled, (i, "a"), prepare=True), (i * 2, "a/psycopg-prepared"), f"a round {i}")
            check(value(a, "SELECT 'A:' || %s::text", (str(i),), prepare=True), f"A:{i}", f"a round {i}")

        # A prepared INSERT and a prepared aggregate over what it wrote.
        b.execute(f"DROP TABLE IF EXISTS {PREFIX}_prep")
        b.execute(f"CREATE TABLE {PREFIX}_prep (id int8 PRIMARY KEY, label text NOT NULL)")
        for i in range(100):
            b.execute(f"INSERT INTO {PREFIX}_prep VALUES (%s, %s)", (i, f"row {i}"))
        check(one(b, f"SELECT count(*), sum(id) FROM {PREFIX}_prep"), (100, Decimal(4950)), "rows inserted")
        b.execute(f"DROP TABLE {PREFIX}_prep")


@scenario("pipeline mode")
def pipeline_mode():
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_pipe")
        c.execute(f"CREATE TABLE {PREFIX}_pipe (id serial PRIMARY KEY, n int NOT NULL UNIQUE)")
        with c.pipeline() as p:
            inserts = [
                c.execute(f"INSERT INTO {PREFIX}_pipe (n) VALUES (%s) RETURNING id, n * 10", (i,)) for i in range(100)
            ]
            total = c.execute(f"SELECT count(*), sum(n) FROM {PREFIX}_pipe")
            p.sync()
            rows = [cur.fetchone() for cur in inserts]
            check(rows, [(i + 1, i * 10) for i in range(100)], "RETURNING rows, in order")
            check(total.fetchone(), (100, 4950), "count and sum after the inserts")

        # executemany goes through a pipeline too.
        cur = c.cursor()
        cur.executemany(
            f"INSERT INTO {PREFIX}_pipe (n) VALUES (%s) RETURNING n", [(i,) for i in range(100, 150)], returning=True
        )
        got = []
        while True:
            got.extend(row[0] for row in cur.fetchall())
            if not cur.nextset():
                break
        check(got, list(range(100, 150)), "executemany RETURNING")

        # An error in the middle of a pipeline aborts what follows up to the sync, and the
        # implicit transaction rolls back what preceded it.
        def failing_pipeline():
            with c.pipeline():
                c.execute(f"INSERT INTO {PREFIX}_pipe (n) VALUES (%s)", (1000,))
                c.execute("SELECT 1 / %s::int", (0,))
                c.execute(f"INSERT INTO {PREFIX}_pipe (n) VALUES (%s)", (1001,))

        expect_error("22012", "division by zero in a pipeline", failing_pipeline)
        check(
            value(c, f"SELECT count(*) FROM {PREFIX}_pipe WHERE n >= 1000"),
            0,
            "rows from the failed pipeline",
        )
        check(value(c, f"SELECT count(*) FROM {PREFIX}_pipe"), 150, "rows in all")
        c.execute(f"DROP TABLE {PREFIX}_pipe")


UTC = timezone.utc
DOC = {"a": [1, 2.5, "ü", None, True], "b": {"c": "🐘", "d": ""}}
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
    ("numeric", Decimal("Infinity"), "Infinity"),
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
    ("date", date(1, 1, 1), "0001-01-01"),
    ("date", date(9999, 12, 31), "9999-12-31"),
    ("timestamp", datetime(2000, 1, 1, 0, 0, 0, 1), "2000-01-01 00:00:00.000001"),
    ("interval", timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=789000), "3 days 04:05:06.789"),
    ("interval", timedelta(days=-1, seconds=1), "-1 days +00:00:01"),
    ("jsonb", DOC, '{"a": [1, 2.5, "ü", null, true], "b": {"c": "🐘", "d": ""}}'),
    ("uuid", UID, str(UID)),
    ("int8[]", [1, None, -3], "{1,NULL,-3}"),
    ("text[]", TEXTS, '{a,"b c","",NULL,"q\\"uote","back\\\\slash",ü,"{}","NULL"}'),
    ("int4[]", [[1, 2], [3, 4]], "{{1,2},{3,4}}"),
    ("int4[]", [], "{}"),
    ("float8[]", [0.5, -0.0, math.inf], "{0.5,-0,Infinity}"),
]
NULLABLE = ["int8", "numeric", "text", "bytea", "bool", "float8", "date", "timestamptz", "interval", "jsonb", "uuid"]


def adapted(sqltype, obj):
    """The parameter psycopg needs for `obj` as `sqltype`."""
    if sqltype == "jsonb":
        return Jsonb(obj)
    if sqltype == "json":
        return Json(obj)
    return obj


@scenario("typed round trips")
def typed_round_trips():
    with connect() as c:
        for binary in (False, True):
            fmt = "binary" if binary else "text"
            cur = c.cursor(binary=binary)
            for sqltype, obj, text in TYPED:
                param = adapted(sqltype, obj)
                got = cur.execute(f"SELECT %s::{sqltype}, (%s::{sqltype})::text", (param, param)).fetchone()
                check(got[0], obj, f"{sqltype} {short(obj)} back in {fmt}")
                check(got[1], text, f"{sqltype} {short(obj)} as the server sees it")
                literal = value(c, "SELECT quote_literal(%s)", (text,))
                got = cur.execute(f"SELECT {literal}::{sqltype}").fetchone()[0]
                check(got, obj, f"{sqltype} literal {short(text)} decoded in {fmt}")
            for sqltype in NULLABLE:
                check(cur.execute(f"SELECT %s::{sqltype}", (None,)).fetchone(), (None,), f"NULL {sqltype} in {fmt}")

            # json keeps the text it was given; jsonb normalises it.
            got = cur.execute("""SELECT '{"b": 1,  "a": [2]}'::json, '{"b": 1,  "a": [2]}'::json::text,
                                        '{"b": 1,  "a": [2]}'::jsonb::text""").fetchone()
            check(got, ({"b": 1, "a": [2]}, '{"b": 1,  "a": [2]}', '{"a": [2], "b": 1}'), f"json and jsonb in {fmt}")

            # A timestamptz is one instant whatever the session's zone; psycopg attaches the
            # session's zone to it.
            at = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
            got = cur.execute(
                "SELECT %s::timestamptz, to_char(%s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
                (at, at),
            ).fetchone()
            check(got[0], at.astimezone(c.info.timezone), f"timestamptz in {fmt}")
            check(got[1], "2024-02-29 23:59:59.123456", "timestamptz as the server sees it")

        # Every type through a table, written with parameters and read both ways.
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_types")
        c.execute(
            f"""CREATE TABLE {PREFIX}_types (i8 int8, n numeric, t text, b bytea, ok bool, f float8, d date,
                at timestamptz, iv interval, j jsonb, u uuid, tags text[], grid int4[])"""
        )
        at = datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
        row = (
            -(2**62),
            Decimal("-98765.43210"),
            TEXT,
            bytes(range(255, -1, -1)),
            True,
            -2.5e-10,
            date(1999, 12, 31),
            at,
            timedelta(days=40, seconds=1, microseconds=1),
            DOC,
            UID,
            TEXTS,
            [[1, None], [None, 4]],
        )
        params = list(row)
        params[9] = Jsonb(DOC)
        c.execute(f"INSERT INTO {PREFIX}_types VALUES ({', '.join(['%s'] * len(row))})", params)
        c.execute(f"INSERT INTO {PREFIX}_types (i8) VALUES (NULL)")
        for binary in (False, True):
            got = c.cursor(binary=binary).execute(f"SELECT * FROM {PREFIX}_types ORDER BY i8 NULLS LAST").fetchall()
            expected_row = list(row)
            expected_row[7] = at.astimezone(c.info.timezone)
            check(list(got[0]), expected_row, f"table row, {'binary' if binary else 'text'}")
            check(list(got[1]), [None] * len(row), "row of NULLs")
        c.execute(f"DROP TABLE {PREFIX}_types")


@scenario("errors inside transactions")
def errors_in_transactions():
    with connect(autocommit=False) as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_err")
        c.execute(f"CREATE TABLE {PREFIX}_err (id int PRIMARY KEY)")
        c.execute(f"INSERT INTO {PREFIX}_err VALUES (1)")
        c.commit()
        # Nothing below sends a notice on PostgreSQL: failing and rolling back is silent.
        notices = []
        c.add_notice_handler(lambda d: notices.append(f"{d.severity} {d.message_primary}"))

        c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (2,))
        err = expect_error(
            "23505", "duplicate key", lambda: c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (1,))
        )
        check(type(err), errors.UniqueViolation, "error class")
        check(err.diag.message_primary, f'duplicate key value violates unique constraint "{PREFIX}_err_pkey"',
              "message")
        check(err.diag.message_detail, "Key (id)=(1) already exists.", "detail")
        check(err.diag.table_name, f"{PREFIX}_err", "table name field")
        check(c.info.transaction_status, TransactionStatus.INERROR, "transaction status after the error")
        expect_error("25P02", "a statement in the failed transaction", lambda: c.execute("SELECT 1"))
        c.rollback()
        check(c.info.transaction_status, TransactionStatus.IDLE, "transaction status after rollback")
        check(value(c, f"SELECT array_agg(id ORDER BY id) FROM {PREFIX}_err"), [1], "rows after rollback")
        c.commit()

        # A savepoint (a nested transaction block) takes the error; the outer one commits.
        with c.transaction():
            c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (3,))
            try:
                with c.transaction():
                    c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (4,))
                    c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (1,))
                raise Failure("the duplicate in the savepoint succeeded")
            except errors.UniqueViolation:
                pass
            c.execute(f"INSERT INTO {PREFIX}_err VALUES (%s)", (5,))
        check(c.execute(f"SELECT array_agg(id ORDER BY id) FROM {PREFIX}_err").fetchone()[0], [1, 3, 5], "rows")
        c.commit()

        # A prepared statement that fails is still usable afterwards.
        for divisor, expected in ((0, None), (5, 2), (0, None), (2, 5)):
            if expected is None:
                expect_error(
                    "22012", "division by zero", lambda: c.execute("SELECT 10 / %s::int", (divisor,), prepare=True)
                )
                c.rollback()
            else:
                check(value(c, "SELECT 10 / %s::int", (divisor,), prepare=True), expected, f"10 / {divisor}")

        # Every field of a raised error arrives.
        err = expect_error(
            "22023",
            "RAISE",
            lambda: c.execute(
                "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'drv custom ü', "
                "DETAIL = 'the detail', HINT = 'the hint'; END $$"
            ),
        )
        check(
            (err.diag.severity, err.diag.message_primary, err.diag.message_detail, err.diag.message_hint),
            ("ERROR", "drv custom ü", "the detail", "the hint"),
            "raised error fields",
        )
        c.rollback()

        # A deferred constraint fails at COMMIT, which ends the transaction.
        check(notices, [], "notices")
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_deferred")
        c.execute(f"CREATE TABLE {PREFIX}_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        c.commit()
        c.execute(f"INSERT INTO {PREFIX}_deferred VALUES (1), (1)")
        expect_error("23505", "COMMIT with a deferred unique violation", c.commit)
        check(c.info.transaction_status, TransactionStatus.IDLE, "transaction status after the failed commit")
        check(value(c, f"SELECT count(*) FROM {PREFIX}_deferred"), 0, "rows after the failed commit")
        c.execute(f"DROP TABLE {PREFIX}_deferred")
        c.execute(f"DROP TABLE {PREFIX}_err")
        c.commit()


def big_text(size):
    """At least `size` bytes of UTF-8 with one-, two-, three- and four-byte characters."""
    unit = "0123456789abcdef ü€🐘\n"
    return unit * (size // len(unit.encode()) + 1)


@scenario("4.5 MiB text and bytea parameters")
def large_parameters():
    size = 4 * 1024 * 1024 + 512 * 1024
    text = big_text(size)
    blob = random.Random(7).randbytes(size)
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    blob_sha = hashlib.sha256(blob).hexdigest()
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_large")
        c.execute(f"CREATE TABLE {PREFIX}_large (id int PRIMARY KEY, t text, b bytea)")
        c.execute(f"INSERT INTO {PREFIX}_large (id, t) VALUES (1, %s)", (text,))
        c.execute(f"INSERT INTO {PREFIX}_large (id, b) VALUES (2, %b)", (blob,))
        c.execute(f"INSERT INTO {PREFIX}_large (id, b) VALUES (3, %t)", (blob,))
        got = c.execute(
            f"""SELECT id, octet_length(t), char_length(t), encode(sha256(convert_to(t, 'UTF8')), 'hex'),
                       octet_length(b), encode(sha256(b), 'hex') FROM {PREFIX}_large ORDER BY id"""
        ).fetchall()
        check(
            got,
            [
                (1, len(text.encode()), len(text), text_sha, None, None),
                (2, None, None, None, len(blob), blob_sha),
                (3, None, None, None, len(blob), blob_sha),
            ],
            "lengths and SHA-256 on the server",
        )
        for binary in (False, True):
            fmt = "binary" if binary else "text"
            cur = c.cursor(binary=binary)
            got = cur.execute(f"SELECT t FROM {PREFIX}_large WHERE id = 1").fetchone()[0]
            check((len(got), hashlib.sha256(got.encode()).hexdigest()), (len(text), text_sha), f"text read back, {fmt}")
            got = cur.execute(f"SELECT b FROM {PREFIX}_large WHERE id = 2").fetchone()[0]
            check((len(got), hashlib.sha256(got).hexdigest()), (len(blob), blob_sha), f"bytea read back, {fmt}")
        got = c.cursor(binary=True).execute("SELECT %b::bytea", (blob,)).fetchone()[0]
        check((len(got), hashlib.sha256(got).hexdigest()), (len(blob), blob_sha), "bytea echoed")
        c.execute(f"DROP TABLE {PREFIX}_large")


@scenario("application_name at connect and by SET")
def application_name():
    with connect(application_name="drv-psycopg-startup") as c:
        check(c.info.parameter_status("application_name"), "drv-psycopg-startup", "reported at startup")
        check(value(c, "SELECT current_setting('application_name')"), "drv-psycopg-startup", "current_setting")
        c.execute("SET application_name = 'drv-psycopg-set'")
        check(c.info.parameter_status("application_name"), "drv-psycopg-set", "reported after SET")
        check(value(c, "SELECT current_setting('application_name')"), "drv-psycopg-set", "current_setting after SET")
        value(c, "SELECT set_config('application_name', 'drv-psycopg-set-config', false)")
        check(c.info.parameter_status("application_name"), "drv-psycopg-set-config", "reported after set_config")
        check_reported(c, "after SET application_name")


@scenario("DateStyle changed by SET")
def datestyle():
    day = date(2025, 12, 7)
    at = datetime(2025, 12, 7, 0, 30, 15, 250000, tzinfo=UTC)
    with connect() as c:
        c.execute("SET TimeZone = 'UTC'")
        for style, reported, day_text, at_text in (
            ("German", "German, DMY", "07.12.2025", "07.12.2025 00:30:15.25 UTC"),
            ("SQL, MDY", "SQL, MDY", "12/07/2025", "12/07/2025 00:30:15.25 UTC"),
            ("Postgres, DMY", "Postgres, DMY", "07-12-2025", "Sun 07 Dec 00:30:15.25 2025 UTC"),
            ("ISO", "ISO, DMY", "2025-12-07", "2025-12-07 00:30:15.25+00"),
        ):
            c.execute(f"SET DateStyle = '{style}'")
            check(c.info.parameter_status("DateStyle"), reported, f"DateStyle reported after SET {style}")
            check(value(c, "SELECT current_setting('DateStyle')"), reported, f"current_setting after SET {style}")
            got = one(c, "SELECT %s::date, %s::date::text, %s::timestamptz::text", (day, day, at))
            check(got, (day, day_text, at_text), f"date decoded by psycopg under {style}")
            got = c.cursor(binary=True).execute("SELECT %s::date, %s::timestamptz", (day, at)).fetchone()
            check(got, (day, at), f"binary date and timestamptz under {style}")
            if style != "ISO":
                # psycopg parses text timestamptz only in ISO style, and says so.
                err = None
                try:
                    c.execute("SELECT %s::timestamptz", (at,)).fetchone()
                except Exception as e:  # NotImplementedError from the C loader, DataError from Python's.
                    err = str(e)
                check(
                    err is not None and err.startswith(f"can't parse timestamptz with DateStyle '{reported}'"),
                    True,
                    f"psycopg's refusal of a text timestamptz under {style} (error {err!r})",
                )
            else:
                check(value(c, "SELECT %s::timestamptz", (at,)), at, "text timestamptz under ISO")
            check_reported(c, f"after SET DateStyle {style}")


@scenario("TimeZone changed by SET")
def timezone_set():
    at = datetime(2025, 12, 7, 0, 0, 0, tzinfo=UTC)
    tokyo = ZoneInfo("Asia/Tokyo")
    with connect() as c:
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        check(c.info.parameter_status("TimeZone"), "Asia/Tokyo", "TimeZone reported after SET")
        check(c.info.timezone, tokyo, "psycopg's idea of the session zone")
        for binary in (False, True):
            got = c.cursor(binary=binary).execute("SELECT %s::timestamptz, %s::timestamptz::text", (at, at)).fetchone()
            check(got[0], at.astimezone(tokyo), f"timestamptz decoded in Tokyo ({'binary' if binary else 'text'})")
            check(got[1], "2025-12-07 09:00:00+09", "timestamptz as text")
        check(value(c, "SELECT '2025-12-07 09:00'::timestamptz = %s", (at,)), True, "a local time read in Tokyo")
        check_reported(c, "after SET TimeZone")


@scenario("TimeZone and DateStyle as startup options")
def startup_options():
    at = datetime(2025, 12, 7, 0, 0, 0, tzinfo=UTC)
    with connect(options="-c TimeZone=Asia/Tokyo -c DateStyle=German -c application_name=drv-psycopg-options") as c:
        check(c.info.parameter_status("TimeZone"), "Asia/Tokyo", "TimeZone reported at startup")
        check(c.info.parameter_status("DateStyle"), "German, DMY", "DateStyle reported at startup")
        check(c.info.parameter_status("application_name"), "drv-psycopg-options", "application_name reported")
        check(
            one(c, "SELECT current_setting('TimeZone'), current_setting('DateStyle'), %s::timestamptz::text", (at,)),
            ("Asia/Tokyo", "German, DMY", "07.12.2025 09:00:00 JST"),
            "settings in the session",
        )
        check(value(c, "SELECT %s::date", (date(2025, 12, 7),)), date(2025, 12, 7), "date decoded under German")
        check(value(c, "SELECT %s::timestamptz", (at,), binary=True), at.astimezone(ZoneInfo("Asia/Tokyo")), "Tokyo")
        check_reported(c, "after startup options")


@scenario("client_encoding LATIN1")
def client_encoding():
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_enc")
        c.execute(f"CREATE TABLE {PREFIX}_enc (id int PRIMARY KEY, t text)")
        c.execute("SET client_encoding = 'LATIN1'")
        check(c.info.parameter_status("client_encoding"), "LATIN1", "client_encoding reported after SET")
        check(c.info.encoding, "iso8859-1", "psycopg's codec")
        check(value(c, "SELECT 'café ñ ü'"), "café ñ ü", "LATIN1 text from the server")
        check(value(c, "SELECT %s::text", ("naïve £",)), "naïve £", "LATIN1 text both ways")
        c.execute(f"INSERT INTO {PREFIX}_enc VALUES (1, %s)", ("Größe",))
        check(
            value(c, f"SELECT octet_length(convert_to(t, 'UTF8')) FROM {PREFIX}_enc WHERE id = 1"),
            7,
            "stored as UTF-8 on the server",
        )
        expect_error("22P05", "a character LATIN1 lacks", lambda: c.execute("SELECT 'euro ' || chr(8364)").fetchone())
        c.execute("RESET client_encoding")
        check(c.info.parameter_status("client_encoding"), "UTF8", "client_encoding reported after RESET")
        check(value(c, f"SELECT t || ' 日本 🐘' FROM {PREFIX}_enc WHERE id = 1"), "Größe 日本 🐘", "UTF-8 again")
        c.execute(f"DROP TABLE {PREFIX}_enc")


@scenario("settings reverted by ROLLBACK and SET LOCAL")
def settings_reverted_by_transactions():
    with connect() as c:
        # The server side of each step is checked before what was reported, so that a wrong
        # setting is told apart from a missing report.
        initial, initial_reported = session_view(c), {name: c.info.parameter_status(name) for name in REPORTED}
        c.execute("BEGIN")
        c.execute("SET application_name = 'drv-in-rolled-back-tx'")
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        check(session_view(c)[1:3], ["Asia/Tokyo", "drv-in-rolled-back-tx"], "settings inside the transaction")
        c.execute("ROLLBACK")
        check(session_view(c), initial, "settings after ROLLBACK")
        c.execute("BEGIN")
        c.execute("SET LOCAL DateStyle = 'German'")
        check(session_view(c)[0], "German, DMY", "DateStyle after SET LOCAL")
        c.execute("COMMIT")
        check(session_view(c), initial, "settings after COMMIT")

        c.execute("BEGIN")
        c.execute("SET application_name = 'drv-in-rolled-back-tx'")
        check(c.info.parameter_status("application_name"), "drv-in-rolled-back-tx", "reported inside the transaction")
        c.execute("ROLLBACK")
        check({name: c.info.parameter_status(name) for name in REPORTED}, initial_reported, "reported after ROLLBACK")
        check_reported(c, "after ROLLBACK")
        c.execute("BEGIN")
        c.execute("SET LOCAL DateStyle = 'German'")
        check(c.info.parameter_status("DateStyle"), "German, DMY", "reported after SET LOCAL")
        check(value(c, "SELECT %s::date", (date(2025, 1, 2),)), date(2025, 1, 2), "date under SET LOCAL")
        c.execute("COMMIT")
        check({name: c.info.parameter_status(name) for name in REPORTED}, initial_reported, "reported after COMMIT")
        check(value(c, "SELECT %s::date", (date(2025, 1, 2),)), date(2025, 1, 2), "date after COMMIT")


@scenario("settings reverted by RESET ALL and DISCARD ALL")
def settings_reverted_by_reset():
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_visible")
        c.execute(f"CREATE TABLE {PREFIX}_visible (id int)")
        initial, initial_reported = session_view(c), {name: c.info.parameter_status(name) for name in REPORTED}
        check(initial[3:8], ['"$user", public', "0", "postgres", None, USER], "a new session's settings")
        for reset in ("RESET ALL", "DISCARD ALL"):
            c.execute("SET DateStyle = 'SQL, DMY'")
            c.execute("SET TimeZone = 'America/New_York'")
            c.execute("SET application_name = 'drv-before-reset'")
            c.execute("SET search_path = drv_nowhere")
            c.execute("SET statement_timeout = '17s'")
            c.execute("SET IntervalStyle = 'iso_8601'")
            check(value(c, "SELECT interval '1 day 2 hours'::text"), "P1DT2H", "interval under iso_8601")
            c.execute(reset)
            # The server side first, so that a wrong setting is told apart from a missing report.
            check(session_view(c), initial, f"settings after {reset}")
            check(value(c, f"SELECT count(*) FROM {PREFIX}_visible"), 0, f"a public table after {reset}")
            check({name: c.info.parameter_status(name) for name in REPORTED}, initial_reported,
                  f"reported after {reset}")
            check_reported(c, f"after {reset}")
        c.execute(f"DROP TABLE {PREFIX}_visible")


@scenario("a handful of connections at once")
def many_connections():
    workers, rounds = 6, 20
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_counters")
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_log")
        c.execute(f"CREATE TABLE {PREFIX}_counters (id int PRIMARY KEY, n int NOT NULL)")
        c.execute(f"INSERT INTO {PREFIX}_counters SELECT g, 0 FROM generate_series(0, 2) g")
        c.execute(f"CREATE TABLE {PREFIX}_log (worker int, seq int, seen int, PRIMARY KEY (worker, seq))")
    failures = []

    def work(worker):
        try:
            with connect(autocommit=False, application_name=f"drv-psycopg-w{worker}") as w:
                for seq in range(rounds):
                    with w.transaction():
                        seen = value(
                            w,
                            f"UPDATE {PREFIX}_counters SET n = n + 1 WHERE id = %s RETURNING n",
                            (worker % 3,),
                            prepare=True,
                        )
                        w.execute(f"INSERT INTO {PREFIX}_log VALUES (%s, %s, %s)", (worker, seq, seen))
                    check(
                        value(w, "SELECT current_setting('application_name')"),
                        f"drv-psycopg-w{worker}",
                        f"worker {worker}'s application_name",
                    )
                    w.commit()
        except Exception as err:
            failures.append(f"worker {worker}: {err}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise Failure("; ".join(failures))
    with connect() as c:
        per_counter = workers // 3 * rounds
        check(c.execute(f"SELECT id, n FROM {PREFIX}_counters ORDER BY id").fetchall(),
              [(k, per_counter) for k in range(3)], "counters")
        # Every increment saw a distinct value: no two transactions interleaved on a counter.
        check(
            c.execute(
                f"SELECT worker % 3, count(DISTINCT seen), min(seen), max(seen) FROM {PREFIX}_log GROUP BY 1 ORDER BY 1"
            ).fetchall(),
            [(k, per_counter, 1, per_counter) for k in range(3)],
            "values seen by the increments",
        )
        c.execute(f"DROP TABLE {PREFIX}_counters")
        c.execute(f"DROP TABLE {PREFIX}_log")


def ensure_role(conn):
    conn.execute(
        f"DO $$ BEGIN CREATE ROLE {PREFIX}_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )


SESSION_VIEW = """SELECT current_setting('DateStyle'), current_setting('TimeZone'),
       current_setting('application_name'), current_setting('search_path'),
       current_setting('statement_timeout'), current_setting('IntervalStyle'),
       nullif(current_setting('drv.tenant', true), ''), current_user, '2025-12-07'::date::text"""


def session_view(conn):
    """The settings as the server has them for this connection."""
    return list(one(conn, SESSION_VIEW))


def client_view(conn):
    """What the driver believes: a date decoded by the reported DateStyle, and every reported
    parameter."""
    return [value(conn, "SELECT '2025-12-07'::date"), {name: conn.info.parameter_status(name) for name in REPORTED}]


@scenario("settings of one connection do not show on another")
def settings_isolated():
    with connect(application_name="drv-psycopg-b") as b:
        ensure_role(b)
        before, before_client = session_view(b), client_view(b)
        with connect(application_name="drv-psycopg-a") as a:
            a_before = session_view(a)
            a.execute("SET DateStyle = 'German'")
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            a.execute("SET application_name = 'drv-psycopg-a-changed'")
            a.execute("SET search_path = drv_nowhere, public")
            a.execute("SET statement_timeout = '17s'")
            a.execute("SET IntervalStyle = 'sql_standard'")
            a.execute("SELECT set_config('drv.tenant', 'tenant-a', false)")
            a.execute(f"SET ROLE {PREFIX}_role")
            # The server side first, so that a leak is told apart from a missing report.
            check(session_view(b), before, "b's settings after a changed its own")
            a_after = [
                "German, DMY", "Asia/Tokyo", "drv-psycopg-a-changed", "drv_nowhere, public", "17s", "sql_standard",
                "tenant-a", f"{PREFIX}_role", "07.12.2025",
            ]
            check(session_view(a), a_after, "a's own settings")
            for round_ in range(3):
                check(session_view(b), before, f"b's settings while a has changed its own (round {round_})")
                with b.transaction():
                    check(session_view(b), before, "b's settings inside a transaction")
                check(session_view(a), a_after, f"a's settings after b ran (round {round_})")
            check(client_view(b), before_client, "b's decoded date and reported parameters")
            check(client_view(a)[0], date(2025, 12, 7), "a's date decoded under German")
            a.execute("RESET ALL")
            a.execute("RESET ROLE")
            # The placeholder drv.tenant now exists in a's session: reset, it reads as '' (shown
            # as NULL by the view's nullif).
            check(session_view(a), a_before, "a's settings after RESET ALL")
        check(session_view(b), before, "b's settings after a disconnected")
        check(client_view(b), before_client, "b's decoded date and reported parameters after a disconnected")
    with connect() as c:
        check(session_view(c), [before[0], before[1], "", *before[3:6], None, USER, before[8]], "a new connection")


@scenario("COPY in and out, text and binary")
def copy_rows():
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {PREFIX}_copy")
        c.execute(f"CREATE TABLE {PREFIX}_copy (id int8, label text, at date)")
        rows = [(i, f"row {i}\twith a tab", date(2025, 1, 1 + i % 28)) for i in range(2000)]
        with c.cursor().copy(f"COPY {PREFIX}_copy FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        with c.cursor().copy(f"COPY {PREFIX}_copy (id, label, at) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int8", "text", "date"])
            cp.write_row((5000, "binary", date(2025, 2, 1)))
        check(value(c, f"SELECT count(*) FROM {PREFIX}_copy"), 2001, "rows copied in")
        with c.cursor().copy(f"COPY (SELECT id, label, at FROM {PREFIX}_copy ORDER BY id) TO STDOUT") as cp:
            cp.set_types(["int8", "text", "date"])
            out = list(cp.rows())
        check(out[0], (0, "row 0\twith a tab", date(2025, 1, 1)), "first row copied out")
        check(out[-1], (5000, "binary", date(2025, 2, 1)), "last row copied out")
        check(len(out), 2001, "rows copied out")
        # A bad row fails the whole COPY; the connection goes on.
        try:
            with c.cursor().copy(f"COPY {PREFIX}_copy (id) FROM STDIN") as cp:
                cp.write(b"1\nnot a number\n")
        except errors.InvalidTextRepresentation:
            pass
        else:
            raise Failure("a bad row must fail the COPY")
        check(value(c, f"SELECT count(*) FROM {PREFIX}_copy"), 2001, "rows after a failed COPY")
        c.execute(f"DROP TABLE {PREFIX}_copy")


@scenario("notices reach their own connection")
def notices():
    with connect() as a, connect() as b:
        got = {"a": [], "b": []}
        a.add_notice_handler(lambda d: got["a"].append((d.severity, d.message_primary)))
        b.add_notice_handler(lambda d: got["b"].append((d.severity, d.message_primary)))
        for i in range(3):
            a.execute(f"DO $$ BEGIN RAISE NOTICE 'for a %', {i}; END $$")
            b.execute(f"DO $$ BEGIN RAISE WARNING 'for b %', {i}; END $$")
        check(
            got,
            {"a": [("NOTICE", f"for a {i}") for i in range(3)], "b": [("WARNING", f"for b {i}") for i in range(3)]},
            "notices per connection",
        )


def main():
    failed = []
    chosen = [(name, fn) for name, fn in SCENARIOS if ONLY in name]
    if "--list" in sys.argv[1:]:
        print("\n".join(name for name, _ in chosen))
        return
    for name, fn in chosen:
        faulthandler.dump_traceback_later(SCENARIO_TIMEOUT_S, exit=True)
        try:
            fn()
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
        print(f"psycopg {psycopg.__version__}: {len(failed)} scenario(s) failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"psycopg {psycopg.__version__}: all {len(chosen)} scenarios passed", flush=True)


if __name__ == "__main__":
    main()
