//! What the host learns from inside the backend, and the defaults it sets there directly.
//!
//! Many clients share the one backend session, so whoever multiplexes them must know when one
//! of them may have changed session state, by any route: a `SET` in a `DO` block, a function
//! calling `set_config`, a protocol-level statement. Reading SQL text cannot see those; the
//! backend can. PostgreSQL exports `ProcessUtility_hook`, through which every utility command
//! passes at any depth (top level, SPI in plpgsql and SQL functions, `DO`): the host installs
//! a function there that runs `standard_ProcessUtility` and records the command's tag. The
//! builtins that change session state without a utility command (`set_config`, the
//! session-level advisory-lock functions) are wrapped where PostgreSQL calls them, in the
//! function table. Callers take the record with [`SessionEvents`] after each exchange.
//!
//! The backend's own defaults are put right at their source: PGlite starts with `search_path`
//! set to `pg_catalog`, `enable_seqscan` off (a quirk of its `-f` argument) and
//! `allow_system_table_mods` on, all at command-line level, so `RESET` and `DISCARD ALL` went
//! back to them. Setting PostgreSQL's defaults at that same level makes them what `RESET`
//! restores.

use wasmtime::{AsContextMut, Caller, Func, Ref, Store, Table, Val};

use crate::imports::{Ctx, split};
use crate::profile::Profile;
use crate::{Error, interrupts};

/// What may have changed session state since the caller last asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionEvents {
    /// A utility command ran that may change the session's settings (`SET`, `RESET`, a role
    /// command), at any depth.
    pub utility: bool,
    /// Another utility command ran (`CREATE`, `DROP`, `DO`, `DISCARD`, ...), at any depth:
    /// temporary objects may have been made or dropped. Commands known to leave the session
    /// alone (transaction control, `SHOW`, `FETCH`, `EXECUTE`, `EXPLAIN`) are not counted, nor
    /// are those of the fields below.
    pub objects: bool,
    /// `DECLARE` or `CLOSE` of a cursor ran (a `WITH HOLD` cursor outlives its transaction).
    pub cursors: bool,
    /// `PREPARE` or `DEALLOCATE` ran.
    pub statements: bool,
    /// `set_config(..., false)` ran: a setting may have changed for the session.
    pub settings: bool,
    /// A session-level advisory-lock function ran.
    pub locks: bool,
    /// Names of custom (dotted, `app.tenant`) settings `SET`, `RESET` or `set_config` touched:
    /// PostgreSQL does not list those in `pg_settings`.
    pub custom_settings: Vec<String>,
    /// A role was created, altered (its settings too), renamed or dropped (or something else
    /// was renamed): who may log in, and with what defaults, may have changed.
    pub roles: bool,
    /// `LISTEN` or `UNLISTEN` ran: the channels the session listens on may have changed.
    pub listen: bool,
    /// The `LISTEN`s and `UNLISTEN`s that ran, in order (empty when they could not be told
    /// apart: `listen` alone is then set). Whether their transaction committed is the
    /// backend's `pg_listening_channels()` to say.
    pub listens: Vec<ListenOp>,
}

/// One `LISTEN` or `UNLISTEN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenOp {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

impl SessionEvents {
    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        *self == SessionEvents::default()
    }
}

/// What the utility hook knows about the build's parse nodes, learnt at start-up by running
/// known statements through it (node numbers and struct layouts differ between majors).
#[derive(Clone, Debug, Default)]
pub(crate) struct Calibration {
    /// Offset of `utilityStmt` in `PlannedStmt`; `None` until learnt (every utility command
    /// then counts).
    utility_offset: Option<u32>,
    quiet: Vec<i32>,
    cursors: Vec<i32>,
    statements: Vec<i32>,
    roles: Vec<i32>,
    listen: Vec<i32>,
    /// `VariableSetStmt`, whose `name` follows its type and kind.
    set: Option<i32>,
    /// While learning: the first words of each `PlannedStmt` the hook saw.
    seen: Vec<Vec<u32>>,
    learning: bool,
}

/// The NUL-terminated string at `addr`.
fn cstr(memory: &[u8], addr: u32) -> Option<String> {
    let tail = memory.get(addr as usize..)?;
    let len = tail.iter().take(1024).position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&tail[..len]).into_owned())
}

