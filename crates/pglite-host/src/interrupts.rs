//! Interrupting a running query the way PostgreSQL does, and the stack-depth guard.
//!
//! PostgreSQL cancels a query by setting `QueryCancelPending` and `InterruptPending` from a
//! signal handler; the running code notices at its next `CHECK_FOR_INTERRUPTS()` and raises
//! `57014` there, at a point where an error is safe. Here whoever wants the running statement
//! cancelled raises the exchange's cancel flag and calls [`Remote::interrupt`], which sets the
//! two flags in the guest's memory from its own thread, as the signal handler would (see
//! `remote`). Nothing else in the guest is touched, and the guest's code carries no
//! instrumentation for it (wasmtime's epoch checks cost 5–10 % of throughput).
//!
//! PGlite compiles PostgreSQL's timers out (`insert_timeout` returns at once under
//! Emscripten), so `statement_timeout` is kept here: the executor and utility hooks mark where
//! a top-level statement starts and ends, the deadline is the setting's value after the start,
//! and a timer thread delivers a due deadline like a cancel; the error PostgreSQL raises then
//! says "user request", and the reply gets PostgreSQL's own statement-timeout text instead.
//!
//! PGlite never sets `stack_base_ptr`, so `check_stack_depth()` never fires and deep
//! recursion ran until the wasm stack trapped (or the C stack ran over static data). The host
//! sets it to the top of the C stack it gave the guest and keeps `max_stack_depth` within
//! that stack, so recursion ends in PostgreSQL's own `54001`.

mod remote;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use wasmtime::{AsContextMut, Caller, Store, StoreContextMut, TypedFunc};

pub(crate) use self::remote::Remote;

use crate::facts::Facts;
use crate::imports::Ctx;

/// `QueryCancelPending` follows `InterruptPending` in PostgreSQL's `globals.c` (16–19), where
/// the build does not export it (0.2, 0.3); boot checks that a cancel set there really cancels
/// before relying on it.
const QUERY_CANCEL_PENDING_OFFSET: u32 = 4;

/// PostgreSQL's margin between `max_stack_depth` and the real stack (`STACK_DEPTH_SLOP`).
const STACK_DEPTH_SLOP: u32 = 512 * 1024;

/// How the caller of an exchange may interrupt it.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    /// Raised (then [`Pglite::interrupt`](crate::Pglite::interrupt) called), it cancels the
    /// statement running, or the next one to start in the exchange, with PostgreSQL's `57014`
    /// "canceling statement due to user request". Lowered when it has been acted on.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The statement running at this instant is cancelled the same way: the caller's own
    /// timeouts (`transaction_timeout`), whose errors the caller words.
    pub deadline: Option<Instant>,
}

/// The session's timeouts as the backend has them now (zero is off, so `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub statement: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    pub idle_session: Option<Duration>,
    /// PostgreSQL 17 and later.
    pub transaction: Option<Duration>,
}

/// Why a statement was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    User,
    StatementTimeout,
    /// The caller's deadline: left for the caller to word.
    Deadline,
}

const USER_REQUEST: &str = "canceling statement due to user request";
const STATEMENT_TIMEOUT: &str = "canceling statement due to statement timeout";

/// The interrupt state of one instance, in its store data.
#[derive(Default)]
pub(crate) struct Interrupts {
    /// Guest addresses of `InterruptPending` and `QueryCancelPending`, once boot found that
    /// setting them cancels.
    flags: Option<(u32, u32)>,
    /// What other threads interrupt the guest through, and this instance's attachment to it
    /// while cancel works.
    pub(crate) remote: Arc<Remote>,
    attachment: Option<u64>,
    /// The timeouts as last read; re-read when settings may have changed.
    pub(crate) timeouts: SessionTimeouts,
    settings_dirty: bool,
    /// Hook frames (executor, utility) active: above zero, a statement is running.
    pub(crate) depth: u32,
    /// `GetConfigOption` and the guest strings of the names it is asked for.
    config: Option<ConfigReader>,
    /// The stack-depth check's variables (guest addresses) and the largest limit the C stack
    /// allows, once boot set the stack base.
    stack: Option<(u32, u32)>,
    /// `DoingCommandRead`, which PGlite 0.2 leaves set while a command runs, so PostgreSQL
    /// ignored cancels; cleared when a statement starts, as PostgreSQL's own loop does.
    doing_command_read: Option<u32>,
    /// What turns a wasm stack overflow into PostgreSQL's `54001` (see [`StackGuard`]).
    pub(crate) guard: Option<StackGuard>,
}

