#!/usr/bin/env node
// node-postgres (`pg`) against a PostgreSQL server, checking exact results.
//
// Usage: node node_pg_check.js [--keep-going] [--only=TEXT] [--list] [HOST [DATABASE [USER]]]
//
// The connection comes from the arguments, else from PGHOST (the socket directory), PGDATABASE
// and PGUSER (default `postgres` for both); `pg` is found through NODE_PATH. Each scenario
// prints one line, `ok   NAME` or `FAIL NAME: what was wrong`; the program stops at the first
// failure with exit status 1 (`--keep-going` runs the remaining scenarios too, to see every
// failure at once; `--only=TEXT` runs only the scenarios whose names contain TEXT; `--list`
// prints their names). Every expectation is what native PostgreSQL of the same major does: the
// program must pass against it unchanged.
//
// node-postgres reads results in text format and parses them by type (int8 and numeric stay
// strings), sends Buffers as binary parameters, prepares named queries once per connection and
// queues queries given to a busy client. It keeps no view of the reported parameters, so the
// program collects the ParameterStatus messages itself.

'use strict'

// node-postgres reads date and timestamp without time zone in the process's zone.
process.env.TZ = 'UTC'

const crypto = require('crypto')
const util = require('util')
const pg = require('pg')

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
const PREFIX = 'drv_node_pg'

const flags = process.argv.slice(2).filter(a => a.startsWith('--'))
const args = process.argv.slice(2).filter(a => !a.startsWith('--'))
const KEEP_GOING = flags.includes('--keep-going')
const ONLY = (flags.find(a => a.startsWith('--only=')) || '--only=').slice('--only='.length)
const HOST = args[0] || process.env.PGHOST || ''
const DATABASE = args[1] || process.env.PGDATABASE || 'postgres'
const USER = args[2] || process.env.PGUSER || 'postgres'

class Failure extends Error {}

function show(value) {
  const text = util.inspect(value, { depth: 6, breakLength: Infinity, maxStringLength: 200, maxArrayLength: 40 })
  return text.length <= 600 ? text : text.slice(0, 600) + '...'
}