/// Records `name` if it is a custom setting (`prefix.name`).
fn note_custom(events: &mut SessionEvents, name: String) {
    let name = name.to_ascii_lowercase();
    if name.contains('.') && !events.custom_settings.contains(&name) {
        events.custom_settings.push(name);
    }
}

/// The text of a `text` Datum at `addr` (a 1-byte or 4-byte varlena header, uncompressed).
fn text_datum(memory: &[u8], addr: u32) -> Option<String> {
    let first = *memory.get(addr as usize)?;
    let (start, len) = if first & 1 == 1 {
        // A 1-byte header; 0x01 alone tags a TOAST pointer, which a setting's name never is.
        (addr as usize + 1, ((first >> 1) as usize).checked_sub(1)?)
    } else {
        let header = u32::from_le_bytes(memory.get(addr as usize..addr as usize + 4)?.try_into().ok()?);
        if header & 3 != 0 {
            return None;
        }
        (addr as usize + 4, ((header >> 2) as usize).checked_sub(4)?)
    };
    Some(String::from_utf8_lossy(memory.get(start..start + len)?).into_owned())
}

/// Statements whose node types the hook learns: `BEGIN`, `SET LOCAL`, `SHOW`, `DECLARE`,
/// `FETCH`, `CLOSE`, `COMMIT`, `PREPARE`, `EXECUTE`, `DEALLOCATE`, `EXPLAIN`, then `CREATE ROLE`,
/// `ALTER ROLE`, `ALTER ROLE ... SET`, a rename and `DROP ROLE`, then `LISTEN` and `UNLISTEN`
/// (none leaves anything behind).
const CALIBRATION_SQL: &str = "BEGIN; SET LOCAL work_mem = DEFAULT; SHOW work_mem; \
     DECLARE nself_calibration CURSOR FOR SELECT 1; \
     FETCH nself_calibration; CLOSE nself_calibration; COMMIT; \
     PREPARE nself_calibration AS SELECT 1; EXECUTE nself_calibration; DEALLOCATE nself_calibration; \
     EXPLAIN SELECT 1; CREATE ROLE nself_calibration NOLOGIN; ALTER ROLE nself_calibration NOLOGIN; \
     ALTER ROLE nself_calibration SET work_mem = '1MB'; \
     ALTER ROLE nself_calibration RENAME TO nself_calibration_renamed; DROP ROLE nself_calibration_renamed; \
     LISTEN nself_calibration; UNLISTEN nself_calibration";

/// How many statements [`CALIBRATION_SQL`] holds.
const CALIBRATION_STATEMENTS: usize = 18;

/// Words of each `PlannedStmt` kept while learning: enough to hold `utilityStmt` in 16–19.
const PLANNED_STMT_WORDS: u32 = 48;

impl Calibration {
    /// Learns from what the hook saw for [`CALIBRATION_SQL`]: the offset at which every
    /// `PlannedStmt` points to a node whose type tells the ten statements apart as expected.
    fn learn(&mut self, memory: &[u8]) {
        self.learning = false;
        let seen = std::mem::take(&mut self.seen);
        if seen.len() != CALIBRATION_STATEMENTS {
            tracing::warn!(seen = seen.len(), "utility hook calibration saw an unexpected number of statements");
            return;
        }
        let tag_at = |pointer: u32| -> Option<i32> {
            let bytes = memory.get(pointer as usize..pointer as usize + 4)?;
            Some(i32::from_le_bytes(bytes.try_into().ok()?)).filter(|tag| (1..5000).contains(tag))
        };
        let mut found = Vec::new();
        for word in 0..PLANNED_STMT_WORDS as usize {
            let Some(tags) = seen.iter().map(|words| tag_at(*words.get(word)?)).collect::<Option<Vec<i32>>>() else {
                continue;
            };
            // BEGIN and COMMIT share a node type; the others differ from it and each other.
            let mut distinct = tags.clone();
            distinct.remove(6);
            let mut sorted = distinct.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if tags[0] == tags[6] && sorted.len() == distinct.len() {
                found.push((word as u32 * 4, tags));
            }
        }
        match found.as_slice() {
            [(offset, tags)] => {
                self.utility_offset = Some(*offset);
                self.quiet = vec![tags[0], tags[2], tags[4], tags[8], tags[10]];
                self.set = Some(tags[1]);
                self.cursors = vec![tags[3], tags[5]];
                self.statements = vec![tags[7], tags[9]];
                self.roles = tags[11..16].to_vec();
                self.listen = vec![tags[16], tags[17]];
            }
            _ => tracing::warn!(
                candidates = found.len(),
                "utility hook calibration failed; every utility command counts"
            ),
        }
    }

