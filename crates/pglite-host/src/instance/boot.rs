//! Boot: from a compiled module to a backend ready for queries. Makes the store and
//! instantiates the module (`link`), resolves the exports the host calls, then runs the
//! release's start sequence: on 0.2 and 0.3 Emscripten's (relocations, constructors, `main`
//! with PGlite's argv) and PGlite's initdb-or-resume and backend start; from 0.5 on the
//! single-user backend's (`single`). Then the hooks and interrupts are installed and checked.
//! Runs once per instance; decides nothing about clusters.

use wasmtime::{Caller, Func, Store, TypedFunc};

use super::link::{self, typed};
use super::{Dirs, Entry, Instance, Shutdown, initdb_bits, single};
use crate::imports::{self, Ctx};
use crate::profile::{Profile, Start, Transport};
use crate::{Error, hooks, interrupts};

impl Instance {
    /// Instantiates the module and runs PGlite's boot up to and including `pg_initdb` (and
    /// the backend's start), with the session in `database`; returns `pg_initdb`'s result bits
    /// (from 0.5 on, where initdb is a program of its own, the bits of a resumed cluster).
    pub(crate) fn boot(
        module: &wasmtime::Module,
        profile: &'static Profile,
        dirs: &Dirs<'_>,
        database: &str,
        durable: bool,
    ) -> Result<(Instance, i32), Error> {
        let environ = match profile.start {
            Start::Exports { .. } => imports::default_environ(),
            Start::SingleUser => single::environ(profile, &single::postgres_program(profile), database),
        };
        // Read on a thread of their own while the guest boots.
        crate::facts::read_ahead(dirs.wasm, dirs.wasm_sha256);
        let mut store = link::new_store(module.engine(), profile, dirs, durable, environ)?;
        let (instance, linker, stack_top) = link::instantiate(&mut store, module, profile)?;
        let memory = store.data().shared().memory;
        super::advise_pages(&mut store, memory, true);
        link::register_symbols(&mut store, &instance, &linker, module, profile.memory_base);
        let exports = link::runtime_exports(&mut store, &instance)?;
        let (rc, entry, shutdown) = match profile.start {
            Start::Exports { initdb, backend, shutdown } => {
                let shutdown = Shutdown::Export(typed(&mut store, &instance, shutdown)?);
                let entry = entry_points(&mut store, &instance, profile)?;
                typed::<(), ()>(&mut store, &instance, "__wasm_apply_data_relocs")?
                    .call(&mut store, ())
                    .map_err(Error::guest)?;
                typed::<(), ()>(&mut store, &instance, "__wasm_call_ctors")?
                    .call(&mut store, ())
                    .map_err(Error::guest)?;
                if let Transport::Callbacks = profile.transport {
                    let (read, write) = wire_callbacks(&mut store);
                    let table = store.data().shared().table;
                    let (read, write) = (single::add(&mut store, table, read)?, single::add(&mut store, table, write)?);
                    typed::<(i32, i32), ()>(&mut store, &instance, "set_read_write_cbs")?
                        .call(&mut store, (read, write))
                        .map_err(Error::guest)?;
                }
                run_main(&mut store, &instance, database)?;
                let rc = typed::<(), i32>(&mut store, &instance, initdb)?.call(&mut store, ()).map_err(Error::guest)?;
                if rc == 0 || rc & initdb_bits::FAILED != 0 {
                    return Err(Error::InitdbFailed { code: rc });
                }
                if let Some(backend) = backend {
                    typed::<(), ()>(&mut store, &instance, backend)?.call(&mut store, ()).map_err(Error::guest)?;
                }
                (rc, entry, shutdown)
            }
            Start::SingleUser => {
                if !dirs.data.join("PG_VERSION").exists() {
                    return Err(Error::InitdbFailed { code: initdb_bits::FAILED });
                }
                typed::<(), ()>(&mut store, &instance, "__wasm_call_ctors")?
                    .call(&mut store, ())
                    .map_err(Error::guest)?;
                let (main_loop, stop) = single::start_backend(&mut store, &instance, profile, database)?;
                (initdb_bits::RESUMED, Entry::MainLoop(main_loop), Shutdown::SingleUser(stop))
            }
        };
        drop(exports);
        // A serving backend (not the one initdb just made a cluster with).
        let serving = rc & initdb_bits::HAS_DB != 0;
        if serving {
            let table = store.data().shared().table;
            hooks::install(&mut store, &instance, table, profile, dirs.settings)?;
        }
        let mut res = Instance { store, instance, entry, shutdown, memory, profile };
        if serving {
            let facts = crate::facts::facts(dirs.wasm, dirs.wasm_sha256);
            let (store, instance) = (&mut res.store, &res.instance);
            let remote = dirs.remote.cloned().unwrap_or_default();
            interrupts::install(store, instance, profile.memory_base, facts, (stack_top, profile.stack_size), remote)
                .map_err(Error::guest)?;
            let dead = |e| match e {
                super::ExecError::Refused(e) | super::ExecError::Dead(e) => e,
            };
            res.exec(&crate::sql::query_message(hooks::CALIBRATION), crate::Interrupt::default()).map_err(dead)?;
            hooks::learn(&mut res.store);
            res.calibrate_cancel().map_err(dead)?;
        }
        Ok((res, rc))
    }
}