/// PostgreSQL measures stack depth on the C stack in linear memory, but the wasm stack (where
/// most locals live) runs out first in some recursions: a JSON parse or SQL functions use
/// little C stack per level. When it does, wasmtime traps at a function entry, and the trap
/// unwinds to the nearest `invoke_*`, the call site of a `setjmp` (PostgreSQL's `PG_TRY` or
/// its main loop). There the host raises `54001` as `check_stack_depth` would: the C stack
/// pointer and `error_context_stack` are put back to what they were when that call began
/// (the frames in between are gone), and `check_stack_depth` is run with its limit at zero,
/// so PostgreSQL raises its own error, which longjmps like any other. An error in a critical
/// section is still a PANIC, as PostgreSQL makes it.
#[derive(Clone)]
pub(crate) struct StackGuard {
    check: TypedFunc<(), ()>,
    /// `max_stack_depth_bytes` and `error_context_stack`.
    max_bytes: u32,
    pub(crate) context_stack: u32,
}

/// If `error` is a wasm stack overflow and there is a guard, raises `54001` in the guest
/// (see [`StackGuard`]) with the C stack pointer at `sp` and `error_context_stack` at
/// `context`: returns the longjmp that raises it (to be handled as the caller handles any),
/// or the error to pass on.
pub(crate) fn stack_overflow_to_error(
    mut store: impl AsContextMut<Data = Ctx>,
    error: wasmtime::Error,
    sp: wasmtime::Val,
    context: u32,
) -> wasmtime::Error {
    let caller = &mut store.as_context_mut();
    let overflow = error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::StackOverflow);
    let Some(guard) = caller.data().interrupts.guard.clone().filter(|_| overflow) else {
        return error;
    };
    let shared = caller.data().shared();
    if shared.stack_pointer.set(&mut *caller, sp).is_err() {
        return error;
    }
    match raise_stack_depth_error(caller, &guard, Some(context)) {
        // check_stack_depth raised: its longjmp is what the caller handles.
        Some(Err(raised)) if is_longjmp(&raised) => {
            tracing::debug!("wasm stack exhausted; raised PostgreSQL's stack depth error");
            raised
        }
        // Still no room here (or no error): let an outer call site try.
        Some(Err(raised)) => raised,
        Some(Ok(())) | None => error,
    }
}

/// A longjmp on its way (see `imports::invoke`), not yet caught.
fn is_longjmp(error: &wasmtime::Error) -> bool {
    error.is::<crate::imports::LongJmp>() || error.is::<wasmtime::ThrownException>()
}

/// Runs `check_stack_depth` with its limit at zero, so that PostgreSQL raises its own `54001`
/// (a longjmp), with `error_context_stack` first put back to `context` if given; the limit is
/// restored after. None if the variables are out of the memory's bounds.
fn raise_stack_depth_error(
    caller: &mut StoreContextMut<'_, Ctx>,
    guard: &StackGuard,
    context: Option<u32>,
) -> Option<wasmtime::Result<()>> {
    let memory = caller.data().shared().memory;
    let bytes = memory.data_mut(&mut *caller);
    let word = |bytes: &[u8], at: u32| bytes.get(at as usize..at as usize + 4).map(|w| [w[0], w[1], w[2], w[3]]);
    let (limit, _) = (word(bytes, guard.max_bytes)?, word(bytes, guard.context_stack)?);
    if let Some(context) = context {
        bytes[guard.context_stack as usize..guard.context_stack as usize + 4].copy_from_slice(&context.to_le_bytes());
    }
    bytes[guard.max_bytes as usize..guard.max_bytes as usize + 4].copy_from_slice(&0u32.to_le_bytes());
    let raised = guard.check.call(&mut *caller, ());
    let bytes = memory.data_mut(&mut *caller);
    bytes[guard.max_bytes as usize..guard.max_bytes as usize + 4].copy_from_slice(&limit);
    Some(raised)
}