function check(actual, expected, what) {
  if (!util.isDeepStrictEqual(actual, expected)) {
    throw new Failure(`${what}: got ${show(actual)}, expected ${show(expected)}`)
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
  throw new Failure(`${what}: succeeded with ${show(result && result.rows)}, expected SQLSTATE ${sqlstate}`)
}

// A client that keeps every parameter the server reports in `reported`.
class ReportingClient extends pg.Client {
  constructor(config) {
    super(config)
    this.reported = {}
    this.connection.on('parameterStatus', msg => {
      this.reported[msg.parameterName] = msg.parameterValue
    })
  }
}

function config(extra = {}) {
  return { host: HOST, database: DATABASE, user: USER, connectionTimeoutMillis: 30_000, ...extra }
}

async function connect(extra = {}) {
  const client = new ReportingClient(config(extra))
  await client.connect()
  return client
}

async function rows(client, query, values) {
  return (await client.query({ text: query, values, rowMode: 'array' })).rows
}

async function one(client, query, values) {
  const got = await rows(client, query, values)
  if (got.length !== 1) throw new Failure(`${query}: got ${got.length} rows, expected one`)
  return got[0]
}

async function value(client, query, values) {
  return (await one(client, query, values))[0]
}

function reported(client) {
  return Object.fromEntries(REPORTED.map(name => [name, client.reported[name]]))
}

// Every parameter the driver was told about equals the server's current setting.
async function checkReported(client, what) {
  const settings = await rows(client, 'SELECT n, current_setting(n) FROM unnest($1::text[]) n', [REPORTED])
  for (const [name, setting] of settings) {
    check(client.reported[name], setting, `${what}: ParameterStatus ${name} against current_setting`)
  }
}

const SESSION_VIEW = `SELECT current_setting('DateStyle'), current_setting('TimeZone'),
  current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout'),
  current_setting('IntervalStyle'), nullif(current_setting('drv.tenant', true), ''), current_user::text,
  '2025-12-07'::date::text`

// The settings as the server has them for this connection.
async function sessionView(client) {
  return one(client, SESSION_VIEW)
}

const SCENARIOS = []
function scenario(name, fn) {
  SCENARIOS.push([name, fn])
}

scenario('prepared statements reused', async () => {
  const a = await connect()
  const b = await connect()
  try {
    // A named query is parsed once per connection and then only bound and executed.
    const doubled = i => ({
      name: 'drv-doubled', text: "SELECT $1::int8 * 2, $2::text || '/node-pg-prepared'", values: [i, `n${i}`],
      rowMode: 'array',
    })
    for (let i = 0; i < 200; i++) {
      check((await a.query(doubled(i))).rows, [[String(i * 2), `n${i}/node-pg-prepared`]], `round ${i}`)
    }
    check(await value(a, 'SELECT count(*)::int FROM pg_prepared_statements WHERE statement LIKE $1',
      ['%/node-pg-prepared%']), 1, 'pg_prepared_statements rows for the reused statement')

    // The same name on b is another statement, used in turns with a's.
    for (let i = 0; i < 50; i++) {
      const other = { name: 'drv-doubled', text: "SELECT 'B:' || $1::text", values: [String(i)], rowMode: 'array' }
      check((await b.query(other)).rows, [[`B:${i}`]], `b round ${i}`)
      check((await a.query(doubled(i))).rows, [[String(i * 2), `n${i}/node-pg-prepared`]], `a round ${i}`)
    }

    // A prepared INSERT, then an aggregate over what it wrote.
    await a.query(`DROP TABLE IF EXISTS ${PREFIX}_prep`)
    await a.query(`CREATE TABLE ${PREFIX}_prep (id int8 PRIMARY KEY, label text NOT NULL)`)
    for (let i = 0; i < 100; i++) {
      await a.query({ name: 'drv-insert', text: `INSERT INTO ${PREFIX}_prep VALUES ($1, $2)`, values: [i, `row ${i}`] })
    }
    check(await one(a, `SELECT count(*), sum(id) FROM ${PREFIX}_prep`), ['100', '4950'], 'rows inserted')
    await a.query(`DROP TABLE ${PREFIX}_prep`)
  } finally {
    await a.end()
    await b.end()
  }
})

scenario('queued queries', async () => {
  const c = await connect()
  try {
    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_queue`)
    await c.query(`CREATE TABLE ${PREFIX}_queue (id serial PRIMARY KEY, n int NOT NULL UNIQUE)`)
    // Every query handed over before the first answer: the client queues them and each gets
    // its own answer, in order.
    const inserts = []
    for (let i = 0; i < 200; i++) {
      inserts.push(c.query({ text: `INSERT INTO ${PREFIX}_queue (n) VALUES ($1) RETURNING id, n * 10`, values: [i],
        rowMode: 'array' }))
    }
    const total = c.query({ text: `SELECT count(*)::int, sum(n)::int FROM ${PREFIX}_queue`, rowMode: 'array' })
    const results = await Promise.all(inserts)
    check(results.map(r => r.rows), [...Array(200).keys()].map(i => [[i + 1, i * 10]]), 'RETURNING rows, in order')
    check((await total).rows, [[200, 19900]], 'count and sum after the inserts')

    // A failing query in the queue fails alone.
    const mixed = [
      c.query({ text: 'SELECT $1::int + 1', values: [1], rowMode: 'array' }),
      c.query({ text: 'SELECT 1 / $1::int', values: [0], rowMode: 'array' }),
      c.query({ text: `INSERT INTO ${PREFIX}_queue (n) VALUES ($1)`, values: [1] }),
      c.query({ text: 'SELECT $1::text', values: ['after'], rowMode: 'array' }),
    ]
    const settled = await Promise.allSettled(mixed)
    check(settled.map(s => s.status === 'fulfilled' ? s.value.rows : s.reason.code),
      [[[2]], '22012', '23505', [['after']]], 'answers to the queued queries')
    check(await value(c, `SELECT count(*)::int FROM ${PREFIX}_queue`), 200, 'rows in all')
    await c.query(`DROP TABLE ${PREFIX}_queue`)
  } finally {
    await c.end()
  }
})

const DOC = { a: [1, 2.5, 'ü', null, true], b: { c: '🐘', d: '' } }
const UID = '6f1c1f8e-3c2a-4a4b-9a57-0c1d2e3f4a5b'
const TEXT = "héllo wörld — 日本語 🐘 \t\n\\ '\" end"
const TEXTS = ['a', 'b c', '', null, 'q"uote', 'back\\slash', 'ü', '{}', 'NULL']
const ALL_BYTES = Buffer.from([...Array(256).keys()])

function interval(fields) {
  return Object.assign(Object.create(Object.getPrototypeOf(pg.types.getTypeParser(1186)('1 day'))), fields)
}

// [SQL type, the parameter, what node-postgres reads back, the server's text form].
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
  // A JavaScript -0 goes out as "0"; the text "-0" keeps its sign.
  ['float8', '-0', -0, '-0'],
  ['date', '2024-02-29', new Date(Date.UTC(2024, 1, 29)), '2024-02-29'],
  ['timestamp', '2000-01-01 00:00:00.001', new Date(Date.UTC(2000, 0, 1, 0, 0, 0, 1)), '2000-01-01 00:00:00.001'],
  ['timestamptz', new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123)), new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123)),
    null],
  ['interval', '3 days 04:05:06.789', interval({ days: 3, hours: 4, minutes: 5, seconds: 6, milliseconds: 789 }),
    '3 days 04:05:06.789'],
  ['interval', '-1 days +00:00:01', interval({ days: -1, seconds: 1 }), '-1 days +00:00:01'],
  ['jsonb', DOC, DOC, '{"a": [1, 2.5, "ü", null, true], "b": {"c": "🐘", "d": ""}}'],
  ['json', DOC, DOC, JSON.stringify(DOC)],
  ['uuid', UID, UID, UID],
  ['int8[]', [1, null, -3], ['1', null, '-3'], '{1,NULL,-3}'],
  ['text[]', TEXTS, TEXTS, '{a,"b c","",NULL,"q\\"uote","back\\\\slash",ü,"{}","NULL"}'],
  ['int4[]', [[1, 2], [3, 4]], [[1, 2], [3, 4]], '{{1,2},{3,4}}'],
  ['int4[]', [], [], '{}'],
  ['float8[]', [0.5, -1.25, Infinity], [0.5, -1.25, Infinity], '{0.5,-1.25,Infinity}'],
]
const NULLABLE = ['int8', 'numeric', 'text', 'bytea', 'bool', 'float8', 'date', 'timestamptz', 'interval', 'jsonb',
  'uuid']

scenario('typed round trips', async () => {
  const c = await connect()
  try {
    for (const [type, param, expected, text] of TYPED) {
      const [back, asText] = await one(c, `SELECT $1::${type}, ($1::${type})::text`, [param])
      check(back, expected, `${type} ${show(param)} back`)
      if (text !== null) {
        check(asText, text, `${type} ${show(param)} as the server sees it`)
        const literal = await value(c, 'SELECT quote_literal($1)', [text])
        check(await value(c, `SELECT ${literal}::${type}`), expected, `${type} literal ${show(text)}`)
      }
    }
    check(await value(c, "SELECT to_char($1::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')",
      [new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 123))]), '2024-02-29 23:59:59.123', 'a Date as the server sees it')
    for (const type of NULLABLE) check(await one(c, `SELECT $1::${type}`, [null]), [null], `NULL ${type}`)
    // json keeps the text it was given; jsonb normalises it.
    check(await one(c, `SELECT '{"b": 1,  "a": [2]}'::json::text, '{"b": 1,  "a": [2]}'::jsonb::text`),
      ['{"b": 1,  "a": [2]}', '{"a": [2], "b": 1}'], 'json and jsonb text')

    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_types`)
    await c.query(`CREATE TABLE ${PREFIX}_types (i8 int8, n numeric, t text, b bytea, ok bool, f float8, d date,
      at timestamptz, iv interval, j jsonb, u uuid, tags text[], grid int4[])`)
    const at = new Date(Date.UTC(2001, 1, 3, 4, 5, 6, 7))
    const bytes = Buffer.from([...Array(256).keys()].reverse())
    await c.query(`INSERT INTO ${PREFIX}_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
      ['-4611686018427387904', '-98765.43210', TEXT, bytes, true, -2.5e-10, '1999-12-31', at, '40 days 00:00:01',
        DOC, UID, TEXTS, [[1, null], [null, 4]]])
    await c.query(`INSERT INTO ${PREFIX}_types (i8) VALUES (NULL)`)
    check(await rows(c, `SELECT * FROM ${PREFIX}_types ORDER BY i8 NULLS LAST`), [
      ['-4611686018427387904', '-98765.43210', TEXT, bytes, true, -2.5e-10, new Date(Date.UTC(1999, 11, 31)), at,
        interval({ days: 40, seconds: 1 }), DOC, UID, TEXTS, [[1, null], [null, 4]]],
      Array(13).fill(null),
    ], 'table rows')
    await c.query(`DROP TABLE ${PREFIX}_types`)
  } finally {
    await c.end()
  }
})

scenario('errors inside transactions', async () => {
  const c = await connect()
  try {
    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_err`)
    await c.query(`CREATE TABLE ${PREFIX}_err (id int PRIMARY KEY)`)
    await c.query(`INSERT INTO ${PREFIX}_err VALUES (1)`)
    // Nothing below sends a notice on PostgreSQL: failing and rolling back is silent.
    const notices = []
    c.on('notice', msg => notices.push(`${msg.severity} ${msg.message}`))

    await c.query('BEGIN')
    await c.query(`INSERT INTO ${PREFIX}_err VALUES ($1)`, [2])
    const err = await expectError('23505', 'duplicate key', c.query(`INSERT INTO ${PREFIX}_err VALUES ($1)`, [1]))
    check([err.message, err.detail, err.table, err.constraint, err.severity],
      [`duplicate key value violates unique constraint "${PREFIX}_err_pkey"`, 'Key (id)=(1) already exists.',
        `${PREFIX}_err`, `${PREFIX}_err_pkey`, 'ERROR'], 'error fields')
    await expectError('25P02', 'a statement in the failed transaction', c.query('SELECT 1'))
    await c.query('ROLLBACK')
    check(await value(c, `SELECT array_agg(id ORDER BY id) FROM ${PREFIX}_err`), [1], 'rows after rollback')

    // A savepoint takes the error; the transaction commits.
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${PREFIX}_err VALUES (3)`)
    await c.query('SAVEPOINT s')
    await c.query(`INSERT INTO ${PREFIX}_err VALUES (4)`)
    await expectError('23505', 'duplicate in the savepoint', c.query(`INSERT INTO ${PREFIX}_err VALUES (1)`))
    await c.query('ROLLBACK TO SAVEPOINT s')
    await c.query(`INSERT INTO ${PREFIX}_err VALUES (5)`)
    await c.query('COMMIT')
    check(await value(c, `SELECT array_agg(id ORDER BY id) FROM ${PREFIX}_err`), [1, 3, 5], 'rows')

    // A named statement that fails is still usable afterwards, in and out of transactions.
    const divide = divisor => ({ name: 'drv-divide', text: 'SELECT 10 / $1::int', values: [divisor], rowMode: 'array' })
    await expectError('22012', 'division by zero', c.query(divide(0)))
    check((await c.query(divide(5))).rows, [[2]], '10 / 5')
    await c.query('BEGIN')
    await expectError('22012', 'division by zero in a transaction', c.query(divide(0)))
    await expectError('25P02', 'the statement in the failed transaction', c.query(divide(2)))
    await c.query('ROLLBACK')
    check((await c.query(divide(2))).rows, [[5]], '10 / 2')

    // Every field of a raised error arrives.
    const raised = await expectError('22023', 'RAISE', c.query(
      "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'drv custom ü', DETAIL = 'the detail', " +
      "HINT = 'the hint'; END $$"))
    check([raised.severity, raised.message, raised.detail, raised.hint],
      ['ERROR', 'drv custom ü', 'the detail', 'the hint'], 'raised error fields')
    check(notices, [], 'notices')

    // A deferred constraint fails at COMMIT, which ends the transaction.
    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_deferred`)
    await c.query(`CREATE TABLE ${PREFIX}_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)`)
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${PREFIX}_deferred VALUES (1), (1)`)
    await expectError('23505', 'COMMIT with a deferred unique violation', c.query('COMMIT'))
    check(await value(c, `SELECT count(*)::int FROM ${PREFIX}_deferred`), 0, 'rows after the failed commit')
    await c.query(`DROP TABLE ${PREFIX}_deferred`)
    await c.query(`DROP TABLE ${PREFIX}_err`)
  } finally {
    await c.end()
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
  // Deterministic bytes of every value.
  const blob = Buffer.alloc(size)
  let x = 7
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    blob[i] = x >>> 24
  }
  const textBytes = Buffer.byteLength(text)
  const textChars = [...text].length
  const c = await connect()
  try {
    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_large`)
    await c.query(`CREATE TABLE ${PREFIX}_large (id int PRIMARY KEY, t text, b bytea)`)
    await c.query(`INSERT INTO ${PREFIX}_large (id, t) VALUES (1, $1)`, [text])
    await c.query(`INSERT INTO ${PREFIX}_large (id, b) VALUES (2, $1)`, [blob])
    check(await rows(c, `SELECT id, octet_length(t), char_length(t), encode(sha256(convert_to(t, 'UTF8')), 'hex'),
        octet_length(b), encode(sha256(b), 'hex') FROM ${PREFIX}_large ORDER BY id`),
    [[1, textBytes, textChars, sha256(text), null, null], [2, null, null, null, size, sha256(blob)]],
    'lengths and SHA-256 on the server')
    const backText = await value(c, `SELECT t FROM ${PREFIX}_large WHERE id = 1`)
    check([backText.length, sha256(backText)], [text.length, sha256(text)], 'text read back')
    const backBlob = await value(c, `SELECT b FROM ${PREFIX}_large WHERE id = 2`)
    check([backBlob.length, sha256(backBlob)], [size, sha256(blob)], 'bytea read back')
    const echoed = await value(c, 'SELECT $1::bytea', [blob])
    check([echoed.length, sha256(echoed)], [size, sha256(blob)], 'bytea echoed')
    await c.query(`DROP TABLE ${PREFIX}_large`)
  } finally {
    await c.end()
  }
})

