#!/usr/bin/env node
// postgres.js 3.x (`postgres`) against a PostgreSQL server, checking exact results.
//
// Usage: node postgres_js_check.js [--keep-going] [--only=TEXT] [--skip=TEXT]... [--list] [HOST [DATABASE [USER]]]
//
// The connection comes from the arguments, else from PGHOST (the socket directory), PGDATABASE
// and PGUSER (default `postgres` for both); `postgres` is found through NODE_PATH. Each scenario
// prints one line, `ok   NAME` or `FAIL NAME: what was wrong`; the program stops at the first
// failure with exit status 1 (`--keep-going` runs the remaining scenarios too, to see every
// failure at once; `--only=TEXT` runs only the scenarios whose names contain TEXT, `--skip=TEXT`
// leaves out those whose names contain it; `--list` prints their names). Every expectation is what native PostgreSQL of the same major does: the
// program must pass against it unchanged.
//
// postgres.js prepares every query by default (named statements, described with a Flush
// before they are bound), writes queries to the socket without waiting for earlier answers
// (pipelining, one Sync each), reads text-format results, and keeps the reported parameters in
// `sql.parameters` (one object for all of an instance's connections, so single-connection
// instances are used where they matter).

'use strict'

// postgres.js reads timestamp without time zone in the process's zone.
process.env.TZ = 'UTC'

const crypto = require('crypto')
const fs = require('fs')
const path = require('path')
const util = require('util')
const { Readable } = require('stream')
const { pipeline } = require('stream/promises')
const postgres = require('postgres')

// A scenario that has not finished after this long is stuck (a reply that never comes).
const SCENARIO_TIMEOUT_MS = 180_000

// Parameters PostgreSQL 16 and 17 report to the client (GUC_REPORT) at startup and whenever
// they change.
const REPORTED = [
  'application_name', 'client_encoding', 'DateStyle', 'IntervalStyle', 'TimeZone', 'integer_datetimes',
  'is_superuser', 'server_encoding', 'server_version', 'session_authorization', 'standard_conforming_strings',
  'in_hot_standby', 'scram_iterations', 'default_transaction_read_only',
]

// Every table and role this program makes starts with this, so that programs for other drivers
// can share a database with it.
const PREFIX = 'drv_postgres_js'

const flags = process.argv.slice(2).filter(a => a.startsWith('--'))
const args = process.argv.slice(2).filter(a => !a.startsWith('--'))
const KEEP_GOING = flags.includes('--keep-going')
const ONLY = (flags.find(a => a.startsWith('--only=')) || '--only=').slice('--only='.length)
const SKIP = flags.filter(a => a.startsWith('--skip=')).map(a => a.slice('--skip='.length))
const HOST = args[0] || process.env.PGHOST || ''
const DATABASE = args[1] || process.env.PGDATABASE || 'postgres'
const USER = args[2] || process.env.PGUSER || 'postgres'

class Failure extends Error {}

function show(value) {
  const text = util.inspect(value, { depth: 6, breakLength: Infinity, maxStringLength: 200, maxArrayLength: 40 })
  return text.length <= 600 ? text : text.slice(0, 600) + '...'
}

// Results are Array subclasses; compare their plain contents.
function plain(value) {
  if (Array.isArray(value)) return Array.from(value, plain)
  return value
}

function check(actual, expected, what) {
  if (!util.isDeepStrictEqual(plain(actual), expected)) {
    throw new Failure(`${what}: got ${show(plain(actual))}, expected ${show(expected)}`)
  }
}

async function expectError(sqlstate, what, promise) {
  let result
  try {
    result = await promise
  } catch (err) {
    if (err.code !== sqlstate) {
      throw new Failure(`${what}: got ${err.code} (${err.message}), expected SQLSTATE ${sqlstate}`)
    }
    return err
  }
  throw new Failure(`${what}: succeeded with ${show(plain(result))}, expected SQLSTATE ${sqlstate}`)
}

// An instance of `max` connections (one unless told otherwise, so that `sql.parameters` is that
// connection's view).
function connect(extra = {}) {
  return postgres({
    host: HOST, database: DATABASE, username: USER, max: 1, connect_timeout: 30, onnotice: () => {}, ...extra,
  })
}

// `text` prepared with `params`, rows as arrays.
async function rows(sql, text, params = []) {
  return plain(await sql.unsafe(text, params, { prepare: true }).values())
}

async function one(sql, text, params) {
  const got = await rows(sql, text, params)
  if (got.length !== 1) throw new Failure(`${text}: got ${got.length} rows, expected one`)
  return got[0]
}