/// The wasm stack left below the guest's deepest frames for PostgreSQL to raise and report
/// an error in.
const STACK_MARGIN: usize = 4 << 20;

thread_local! {
    /// About the top of the native stack the guest runs on on this thread; 0 when unknown.
    static STACK_TOP: Cell<usize> = const { Cell::new(0) };
}

/// Marks the guest's native stack as starting about here on this thread, until the mark is
/// dropped. Wasmtime limits the wasm stack to `engine::MAX_WASM_STACK` below where the first
/// call into wasm is made, a little deeper than this, so the stack check's reckoning is on
/// the safe side.
pub(crate) fn mark_stack_top() -> StackTop {
    StackTop(STACK_TOP.replace(stack_here()))
}

/// About where the native stack is now: the address of a local.
#[inline(never)]
fn stack_here() -> usize {
    let marker = 0u8;
    std::hint::black_box(&raw const marker) as usize
}

/// See [`mark_stack_top`]: puts back the mark it replaced.
pub(crate) struct StackTop(usize);

impl Drop for StackTop {
    fn drop(&mut self) {
        STACK_TOP.set(self.0);
    }
}

/// The host side of the stack check a rewritten module's `check_stack_depth` makes (see
/// `engine::patch`): with less than `STACK_MARGIN` of the wasm stack left, raises `54001` from
/// there (see [`StackGuard`]) before a trap could. The longjmp passes out through here.
pub(crate) fn stack_check(mut caller: Caller<'_, Ctx>) -> wasmtime::Result<()> {
    let top = STACK_TOP.get();
    if top == 0 || top.saturating_sub(stack_here()) + STACK_MARGIN < crate::engine::MAX_WASM_STACK {
        return Ok(());
    }
    let Some(guard) = caller.data().interrupts.guard.clone() else {
        return Ok(());
    };
    match raise_stack_depth_error(&mut caller.as_context_mut(), &guard, None) {
        Some(Err(raised)) => {
            tracing::debug!("wasm stack running low; raised PostgreSQL's stack depth error");
            Err(raised)
        }
        Some(Ok(())) | None => Ok(()),
    }
}

