//! One running PGlite instance: store, imports, boot, protocol exchange and shutdown. Lives on
//! whichever thread holds the handle's lock; knows nothing of locks or templates.

use std::path::{Path, PathBuf};

use wasmtime::{
    Extern, Global, GlobalType, Linker, Memory, MemoryType, Module, Mutability, Ref, RefType, Store, Table, TableType,
    TypedFunc, Val, ValType,
};

use crate::Error;
use crate::imports::{self, Ctx, Exports, GuestExit, Shared};
use crate::profile::{Profile, Transport};
use crate::vfs::{Mount, Vfs};

/// `pg_initdb` result bits.
pub(crate) mod initdb_bits {
    pub(crate) const FAILED: i32 = 1;
    /// The cluster existed before this boot (resumed rather than made by initdb).
    pub(crate) const HAS_DB: i32 = 4;
}

/// Host directories the guest file system is made of.
pub(crate) struct Dirs<'a> {
    /// Backs `/tmp/pglite/base` (PGDATA).
    pub(crate) data: &'a Path,
    /// The extracted package: `tmp/pglite/{bin,lib,share}` beneath it.
    pub(crate) package: &'a Path,
    /// Per-instance scratch backing `/` (`/tmp`, `/home/web_user`, `/dev/shm`).
    pub(crate) scratch: &'a Path,
    pub(crate) module_cache: Option<PathBuf>,
    /// Unpacked extension bundles (`lib/`, `share/` beneath each).
    pub(crate) extensions: &'a [PathBuf],
}

enum Entry {
    Cma { write: TypedFunc<i32, ()>, one: TypedFunc<(), ()>, read: TypedFunc<(), i32> },
    Callbacks { one: TypedFunc<(i32, i32), ()> },
}

pub(crate) struct Instance {
    store: Store<Ctx>,
    entry: Entry,
    shutdown: TypedFunc<(), ()>,
    memory: Memory,
    profile: &'static Profile,
}

/// Why an exchange failed.
pub(crate) enum ExecError {
    /// Refused before reaching the guest; the instance is fine.
    Refused(Error),
    /// The instance is dead and must be rebuilt from disk.
    Dead(Error),
}

fn mounts(dirs: &Dirs<'_>) -> Vec<Mount> {
    let pkg = dirs.package.join("tmp/pglite");
    let mut mounts = vec![Mount::new("/", dirs.scratch, false), Mount::new("/tmp/pglite/base", dirs.data, false)];
    for name in ["bin", "lib", "share", "password"] {
        let mut mount = Mount::new(format!("/tmp/pglite/{name}"), pkg.join(name), true);
        // Extension bundles carry lib/postgresql/*.so and share/postgresql/extension/*.
        mount.overlays = dirs.extensions.iter().map(|ext| ext.join(name)).filter(|dir| dir.is_dir()).collect();
        mounts.push(mount);
    }
    mounts
}

/// Whether `bytes` are all zero: a cheap look at the start rejects most pages with data, then
/// an OR over the rest, which compiles to wide vector loads.
fn is_zero(bytes: &[u8]) -> bool {
    let (head, rest) = bytes.split_at(bytes.len().min(64));
    head.iter().fold(0, |acc, &b| acc | b) == 0 && rest.iter().fold(0, |acc, &b| acc | b) == 0
}

fn trap(err: wasmtime::Error) -> Error {
    if let Some(GuestExit(code)) = err.downcast_ref::<GuestExit>() {
        return Error::GuestExit { code: *code };
    }
    Error::Trap { message: format!("{err:#}") }
}