scenario('application_name at connect and by SET', async () => {
  const c = await connect({ application_name: 'drv-node-pg-startup' })
  try {
    check(await value(c, "SELECT current_setting('application_name')"), 'drv-node-pg-startup', 'current_setting')
    check(c.reported.application_name, 'drv-node-pg-startup', 'reported at startup')
    await c.query("SET application_name = 'drv-node-pg-set'")
    check(await value(c, "SELECT current_setting('application_name')"), 'drv-node-pg-set', 'current_setting after SET')
    check(c.reported.application_name, 'drv-node-pg-set', 'reported after SET')
    await c.query("SELECT set_config('application_name', 'drv-node-pg-set-config', false)")
    check(c.reported.application_name, 'drv-node-pg-set-config', 'reported after set_config')
    await checkReported(c, 'after SET application_name')
  } finally {
    await c.end()
  }
})

scenario('DateStyle changed by SET', async () => {
  const at = new Date(Date.UTC(2025, 11, 7, 0, 30, 15, 250))
  const c = await connect()
  try {
    await c.query("SET TimeZone = 'UTC'")
    for (const [style, reportedAs, dayText, atText] of [
      ['German', 'German, DMY', '07.12.2025', '07.12.2025 00:30:15.25 UTC'],
      ['SQL, MDY', 'SQL, MDY', '12/07/2025', '12/07/2025 00:30:15.25 UTC'],
      ['Postgres, DMY', 'Postgres, DMY', '07-12-2025', 'Sun 07 Dec 00:30:15.25 2025 UTC'],
      ['ISO', 'ISO, DMY', '2025-12-07', '2025-12-07 00:30:15.25+00'],
    ]) {
      await c.query(`SET DateStyle = '${style}'`)
      check(await value(c, "SELECT current_setting('DateStyle')"), reportedAs, `current_setting after ${style}`)
      // node-postgres parses only ISO output, so the values travel as text here.
      check(await one(c, "SELECT '2025-12-07'::date::text, $1::timestamptz::text", [at]), [dayText, atText],
        `date and timestamptz under ${style}`)
      check(await value(c, `SELECT '${dayText}'::date = '2025-12-07'`), true, `${dayText} read under ${style}`)
      check(c.reported.DateStyle, reportedAs, `DateStyle reported after SET ${style}`)
      await checkReported(c, `after SET DateStyle ${style}`)
    }
    check(await one(c, "SELECT '2025-12-07'::date, $1::timestamptz", [at]), [new Date(Date.UTC(2025, 11, 7)), at],
      'date and timestamptz under ISO')
  } finally {
    await c.end()
  }
})

