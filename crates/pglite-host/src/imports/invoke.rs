//! `invoke_*` trampolines and `_emscripten_throw_longjmp`: Emscripten's JS-style setjmp/longjmp.
//! A longjmp unwinds through wasm frames to the nearest `invoke_*`, which restores the stack
//! pointer, sets `__THREW__` through `setThrew(1, 0)` and returns a zero of its result type.
//! Anything else (exit, abort, out-of-bounds, stack exhaustion) passes through.
//!
//! The invokes of the main module and of the side modules loaded after it run in wasm
//! (`engine::patch`), where a longjmp is a wasm exception of the tag the main module exports;
//! the host's serve a module the patch could not rewrite. So a longjmp is that exception
//! whenever the main module has the tag, and a host error ([`LongJmp`]) otherwise; the host's
//! invokes catch either.

use std::any::Any;

use wasmtime::{
    AsContextMut, Caller, Func, FuncType, Linker, Module, TypedFunc, Val, ValType, WasmParams, WasmResults,
};

use super::Ctx;
use super::error::LongJmp;

pub(super) fn add_to_linker(linker: &mut Linker<Ctx>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap("env", "_emscripten_throw_longjmp", |mut caller: Caller<'_, Ctx>| -> wasmtime::Result<()> {
        match caller.data().exports.as_ref().and_then(|e| e.longjmp) {
            Some(tag) => {
                let ty = wasmtime::ExnType::from_tag_type(&tag.ty(&caller))?;
                let pre = wasmtime::ExnRefPre::new(&mut caller, ty);
                let exception = wasmtime::ExnRef::new(&mut caller, &pre, &tag, &[])?;
                caller.as_context_mut().throw(exception)
            }
            None => Err(wasmtime::Error::new(LongJmp)),
        }
    })?;
    linker.func_wrap("env", crate::engine::STACK_CHECK, crate::interrupts::stack_check)?;
    for import in module.imports() {
        if let (true, wasmtime::ExternType::Func(ty)) = (import.name().starts_with("invoke_"), import.ty())
            && !add_typed(linker, import.module(), import.name())?
        {
            linker.func_new(import.module(), import.name(), ty.clone(), trampoline(&ty))?;
        }
    }
    Ok(())
}

/// Typed trampolines for the signatures nearly every query uses (a `SELECT 1` makes ~30
/// invokes, an extended-protocol one ~150, all of these): a dynamic `Func::call` type-checks
/// and converts every value on each call, which cost a third of a simple query's time (and
/// still ~2.5 % of 0.6.1's extended-protocol `pgbench -S` for its 4 dynamic calls a
/// transaction, before the last seven were added). Emscripten names encode the signature
/// (result, then parameters after the table index; `i` is i32, `j` i64, `v` none); should an
/// import's type ever differ, instantiation fails cleanly. Returns false for the others, which
/// take the dynamic path.
fn add_typed(linker: &mut Linker<Ctx>, module: &str, name: &str) -> wasmtime::Result<bool> {
    // `wrap!(a: i32, b: i64 => i32)`: the trampoline for `(table index, a, b) -> i32`.
    macro_rules! wrap {
        ($($arg:ident: $ty:ty),* => $result:ty) => {
            linker.func_wrap(module, name, |c: Caller<'_, Ctx>, f: i32, $($arg: $ty),*| {
                invoke::<($($ty,)*), $result>(c, f, ($($arg,)*))
            })?
        };
    }
    match name {
        "invoke_v" => wrap!(=> ()),
        "invoke_vi" => wrap!(a: i32 => ()),
        "invoke_vii" => wrap!(a: i32, b: i32 => ()),
        "invoke_viii" => wrap!(a: i32, b: i32, d: i32 => ()),
        "invoke_viiii" => wrap!(a: i32, b: i32, d: i32, e: i32 => ()),
        "invoke_viiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32 => ()),
        "invoke_viiiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32, h: i32 => ()),
        "invoke_i" => wrap!(=> i32),
        "invoke_ii" => wrap!(a: i32 => i32),
        "invoke_iii" => wrap!(a: i32, b: i32 => i32),
        "invoke_iiii" => wrap!(a: i32, b: i32, d: i32 => i32),
        "invoke_iiiii" => wrap!(a: i32, b: i32, d: i32, e: i32 => i32),
        "invoke_iiiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32 => i32),
        "invoke_iiiiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32, h: i32 => i32),
        // Signatures with `j` (i64) or many parameters that one query still makes a call or
        // two of (counted under `pgbench -S -M extended`: 3 a transaction on 0.3.16, 4 on
        // 0.6.1).
        "invoke_ij" => wrap!(a: i64 => i32),
        "invoke_ijj" => wrap!(a: i64, b: i64 => i32),
        "invoke_viji" => wrap!(a: i32, b: i64, d: i32 => ()),
        "invoke_jjii" => wrap!(a: i64, b: i32, d: i32 => i64),
        "invoke_jiiii" => wrap!(a: i32, b: i32, d: i32, e: i32 => i64),
        "invoke_iiiiiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32, h: i32, k: i32 => i32),
        "invoke_viiiiiiiii" => wrap!(a: i32, b: i32, d: i32, e: i32, g: i32, h: i32, k: i32, l: i32, m: i32 => ()),
        _ => return Ok(false),
    };
    Ok(true)
}

