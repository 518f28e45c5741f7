//! The module's imports, one file per family as wasmtime-wasi does: `invoke_*` and longjmp
//! (`invoke`), `__syscall_*` (`syscalls`), `wasi_snapshot_preview1` (`wasi`), the rest of the
//! Emscripten runtime (`emscripten`) and the side-module loader (`dylink`). The store data they
//! share is in `ctx`, the errors they unwind the guest with in `error`. This module only wires
//! them into a linker.

mod conversions;
mod ctx;
mod dylink;
mod emscripten;
mod error;
mod invoke;
mod syscalls;
mod wasi;

pub(crate) use self::ctx::{Ctx, Exports, Shared, split};
pub(crate) use self::dylink::CONVERSION_MODULES;
pub(crate) use self::error::{GuestExit, LongJmp};
use crate::errno::Errno;

/// The environment the Emscripten runtime gives a program under Node.
pub(crate) fn default_environ() -> Vec<String> {
    wasi::ENVIRON.iter().map(|var| (*var).to_owned()).collect()
}

/// Adds every import of the main module to `linker`.
pub(crate) fn add_to_linker(linker: &mut wasmtime::Linker<Ctx>, module: &wasmtime::Module) -> wasmtime::Result<()> {
    // Every function import first gets a fallback that fails like the JS runtime without a
    // network: -ENOSYS for syscalls, never 0 (a 0 from socket() once handed out fd 0 and
    // corrupted the catalog). The real implementations below shadow the fallbacks.
    linker.allow_shadowing(true);
    for import in module.imports() {
        if let wasmtime::ExternType::Func(ty) = import.ty() {
            let name = import.name().to_owned();
            let results: Vec<_> = ty.results().collect();
            linker.func_new(import.module(), import.name(), ty.clone(), move |_caller, _params, out| {
                tracing::trace!(import = %name, "unimplemented import called");
                for (slot, ty) in out.iter_mut().zip(&results) {
                    *slot = match ty {
                        wasmtime::ValType::I64 => wasmtime::Val::I64(0),
                        wasmtime::ValType::F32 => wasmtime::Val::F32(0),
                        wasmtime::ValType::F64 => wasmtime::Val::F64(0),
                        _ => wasmtime::Val::I32(if name.starts_with("__syscall_") { Errno::NOSYS.neg() } else { 0 }),
                    };
                }
                Ok(())
            })?;
        }
    }
    syscalls::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    emscripten::add_to_linker(linker, module)?;
    dylink::add_to_linker(linker)?;
    invoke::add_to_linker(linker, module)?;
    Ok(())
}