scenario('TimeZone changed by SET', async () => {
  const at = new Date(Date.UTC(2025, 11, 7))
  const c = await connect()
  try {
    await c.query("SET TimeZone = 'Asia/Tokyo'")
    check(await value(c, "SELECT current_setting('TimeZone')"), 'Asia/Tokyo', 'current_setting')
    check(await one(c, "SELECT $1::timestamptz, $1::timestamptz::text, '2025-12-07 09:00'::timestamptz", [at]),
      [at, '2025-12-07 09:00:00+09', at], 'timestamptz in Tokyo')
    check(c.reported.TimeZone, 'Asia/Tokyo', 'TimeZone reported after SET')
    await checkReported(c, 'after SET TimeZone')
  } finally {
    await c.end()
  }
})

scenario('TimeZone and DateStyle as startup options', async () => {
  const at = new Date(Date.UTC(2025, 11, 7))
  const c = await connect({
    options: '-c TimeZone=Asia/Tokyo -c DateStyle=German', application_name: 'drv-node-pg-options',
  })
  try {
    check(await one(c, "SELECT current_setting('TimeZone'), current_setting('DateStyle'), " +
      "current_setting('application_name'), $1::timestamptz::text", [at]),
    ['Asia/Tokyo', 'German, DMY', 'drv-node-pg-options', '07.12.2025 09:00:00 JST'], 'settings in the session')
    check([c.reported.TimeZone, c.reported.DateStyle, c.reported.application_name],
      ['Asia/Tokyo', 'German, DMY', 'drv-node-pg-options'], 'reported at startup')
    await checkReported(c, 'after startup options')
  } finally {
    await c.end()
  }
})

