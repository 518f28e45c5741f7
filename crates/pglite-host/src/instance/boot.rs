//! Boot: from a compiled module to a backend ready for queries. Builds the store and its file
//! system, creates the memory, table and globals the module imports, instantiates it, records
//! its symbols for side modules, resolves the exports the host calls, then runs Emscripten's
//! start sequence (relocations, constructors, `main` with PGlite's argv) and PGlite's
//! initdb-or-resume and backend start. Runs once per instance; decides nothing about clusters.

use wasmtime::{
    Extern, Func, Global, GlobalType, Linker, Memory, MemoryType, Module, Mutability, Ref, RefType, Store, Table,
    TableType, TypedFunc, Val, ValType, WasmParams, WasmResults,
};

use super::{Dirs, Entry, Instance, initdb_bits};
use crate::imports::{self, Ctx, Exports, GuestExit, Shared};
use crate::profile::{Profile, Transport};
use crate::vfs::{Mount, Vfs};
use crate::{Error, hooks, interrupts};

/// What the host creates before instantiation and the module imports.
#[derive(Clone, Copy)]
struct Imported {
    memory: Memory,
    table: Table,
    memory_base: Global,
    table_base: Global,
    stack_pointer: Global,
    heap_base: Global,
}

/// The exports boot calls, once each.
struct StartExports {
    apply_relocs: TypedFunc<(), ()>,
    ctors: TypedFunc<(), ()>,
    main: TypedFunc<(i32, i32), i32>,
    initdb: TypedFunc<(), i32>,
    backend: Option<TypedFunc<(), ()>>,
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
        let mut store = new_store(module, profile, dirs, durable)?;
        let imported = create_imports(&mut store, profile)?;
        let (instance, linker) = instantiate(&mut store, module, &imported)?;
        register_symbols(&mut store, &instance, &linker, module, profile);
        let exports = runtime_exports(&mut store, &instance)?;
        store.data_mut().exports = Some(exports.clone());
        let entry = entry_points(&mut store, &instance, profile)?;
        let shutdown = typed(&mut store, &instance, profile.shutdown_export)?;
        let start = StartExports::resolve(&mut store, &instance, profile)?;