    /// Records one utility command in `events`.
    fn record(&mut self, memory: &[u8], planned_stmt: u32, events: &mut SessionEvents) {
        let word = |at: u32| -> Option<u32> {
            let bytes = memory.get(at as usize..at as usize + 4)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        if self.learning {
            self.seen.push((0..PLANNED_STMT_WORDS).filter_map(|i| word(planned_stmt + i * 4)).collect());
            return;
        }
        let node = self.utility_offset.and_then(|offset| word(planned_stmt + offset));
        let tag = node.and_then(word).map(|tag| tag as i32);
        match tag {
            Some(tag) if self.quiet.contains(&tag) => {}
            Some(tag) if Some(tag) == self.set => {
                events.utility = true;
                // VariableSetStmt { type, kind, name, .. }: a NULL name is RESET ALL.
                if let Some(name) = node.and_then(|node| word(node + 8)).filter(|&name| name != 0)
                    && let Some(name) = cstr(memory, name)
                {
                    note_custom(events, name);
                }
            }
            Some(tag) if self.cursors.contains(&tag) => events.cursors = true,
            Some(tag) if self.statements.contains(&tag) => events.statements = true,
            Some(tag) if self.roles.contains(&tag) => {
                events.utility = true;
                events.roles = true;
            }
            Some(tag) if self.listen.contains(&tag) => {
                events.listen = true;
                // ListenStmt and UnlistenStmt { type, conditionname }: a NULL name is UNLISTEN *.
                let name =
                    node.and_then(|node| word(node + 4)).filter(|&name| name != 0).and_then(|name| cstr(memory, name));
                events.listens.push(match (tag == self.listen[0], name) {
                    (true, Some(name)) => ListenOp::Listen(name),
                    (false, Some(name)) => ListenOp::Unlisten(name),
                    (_, None) => ListenOp::UnlistenAll,
                });
            }
            Some(_) => events.objects = true,
            // Not calibrated: it may be anything.
            None => {
                events.utility = true;
                events.objects = true;
                events.roles = true;
                events.listen = true;
            }
        }
    }
}

/// The settings PostgreSQL has by default that PGlite's start-up arguments change, set back
/// at the same (command-line) level once the backend is up. (`exit_on_error` and
/// `ignore_invalid_pages` matter to PGlite only while it boots and recovers; 0.3 leaves
/// `lc_messages` empty.)
const DEFAULTS: [(&str, &str); 6] = [
    ("search_path", "\"$user\", public"),
    ("enable_seqscan", "on"),
    ("allow_system_table_mods", "off"),
    ("exit_on_error", "off"),
    ("ignore_invalid_pages", "off"),
    ("lc_messages", "C"),
];

/// `GucContext` and `GucSource` values, `GUC_ACTION_SET` and an elog level that only logs
/// (the same in PostgreSQL 16–19).
const PGC_POSTMASTER: i32 = 1;
const PGC_SU_BACKEND: i32 = 3;
const PGC_S_ARGV: i32 = 4;
const PGC_S_CLIENT: i32 = 9;
const GUC_ACTION_SET: i32 = 0;
const DEBUG1: i32 = 14;

/// OIDs of the builtins that change session state outside utility commands: `set_config`,
/// then the session-level advisory-lock functions (the `_xact_` ones end with the transaction).
const SET_CONFIG: i32 = 2078;
const ADVISORY_LOCKS: std::ops::RangeInclusive<i32> = 2880..=2892;

/// The environment variable that arms the crash trigger for tests (see [`CRASH_SETTING`]).
pub(crate) const CRASH_TRIGGER_ENV: &str = "NSELF_TEST_CRASH_TRIGGER";

/// With [`CRASH_TRIGGER_ENV`] set to `1` when the instance boots, `set_config` of this setting
/// traps the instance on the spot, as a crash would: tests use it to crash the backend in the
/// middle of a transaction or statement, from any client.
const CRASH_SETTING: &str = "nself.crash";

/// How a wrapped builtin is recorded.
#[derive(Clone, Copy)]
enum Watched {
    SetConfig,
    AdvisoryLock,
}

/// Installs the utility hook (learning until [`learn`]) and the builtin wrappers, and sets
/// PostgreSQL's defaults.
pub(crate) fn install(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    table: Table,
    profile: &Profile,
    settings: &[(String, String)],
) -> Result<(), Error> {
    let ours = DEFAULTS.iter().map(|(name, value)| (*name, *value));
    set_defaults(store, instance, ours.chain(settings.iter().map(|(n, v)| (n.as_str(), v.as_str()))))?;
    install_utility_hook(store, instance, table)?;
    install_executor_hooks(store, instance, table)?;
    store.data_mut().calibration.learning = true;
    let fmgr_info = instance.get_typed_func::<(i32, i32), ()>(&mut *store, "fmgr_info").map_err(Error::instantiate)?;
    let exports = store.data().exports();
    let finfo = exports.malloc.call(&mut *store, 64).map_err(Error::guest)?;
    let mut wrapped = Vec::new();
    for (oid, watched) in
        std::iter::once((SET_CONFIG, Watched::SetConfig)).chain(ADVISORY_LOCKS.map(|oid| (oid, Watched::AdvisoryLock)))
    {
        fmgr_info.call(&mut *store, (oid, finfo)).map_err(Error::guest)?;
        let memory = store.data().shared().memory;
        let mut addr = [0u8; 4];
        memory.read(&*store, finfo as usize, &mut addr).map_err(Error::trap)?;
        let index = u32::from_le_bytes(addr);
        // Several OIDs can share one C function (and so one table slot).
        if index == 0 || wrapped.contains(&index) {
            continue;
        }
        wrap(store, table, index, watched, profile)?;
        wrapped.push(index);
    }
    exports.free.call(&mut *store, finfo).map_err(Error::guest)?;
    Ok(())
}

/// The statements that teach the utility hook the build's node types; run them right after
/// [`install`], then call [`learn`].
pub(crate) const CALIBRATION: &str = CALIBRATION_SQL;

/// Ends the calibration begun by [`install`].
pub(crate) fn learn(store: &mut Store<Ctx>) {
    let memory = store.data().shared().memory;
    let (bytes, ctx) = memory.data_and_store_mut(&mut *store);
    ctx.calibration.learn(bytes);
    ctx.events = SessionEvents::default();
}

/// Sets `settings` with `SetConfigOption` at command-line level (a refused value is an ERROR,
/// which fails the boot).
fn set_defaults<'a>(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    settings: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), Error> {
    let set = instance
        .get_typed_func::<(i32, i32, i32, i32), ()>(&mut *store, "SetConfigOption")
        .map_err(Error::instantiate)?;
    let exports = store.data().exports();
    let memory = store.data().shared().memory;
    for (name, value) in settings {
        let mut strings = Vec::new();
        for text in [name, value] {
            let ptr = exports.malloc.call(&mut *store, text.len() as i32 + 1).map_err(Error::guest)?;
            memory.write(&mut *store, ptr as usize, text.as_bytes()).map_err(Error::trap)?;
            memory.write(&mut *store, ptr as usize + text.len(), &[0]).map_err(Error::trap)?;
            strings.push(ptr);
        }
        set.call(&mut *store, (strings[0], strings[1], PGC_POSTMASTER, PGC_S_ARGV)).map_err(Error::guest)?;
        for ptr in strings {
            exports.free.call(&mut *store, ptr).map_err(Error::guest)?;
        }
    }
    Ok(())
}