scenario('settings reverted by ROLLBACK and SET LOCAL', async () => {
  const c = await connect()
  try {
    // The server side of each step is checked before what was reported, so that a wrong
    // setting is told apart from a missing report.
    const initial = await sessionView(c)
    const initialReported = reported(c)
    await c.query('BEGIN')
    await c.query("SET application_name = 'drv-in-rolled-back-tx'")
    await c.query("SET TimeZone = 'Asia/Tokyo'")
    check((await sessionView(c)).slice(1, 3), ['Asia/Tokyo', 'drv-in-rolled-back-tx'],
      'settings inside the transaction')
    await c.query('ROLLBACK')
    check(await sessionView(c), initial, 'settings after ROLLBACK')
    await c.query('BEGIN')
    await c.query("SET LOCAL DateStyle = 'German'")
    check((await sessionView(c))[0], 'German, DMY', 'DateStyle after SET LOCAL')
    await c.query('COMMIT')
    check(await sessionView(c), initial, 'settings after COMMIT')

    await c.query('BEGIN')
    await c.query("SET application_name = 'drv-in-rolled-back-tx'")
    check(c.reported.application_name, 'drv-in-rolled-back-tx', 'reported inside the transaction')
    await c.query('ROLLBACK')
    check(reported(c), initialReported, 'reported after ROLLBACK')
    await c.query('BEGIN')
    await c.query("SET LOCAL DateStyle = 'German'")
    check(c.reported.DateStyle, 'German, DMY', 'reported after SET LOCAL')
    await c.query('COMMIT')
    check(reported(c), initialReported, 'reported after COMMIT')
  } finally {
    await c.end()
  }
})