async function value(sql, text, params) {
  return (await one(sql, text, params))[0]
}

function reported(sql) {
  return Object.fromEntries(REPORTED.map(name => [name, sql.parameters[name]]))
}

// Every parameter the driver was told about equals the server's current setting.
async function checkReported(sql, what) {
  const settings = await rows(sql, 'SELECT n, current_setting(n) FROM unnest($1::text[]) n', [REPORTED])
  for (const [name, setting] of settings) {
    check(sql.parameters[name], setting, `${what}: ParameterStatus ${name} against current_setting`)
  }
}

const SESSION_VIEW = `SELECT current_setting('DateStyle'), current_setting('TimeZone'),
  current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout'),
  current_setting('IntervalStyle'), nullif(current_setting('drv.tenant', true), ''), current_user::text,
  '2025-12-07'::date::text`

// The settings as the server has them for this connection.
async function sessionView(sql) {
  return one(sql, SESSION_VIEW)
}

const SCENARIOS = []
function scenario(name, fn) {
  SCENARIOS.push([name, fn])
}

scenario('prepared statements reused', async () => {
  const a = connect()
  const b = connect()
  try {
    // One template, one statement, prepared once and bound many times.
    const doubled = i => a`SELECT ${i}::int8 * 2 AS d, ${'n' + i}::text || '/postgres-js-prepared' AS t`.values()
    for (let i = 0; i < 200; i++) {
      check(await doubled(i), [[String(i * 2), `n${i}/postgres-js-prepared`]], `round ${i}`)
    }
    const marker = '%/postgres-js-prepared%'
    check(await a`SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement LIKE ${marker}`,
      [{ n: 1 }], 'pg_prepared_statements rows for the reused statement')
    // Two connections' statements used in turns.
    for (let i = 0; i < 50; i++) {
      check(await b`SELECT 'B:' || ${String(i)}::text AS v`.values(), [[`B:${i}`]], `b round ${i}`)
      check(await doubled(i), [[String(i * 2), `n${i}/postgres-js-prepared`]], `a round ${i}`)
    }

    await a`DROP TABLE IF EXISTS ${a(PREFIX + '_prep')}`
    await a`CREATE TABLE ${a(PREFIX + '_prep')} (id int8 PRIMARY KEY, label text NOT NULL)`
    for (let i = 0; i < 100; i++) await a`INSERT INTO ${a(PREFIX + '_prep')} VALUES (${i}, ${'row ' + i})`
    check(await a`SELECT count(*), sum(id) FROM ${a(PREFIX + '_prep')}`.values(), [['100', '4950']], 'rows inserted')
    await a`DROP TABLE ${a(PREFIX + '_prep')}`
  } finally {
    await a.end({ timeout: 5 })
    await b.end({ timeout: 5 })
  }
})