/// `error_context_stack` now, when a stack overflow would be turned into an error (a guard
/// is installed).
pub(crate) fn error_context(mut store: impl AsContextMut<Data = Ctx>) -> Option<u32> {
    let store = store.as_context_mut();
    let at = store.data().interrupts.guard.as_ref()?.context_stack as usize;
    let memory = store.data().shared().memory;
    let word = memory.data(&store).get(at..at + 4)?;
    Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// Reads settings through PostgreSQL's `GetConfigOption`.
struct ConfigReader {
    get: TypedFunc<(i32, i32, i32), i32>,
    /// Guest strings: `statement_timeout`, `idle_in_transaction_session_timeout`,
    /// `idle_session_timeout`, `transaction_timeout`.
    names: [i32; 4],
}

const TIMEOUT_SETTINGS: [&str; 4] =
    ["statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout", "transaction_timeout"];

impl Interrupts {
    /// Whether cancel works on this instance.
    pub(crate) fn can_cancel(&self) -> bool {
        self.flags.is_some()
    }

    /// Settings may have changed (a utility command, `set_config`, an error, new connection
    /// defaults): re-read them at the next statement.
    pub(crate) fn settings_changed(&mut self) {
        self.settings_dirty = true;
    }

    /// Stops other threads from reaching this instance's memory: called before the store that
    /// owns the memory is dropped.
    pub(crate) fn detach(&mut self) {
        if let Some(attachment) = self.attachment.take() {
            self.remote.detach(attachment);
        }
    }
}

/// Sets up interrupts on a booted instance: the stack base and limit (when `stack` was found
/// in the module and the limit variable holds what `max_stack_depth` says), the settings
/// reader, and `remote`'s access to the flags. `stack_top` and `stack_size` describe the C
/// stack the host gave the guest.
pub(crate) fn install(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    memory_base: u32,
    facts: Facts,
    stack: (u32, u32),
    remote: Arc<Remote>,
) -> wasmtime::Result<()> {
    let (stack_top, stack_size) = stack;
    let get = instance.get_typed_func::<(i32, i32, i32), i32>(&mut *store, "GetConfigOption")?;
    let exports = store.data().exports();
    let memory = store.data().shared().memory;
    let name = |store: &mut Store<Ctx>, text: &str| -> wasmtime::Result<i32> {
        let ptr = exports.malloc.call(&mut *store, text.len() as i32 + 1)?;
        memory.write(&mut *store, ptr as usize, text.as_bytes())?;
        memory.write(&mut *store, ptr as usize + text.len(), &[0])?;
        Ok(ptr)
    };
    let mut names = [0; 4];
    for (slot, setting) in names.iter_mut().zip(TIMEOUT_SETTINGS) {
        *slot = name(store, setting)?;
    }
    let max_stack_depth = name(store, "max_stack_depth")?;
    let reader = ConfigReader { get, names };
    if let Some((base_ptr, max_bytes)) = facts.stack {
        let (base_ptr, max_bytes) = (memory_base + base_ptr, memory_base + max_bytes);
        let kb = read_int(&mut *store, &reader.get, max_stack_depth)?;
        let mut word = [0u8; 4];
        memory.read(&*store, max_bytes as usize, &mut word)?;
        if kb.is_some_and(|kb| i64::from(u32::from_le_bytes(word)) == kb * 1024) {
            memory.write(&mut *store, base_ptr as usize, &stack_top.to_le_bytes())?;
            let limit = stack_size.saturating_sub(STACK_DEPTH_SLOP);
            store.data_mut().interrupts.stack = Some((max_bytes, limit));
        } else {
            tracing::warn!("PostgreSQL's stack-depth variables are not where expected; deep recursion may crash");
        }
    }
    exports.free.call(&mut *store, max_stack_depth)?;
    let check = instance.get_typed_func::<(), ()>(&mut *store, "check_stack_depth")?;
    let context_stack = store.data().dylink.main_data.get("error_context_stack").map(|&a| a as u32);
    if let (Some((max_bytes, _)), Some(context_stack)) = (store.data().interrupts.stack, context_stack) {
        store.data_mut().interrupts.guard = Some(StackGuard { check, max_bytes, context_stack });
    }
    let ctx = store.data_mut();
    ctx.interrupts.config = Some(reader);
    ctx.interrupts.settings_dirty = true;
    let main_data = &ctx.dylink.main_data;
    if let Some(&pending) = main_data.get("InterruptPending") {
        let pending = pending as u32;
        // 0.5+ export it; earlier builds keep it right after InterruptPending.
        let cancel = main_data.get("QueryCancelPending").map_or(pending + QUERY_CANCEL_PENDING_OFFSET, |&a| a as u32);
        ctx.interrupts.flags = Some((pending, cancel));
    }
    ctx.interrupts.doing_command_read = facts.doing_command_read.map(|offset| memory_base + offset);
    let my_latch = ctx.dylink.main_data.get("MyLatch").map(|&addr| addr as u32);
    ctx.interrupts.remote = remote;
    if let Some(flags) = ctx.interrupts.flags {
        // The engine never moves a linear memory (`memory_may_move(false)`), and the instance
        // detaches before its store, which owns the memory, is dropped.
        let (base, len) = (memory.data_ptr(&*store), memory.data_size(&*store));
        let interrupts = &mut store.data_mut().interrupts;
        interrupts.attachment = Some(interrupts.remote.attach(base, len, flags, my_latch));
    }
    refresh(store)?;
    Ok(())
}

/// Gives up on cancelling (boot found the flags elsewhere than expected).
pub(crate) fn disable_cancel(store: &mut Store<Ctx>) {
    let interrupts = &mut store.data_mut().interrupts;
    interrupts.flags = None;
    interrupts.detach();
}

/// An integer setting through `GetConfigOption(name, true, false)` (`None` for one this
/// release does not have).
fn read_int(
    mut store: impl AsContextMut<Data = Ctx>,
    get: &TypedFunc<(i32, i32, i32), i32>,
    name: i32,
) -> wasmtime::Result<Option<i64>> {
    let ptr = get.call(&mut store, (name, 1, 0))?;
    if ptr == 0 {
        return Ok(None);
    }
    let memory = store.as_context_mut().data().shared().memory;
    let bytes = memory.data(&store);
    let text = bytes.get(ptr as usize..).and_then(|tail| tail.iter().position(|&b| b == 0).map(|n| &tail[..n]));
    Ok(text.and_then(|t| std::str::from_utf8(t).ok()).and_then(|t| t.trim().parse().ok()))
}

/// Re-reads the settings interrupts depend on, and keeps the stack-depth limit within the C
/// stack (a superuser may raise `max_stack_depth`; PostgreSQL would check it against the
/// stack's rlimit, which the build cannot see).
fn refresh(mut store: impl AsContextMut<Data = Ctx>) -> wasmtime::Result<()> {
    let mut store = store.as_context_mut();
    let interrupts = &mut store.data_mut().interrupts;
    interrupts.settings_dirty = false;
    let Some(reader) = interrupts.config.as_ref() else {
        return Ok(());
    };
    let (get, names) = (reader.get.clone(), reader.names);
    let mut values = [None; 4];
    for (value, name) in values.iter_mut().zip(names) {
        let ms = read_int(&mut store, &get, name)?.unwrap_or(0);
        *value = (ms > 0).then(|| Duration::from_millis(ms as u64));
    }
    let [statement, idle_in_transaction, idle_session, transaction] = values;
    store.data_mut().interrupts.timeouts =
        SessionTimeouts { statement, idle_in_transaction, idle_session, transaction };
    if let Some((max_bytes, limit)) = store.data().interrupts.stack {
        let memory = store.data().shared().memory;
        let mut word = [0u8; 4];
        memory.read(&store, max_bytes as usize, &mut word)?;
        if u32::from_le_bytes(word) > limit {
            memory.write(&mut store, max_bytes as usize, &limit.to_le_bytes())?;
        }
    }
    Ok(())
}

/// Re-reads the settings if they may have changed (after an exchange, so that
/// [`SessionTimeouts`] describe the session as it is now).
pub(crate) fn refresh_if_changed(store: &mut Store<Ctx>) -> wasmtime::Result<()> {
    if store.data().interrupts.settings_dirty {
        refresh(store)?;
    }
    Ok(())
}

/// A top-level statement starts (an executor or utility hook entered at depth zero):
/// re-reads changed settings, arms the statement deadline and delivers a cancel that was
/// waiting for a statement to run.
pub(crate) fn statement_start(mut store: StoreContextMut<'_, Ctx>) -> wasmtime::Result<()> {
    if store.data().interrupts.settings_dirty {
        refresh(&mut store)?;
    }
    if let Some(flag) = store.data().interrupts.doing_command_read {
        let memory = store.data().shared().memory;
        if let Some(byte) = memory.data_mut(&mut store).get_mut(flag as usize) {
            *byte = 0;
        }
    }
    let interrupts = &store.data().interrupts;
    let deadline = interrupts.timeouts.statement.map(|timeout| Instant::now() + timeout);
    interrupts.remote.statement_start(deadline);
    Ok(())
}

/// The top-level statement ended.
pub(crate) fn statement_end(ctx: &mut Ctx) {
    ctx.interrupts.remote.statement_end();
}

/// The exchange is over: a delivered cancel the backend did not act on is withdrawn (it
/// would cancel whatever runs next, maybe another client's), and the errors that timeouts
/// caused get PostgreSQL's text for them. Returns the reasons acted on.
pub(crate) fn finish_exchange(store: &mut Store<Ctx>, reply: &mut Vec<u8>) -> Vec<Reason> {
    let memory = store.data().shared().memory;

    let interrupts = &mut store.data_mut().interrupts;
    interrupts.depth = 0;
    // From here on no other thread raises a flag in this memory.
    let mut delivered = interrupts.remote.end_exchange();
    if let Some((_, cancel_pending)) = interrupts.flags
        && !delivered.is_empty()
    {
        let bytes = memory.data_mut(&mut *store);
        if let Some(word) = bytes.get_mut(cancel_pending as usize..cancel_pending as usize + 4)
            && word != [0; 4]
        {
            word.copy_from_slice(&[0; 4]);
            delivered.pop();
        }
    }
    if delivered.contains(&Reason::StatementTimeout) {
        rewrite_cancel_messages(reply, &delivered);
    }
    delivered
}

/// Gives each `57014` "user request" error in `reply` the text of the reason delivered for
/// it, in order.
fn rewrite_cancel_messages(reply: &mut Vec<u8>, reasons: &[Reason]) {
    let mut reasons = reasons.iter();
    let mut out = Vec::with_capacity(reply.len());
    let mut at = 0;
    while at + 5 <= reply.len() {
        let len = u32::from_be_bytes([reply[at + 1], reply[at + 2], reply[at + 3], reply[at + 4]]) as usize;
        let end = (at + 1 + len).min(reply.len());
        let frame = &reply[at..end];
        let rewritten = (frame[0] == b'E')
            .then(|| error_fields(&frame[5..]))
            .filter(|fields| {
                fields.iter().any(|(t, v)| *t == b'C' && v == b"57014")
                    && fields.iter().any(|(t, v)| *t == b'M' && v == USER_REQUEST.as_bytes())
            })
            .and_then(|fields| match reasons.next() {
                Some(Reason::StatementTimeout) => Some(error_frame(&fields, STATEMENT_TIMEOUT)),
                Some(Reason::User | Reason::Deadline) | None => None,
            });
        out.extend_from_slice(rewritten.as_deref().unwrap_or(frame));
        at = end;
    }
    out.extend_from_slice(&reply[at..]);
    *reply = out;
}

fn error_fields(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&tag, tail)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let Some(nul) = tail.iter().position(|&b| b == 0) else { break };
        fields.push((tag, tail[..nul].to_vec()));
        rest = &tail[nul + 1..];
    }
    fields
}

fn error_frame(fields: &[(u8, Vec<u8>)], message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in fields {
        body.push(*tag);
        body.extend_from_slice(if *tag == b'M' { message.as_bytes() } else { value });
        body.push(0);
    }
    body.push(0);
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, message: &str) -> Vec<u8> {
        let fields =
            vec![(b'S', b"ERROR".to_vec()), (b'C', code.as_bytes().to_vec()), (b'M', message.as_bytes().to_vec())];
        error_frame(&fields, message)
    }

    #[test]
    fn only_cancels_get_the_timeout_text_in_delivery_order() {
        let mut reply = error("22012", "division by zero");
        reply.extend(error("57014", USER_REQUEST));
        reply.extend(b"Z\0\0\0\x05I");
        reply.extend(error("57014", USER_REQUEST));
        rewrite_cancel_messages(&mut reply, &[Reason::User, Reason::StatementTimeout]);
        let mut expected = error("22012", "division by zero");
        expected.extend(error("57014", USER_REQUEST));
        expected.extend(b"Z\0\0\0\x05I");
        expected.extend(error("57014", STATEMENT_TIMEOUT));
        assert_eq!(reply, expected);
    }
}