impl Instance {
    /// Instantiates the module and runs PGlite's boot up to and including `pg_initdb` (and
    /// the backend's start), with the session in `database`; returns `pg_initdb`'s result bits.
    pub(crate) fn boot(
        module: &Module,
        profile: &'static Profile,
        dirs: &Dirs<'_>,
        database: &str,
        durable: bool,
    ) -> Result<(Instance, i32), Error> {
        for sub in ["tmp/pglite", "home/web_user", "dev/shm"] {
            std::fs::create_dir_all(dirs.scratch.join(sub))
                .map_err(|source| Error::Io { path: dirs.scratch.join(sub), source })?;
        }
        let engine = module.engine();
        let mut vfs = Vfs::new(mounts(dirs), durable);
        if let Transport::Cma = profile.transport {
            // The socket-emulation files 0.2 probes and rewrites on every query.
            vfs.keep_in_memory("/tmp/pglite/base/.s.PGSQL.");
        }
        let mut ctx = Ctx::new(vfs);
        ctx.dylink.module_cache = dirs.module_cache.clone();
        let mut store = Store::new(engine, ctx);
        let wasm = |e: wasmtime::Error| Error::Instantiate { message: format!("{e:#}") };

        let memory = Memory::new(&mut store, MemoryType::new(profile.initial_pages, Some(32768))).map_err(wasm)?;
        let table =
            Table::new(&mut store, TableType::new(RefType::FUNCREF, profile.table_initial, None), Ref::Func(None))
                .map_err(wasm)?;
        let global = |store: &mut Store<Ctx>, mutability, value: u32| {
            Global::new(store, GlobalType::new(ValType::I32, mutability), Val::I32(value as i32))
        };
        let memory_base = global(&mut store, Mutability::Const, profile.memory_base).map_err(wasm)?;
        let table_base = global(&mut store, Mutability::Const, profile.table_base).map_err(wasm)?;
        let stack_pointer = global(&mut store, Mutability::Var, profile.stack_pointer).map_err(wasm)?;
        let heap_base = global(&mut store, Mutability::Var, profile.heap_base).map_err(wasm)?;
        store.data_mut().shared = Some(Shared { memory, table, stack_pointer });

        let mut linker = Linker::new(engine);
        imports::add_to_linker(&mut linker, module).map_err(wasm)?;
        linker.define(&store, "env", "memory", memory).map_err(wasm)?;
        linker.define(&store, "env", "__indirect_function_table", table).map_err(wasm)?;
        linker.define(&store, "env", "__memory_base", memory_base).map_err(wasm)?;
        linker.define(&store, "env", "__table_base", table_base).map_err(wasm)?;
        linker.define(&store, "env", "__stack_pointer", stack_pointer).map_err(wasm)?;
        linker.define(&store, "GOT.mem", "__heap_base", heap_base).map_err(wasm)?;
        // The start function applies global relocations.
        let instance = linker.instantiate(&mut store, module).map_err(wasm)?;

        // Symbols side modules may import: main exports (data relocated) and host functions.
        let exports: Vec<(String, Extern)> =
            instance.exports(&mut store).map(|e| (e.name().to_owned(), e.into_extern())).collect();
        for (name, ext) in exports {
            match ext {
                Extern::Func(func) => {
                    store.data_mut().dylink.main_funcs.insert(name, func);
                }
                Extern::Global(g) => {
                    if let Val::I32(offset) = g.get(&mut store) {
                        store
                            .data_mut()
                            .dylink
                            .main_data
                            .insert(name, (profile.memory_base as i32).wrapping_add(offset));
                    }
                }
                _ => {}
            }
        }
        for import in module.imports() {
            if let (true, Some(Extern::Func(func))) =
                (import.module() == "env", linker.get(&mut store, "env", import.name()).ok())
            {
                store.data_mut().dylink.host_funcs.insert(import.name().to_owned(), func);
            }
        }
        let typed = |store: &mut Store<Ctx>, name: &str| -> Result<wasmtime::Func, Error> {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| Error::Instantiate { message: format!("module does not export {name}") })
        };
        macro_rules! typed {
            ($name:expr) => {
                typed(&mut store, $name)?.typed(&store).map_err(wasm)?
            };
        }
        let exports = Exports {
            set_threw: typed!("setThrew"),
            malloc: typed!("malloc"),
            calloc: typed!("calloc"),
            free: typed!("free"),
            memalign: typed!("emscripten_builtin_memalign"),
            dl_seterr: typed!("__dl_seterr"),
            tempret_set: typed(&mut store, "_emscripten_tempret_set")?,
            tempret_get: typed(&mut store, "_emscripten_tempret_get")?,
        };
        store.data_mut().exports = Some(exports.clone());
        let entry = match profile.transport {
            Transport::Cma => Entry::Cma {
                write: typed!("interactive_write"),
                one: typed!("interactive_one"),
                read: typed!("interactive_read"),
            },
            Transport::Callbacks => Entry::Callbacks { one: typed!("interactive_one") },
        };
        let shutdown: TypedFunc<(), ()> = typed!(profile.shutdown_export);
        let apply_relocs: TypedFunc<(), ()> = typed!("__wasm_apply_data_relocs");
        let ctors: TypedFunc<(), ()> = typed!("__wasm_call_ctors");
        let main: TypedFunc<(i32, i32), i32> = typed!("__main_argc_argv");
        let initdb: TypedFunc<(), i32> = typed!(profile.initdb_export);
        let backend: Option<TypedFunc<(), ()>> = match profile.backend_export {
            Some(name) => Some(typed!(name)),
            None => None,
        };