scenario('pipelined queries on one connection', async () => {
  const sql = connect()
  try {
    const table = sql(PREFIX + '_pipe')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (id serial PRIMARY KEY, n int NOT NULL UNIQUE)`
    // Every query written before the first answer arrives; each gets its own answer, in order.
    const inserts = [...Array(200).keys()].map(i =>
      sql`INSERT INTO ${table} (n) VALUES (${i}) RETURNING id, n * 10 AS x`)
    const total = sql`SELECT count(*)::int AS count, sum(n)::int AS sum FROM ${table}`
    const results = await Promise.all([...inserts, total])
    check(results.slice(0, 200).map(r => r[0]), [...Array(200).keys()].map(i => ({ id: i + 1, x: i * 10 })),
      'RETURNING rows, in order')
    check(results[200], [{ count: 200, sum: 19900 }], 'count and sum after the inserts')

    // A failing query in the pipeline fails alone.
    const settled = await Promise.allSettled([
      sql`SELECT ${1}::int + 1 AS v`,
      sql`SELECT 1 / ${0}::int AS v`,
      sql`INSERT INTO ${table} (n) VALUES (${1})`,
      sql`SELECT ${'after'}::text AS v`,
    ])
    check(settled.map(s => s.status === 'fulfilled' ? plain(s.value) : s.reason.code),
      [[{ v: 2 }], '22012', '23505', [{ v: 'after' }]], 'answers to the pipelined queries')

    // A transaction given as a list of queries is pipelined too, and atomic.
    const inTx = await sql.begin(tx => [
      tx`INSERT INTO ${table} (n) VALUES (${1000})`,
      tx`INSERT INTO ${table} (n) VALUES (${1001})`,
      tx`SELECT count(*)::int AS count FROM ${table}`,
    ])
    check(inTx[2], [{ count: 202 }], 'count inside the pipelined transaction')
    await expectError('23505', 'a duplicate in a pipelined transaction', sql.begin(tx => [
      tx`INSERT INTO ${table} (n) VALUES (${2000})`,
      tx`INSERT INTO ${table} (n) VALUES (${1000})`,
      tx`INSERT INTO ${table} (n) VALUES (${2001})`,
    ]))
    check(await sql`SELECT count(*)::int AS count FROM ${table}`, [{ count: 202 }], 'rows in all')
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

const DOC = { a: [1, 2.5, 'ü', null, true], b: { c: '🐘', d: '' } }
const UID = '6f1c1f8e-3c2a-4a4b-9a57-0c1d2e3f4a5b'
const TEXT = "héllo wörld — 日本語 🐘 \t\n\\ '\" end"
// postgres.js reads an unquoted NULL inside an array as the text NULL: no NULL elements here.
const TEXTS = ['a', 'b c', '', 'q"uote', 'back\\slash', 'ü', '{}', 'NULL']
const ALL_BYTES = Buffer.from([...Array(256).keys()])

// [SQL type, the parameter, what postgres.js reads back, the server's text form].
const TYPED = [
  ['int8', '-9223372036854775808', '-9223372036854775808', '-9223372036854775808'],
  ['int8', '9223372036854775807', '9223372036854775807', '9223372036854775807'],
  ['int2', -32768, -32768, '-32768'],
  ['int4', 2147483647, 2147483647, '2147483647'],
  ['numeric', '12345678901234567890.123456789', '12345678901234567890.123456789', '12345678901234567890.123456789'],
  ['numeric', '-0.000001', '-0.000001', '-0.000001'],
  ['numeric', 'NaN', 'NaN', 'NaN'],
  ['numeric', 'Infinity', 'Infinity', 'Infinity'],
  ['text', TEXT, TEXT, TEXT],
  ['bytea', ALL_BYTES, ALL_BYTES, '\\x' + ALL_BYTES.toString('hex')],
  ['bool', true, true, 'true'],
  ['bool', false, false, 'false'],
  ['float8', 0.1, 0.1, '0.1'],
  ['float8', -1.5e-300, -1.5e-300, '-1.5e-300'],
  ['float8', 1.7976931348623157e308, 1.7976931348623157e308, '1.7976931348623157e+308'],
  ['float8', Infinity, Infinity, 'Infinity'],
  ['float8', -Infinity, -Infinity, '-Infinity'],
  ['float8', NaN, NaN, 'NaN'],
  ['float8', '-0', -0, '-0'],
  ['date', '2024-02-29', new Date(Date.UTC(2024, 1, 29)), '2024-02-29'],
  ['timestamp', '2000-01-01 00:00:00.001', new Date(Date.UTC(2000, 0, 1, 0, 0, 0, 1)), '2000-01-01 00:00:00.001'],
  ['timestamptz', new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123)), new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123)),
    null],
  ['interval', '3 days 04:05:06.789', '3 days 04:05:06.789', '3 days 04:05:06.789'],
  ['jsonb', DOC, DOC, '{"a": [1, 2.5, "ü", null, true], "b": {"c": "🐘", "d": ""}}'],
  // sql.json() sends jsonb, so the json made of it has jsonb's spacing.
  ['json', DOC, DOC, '{"a": [1, 2.5, "ü", null, true], "b": {"c": "🐘", "d": ""}}'],
  ['uuid', UID, UID, UID],
  ['int8[]', ['1', '-3'], ['1', '-3'], '{1,-3}'],
  ['text[]', TEXTS, TEXTS, '{a,"b c","","q\\"uote","back\\\\slash",ü,"{}","NULL"}'],
  ['int4[]', [[1, 2], [3, 4]], [[1, 2], [3, 4]], '{{1,2},{3,4}}'],
  ['int4[]', [], [], '{}'],
  ['float8[]', [0.5, -1.25, Infinity], [0.5, -1.25, Infinity], '{0.5,-1.25,Infinity}'],
]
const NULLABLE = ['int8', 'numeric', 'text', 'bytea', 'bool', 'float8', 'date', 'timestamptz', 'interval', 'jsonb',
  'uuid', 'int4[]']

scenario('typed round trips', async () => {
  const sql = connect()
  try {
    for (const [type, param, expected, text] of TYPED) {
      const p = type.startsWith('json') ? sql.json(param) : Array.isArray(param) ? sql.array(param) : param
      const [back, asText] = await one(sql, `SELECT $1::${type}, ($1::${type})::text`, [p])
      check(back, expected, `${type} ${show(param)} back`)
      if (text !== null) {
        check(asText, text, `${type} ${show(param)} as the server sees it`)
        const literal = await value(sql, 'SELECT quote_literal($1::text)', [text])
        check(await value(sql, `SELECT ${literal}::${type}`), expected, `${type} literal ${show(text)}`)
      }
    }
    check(await sql`SELECT to_char(${new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123))}::timestamptz AT TIME ZONE 'UTC',
      'YYYY-MM-DD HH24:MI:SS.MS') AS v`, [{ v: '2024-02-29 23:59:59.123' }], 'a Date as the server sees it')
    for (const type of NULLABLE) check(await one(sql, `SELECT $1::${type}`, [null]), [null], `NULL ${type}`)
    check(await sql`SELECT '{"b": 1,  "a": [2]}'::json::text AS j, '{"b": 1,  "a": [2]}'::jsonb::text AS jb`,
      [{ j: '{"b": 1,  "a": [2]}', jb: '{"a": [2], "b": 1}' }], 'json and jsonb text')

    const table = sql(PREFIX + '_types')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (i8 int8, n numeric, t text, b bytea, ok bool, f float8, d date,
      at timestamptz, iv interval, j jsonb, u uuid, tags text[], grid int4[])`
    const at = new Date(Date.UTC(2001, 1, 3, 4, 5, 6, 7))
    const bytes = Buffer.from([...Array(256).keys()].reverse())
    await sql`INSERT INTO ${table} VALUES (${'-4611686018427387904'}, ${'-98765.43210'}, ${TEXT}, ${bytes}, ${true},
      ${-2.5e-10}, ${'1999-12-31'}, ${at}, ${'40 days 00:00:01'}, ${sql.json(DOC)}, ${UID}, ${sql.array(TEXTS)},
      ${sql.array([[1, 2], [3, 4]])}::int4[])`
    await sql`INSERT INTO ${table} (i8) VALUES (NULL)`
    check(await sql`SELECT * FROM ${table} ORDER BY i8 NULLS LAST`.values(), [
      ['-4611686018427387904', '-98765.43210', TEXT, bytes, true, -2.5e-10, new Date(Date.UTC(1999, 11, 31)), at,
        '40 days 00:00:01', DOC, UID, TEXTS, [[1, 2], [3, 4]]],
      Array(13).fill(null),
    ], 'table rows')
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

class Rollback extends Error {}

scenario('errors inside transactions', async () => {
  // Nothing here sends a notice on PostgreSQL: failing and rolling back is silent.
  const notices = []
  const sql = connect({ onnotice: n => notices.push(`${n.severity} ${n.message}`) })
  try {
    const table = sql(PREFIX + '_err')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (id int PRIMARY KEY)`
    await sql`INSERT INTO ${table} VALUES (1)`
    notices.length = 0

    try {
      await sql.begin(async tx => {
        await tx`INSERT INTO ${table} VALUES (${2})`
        const err = await expectError('23505', 'duplicate key', tx`INSERT INTO ${table} VALUES (${1})`)
        check([err.message, err.detail, err.table_name, err.constraint_name, err.severity],
          [`duplicate key value violates unique constraint "${PREFIX}_err_pkey"`, 'Key (id)=(1) already exists.',
            `${PREFIX}_err`, `${PREFIX}_err_pkey`, 'ERROR'], 'error fields')
        await expectError('25P02', 'a statement in the failed transaction', tx`SELECT 1`)
        throw new Rollback()
      })
      throw new Failure('the failed transaction committed')
    } catch (err) {
      if (!(err instanceof Rollback)) throw err
    }
    check(await sql`SELECT array_agg(id ORDER BY id) AS ids FROM ${table}`, [{ ids: [1] }], 'rows after rollback')

    // A savepoint takes the error; the transaction commits.
    await sql.begin(async tx => {
      await tx`INSERT INTO ${table} VALUES (3)`
      await expectError('23505', 'duplicate in the savepoint', tx.savepoint(async sp => {
        await sp`INSERT INTO ${table} VALUES (4)`
        await sp`INSERT INTO ${table} VALUES (1)`
      }))
      await tx`INSERT INTO ${table} VALUES (5)`
    })
    check(await sql`SELECT array_agg(id ORDER BY id) AS ids FROM ${table}`, [{ ids: [1, 3, 5] }], 'rows')

    // A prepared statement that fails is still usable afterwards, in and out of transactions.
    const divide = d => sql`SELECT 10 / ${d}::int AS q`
    await expectError('22012', 'division by zero', divide(0))
    check(await divide(5), [{ q: 2 }], '10 / 5')
    await expectError('22012', 'division by zero in a transaction', sql.begin(tx => tx`SELECT 10 / ${0}::int AS q`))
    check(await divide(2), [{ q: 5 }], '10 / 2')

    // Every field of a raised error arrives.
    const raised = await expectError('22023', 'RAISE', sql`DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'drv custom ü', DETAIL = 'the detail', HINT = 'the hint'; END $$`)
    check([raised.severity, raised.message, raised.detail, raised.hint],
      ['ERROR', 'drv custom ü', 'the detail', 'the hint'], 'raised error fields')
    check(notices, [], 'notices')

    // A deferred constraint fails at COMMIT, which ends the transaction.
    const deferred = sql(PREFIX + '_deferred')
    await sql`DROP TABLE IF EXISTS ${deferred}`
    await sql`CREATE TABLE ${deferred} (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)`
    await expectError('23505', 'COMMIT with a deferred unique violation',
      sql.begin(tx => tx`INSERT INTO ${deferred} VALUES (1), (1)`))
    check(await sql`SELECT count(*)::int AS n FROM ${deferred}`, [{ n: 0 }], 'rows after the failed commit')
    await sql`DROP TABLE ${deferred}`
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

// At least `size` bytes of UTF-8 with one-, two-, three- and four-byte characters.
function bigText(size) {
  const unit = '0123456789abcdef ü€🐘\n'
  return unit.repeat(Math.floor(size / Buffer.byteLength(unit)) + 1)
}

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex')
}

scenario('4.5 MiB text and bytea parameters', async () => {
  const size = 4 * 1024 * 1024 + 512 * 1024
  const text = bigText(size)
  const blob = Buffer.alloc(size)
  let x = 7
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    blob[i] = x >>> 24
  }
  const sql = connect()
  try {
    const table = sql(PREFIX + '_large')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (id int PRIMARY KEY, t text, b bytea)`
    await sql`INSERT INTO ${table} (id, t) VALUES (1, ${text})`
    await sql`INSERT INTO ${table} (id, b) VALUES (2, ${blob})`
    check(await sql`SELECT id, octet_length(t), char_length(t), encode(sha256(convert_to(t, 'UTF8')), 'hex'),
        octet_length(b), encode(sha256(b), 'hex') FROM ${table} ORDER BY id`.values(),
    [[1, Buffer.byteLength(text), [...text].length, sha256(text), null, null],
      [2, null, null, null, size, sha256(blob)]], 'lengths and SHA-256 on the server')
    const [{ t }] = await sql`SELECT t FROM ${table} WHERE id = 1`
    check([t.length, sha256(t)], [text.length, sha256(text)], 'text read back')
    const [{ b }] = await sql`SELECT b FROM ${table} WHERE id = 2`
    check([b.length, sha256(b)], [size, sha256(blob)], 'bytea read back')
    const [{ e }] = await sql`SELECT ${blob}::bytea AS e`
    check([e.length, sha256(e)], [size, sha256(blob)], 'bytea echoed')
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('application_name at connect and by SET', async () => {
  const sql = connect({ connection: { application_name: 'drv-postgres-js-startup' } })
  try {
    check(await value(sql, "SELECT current_setting('application_name')"), 'drv-postgres-js-startup', 'current_setting')
    check(sql.parameters.application_name, 'drv-postgres-js-startup', 'reported at startup')
    await sql`SET application_name = 'drv-postgres-js-set'`
    check(await value(sql, "SELECT current_setting('application_name')"), 'drv-postgres-js-set',
      'current_setting after SET')
    check(sql.parameters.application_name, 'drv-postgres-js-set', 'reported after SET')
    await sql`SELECT set_config('application_name', 'drv-postgres-js-set-config', false)`
    check(sql.parameters.application_name, 'drv-postgres-js-set-config', 'reported after set_config')
    await checkReported(sql, 'after SET application_name')
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('DateStyle changed by SET', async () => {
  const at = new Date(Date.UTC(2025, 11, 7, 0, 30, 15, 250))
  const sql = connect()
  try {
    await sql`SET TimeZone = 'UTC'`
    for (const [style, reportedAs, dayText, atText] of [
      ['German', 'German, DMY', '07.12.2025', '07.12.2025 00:30:15.25 UTC'],
      ['SQL, MDY', 'SQL, MDY', '12/07/2025', '12/07/2025 00:30:15.25 UTC'],
      ['Postgres, DMY', 'Postgres, DMY', '07-12-2025', 'Sun 07 Dec 00:30:15.25 2025 UTC'],
      ['ISO', 'ISO, DMY', '2025-12-07', '2025-12-07 00:30:15.25+00'],
    ]) {
      await sql.unsafe(`SET DateStyle = '${style}'`)
      check(await value(sql, "SELECT current_setting('DateStyle')"), reportedAs, `current_setting after ${style}`)
      // postgres.js parses only ISO output, so the values travel as text here.
      check(await one(sql, "SELECT '2025-12-07'::date::text, $1::timestamptz::text", [at]), [dayText, atText],
        `date and timestamptz under ${style}`)
      check(await value(sql, `SELECT '${dayText}'::date = '2025-12-07'`), true, `${dayText} read under ${style}`)
      check(sql.parameters.DateStyle, reportedAs, `DateStyle reported after SET ${style}`)
      await checkReported(sql, `after SET DateStyle ${style}`)
    }
    check(await one(sql, "SELECT '2025-12-07'::date, $1::timestamptz", [at]), [new Date(Date.UTC(2025, 11, 7)), at],
      'date and timestamptz under ISO')
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('TimeZone changed by SET', async () => {
  const at = new Date(Date.UTC(2025, 11, 7))
  const sql = connect()
  try {
    await sql`SET TimeZone = 'Asia/Tokyo'`
    check(await value(sql, "SELECT current_setting('TimeZone')"), 'Asia/Tokyo', 'current_setting')
    check(await one(sql, "SELECT $1::timestamptz, $1::timestamptz::text, '2025-12-07 09:00'::timestamptz", [at]),
      [at, '2025-12-07 09:00:00+09', at], 'timestamptz in Tokyo')
    check(sql.parameters.TimeZone, 'Asia/Tokyo', 'TimeZone reported after SET')
    await checkReported(sql, 'after SET TimeZone')
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('TimeZone and DateStyle as startup parameters', async () => {
  const at = new Date(Date.UTC(2025, 11, 7))
  const sql = connect({
    connection: { TimeZone: 'Asia/Tokyo', DateStyle: 'German', application_name: 'drv-postgres-js-startup' },
  })
  try {
    check(await one(sql, "SELECT current_setting('TimeZone'), current_setting('DateStyle'), " +
      "current_setting('application_name'), $1::timestamptz::text", [at]),
    ['Asia/Tokyo', 'German, DMY', 'drv-postgres-js-startup', '07.12.2025 09:00:00 JST'], 'settings in the session')
    check([sql.parameters.TimeZone, sql.parameters.DateStyle, sql.parameters.application_name],
      ['Asia/Tokyo', 'German, DMY', 'drv-postgres-js-startup'], 'reported at startup')
    await checkReported(sql, 'after startup parameters')
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('settings reverted by ROLLBACK and SET LOCAL', async () => {
  const sql = connect()
  try {
    // The server side of each step is checked before what was reported, so that a wrong
    // setting is told apart from a missing report.
    const initial = await sessionView(sql)
    const initialReported = reported(sql)
    try {
      await sql.begin(async tx => {
        await tx`SET application_name = 'drv-in-rolled-back-tx'`
        await tx`SET TimeZone = 'Asia/Tokyo'`
        check((await sessionView(tx)).slice(1, 3), ['Asia/Tokyo', 'drv-in-rolled-back-tx'],
          'settings inside the transaction')
        throw new Rollback()
      })
    } catch (err) {
      if (!(err instanceof Rollback)) throw err
    }
    check(await sessionView(sql), initial, 'settings after ROLLBACK')
    await sql.begin(async tx => {
      await tx`SET LOCAL DateStyle = 'German'`
      check((await sessionView(tx))[0], 'German, DMY', 'DateStyle after SET LOCAL')
    })
    check(await sessionView(sql), initial, 'settings after COMMIT')

    try {
      await sql.begin(async tx => {
        await tx`SET application_name = 'drv-in-rolled-back-tx'`
        check(sql.parameters.application_name, 'drv-in-rolled-back-tx', 'reported inside the transaction')
        throw new Rollback()
      })
    } catch (err) {
      if (!(err instanceof Rollback)) throw err
    }
    check(reported(sql), initialReported, 'reported after ROLLBACK')
    await sql.begin(async tx => {
      await tx`SET LOCAL DateStyle = 'German'`
      check(sql.parameters.DateStyle, 'German, DMY', 'reported after SET LOCAL')
    })
    check(reported(sql), initialReported, 'reported after COMMIT')
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('settings reverted by RESET ALL and DISCARD ALL', async () => {
  const sql = connect()
  try {
    const table = sql(PREFIX + '_visible')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (id int)`
    const initial = await sessionView(sql)
    const initialReported = reported(sql)
    check(initial.slice(3, 8), ['"$user", public', '0', 'postgres', null, USER], "a new session's settings")
    for (const reset of ['RESET ALL', 'DISCARD ALL']) {
      await sql`SET DateStyle = 'SQL, DMY'`
      await sql`SET TimeZone = 'America/New_York'`
      await sql`SET application_name = 'drv-before-reset'`
      await sql`SET search_path = drv_nowhere`
      await sql`SET statement_timeout = '17s'`
      await sql`SET IntervalStyle = 'iso_8601'`
      check(await value(sql, "SELECT interval '1 day 2 hours'::text"), 'P1DT2H', 'interval under iso_8601')
      await sql.unsafe(reset)
      // The server side first, so that a wrong setting is told apart from a missing report.
      check(await sessionView(sql), initial, `settings after ${reset}`)
      check(await sql`SELECT count(*)::int AS n FROM ${table}`, [{ n: 0 }], `a public table after ${reset}`)
      check(reported(sql), initialReported, `reported after ${reset}`)
      await checkReported(sql, `after ${reset}`)
    }
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('a pool of connections at once', async () => {
  const workers = 6
  const rounds = 10
  const sql = connect({ max: workers, connection: { application_name: 'drv-postgres-js-pool' } })
  try {
    const counters = sql(PREFIX + '_counters')
    const log = sql(PREFIX + '_log')
    await sql`DROP TABLE IF EXISTS ${counters}`
    await sql`DROP TABLE IF EXISTS ${log}`
    await sql`CREATE TABLE ${counters} (id int PRIMARY KEY, n int NOT NULL)`
    await sql`INSERT INTO ${counters} SELECT g, 0 FROM generate_series(0, 2) g`
    await sql`CREATE TABLE ${log} (task int, seq int, seen int, PRIMARY KEY (task, seq))`
    const tasks = 4 * workers
    await Promise.all([...Array(tasks).keys()].map(async task => {
      for (let seq = 0; seq < rounds; seq++) {
        const name = await sql.begin(async tx => {
          const [{ n }] = await tx`UPDATE ${counters} SET n = n + 1 WHERE id = ${task % 3} RETURNING n`
          await tx`INSERT INTO ${log} VALUES (${task}, ${seq}, ${n})`
          return (await tx`SELECT current_setting('application_name') AS name`)[0].name
        })
        check(name, 'drv-postgres-js-pool', `task ${task}'s application_name`)
      }
    }))
    const perCounter = tasks / 3 * rounds
    check(await sql`SELECT id, n FROM ${counters} ORDER BY id`.values(), [0, 1, 2].map(k => [k, perCounter]),
      'counters')
    // Every increment saw a distinct value: no two transactions interleaved on a counter.
    check(await sql`SELECT task % 3, count(DISTINCT seen)::int, min(seen), max(seen) FROM ${log}
      GROUP BY 1 ORDER BY 1`.values(), [0, 1, 2].map(k => [k, perCounter, 1, perCounter]),
    'values seen by the increments')
    await sql`DROP TABLE ${counters}`
    await sql`DROP TABLE ${log}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('settings of one pooled connection do not show on another', async () => {
  const sql = connect({ max: 2 })
  try {
    await sql.unsafe(
      `DO $$ BEGIN CREATE ROLE ${PREFIX}_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`)
    // Two connections of the pool, each held by one user.
    const a = await sql.reserve()
    const b = await sql.reserve()
    try {
      const before = await sessionView(b)
      check(before.slice(2), ['postgres.js', '"$user", public', '0', 'postgres', null, USER, '2025-12-07'],
        "b's settings, fresh from the pool")
      await a`SET DateStyle = 'German'`
      await a`SET TimeZone = 'Asia/Tokyo'`
      await a`SET application_name = 'drv-postgres-js-a'`
      await a`SET search_path = drv_nowhere, public`
      await a`SET statement_timeout = '17s'`
      await a`SET IntervalStyle = 'sql_standard'`
      await a`SELECT set_config('drv.tenant', 'tenant-a', false)`
      await a.unsafe(`SET ROLE ${PREFIX}_role`)
      check(await sessionView(b), before, "b's settings after a changed its own")
      const aAfter = ['German, DMY', 'Asia/Tokyo', 'drv-postgres-js-a', 'drv_nowhere, public', '17s', 'sql_standard',
        'tenant-a', `${PREFIX}_role`, '07.12.2025']
      check(await sessionView(a), aAfter, "a's own settings")
      for (let round = 0; round < 3; round++) {
        check(await sessionView(b), before, `b's settings while a has changed its own (round ${round})`)
        check(await sessionView(a), aAfter, `a's settings after b ran (round ${round})`)
      }
      // Queries pipelined on both at once.
      const both = await Promise.all([sessionView(a), sessionView(b), sessionView(a), sessionView(b)])
      check(both, [aAfter, before, aAfter, before], 'settings of queries pipelined on both at once')
      await a`RESET ROLE`
      await a`RESET ALL`
    } finally {
      a.release()
      b.release()
    }
  } finally {
    await sql.end({ timeout: 5 })
  }
})

scenario('notices reach their own connection', async () => {
  const got = { a: [], b: [] }
  const a = connect({ onnotice: n => got.a.push([n.severity, n.message]) })
  const b = connect({ onnotice: n => got.b.push([n.severity, n.message]) })
  try {
    for (let i = 0; i < 3; i++) {
      await a.unsafe(`DO $$ BEGIN RAISE NOTICE 'for a %', ${i}; END $$`)
      await b.unsafe(`DO $$ BEGIN RAISE WARNING 'for b %', ${i}; END $$`)
    }
    check(got, { a: [0, 1, 2].map(i => ['NOTICE', `for a ${i}`]), b: [0, 1, 2].map(i => ['WARNING', `for b ${i}`]) },
      'notices per connection')
  } finally {
    await a.end({ timeout: 5 })
    await b.end({ timeout: 5 })
  }
})

scenario('COPY in and out through streams', async () => {
  const sql = connect()
  try {
    const table = sql(PREFIX + '_copy')
    await sql`DROP TABLE IF EXISTS ${table}`
    await sql`CREATE TABLE ${table} (id int8, label text)`
    // COPY FROM STDIN goes through the extended protocol, its data after the CopyInResponse.
    const writable = await sql`COPY ${table} FROM STDIN`.writable()
    const lines = [...Array(2000).keys()].map(i => `${i}\trow ${i}\n`)
    await pipeline(Readable.from(lines), writable)
    // postgres.js sends no Sync after the data: its next query ends the sequence.
    check(await sql`SELECT count(*)::int AS n, sum(id)::int AS s FROM ${table}`, [{ n: 2000, s: 1999000 }],
      'the rows copied in')
    const readable = await sql`COPY (SELECT id, label FROM ${table} WHERE id < 3 ORDER BY id) TO STDOUT`.readable()
    let out = ''
    for await (const chunk of readable) out += chunk
    check(out, '0\trow 0\n1\trow 1\n2\trow 2\n', 'COPY TO STDOUT')
    // (A COPY that fails leaves postgres.js 3.4 waiting for a ReadyForQuery that PostgreSQL
    // sends only after a Sync, which postgres.js never sends: not checked.)
    await sql`DROP TABLE ${table}`
  } finally {
    await sql.end({ timeout: 5 })
  }
})

// The package exports no package.json: read it beside the module's entry point.
function driverVersion() {
  const entry = require.resolve('postgres')
  const root = entry.slice(0, entry.lastIndexOf(path.sep + 'postgres' + path.sep) + 'postgres'.length + 2)
  return JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version
}

async function main() {
  const chosen = SCENARIOS.filter(([name]) => name.includes(ONLY) && !SKIP.some(text => name.includes(text)))
  if (flags.includes('--list')) {
    for (const [name] of chosen) console.log(name)
    return 0
  }
  const failed = []
  for (const [name, fn] of chosen) {
    let timer
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Failure(`no result within ${SCENARIO_TIMEOUT_MS / 1000} s`)),
        SCENARIO_TIMEOUT_MS)
    })
    try {
      await Promise.race([fn(), timeout])
      console.log(`ok   ${name}`)
    } catch (err) {
      if (err instanceof Failure) {
        console.log(`FAIL ${name}: ${err.message}`)
      } else {
        console.log(`FAIL ${name}: ${err && err.code ? err.code + ' ' : ''}${err && err.stack ? err.stack : err}`)
      }
      failed.push(name)
      // A stuck scenario leaves a connection behind that would keep the process alive.
      if (err instanceof Failure && err.message.startsWith('no result within')) {
        console.log(`postgres.js: ${name} is stuck; giving up`)
        process.exit(1)
      }
    } finally {
      clearTimeout(timer)
    }
    if (failed.length && !KEEP_GOING) break
  }
  const version = driverVersion()
  if (failed.length) {
    console.log(`postgres.js ${version}: ${failed.length} scenario(s) failed: ${failed.join(', ')}`)
    return 1
  }
  console.log(`postgres.js ${version}: all ${chosen.length} scenarios passed`)
  return 0
}

main().then(code => process.exit(code), err => {
  console.log(`FAIL ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