/// Puts a host function in `ProcessUtility_hook` that records the command (see
/// [`Calibration::record`]) and runs `standard_ProcessUtility`.
fn install_utility_hook(store: &mut Store<Ctx>, instance: &wasmtime::Instance, table: Table) -> Result<(), Error> {
    let standard = instance
        .get_func(&mut *store, "standard_ProcessUtility")
        .ok_or_else(|| Error::instantiate("module does not export standard_ProcessUtility"))?;
    let hook_address = *store
        .data()
        .dylink
        .main_data
        .get("ProcessUtility_hook")
        .ok_or_else(|| Error::instantiate("module does not export ProcessUtility_hook"))?;
    let ty = standard.ty(&*store);
    let hook = Func::new(&mut *store, ty, move |mut caller, params, results| {
        let planned_stmt = params.first().and_then(Val::i32).unwrap_or(0) as u32;
        let (guest, ctx) = split(&mut caller);
        ctx.calibration.record(guest.0, planned_stmt, &mut ctx.events);
        let result = statement(&mut caller, |caller| standard.call(caller, params, results));
        // Any utility command may change settings, transaction control included (it ends
        // SET LOCAL); one that failed rolled its changes back.
        caller.data_mut().interrupts.settings_changed();
        result
    });
    set_hook(store, table, hook_address as u32, hook)
}