/// The exports a protocol exchange goes through, for the release's transport (0.2, 0.3).
fn entry_points(store: &mut Store<Ctx>, instance: &wasmtime::Instance, profile: &Profile) -> Result<Entry, Error> {
    Ok(match profile.transport {
        Transport::Cma => Entry::Cma {
            write: typed(store, instance, "interactive_write")?,
            one: typed(store, instance, "interactive_one")?,
            read: typed(store, instance, "interactive_read")?,
        },
        Transport::Callbacks => Entry::Callbacks { one: typed(store, instance, "interactive_one")? },
        Transport::MainLoop => unreachable!("0.5+ start as single-user backends"),
    })
}

/// Runs `main` with PGlite's arguments (0.2, 0.3), the session in `database`. PGlite's `main`
/// returns at once (`REPL=N`) or ends in `exit(0)`.
fn run_main(store: &mut Store<Ctx>, instance: &wasmtime::Instance, database: &str) -> Result<(), Error> {
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
    let main: TypedFunc<(i32, i32), i32> = typed(store, instance, "__main_argc_argv")?;
    link::call_main(store, main, &args).map(drop)
}

/// The two wire callbacks PostgreSQL's recv() and send() call (0.3+): `read(ptr, max)` copies
/// the pending request's next bytes, `write(ptr, len)` takes reply bytes.
pub(super) fn wire_callbacks(store: &mut Store<Ctx>) -> (Func, Func) {
    let read = Func::wrap(&mut *store, |mut c: Caller<'_, Ctx>, ptr: i32, max: i32| -> i32 {
        if crate::stream::flush_before_wait(&mut c).is_err() {
            return -1;
        }
        let (mut guest, ctx) = imports::split(&mut c);
        if !ctx.input_for_read() {
            return 0;
        }
        let pending = &ctx.wire_in[ctx.wire_pos..];
        let n = pending.len().min(max.max(0) as usize);
        if guest.write(ptr as u32, &pending[..n]).is_err() {
            return -1;
        }
        ctx.wire_pos += n;
        n as i32
    });
    let write = Func::wrap(&mut *store, |mut c: Caller<'_, Ctx>, ptr: i32, len: i32| -> i32 {
        let (guest, ctx) = imports::split(&mut c);
        match guest.slice(ptr as u32, len.max(0) as u32) {
            Ok(bytes) => {
                ctx.put_output(bytes);
                len
            }
            Err(_) => -1,
        }
    });
    (read, write)
}