scenario('settings reverted by RESET ALL and DISCARD ALL', async () => {
  const c = await connect()
  try {
    await c.query(`DROP TABLE IF EXISTS ${PREFIX}_visible`)
    await c.query(`CREATE TABLE ${PREFIX}_visible (id int)`)
    const initial = await sessionView(c)
    const initialReported = reported(c)
    check(initial.slice(3, 8), ['"$user", public', '0', 'postgres', null, USER], "a new session's settings")
    for (const reset of ['RESET ALL', 'DISCARD ALL']) {
      await c.query("SET DateStyle = 'SQL, DMY'")
      await c.query("SET TimeZone = 'America/New_York'")
      await c.query("SET application_name = 'drv-before-reset'")
      await c.query('SET search_path = drv_nowhere')
      await c.query("SET statement_timeout = '17s'")
      await c.query("SET IntervalStyle = 'iso_8601'")
      check(await value(c, "SELECT interval '1 day 2 hours'::text"), 'P1DT2H', 'interval under iso_8601')
      await c.query(reset)
      // The server side first, so that a wrong setting is told apart from a missing report.
      check(await sessionView(c), initial, `settings after ${reset}`)
      check(await value(c, `SELECT count(*)::int FROM ${PREFIX}_visible`), 0, `a public table after ${reset}`)
      check(reported(c), initialReported, `reported after ${reset}`)
      await checkReported(c, `after ${reset}`)
    }
    await c.query(`DROP TABLE ${PREFIX}_visible`)
  } finally {
    await c.end()
  }
})

