//! Facts about the module the host needs and the module does not export, read from the code
//! of exported functions that use them: where PostgreSQL keeps `stack_base_ptr`,
//! `max_stack_depth_bytes` and `DoingCommandRead`. A relocatable build (0.2, 0.3) addresses
//! them as `__memory_base` plus a constant; a build that is not (0.5+) by the constant alone.
//! Boot checks each against the backend's behaviour before relying on it (see `interrupts`).

/// `errcode(ERRCODE_QUERY_CANCELED)`'s argument: `57014` as PostgreSQL packs a SQLSTATE.
const QUERY_CANCELED: i32 = 5 | (7 << 6) | (1 << 18) | (4 << 24);

/// Where PostgreSQL keeps variables the host needs and the module does not export, as offsets
/// from the memory base (0 in a build that is not relocatable), read from the code of
/// exported functions that use them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `stack_base_ptr` and `max_stack_depth_bytes`: the first two words `check_stack_depth`
    /// loads.
    pub(crate) stack: Option<(u32, u32)>,
    /// `DoingCommandRead`: the flag `ProcessInterrupts` tests right before it raises
    /// "canceling statement due to user request" (its last `57014`).
    pub(crate) doing_command_read: Option<u32>,
}

/// A value on the operand stack, as far as [`Facts::from_wasm`] follows it.
#[derive(Clone, Copy, PartialEq)]
enum Value {
    MemoryBase,
    Const(u32),
    /// `__memory_base` plus a constant: a variable's address.
    Address(u32),
    Other,
}

/// What one function's straight-line code loads from variables at `__memory_base` plus a
/// constant: each load's offset and width, and the last one-byte load before each
/// `errcode(57014)`.
#[derive(Default)]
struct Loads {
    words: Vec<u32>,
    flag_before_cancel: Option<u32>,
}

/// The address a load reads, when the operand stack's top is a variable's: `__memory_base` plus
/// a constant in a relocatable build, a constant in one that is not (`memory_base` `None`).
fn address(value: Option<Value>, memory_base: Option<u32>, offset: u64) -> Option<u32> {
    match value? {
        Value::Address(c) => Some(c.wrapping_add(offset as u32)),
        Value::Const(c) if memory_base.is_none() => Some(c.wrapping_add(offset as u32)),
        _ => None,
    }
}

fn loads(body: &wasmparser::FunctionBody<'_>, memory_base: Option<u32>) -> Option<Loads> {
    use wasmparser::Operator;
    let mut stack: Vec<Value> = Vec::new();
    let mut locals: std::collections::HashMap<u32, Value> = Default::default();
    let mut res = Loads::default();
    let mut last_flag = None;
    for op in body.get_operators_reader().ok()? {
        match op.ok()? {
            Operator::GlobalGet { global_index } => {
                stack.push(if Some(global_index) == memory_base { Value::MemoryBase } else { Value::Other })
            }
            Operator::I32Const { value } => {
                if value == QUERY_CANCELED {
                    res.flag_before_cancel = last_flag;
                }
                stack.push(Value::Const(value as u32))
            }
            Operator::LocalGet { local_index } => stack.push(locals.get(&local_index).copied().unwrap_or(Value::Other)),
            Operator::LocalTee { local_index } => {
                locals.insert(local_index, stack.last().copied().unwrap_or(Value::Other));
            }
            Operator::LocalSet { local_index } => {
                locals.insert(local_index, stack.pop().unwrap_or(Value::Other));
            }
            Operator::I32Add => {
                let (b, a) = (stack.pop().unwrap_or(Value::Other), stack.pop().unwrap_or(Value::Other));
                stack.push(match (a, b) {
                    (Value::MemoryBase, Value::Const(c)) | (Value::Const(c), Value::MemoryBase) => Value::Address(c),
                    _ => Value::Other,
                });
            }
            Operator::I32Load { memarg } => {
                if let Some(at) = address(stack.pop(), memory_base, memarg.offset) {
                    res.words.push(at);
                }
                stack.push(Value::Other);
            }
            Operator::I32Load8U { memarg } => {
                if let Some(at) = address(stack.pop(), memory_base, memarg.offset) {
                    last_flag = Some(at);
                }
                stack.push(Value::Other);
            }
            // Anything else: forget what the operand stack held.
            _ => stack.clear(),
        }
    }
    Some(res)
}

impl Facts {
    /// Reads the facts from the module's code.
    pub(crate) fn from_wasm(wasm: &[u8]) -> Facts {
        use wasmparser::{ExternalKind, Parser, Payload, TypeRef};
        let mut facts = Facts::default();
        let mut imported_funcs = 0u32;
        let mut memory_base = None;
        let (mut stack_fn, mut interrupts_fn) = (None, None);
        let mut index = 0u32;
        for payload in Parser::new(0).parse_all(wasm) {
            let Ok(payload) = payload else { break };
            match payload {
                Payload::ImportSection(reader) => {
                    let mut globals = 0u32;
                    for import in reader.into_imports().flatten() {
                        match import.ty {
                            TypeRef::Func(_) => imported_funcs += 1,
                            TypeRef::Global(_) => {
                                if import.name == "__memory_base" {
                                    memory_base = Some(globals);
                                }
                                globals += 1;
                            }
                            _ => {}
                        }
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader.into_iter().flatten() {
                        match (export.name, export.kind) {
                            ("check_stack_depth", ExternalKind::Func) => stack_fn = Some(export.index),
                            ("ProcessInterrupts", ExternalKind::Func) => interrupts_fn = Some(export.index),
                            _ => {}
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let this = imported_funcs + index;
                    index += 1;
                    if Some(this) == stack_fn {
                        facts.stack =
                            loads(&body, memory_base).and_then(|l| Some((*l.words.first()?, *l.words.get(1)?)));
                    } else if Some(this) == interrupts_fn {
                        facts.doing_command_read = loads(&body, memory_base).and_then(|l| l.flag_before_cancel);
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

/// The facts this process has read, by the module's SHA-256.
static KNOWN: std::sync::Mutex<Vec<(String, Facts)>> = std::sync::Mutex::new(Vec::new());

/// The [`Facts`] of the module at `wasm`, read from its code once per module (by SHA-256) in
/// this process.
pub(crate) fn facts(wasm: &std::path::Path, sha256: &str) -> Facts {
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, facts)) = known.iter().find(|(key, _)| key == sha256) {
        return *facts;
    }
    let facts = std::fs::read(wasm).map(|bytes| Facts::from_wasm(&bytes)).unwrap_or_default();
    known.push((sha256.to_owned(), facts));
    facts
}

/// Starts reading the [`Facts`] of the module at `wasm` on a thread of its own (a few
/// milliseconds: the whole module is read and walked), so that they are known by the time a
/// boot that began meanwhile needs them. Whoever comes second waits for the first or finds
/// them known.
pub(crate) fn read_ahead(wasm: &std::path::Path, sha256: &str) {
    if let Ok(known) = KNOWN.try_lock()
        && known.iter().any(|(key, _)| key == sha256)
    {
        return;
    }
    let (wasm, sha256) = (wasm.to_owned(), sha256.to_owned());
    let spawned = std::thread::Builder::new().name("pglite-facts".into()).spawn(move || facts(&wasm, &sha256));
    if let Err(err) = spawned {
        tracing::debug!(%err, "no thread to read the module's facts ahead; boot reads them");
    }
}