/// Puts `hook` in the table and its index in the hook variable at `address`.
fn set_hook(store: &mut Store<Ctx>, table: Table, address: u32, hook: Func) -> Result<(), Error> {
    let index = table.grow(&mut *store, 1, Ref::Func(Some(hook))).map_err(Error::instantiate)?;
    let memory = store.data().shared().memory;
    memory.write(&mut *store, address as usize, &(index as u32).to_le_bytes()).map_err(Error::trap)
}

/// Runs `body` (a hooked executor or utility step) as part of a statement: when no other
/// hooked step is running, it is a top-level statement, whose start and end the interrupt
/// state learns (see `interrupts`). An error unwinding through `body` ends it too.
fn statement(
    caller: &mut Caller<'_, Ctx>,
    body: impl FnOnce(&mut Caller<'_, Ctx>) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    let top = caller.data().interrupts.depth == 0;
    if top {
        interrupts::statement_start(caller.as_context_mut())?;
    }
    caller.data_mut().interrupts.depth += 1;
    let result = body(caller);
    let ctx = caller.data_mut();
    ctx.interrupts.depth = ctx.interrupts.depth.saturating_sub(1);
    if top {
        interrupts::statement_end(ctx);
    }
    result
}

/// Puts host functions in `ExecutorStart_hook`, `ExecutorRun_hook` and `ExecutorFinish_hook`
/// that run the standard executor steps as parts of a statement (see [`statement`]): where a
/// query runs, it can be cancelled and time out.
fn install_executor_hooks(store: &mut Store<Ctx>, instance: &wasmtime::Instance, table: Table) -> Result<(), Error> {
    for step in ["ExecutorStart", "ExecutorRun", "ExecutorFinish"] {
        let standard = instance
            .get_func(&mut *store, &format!("standard_{step}"))
            .ok_or_else(|| Error::instantiate(format!("module does not export standard_{step}")))?;
        let hook_name = format!("{step}_hook");
        let address = *store
            .data()
            .dylink
            .main_data
            .get(&hook_name)
            .ok_or_else(|| Error::instantiate(format!("module does not export {hook_name}")))?;
        let hook = executor_hook(store, standard);
        set_hook(store, table, address as u32, hook)?;
    }
    Ok(())
}

/// A hook that runs the standard executor step `standard` as part of a statement. Typed for
/// the signatures the steps have (they run for every query, and a typed call skips the
/// conversion of every argument); any other through the generic path.
fn executor_hook(store: &mut Store<Ctx>, standard: Func) -> Func {
    use wasmtime::ValType::{I32, I64};
    let ty = standard.ty(&*store);
    let params: Vec<_> = ty.params().collect();
    let no_results = ty.results().len() == 0;
    macro_rules! typed {
        ($($arg:ident: $t:ty),*) => {{
            if let Ok(standard) = standard.typed::<($($t,)*), ()>(&*store) {
                return Func::wrap(&mut *store, move |mut caller: Caller<'_, Ctx>, $($arg: $t),*| {
                    statement(&mut caller, |caller| standard.call(caller, ($($arg,)*)))
                });
            }
        }};
    }
    match (params.as_slice(), no_results) {
        // ExecutorFinish(QueryDesc *)
        ([I32], true) => typed!(a: i32),
        // ExecutorStart(QueryDesc *, int eflags)
        ([I32, I32], true) => typed!(a: i32, b: i32),
        // ExecutorRun(QueryDesc *, ScanDirection, uint64 count) on 18+
        ([I32, I32, I64], true) => typed!(a: i32, b: i32, c: i64),
        // ExecutorRun(QueryDesc *, ScanDirection, uint64 count, bool execute_once) before 18
        ([I32, I32, I64, I32], true) => typed!(a: i32, b: i32, c: i64, d: i32),
        _ => {}
    }
    Func::new(&mut *store, ty, move |mut caller, params, results| {
        statement(&mut caller, |caller| standard.call(caller, params, results))
    })
}

