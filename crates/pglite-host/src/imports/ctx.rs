//! The store data every host function reaches through its `Caller`: the guest file system, the
//! handles created before instantiation, the main module's exports the imports call back into,
//! the side-module registry and the callback transport's buffers. It holds state only; the
//! host functions that use it live in the sibling modules.

use std::time::Instant;

use wasmtime::{Caller, Func, Global, Memory, Table, Tag, TypedFunc};

use super::dylink;
use crate::hooks::{Calibration, SessionEvents};
use crate::interrupts::Interrupts;
use crate::mem::Guest;
use crate::vfs::Vfs;

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
    /// The tag of a longjmp, when the module's invokes run in wasm (see `invoke`).
    pub(crate) longjmp: Option<Tag>,
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
    /// A streamed exchange's rest of the request and taker of its reply (see `stream`), with
    /// how many request bytes came before `wire_in` and how far `wire_out` holds whole frames.
    pub(crate) stream: Option<crate::stream::Flow>,
    pub(crate) wire_base: usize,
    pub(crate) out_scan: crate::stream::OutScan,
    /// Sends what PostgreSQL holds in its send buffer (0.5+, whose own flushes keep it), called
    /// before a streamed exchange waits for input, so that what it said reaches the caller.
    pub(crate) wait_flush: Option<wasmtime::TypedFunc<(), ()>>,
    /// What may have changed session state since the last exchange (see `hooks`).
    pub(crate) events: SessionEvents,
    /// What the utility hook knows about the build's parse nodes.
    pub(crate) calibration: Calibration,
    /// Cancel, statement timeout and the stack-depth guard (see `interrupts`).
    pub(crate) interrupts: Interrupts,
    /// The build's PostgreSQL major version and `sizeof(Datum)`, for the functions the host
    /// stands in for.
    pub(crate) pg_major: u32,
    pub(crate) datum_size: u32,
    /// The program's environment (`KEY=value`), as `environ_get` hands it out.
    pub(crate) environ: Vec<String>,
    /// The file-mode creation mask, as `umask` sets and returns it (files keep the host's modes).
    pub(crate) umask: i32,
    /// While initdb runs (0.5+): the PostgreSQL instance it runs as a child process.
    pub(crate) child: Option<Box<crate::instance::Child>>,
    /// The table functions `invoke_*` called, checked (see `invoke`).
    pub(crate) invoke_cache: super::invoke::InvokeCache,
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
            stream: None,
            wire_base: 0,
            out_scan: Default::default(),
            wait_flush: None,
            events: SessionEvents::default(),
            calibration: Calibration::default(),
            interrupts: Interrupts::default(),
            pg_major: 0,
            datum_size: 4,
            environ: super::wasi::ENVIRON.iter().map(|var| (*var).to_owned()).collect(),
            child: None,
            invoke_cache: Default::default(),
            umask: 0o022,
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