function poolConfig(extra = {}) {
  return { ...config(), Client: ReportingClient, ...extra }
}

scenario('a pool of connections at once', async () => {
  const workers = 6
  const rounds = 10
  const pool = new pg.Pool(poolConfig({ max: workers, application_name: 'drv-node-pg-pool' }))
  try {
    await pool.query(`DROP TABLE IF EXISTS ${PREFIX}_counters`)
    await pool.query(`DROP TABLE IF EXISTS ${PREFIX}_log`)
    await pool.query(`CREATE TABLE ${PREFIX}_counters (id int PRIMARY KEY, n int NOT NULL)`)
    await pool.query(`INSERT INTO ${PREFIX}_counters SELECT g, 0 FROM generate_series(0, 2) g`)
    await pool.query(`CREATE TABLE ${PREFIX}_log (task int, seq int, seen int, PRIMARY KEY (task, seq))`)
    const tasks = 4 * workers
    await Promise.all([...Array(tasks).keys()].map(async task => {
      for (let seq = 0; seq < rounds; seq++) {
        const w = await pool.connect()
        try {
          await w.query('BEGIN')
          const seen = await value(w, `UPDATE ${PREFIX}_counters SET n = n + 1 WHERE id = $1 RETURNING n`, [task % 3])
          await w.query(`INSERT INTO ${PREFIX}_log VALUES ($1, $2, $3)`, [task, seq, seen])
          await w.query('COMMIT')
          check(await value(w, "SELECT current_setting('application_name')"), 'drv-node-pg-pool',
            `task ${task}'s application_name`)
        } finally {
          w.release()
        }
      }
    }))
    const perCounter = tasks / 3 * rounds
    check((await pool.query({ text: `SELECT id, n FROM ${PREFIX}_counters ORDER BY id`, rowMode: 'array' })).rows,
      [0, 1, 2].map(k => [k, perCounter]), 'counters')
    // Every increment saw a distinct value: no two transactions interleaved on a counter.
    check((await pool.query({ text: `SELECT task % 3, count(DISTINCT seen)::int, min(seen), max(seen)
      FROM ${PREFIX}_log GROUP BY 1 ORDER BY 1`, rowMode: 'array' })).rows,
    [0, 1, 2].map(k => [k, perCounter, 1, perCounter]), 'values seen by the increments')
    await pool.query(`DROP TABLE ${PREFIX}_counters`)
    await pool.query(`DROP TABLE ${PREFIX}_log`)
  } finally {
    await pool.end()
  }
})