/// Type-checked views of the table's functions (`TypedFunc`s), by table index, kept in the
/// store: a hit costs no table lookup, no type check and no reference count, as each of the
/// ~150 invokes of an extended-protocol query otherwise would. An entry is taken out for its
/// call and put back after it (an invoke of the same function inside makes its own). Emptied
/// whenever the host replaces a table entry; entries it adds were empty, and empty ones are
/// never cached.
#[derive(Default)]
pub(crate) struct InvokeCache {
    entries: Vec<Option<Box<dyn Any + Send>>>,
    /// Counts the times it was emptied: an entry taken out before is not put back.
    generation: u64,
}

impl InvokeCache {
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.generation += 1;
    }

    fn take(&mut self, slot: usize) -> Option<Box<dyn Any + Send>> {
        self.entries.get_mut(slot).and_then(Option::take)
    }

    fn put(&mut self, slot: usize, generation: u64, entry: Box<dyn Any + Send>) {
        if generation != self.generation {
            return;
        }
        if self.entries.len() <= slot {
            self.entries.resize_with(slot + 1, || None);
        }
        self.entries[slot] = Some(entry);
    }
}

fn invoke<P: WasmParams + 'static, R: WasmResults + Default + 'static>(
    mut caller: Caller<'_, Ctx>,
    index: i32,
    args: P,
) -> wasmtime::Result<R> {
    let shared = caller.data().shared();
    let sp = shared.stack_pointer.get(&mut caller);
    let context = error_context(&mut caller);
    let slot = index as u32 as usize;
    let generation = caller.data().invoke_cache.generation;
    let entry = match caller.data_mut().invoke_cache.take(slot) {
        Some(entry) if entry.is::<TypedFunc<P, R>>() => entry,
        _ => Box::new(table_func(&mut caller, index)?.typed::<P, R>(&caller)?),
    };
    let typed = entry.downcast_ref::<TypedFunc<P, R>>().expect("an entry of this type");
    let result = typed.call(&mut caller, args);
    caller.data_mut().invoke_cache.put(slot, generation, entry);
    match result {
        Ok(result) => Ok(result),
        Err(err) => {
            let err = overflow_to_error(&mut caller, err, sp, context);
            if !take_longjmp(&mut caller, &err) {
                return Err(err);
            }
            shared.stack_pointer.set(&mut caller, sp)?;
            let set_threw = caller.data().exports().set_threw;
            set_threw.call(&mut caller, (1, 0))?;
            Ok(R::default())
        }
    }
}

/// Whether `err` is a longjmp (see the module's doc); the exception is taken off the store, so
/// the guest can go on. The longjmp tag is the only one the guest has.
pub(crate) fn take_longjmp(mut store: impl AsContextMut, err: &wasmtime::Error) -> bool {
    if err.is::<LongJmp>() {
        return true;
    }
    if err.is::<wasmtime::ThrownException>() {
        return store.as_context_mut().take_pending_exception().is_some();
    }
    false
}

/// `error_context_stack` now, when a stack overflow would be turned into an error.
fn error_context(caller: &mut Caller<'_, Ctx>) -> Option<u32> {
    crate::interrupts::error_context(caller)
}

/// A wasm stack overflow below this call site becomes PostgreSQL's `54001` (see
/// `interrupts::StackGuard`); any other error is returned as it is.
fn overflow_to_error(
    caller: &mut Caller<'_, Ctx>,
    err: wasmtime::Error,
    sp: Val,
    context: Option<u32>,
) -> wasmtime::Error {
    match context {
        Some(context) => crate::interrupts::stack_overflow_to_error(caller, err, sp, context),
        None => err,
    }
}

fn table_func(caller: &mut Caller<'_, Ctx>, index: i32) -> wasmtime::Result<Func> {
    let table = caller.data().shared().table;
    let index = index as u32 as u64;
    table
        .get(&mut *caller, index)
        .and_then(|r| r.as_func().flatten().copied())
        .ok_or_else(|| wasmtime::Error::msg(format!("invoke of null function pointer {index}")))
}

/// The host function for an `invoke_*` import of type `ty` (first parameter: table index).
pub(super) fn trampoline(
    ty: &FuncType,
) -> impl Fn(Caller<'_, Ctx>, &[Val], &mut [Val]) -> wasmtime::Result<()> + Send + Sync + 'static {
    let zeros: Vec<Val> = ty.results().map(|t| zero(&t)).collect();
    move |mut caller, params, results| {
        let shared = caller.data().shared();
        let sp = shared.stack_pointer.get(&mut caller);
        let context = error_context(&mut caller);
        let func = table_func(&mut caller, params[0].unwrap_i32())?;
        match func.call(&mut caller, &params[1..], results) {
            Ok(()) => Ok(()),
            Err(err) => {
                let err = overflow_to_error(&mut caller, err, sp, context);
                if !take_longjmp(&mut caller, &err) {
                    return Err(err);
                }
                shared.stack_pointer.set(&mut caller, sp)?;
                let set_threw = caller.data().exports().set_threw;
                set_threw.call(&mut caller, (1, 0))?;
                results.clone_from_slice(&zeros);
                Ok(())
            }
        }
    }
}

fn zero(ty: &ValType) -> Val {
    match ty {
        ValType::I64 => Val::I64(0),
        ValType::F32 => Val::F32(0),
        ValType::F64 => Val::F64(0),
        _ => Val::I32(0),
    }
}