/// Replaces the function in table slot `index` with one that records the call, then calls it.
fn wrap(store: &mut Store<Ctx>, table: Table, index: u32, watched: Watched, profile: &Profile) -> Result<(), Error> {
    let Some(original) = table.get(&mut *store, index as u64).and_then(|r| r.as_func().flatten().copied()) else {
        return Err(Error::instantiate(format!("no function in table slot {index}")));
    };
    let is_local = profile.fcinfo_arg_offset(2);
    let name_arg = profile.fcinfo_arg_offset(0);
    let crash_trigger = std::env::var(CRASH_TRIGGER_ENV).is_ok_and(|v| v == "1");
    let ty = original.ty(&*store);
    let wrapper = Func::new(&mut *store, ty, move |mut caller, params, results| {
        match watched {
            Watched::SetConfig => {
                // set_config(name, value, is_local): only a session-level change matters to
                // the session's state, any change to the interrupt settings.
                let fcinfo = params.first().and_then(Val::i32).unwrap_or(0) as u32;
                let (guest, ctx) = split(&mut caller);
                if crash_trigger
                    && let Ok(name) = guest.u32(fcinfo.wrapping_add(name_arg))
                    && text_datum(guest.0, name).as_deref() == Some(CRASH_SETTING)
                {
                    return Err(wasmtime::Error::msg("crash triggered on purpose (test trigger)"));
                }
                let local = guest.slice(fcinfo.wrapping_add(is_local), 1).map(|b| b[0] != 0).unwrap_or(false);
                if !local {
                    ctx.events.settings = true;
                    if let Ok(name) = guest.u32(fcinfo.wrapping_add(name_arg))
                        && let Some(name) = text_datum(guest.0, name)
                    {
                        note_custom(&mut ctx.events, name);
                    }
                }
            }
            Watched::AdvisoryLock => caller.data_mut().events.locks = true,
        }
        let result = original.call(&mut caller, params, results);
        if let Watched::SetConfig = watched {
            caller.data_mut().interrupts.settings_changed();
        }
        result
    });
    table.set(&mut *store, index as u64, Ref::Func(Some(wrapper))).map_err(Error::instantiate)?;
    store.data_mut().invoke_cache.clear();
    Ok(())
}

/// Makes `settings` the session's connection defaults, as PostgreSQL does with the options of a
/// startup packet (and `session_authorization` with the login role): set at the client level,
/// so `RESET` and `DISCARD ALL` return to them, inside a transaction (checking a role needs the
/// catalog). Only for an idle backend. A value PostgreSQL refuses is logged, not raised, and
/// its name returned; callers validate values first.
pub(crate) fn set_connection_defaults(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    settings: &[(String, String)],
) -> wasmtime::Result<Vec<String>> {
    let start = instance.get_typed_func::<(), ()>(&mut *store, "StartTransactionCommand")?;
    let commit = instance.get_typed_func::<(), ()>(&mut *store, "CommitTransactionCommand")?;
    let set =
        instance.get_typed_func::<(i32, i32, i32, i32, i32, i32, i32, i32), i32>(&mut *store, "set_config_option")?;
    let exports = store.data().exports();
    let memory = store.data().shared().memory;
    let mut refused = Vec::new();
    start.call(&mut *store, ())?;
    for (name, value) in settings {
        let mut strings = Vec::new();
        for text in [name.as_str(), value.as_str()] {
            let ptr = exports.malloc.call(&mut *store, text.len() as i32 + 1)?;
            memory.write(&mut *store, ptr as usize, text.as_bytes())?;
            memory.write(&mut *store, ptr as usize + text.len(), &[0])?;
            strings.push(ptr);
        }
        let args = (strings[0], strings[1], PGC_SU_BACKEND, PGC_S_CLIENT, GUC_ACTION_SET, 1, DEBUG1, 0);
        if set.call(&mut *store, args)? <= 0 {
            refused.push(name.clone());
        }
        for ptr in strings {
            exports.free.call(&mut *store, ptr)?;
        }
    }
    commit.call(&mut *store, ())?;
    // The host's own changes are not the client's, nor is anything they printed.
    store.data_mut().events = SessionEvents::default();
    store.data_mut().interrupts.settings_changed();
    store.data_mut().wire_out.clear();
    Ok(refused)
}