scenario('settings of one pooled connection do not show on another', async () => {
  const pool = new pg.Pool(poolConfig({ max: 2 }))
  try {
    await pool.query(
      `DO $$ BEGIN CREATE ROLE ${PREFIX}_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`)
    const a = await pool.connect()
    const b = await pool.connect()
    try {
      const before = await sessionView(b)
      const beforeReported = reported(b)
      check(before.slice(2), ['', '"$user", public', '0', 'postgres', null, USER, '2025-12-07'],
        "b's settings, fresh from the pool")
      await a.query("SET DateStyle = 'German'")
      await a.query("SET TimeZone = 'Asia/Tokyo'")
      await a.query("SET application_name = 'drv-node-pg-a'")
      await a.query('SET search_path = drv_nowhere, public')
      await a.query("SET statement_timeout = '17s'")
      await a.query("SET IntervalStyle = 'sql_standard'")
      await a.query("SELECT set_config('drv.tenant', 'tenant-a', false)")
      await a.query(`SET ROLE ${PREFIX}_role`)
      // The server side first, so that a leak is told apart from a missing report.
      check(await sessionView(b), before, "b's settings after a changed its own")
      const aAfter = ['German, DMY', 'Asia/Tokyo', 'drv-node-pg-a', 'drv_nowhere, public', '17s', 'sql_standard',
        'tenant-a', `${PREFIX}_role`, '07.12.2025']
      check(await sessionView(a), aAfter, "a's own settings")
      for (let round = 0; round < 3; round++) {
        check(await sessionView(b), before, `b's settings while a has changed its own (round ${round})`)
        await b.query('BEGIN')
        check(await sessionView(b), before, "b's settings inside a transaction")
        await b.query('COMMIT')
        check(await sessionView(a), aAfter, `a's settings after b ran (round ${round})`)
      }
      check(reported(b), beforeReported, "b's reported parameters")
      // Queries queued on both at once.
      const both = await Promise.all([sessionView(a), sessionView(b), sessionView(a), sessionView(b)])
      check(both, [aAfter, before, aAfter, before], 'settings of queries queued on both at once')
      await a.query('RESET ROLE')
      await a.query('RESET ALL')
    } finally {
      a.release()
      b.release()
    }
  } finally {
    await pool.end()
  }
})

scenario('notices reach their own connection', async () => {
  const a = await connect()
  const b = await connect()
  try {
    const got = { a: [], b: [] }
    a.on('notice', msg => got.a.push([msg.severity, msg.message]))
    b.on('notice', msg => got.b.push([msg.severity, msg.message]))
    for (let i = 0; i < 3; i++) {
      await a.query(`DO $$ BEGIN RAISE NOTICE 'for a %', ${i}; END $$`)
      await b.query(`DO $$ BEGIN RAISE WARNING 'for b %', ${i}; END $$`)
    }
    check(got, { a: [0, 1, 2].map(i => ['NOTICE', `for a ${i}`]), b: [0, 1, 2].map(i => ['WARNING', `for b ${i}`]) },
      'notices per connection')
  } finally {
    await a.end()
    await b.end()
  }
})

async function main() {
  const chosen = SCENARIOS.filter(([name]) => name.includes(ONLY))
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
        console.log(`node-postgres: ${name} is stuck; giving up`)
        process.exit(1)
      }
    } finally {
      clearTimeout(timer)
    }
    if (failed.length && !KEEP_GOING) break
  }
  const version = require('pg/package.json').version
  if (failed.length) {
    console.log(`node-postgres ${version}: ${failed.length} scenario(s) failed: ${failed.join(', ')}`)
    return 1
  }
  console.log(`node-postgres ${version}: all ${chosen.length} scenarios passed`)
  return 0
}

main().then(code => process.exit(code), err => {
  console.log(`FAIL ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