        apply_relocs.call(&mut store, ()).map_err(trap)?;
        ctors.call(&mut store, ()).map_err(trap)?;
        if let Transport::Callbacks = profile.transport {
            register_wire_callbacks(&mut store, &instance, table).map_err(wasm)?;
        }

        // argv lives in malloc'ed memory: PGlite keeps the pointer and reads it again later.
        let database = format!("PGDATABASE={database}");
        let args = [
            "./this.program",
            "PGDATA=/tmp/pglite/base",
            "PREFIX=/tmp/pglite",
            "PGUSER=postgres",
            database.as_str(),
            "MODE=REACT",
            "REPL=N",
        ];
        let mut pointers = Vec::new();
        for arg in args {
            let ptr = exports.malloc.call(&mut store, arg.len() as i32 + 1).map_err(trap)?;
            memory
                .write(&mut store, ptr as usize, arg.as_bytes())
                .map_err(|e| Error::Trap { message: e.to_string() })?;
            memory
                .write(&mut store, ptr as usize + arg.len(), &[0])
                .map_err(|e| Error::Trap { message: e.to_string() })?;
            pointers.extend_from_slice(&(ptr as u32).to_le_bytes());
        }
        pointers.extend_from_slice(&[0; 4]);
        let argv = exports.malloc.call(&mut store, pointers.len() as i32).map_err(trap)?;
        memory.write(&mut store, argv as usize, &pointers).map_err(|e| Error::Trap { message: e.to_string() })?;
        match main.call(&mut store, (args.len() as i32, argv)) {
            Ok(_) => {}
            Err(err) if matches!(err.downcast_ref::<GuestExit>(), Some(GuestExit(0))) => {
                stack_pointer.set(&mut store, Val::I32(profile.stack_pointer as i32)).map_err(wasm)?;
            }
            Err(err) => return Err(trap(err)),
        }
        let rc = initdb.call(&mut store, ()).map_err(trap)?;
        if rc == 0 || rc & initdb_bits::FAILED != 0 {
            return Err(Error::InitdbFailed { code: rc });
        }
        if let Some(backend) = backend {
            backend.call(&mut store, ()).map_err(trap)?;
        }
        Ok((Instance { store, entry, shutdown, memory, profile }, rc))
    }

    /// Gives the pages of linear memory in `[offset, offset + len)` that hold only zeros back
    /// to the OS; they read as zeros again when touched. Boot zeroes every byte of the 128 MB
    /// buffer pool (Emscripten's anonymous `mmap` is a `memset`), so without this an idle
    /// database is resident in full. Returns where the next slice starts, `None` past the end.
    pub(crate) fn release_zero_pages(&mut self, offset: usize, len: usize) -> Option<usize> {
        let page = rustix::param::page_size();
        let memory = self.memory.data_mut(&mut self.store);
        if offset >= memory.len() {
            return None;
        }
        let base = memory.as_mut_ptr();
        let first = offset / page;
        let end = (offset.saturating_add(len).min(memory.len())) / page;
        let mut run: Option<usize> = None;
        for index in first..=end {
            let zero = index < end && is_zero(&memory[index * page..(index + 1) * page]);
            match (zero, run) {
                (true, None) => run = Some(index),
                (false, Some(start)) => {
                    // SAFETY: the range lies inside the store's linear memory, which `boot`
                    // creates with `Memory::new`: a private anonymous mapping with no
                    // copy-on-write image behind it, that nothing else touches while we hold
                    // `&mut self`. It holds only zeros, and after MADV_DONTNEED it reads back as
                    // the same zeros.
                    #[expect(unsafe_code, reason = "madvise on zero pages of our own linear memory")]
                    let advised = unsafe {
                        rustix::mm::madvise(
                            base.add(start * page).cast(),
                            (index - start) * page,
                            rustix::mm::Advice::LinuxDontNeed,
                        )
                    };
                    if let Err(err) = advised {
                        tracing::debug!(%err, "madvise(DONTNEED) failed; pages stay resident");
                    }
                    run = None;
                }
                _ => {}
            }
        }
        Some(end * page).filter(|&next| next < memory.len())
    }

    /// One protocol exchange: frontend messages in, every backend message they produce out.
    pub(crate) fn exec(&mut self, request: &[u8]) -> Result<Vec<u8>, ExecError> {
        if request.is_empty() {
            return Ok(Vec::new());
        }
        // A leading 0 byte is a startup-phase packet: it traps (0.2) or starts a bogus
        // authentication (0.3) in the backend.
        if request[0] == 0 {
            return Err(ExecError::Refused(Error::StartupPacket));
        }
        let max = self.profile.max_request();
        if request.len() > max {
            return Err(ExecError::Refused(Error::RequestTooLarge { len: request.len(), max }));
        }
        match &self.entry {
            Entry::Cma { .. } => {
                // 0.2's error path answers ErrorResponse + ReadyForQuery at once and leaves the
                // rest of the input unread; the next call then replays that rest at a stale
                // offset and drops its own input (node's PGlite 0.2.17 does the same). So each
                // unit of work goes in its own call, and after a failed one its leftover is
                // drained with a throwaway Flush: never parsed when input is left over, and
                // ignored while the backend skips to the next Sync when none is.
                let mut reply = Vec::new();
                for group in work_units(request) {
                    let start = reply.len();
                    reply.extend(self.cma_call(group)?);
                    // 0.2 ends every call with ReadyForQuery, whatever its last message was;
                    // PostgreSQL sends one only for Sync, Query and FunctionCall.
                    if !ends_unit_of_work(group) && last_frame(&reply[start..]).is_some_and(|(ty, _)| ty == b'Z') {
                        reply.truncate(reply.len() - READY_FOR_QUERY_LEN);
                    }
                    let failed = first_frame_types(&reply[start..]).any(|ty| ty == b'E');
                    if failed && group.len() > frame_len(group).unwrap_or(group.len()) {
                        self.cma_call(FLUSH)?;
                    }
                }
                Ok(reply)
            }
            Entry::Callbacks { .. } => {
                // A failed Query followed by more input in the same call loses its
                // ReadyForQuery on 0.3, so each Query and FunctionCall goes in a call of its
                // own; Sync groups may share one.
                let mut reply = Vec::new();
                for group in query_units(request) {
                    reply.extend(self.callbacks_call(group)?);
                }
                Ok(reply)
            }
        }
    }

    /// One exchange through the wire callbacks. 0.3's loop stops when the 8 KiB receive buffer
    /// it refills from the callback happens to be used up at a message boundary, even with
    /// input left; the rest, which starts on a message boundary, goes in further calls.
    fn callbacks_call(&mut self, request: &[u8]) -> Result<Vec<u8>, ExecError> {
        let Entry::Callbacks { one } = &self.entry else { unreachable!("callback entry point") };
        let one = one.clone();
        let ctx = self.store.data_mut();
        ctx.wire_in.clear();
        ctx.wire_in.extend_from_slice(request);
        ctx.wire_pos = 0;
        let mut result = Ok(());
        let mut at = 0;
        while at < request.len() {
            result = one.call(&mut self.store, ((request.len() - at) as i32, i32::from(request[at])));
            let taken = self.store.data().wire_pos;
            // Nothing more was read, or the backend failed, or the client said goodbye.
            if result.is_err() || taken == at || frame_types(&request[at..taken]).any(|ty| ty == b'X') {
                break;
            }
            at = taken;
        }
        let ctx = self.store.data_mut();
        ctx.wire_in.clear();
        let reply = std::mem::take(&mut ctx.wire_out);
        result.map_err(|e| ExecError::Dead(trap(e)))?;
        Ok(reply)
    }

    /// One CMA exchange: request at address 1, reply right after it.
    fn cma_call(&mut self, request: &[u8]) -> Result<Vec<u8>, ExecError> {
        let Entry::Cma { write, one, read } = &self.entry else { unreachable!("CMA entry points") };
        let dead = |e: wasmtime::Error| ExecError::Dead(trap(e));
        write.call(&mut self.store, request.len() as i32).map_err(dead)?;
        self.memory.data_mut(&mut self.store)[1..1 + request.len()].copy_from_slice(request);
        one.call(&mut self.store, ()).map_err(dead)?;
        let n = read.call(&mut self.store, ()).map_err(dead)? as u32 as usize;
        let start = request.len() + 2;
        let room = self.profile.memory_base as usize - start;
        if n > room {
            // The reply ran over PostgreSQL's static data: nothing here can be trusted.
            return Err(ExecError::Dead(Error::ReplyOverflow { len: n, max: room }));
        }
        Ok(self.memory.data(&self.store)[start..start + n].to_vec())
    }

    /// Terminate, shutdown checkpoint, then close (and sync) every file.
    pub(crate) fn shutdown(mut self) -> Result<(), Error> {
        let result = self
            .exec(b"X\0\0\0\x04")
            .map(drop)
            .map_err(|e| match e {
                ExecError::Refused(e) | ExecError::Dead(e) => e,
            })
            .and_then(|()| self.shutdown.call(&mut self.store, ()).map_err(trap));
        self.store.data_mut().vfs.close_all();
        result
    }
}

