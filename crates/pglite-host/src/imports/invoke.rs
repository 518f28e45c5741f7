//! `invoke_*` trampolines and `_emscripten_throw_longjmp`: Emscripten's JS-style setjmp/longjmp.
//! A longjmp is a host error unwinding through wasm frames to the nearest `invoke_*`, which
//! restores the stack pointer, sets `__THREW__` through `setThrew(1, 0)` and returns a zero of
//! its result type. Anything else (exit, abort, out-of-bounds, stack exhaustion) passes through.

use wasmtime::{Caller, FuncType, Linker, Module, Val, ValType};

use super::{Ctx, LongJmp};

pub(crate) fn add_to_linker(linker: &mut Linker<Ctx>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap("env", "_emscripten_throw_longjmp", |_: Caller<'_, Ctx>| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(LongJmp))
    })?;
    for import in module.imports() {
        if let (true, wasmtime::ExternType::Func(ty)) = (import.name().starts_with("invoke_"), import.ty()) {
            let invoke = trampoline(&ty);
            linker.func_new(import.module(), import.name(), ty, invoke)?;
        }
    }
    Ok(())
}

/// The host function for an `invoke_*` import of type `ty` (first parameter: table index).
pub(crate) fn trampoline(
    ty: &FuncType,
) -> impl Fn(Caller<'_, Ctx>, &[Val], &mut [Val]) -> wasmtime::Result<()> + Send + Sync + 'static {
    let zeros: Vec<Val> = ty.results().map(|t| zero(&t)).collect();
    move |mut caller, params, results| {
        let shared = caller.data().shared();
        let sp = shared.stack_pointer.get(&mut caller);
        let index = params[0].unwrap_i32() as u32 as u64;
        let func = shared
            .table
            .get(&mut caller, index)
            .and_then(|r| r.as_func().flatten().copied())
            .ok_or_else(|| wasmtime::Error::msg(format!("invoke of null function pointer {index}")))?;
        match func.call(&mut caller, &params[1..], results) {
            Ok(()) => Ok(()),
            Err(err) if err.is::<LongJmp>() => {
                shared.stack_pointer.set(&mut caller, sp)?;
                let set_threw = caller.data().exports().set_threw;
                set_threw.call(&mut caller, (1, 0))?;
                results.clone_from_slice(&zeros);
                Ok(())
            }
            Err(err) => Err(err),
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
