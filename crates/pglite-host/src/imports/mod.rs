//! The module's imports, one file per family as wasmtime-wasi does: `invoke_*` and longjmp
//! (`invoke`), `__syscall_*` (`syscalls`), `wasi_snapshot_preview1` (`wasi`), the rest of the
//! Emscripten runtime (`emscripten`) and the side-module loader (`dylink`). This module owns the
//! store data they share.

pub(crate) mod dylink;
pub(crate) mod emscripten;
pub(crate) mod invoke;
pub(crate) mod syscalls;
pub(crate) mod wasi;

use std::time::Instant;

use wasmtime::{Caller, Func, Global, Memory, Table, TypedFunc};

use crate::errno::{Errno, SysResult};
use crate::mem::Guest;
use crate::vfs::Vfs;

/// Raised by `_emscripten_throw_longjmp`; caught by the nearest `invoke_*` on the stack.
#[derive(Debug)]
pub(crate) struct LongJmp;

impl std::fmt::Display for LongJmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("longjmp")
    }
}

impl std::error::Error for LongJmp {}

/// The guest ended itself: `exit`, `proc_exit` or `emscripten_force_exit`. Not a trap.
#[derive(Debug)]
pub(crate) struct GuestExit(pub(crate) i32);

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest exited with code {}", self.0)
    }
}

impl std::error::Error for GuestExit {}

/// Handles created by the host before instantiation and shared with side modules.
#[derive(Clone, Copy)]
pub(crate) struct Shared {
    pub(crate) memory: Memory,
    pub(crate) table: Table,
    pub(crate) stack_pointer: Global,
}

/// Main-module exports the imports call back into.
#[derive(Clone)]
pub(crate) struct Exports {
    pub(crate) set_threw: TypedFunc<(i32, i32), ()>,
    pub(crate) malloc: TypedFunc<i32, i32>,
    pub(crate) calloc: TypedFunc<(i32, i32), i32>,
    pub(crate) free: TypedFunc<i32, ()>,
    pub(crate) memalign: TypedFunc<(i32, i32), i32>,
    pub(crate) dl_seterr: TypedFunc<(i32, i32), ()>,
    pub(crate) tempret_set: Func,
    pub(crate) tempret_get: Func,
}

/// Store data: everything host functions need.
pub(crate) struct Ctx {
    pub(crate) vfs: Vfs,
    pub(crate) shared: Option<Shared>,
    pub(crate) exports: Option<Exports>,
    pub(crate) dylink: dylink::Registry,
    pub(crate) started: Instant,
    /// Protocol bytes for the callback transport: the pending request and the reply so far.
    pub(crate) wire_in: Vec<u8>,
    pub(crate) wire_pos: usize,
    pub(crate) wire_out: Vec<u8>,
}

impl Ctx {
    pub(crate) fn new(vfs: Vfs) -> Ctx {
        Ctx {
            vfs,
            shared: None,
            exports: None,
            dylink: dylink::Registry::default(),
            started: Instant::now(),
            wire_in: Vec::new(),
            wire_pos: 0,
            wire_out: Vec::new(),
        }
    }

    pub(crate) fn shared(&self) -> Shared {
        self.shared.expect("shared handles are set before instantiation")
    }

    pub(crate) fn exports(&self) -> Exports {
        self.exports.clone().expect("exports are set right after instantiation")
    }
}

/// Guest memory and the store data, borrowed together for one host call.
pub(crate) fn split<'a>(caller: &'a mut Caller<'_, Ctx>) -> (Guest<'a>, &'a mut Ctx) {
    let memory = caller.data().shared().memory;
    let (bytes, ctx) = memory.data_and_store_mut(caller);
    (Guest(bytes), ctx)
}

/// Runs a syscall body and turns its error into the negated errno the guest expects.
pub(crate) fn syscall(
    caller: &mut Caller<'_, Ctx>,
    body: impl FnOnce(&mut Guest<'_>, &mut Ctx) -> SysResult<i32>,
) -> i32 {
    let (mut guest, ctx) = split(caller);
    body(&mut guest, ctx).unwrap_or_else(|e| e.neg())
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
    emscripten::add_to_linker(linker)?;
    dylink::add_to_linker(linker)?;
    invoke::add_to_linker(linker, module)?;
    Ok(())
}