/// Puts the two wire callbacks in the function table and hands their indices to PostgreSQL
/// (`set_read_write_cbs`), which then uses them as its recv() and send().
fn register_wire_callbacks(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    table: Table,
) -> wasmtime::Result<()> {
    let read = wasmtime::Func::wrap(&mut *store, |mut c: wasmtime::Caller<'_, Ctx>, ptr: i32, max: i32| -> i32 {
        let (mut guest, ctx) = imports::split(&mut c);
        let pending = &ctx.wire_in[ctx.wire_pos..];
        let n = pending.len().min(max.max(0) as usize);
        if guest.write(ptr as u32, &pending[..n]).is_err() {
            return -1;
        }
        ctx.wire_pos += n;
        n as i32
    });
    let write = wasmtime::Func::wrap(&mut *store, |mut c: wasmtime::Caller<'_, Ctx>, ptr: i32, len: i32| -> i32 {
        let (guest, ctx) = imports::split(&mut c);
        match guest.slice(ptr as u32, len.max(0) as u32) {
            Ok(bytes) => {
                ctx.wire_out.extend_from_slice(bytes);
                len
            }
            Err(_) => -1,
        }
    });
    let read_index = table.grow(&mut *store, 1, Ref::Func(Some(read)))? as i32;
    let write_index = table.grow(&mut *store, 1, Ref::Func(Some(write)))? as i32;
    let set = instance.get_typed_func::<(i32, i32), ()>(&mut *store, "set_read_write_cbs")?;
    set.call(&mut *store, (read_index, write_index))
}