        start.apply_relocs.call(&mut store, ()).map_err(Error::guest)?;
        start.ctors.call(&mut store, ()).map_err(Error::guest)?;
        if let Transport::Callbacks = profile.transport {
            register_wire_callbacks(&mut store, &instance, imported.table).map_err(Error::instantiate)?;
        }
        run_main(&mut store, &exports, start.main, &imported, profile, database)?;
        let rc = start.initdb.call(&mut store, ()).map_err(Error::guest)?;
        if rc == 0 || rc & initdb_bits::FAILED != 0 {
            return Err(Error::InitdbFailed { code: rc });
        }
        if let Some(backend) = start.backend {
            backend.call(&mut store, ()).map_err(Error::guest)?;
        }
        // A serving backend (not the one initdb just made a cluster with).
        let serving = rc & initdb_bits::HAS_DB != 0;
        if serving {
            hooks::install(&mut store, &instance, imported.table, profile, dirs.settings)?;
        }
        let mut res = Instance { store, instance, entry, shutdown, memory: imported.memory, profile };
        if serving {
            let facts = crate::facts::facts(dirs.wasm, dirs.wasm_sha256);
            let (store, instance) = (&mut res.store, &res.instance);
            interrupts::install(store, instance, profile.memory_base, facts, profile.stack_pointer, profile.stack_size)
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

/// Where the placeholder files of the conversion modules are, beneath the scratch directory
/// (overlaid on the package's `lib`).
const CONVERSIONS_DIR: &str = "conversions/lib/postgresql";

/// The guest file system's mounts: scratch at `/`, the data directory as PGDATA, and the
/// package's directories read-only with the extension bundles overlaid.
fn mounts(dirs: &Dirs<'_>) -> Vec<Mount> {
    let pkg = dirs.package.join("tmp/pglite");
    let mut mounts = vec![Mount::new("/", dirs.scratch, false), Mount::new("/tmp/pglite/base", dirs.data, false)];
    for name in ["bin", "lib", "share", "password"] {
        let mut mount = Mount::new(format!("/tmp/pglite/{name}"), pkg.join(name), true);
        // Extension bundles carry lib/postgresql/*.so and share/postgresql/extension/*.
        mount.overlays = dirs.extensions.iter().map(|ext| ext.join(name)).filter(|dir| dir.is_dir()).collect();
        if name == "lib" {
            mount.overlays.push(dirs.scratch.join("conversions/lib"));
        }
        mounts.push(mount);
    }
    mounts
}

/// A store whose data holds the instance's file system over `dirs` (the scratch directories
/// the guest expects are made first).
fn new_store(module: &Module, profile: &Profile, dirs: &Dirs<'_>, durable: bool) -> Result<Store<Ctx>, Error> {
    for sub in ["tmp/pglite", "home/web_user", "dev/shm", CONVERSIONS_DIR] {
        std::fs::create_dir_all(dirs.scratch.join(sub))
            .map_err(|source| Error::Io { path: dirs.scratch.join(sub), source })?;
    }
    // The encoding-conversion modules the host stands in for must exist as files, as
    // PostgreSQL checks before it loads one (PGlite 0.2 ships none).
    for name in imports::CONVERSION_MODULES {
        let path = dirs.scratch.join(CONVERSIONS_DIR).join(format!("{name}.so"));
        std::fs::write(&path, b"").map_err(|source| Error::Io { path, source })?;
    }
    let mut vfs = Vfs::new(mounts(dirs), durable);
    if let Transport::Cma = profile.transport {
        // The socket-emulation files 0.2 probes and rewrites on every query.
        vfs.keep_in_memory("/tmp/pglite/base/.s.PGSQL.");
    }
    let mut ctx = Ctx::new(vfs);
    ctx.pg_major = profile.pg_major;
    ctx.datum_size = profile.datum_size;
    ctx.dylink.module_cache = dirs.module_cache.clone();
    let mut store = Store::new(module.engine(), ctx);
    // The engine interrupts on epochs (see `interrupts`); until a serving backend installs its
    // own callback, an epoch changes nothing.
    store.epoch_deadline_callback(|_| Ok(wasmtime::UpdateDeadline::Continue(1)));
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Creates the memory, table and globals at the release's addresses, and shares the ones
/// side modules need through the store data.
fn create_imports(store: &mut Store<Ctx>, profile: &Profile) -> Result<Imported, Error> {
    let memory =
        Memory::new(&mut *store, MemoryType::new(profile.initial_pages, Some(32768))).map_err(Error::instantiate)?;
    let table = Table::new(&mut *store, TableType::new(RefType::FUNCREF, profile.table_initial, None), Ref::Func(None))
        .map_err(Error::instantiate)?;
    let imported = Imported {
        memory,
        table,
        memory_base: i32_global(store, Mutability::Const, profile.memory_base)?,
        table_base: i32_global(store, Mutability::Const, profile.table_base)?,
        stack_pointer: i32_global(store, Mutability::Var, profile.stack_pointer)?,
        heap_base: i32_global(store, Mutability::Var, profile.heap_base)?,
    };
    store.data_mut().shared = Some(Shared { memory, table, stack_pointer: imported.stack_pointer });
    Ok(imported)
}

fn i32_global(store: &mut Store<Ctx>, mutability: Mutability, value: u32) -> Result<Global, Error> {
    Global::new(&mut *store, GlobalType::new(ValType::I32, mutability), Val::I32(value as i32))
        .map_err(Error::instantiate)
}

/// Links the host functions and `imported` and instantiates the module.
fn instantiate(
    store: &mut Store<Ctx>,
    module: &Module,
    imported: &Imported,
) -> Result<(wasmtime::Instance, Linker<Ctx>), Error> {
    let mut linker = Linker::new(module.engine());
    imports::add_to_linker(&mut linker, module).map_err(Error::instantiate)?;
    let definitions: [(&str, &str, Extern); 6] = [
        ("env", "memory", imported.memory.into()),
        ("env", "__indirect_function_table", imported.table.into()),
        ("env", "__memory_base", imported.memory_base.into()),
        ("env", "__table_base", imported.table_base.into()),
        ("env", "__stack_pointer", imported.stack_pointer.into()),
        ("GOT.mem", "__heap_base", imported.heap_base.into()),
    ];
    for (module_name, name, item) in definitions {
        linker.define(&*store, module_name, name, item).map_err(Error::instantiate)?;
    }
    // The start function applies global relocations.
    let instance = linker.instantiate(&mut *store, module).map_err(Error::instantiate)?;
    Ok((instance, linker))
}

/// Records the symbols side modules may import: the main module's exports (data addresses
/// relocated by the memory base) and the host functions it imports.
fn register_symbols(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    linker: &Linker<Ctx>,
    module: &Module,
    profile: &Profile,
) {
    let exports: Vec<(String, Extern)> =
        instance.exports(&mut *store).map(|e| (e.name().to_owned(), e.into_extern())).collect();
    for (name, ext) in exports {
        match ext {
            Extern::Func(func) => {
                store.data_mut().dylink.main_funcs.insert(name, func);
            }
            Extern::Global(g) => {
                if let Val::I32(offset) = g.get(&mut *store) {
                    store.data_mut().dylink.main_data.insert(name, (profile.memory_base as i32).wrapping_add(offset));
                }
            }
            _ => {}
        }
    }
    for import in module.imports() {
        if let (true, Some(Extern::Func(func))) =
            (import.module() == "env", linker.get(&mut *store, "env", import.name()).ok())
        {
            store.data_mut().dylink.host_funcs.insert(import.name().to_owned(), func);
        }
    }
}

/// The export `name`, a function.
fn func(store: &mut Store<Ctx>, instance: &wasmtime::Instance, name: &str) -> Result<Func, Error> {
    instance.get_func(&mut *store, name).ok_or_else(|| Error::instantiate(format!("module does not export {name}")))
}

/// The export `name`, a function of type `P -> R`.
fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    name: &str,
) -> Result<TypedFunc<P, R>, Error> {
    func(store, instance, name)?.typed(&*store).map_err(Error::instantiate)
}

/// The main module's exports the imports call back into.
fn runtime_exports(store: &mut Store<Ctx>, instance: &wasmtime::Instance) -> Result<Exports, Error> {
    Ok(Exports {
        set_threw: typed(store, instance, "setThrew")?,
        malloc: typed(store, instance, "malloc")?,
        calloc: typed(store, instance, "calloc")?,
        free: typed(store, instance, "free")?,
        memalign: typed(store, instance, "emscripten_builtin_memalign")?,
        dl_seterr: typed(store, instance, "__dl_seterr")?,
        tempret_set: func(store, instance, "_emscripten_tempret_set")?,
        tempret_get: func(store, instance, "_emscripten_tempret_get")?,
    })
}

/// The exports a protocol exchange goes through, for the release's transport.
fn entry_points(store: &mut Store<Ctx>, instance: &wasmtime::Instance, profile: &Profile) -> Result<Entry, Error> {
    Ok(match profile.transport {
        Transport::Cma => Entry::Cma {
            write: typed(store, instance, "interactive_write")?,
            one: typed(store, instance, "interactive_one")?,
            read: typed(store, instance, "interactive_read")?,
        },
        Transport::Callbacks => Entry::Callbacks { one: typed(store, instance, "interactive_one")? },
    })
}

impl StartExports {
    fn resolve(
        store: &mut Store<Ctx>,
        instance: &wasmtime::Instance,
        profile: &Profile,
    ) -> Result<StartExports, Error> {
        Ok(StartExports {
            apply_relocs: typed(store, instance, "__wasm_apply_data_relocs")?,
            ctors: typed(store, instance, "__wasm_call_ctors")?,
            main: typed(store, instance, "__main_argc_argv")?,
            initdb: typed(store, instance, profile.initdb_export)?,
            backend: profile.backend_export.map(|name| typed(store, instance, name)).transpose()?,
        })
    }
}

/// Runs `main` with PGlite's arguments, the session in `database`. PGlite's `main` may end in
/// `exit(0)`, after which the stack pointer is put back where it started.
fn run_main(
    store: &mut Store<Ctx>,
    exports: &Exports,
    main: TypedFunc<(i32, i32), i32>,
    imported: &Imported,
    profile: &Profile,
    database: &str,
) -> Result<(), Error> {
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
    let argv = write_argv(store, &exports.malloc, imported.memory, &args)?;
    match main.call(&mut *store, (args.len() as i32, argv)) {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.downcast_ref::<GuestExit>(), Some(GuestExit(0))) => {
            imported.stack_pointer.set(&mut *store, Val::I32(profile.stack_pointer as i32)).map_err(Error::instantiate)
        }
        Err(err) => Err(Error::guest(err)),
    }
}

/// Puts `args` in guest memory and returns the address of their NULL-terminated pointer
/// array. argv lives in malloc'ed memory: PGlite keeps the pointer and reads it again later.
fn write_argv(
    store: &mut Store<Ctx>,
    malloc: &TypedFunc<i32, i32>,
    memory: Memory,
    args: &[&str],
) -> Result<i32, Error> {
    let mut pointers = Vec::new();
    for arg in args {
        let ptr = malloc.call(&mut *store, arg.len() as i32 + 1).map_err(Error::guest)?;
        memory.write(&mut *store, ptr as usize, arg.as_bytes()).map_err(Error::trap)?;
        memory.write(&mut *store, ptr as usize + arg.len(), &[0]).map_err(Error::trap)?;
        pointers.extend_from_slice(&(ptr as u32).to_le_bytes());
    }
    pointers.extend_from_slice(&[0; 4]);
    let argv = malloc.call(&mut *store, pointers.len() as i32).map_err(Error::guest)?;
    memory.write(&mut *store, argv as usize, &pointers).map_err(Error::trap)?;
    Ok(argv)
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