/// Length of the first frame of `bytes`, if it holds a complete one.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let total = len.checked_add(1)?;
    (len >= 4 && total <= bytes.len()).then_some(total)
}

/// Types of the complete frames at the start of `bytes`.
fn first_frame_types(mut bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    std::iter::from_fn(move || {
        let len = frame_len(bytes)?;
        let ty = bytes[0];
        bytes = &bytes[len..];
        Some(ty)
    })
}

/// A `Flush` message.
const FLUSH: &[u8] = b"H\0\0\0\x04";

/// Length of a `ReadyForQuery` message.
const READY_FOR_QUERY_LEN: usize = 6;

/// Types of the complete frames of `bytes`, in order.
fn frame_types(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    first_frame_types(bytes)
}

/// The type and length of the last complete frame of `bytes`, if they hold whole frames.
fn last_frame(mut bytes: &[u8]) -> Option<(u8, usize)> {
    let mut last = None;
    while let Some(len) = frame_len(bytes) {
        last = Some((bytes[0], len));
        bytes = &bytes[len..];
    }
    last
}

/// Whether a group's last message is one PostgreSQL answers with ReadyForQuery.
fn ends_unit_of_work(group: &[u8]) -> bool {
    last_frame(group).is_some_and(|(ty, _)| matches!(ty, b'S' | b'Q' | b'F'))
}

/// Splits a request after each message for which `split` holds. Unframeable bytes stay in
/// the last group, for PostgreSQL to reject.
fn groups(request: &[u8], split: impl Fn(u8) -> bool) -> Vec<&[u8]> {
    let mut groups = Vec::new();
    let (mut start, mut at) = (0, 0);
    while let Some(len) = frame_len(&request[at..]) {
        let ty = request[at];
        at += len;
        if split(ty) {
            groups.push(&request[start..at]);
            start = at;
        }
    }
    if start < request.len() {
        groups.push(&request[start..]);
    }
    groups
}

/// Splits a request after each message that ends a unit of work (Sync, Query, FunctionCall,
/// Terminate).
fn work_units(request: &[u8]) -> Vec<&[u8]> {
    groups(request, |ty| matches!(ty, b'S' | b'Q' | b'F' | b'X'))
}

/// Splits a request after each Query, FunctionCall and Terminate.
fn query_units(request: &[u8]) -> Vec<&[u8]> {
    groups(request, |ty| matches!(ty, b'Q' | b'F' | b'X'))
}
