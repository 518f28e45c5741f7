//! Making one instance of a PGlite module: its store and guest file system, what the host
//! creates before instantiating (memory, and for relocatable builds the table and the memory,
//! table and stack globals), the instantiation itself, the symbols side modules link against,
//! the runtime exports the imports call back into, and calling `main`. Shared by the backend's
//! boot and initdb's two modules; decides nothing about which to run.

use wasmtime::{
    Extern, Func, Global, GlobalType, Linker, Memory, MemoryType, Module, Mutability, Ref, RefType, Store, Table,
    TableType, TypedFunc, Val, ValType, WasmParams, WasmResults,
};

use super::Dirs;
use crate::Error;
use crate::imports::{self, Ctx, Exports, GuestExit, Shared};
use crate::profile::{Linking, Profile, Transport};
use crate::vfs::{Mount, Vfs};

/// Where the placeholder files of the conversion modules are, beneath the scratch directory
/// (overlaid on the package's `lib`).
const CONVERSIONS_DIR: &str = "conversions/lib/postgresql";

/// The guest file system's mounts: scratch at `/`, the data directory as PGDATA, and the
/// package's entries read-only with the extension bundles overlaid.
fn mounts(dirs: &Dirs<'_>, profile: &Profile) -> Vec<Mount> {
    let paths = profile.paths;
    let pkg = dirs.package.join(paths.prefix.trim_start_matches('/'));
    let mut mounts = vec![Mount::new("/", dirs.scratch, false), Mount::new(paths.data, dirs.data, false)];
    for name in paths.package {
        let mut mount = Mount::new(format!("{}/{name}", paths.prefix), pkg.join(name), true);
        // Extension bundles carry lib/postgresql/*.so and share/postgresql/extension/*.
        mount.overlays = dirs.extensions.iter().map(|ext| ext.join(name)).filter(|dir| dir.is_dir()).collect();
        if *name == "lib" {
            mount.overlays.push(dirs.scratch.join("conversions/lib"));
        }
        mounts.push(mount);
    }
    mounts
}

fn io_err(path: std::path::PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { path, source }
}

/// A store whose data holds an instance's file system over `dirs` (the scratch directories and
/// files the guest expects are made first) and runs a program with `environ`.
pub(super) fn new_store(
    engine: &wasmtime::Engine,
    profile: &Profile,
    dirs: &Dirs<'_>,
    durable: bool,
    environ: Vec<String>,
) -> Result<Store<Ctx>, Error> {
    let paths = profile.paths;
    let prefix = paths.prefix.trim_start_matches('/');
    for sub in ["tmp", prefix, paths.home.trim_start_matches('/'), "dev/shm", CONVERSIONS_DIR] {
        std::fs::create_dir_all(dirs.scratch.join(sub)).map_err(io_err(dirs.scratch.join(sub)))?;
    }
    for name in paths.scratch_files {
        let path = dirs.scratch.join(prefix).join(name);
        std::fs::write(&path, b"").map_err(io_err(path))?;
    }
    // The encoding-conversion modules the host stands in for must exist as files, as
    // PostgreSQL checks before it loads one (PGlite 0.2 ships none).
    for name in imports::CONVERSION_MODULES {
        let path = dirs.scratch.join(CONVERSIONS_DIR).join(format!("{name}.so"));
        std::fs::write(&path, b"").map_err(io_err(path))?;
    }
    let mut vfs = Vfs::new(mounts(dirs, profile), durable);
    if let Transport::Cma = profile.transport {
        // The socket-emulation files 0.2 probes and rewrites on every query.
        vfs.keep_in_memory("/tmp/pglite/base/.s.PGSQL.");
    }
    let mut ctx = Ctx::new(vfs);
    ctx.pg_major = profile.pg_major;
    ctx.datum_size = profile.datum_size;
    ctx.environ = environ;
    ctx.dylink.module_cache = dirs.module_cache.clone();
    Ok(Store::new(engine, ctx))
}

fn i32_global(store: &mut Store<Ctx>, mutability: Mutability, value: u32) -> Result<Global, Error> {
    Global::new(&mut *store, GlobalType::new(ValType::I32, mutability), Val::I32(value as i32))
        .map_err(Error::instantiate)
}

/// Links the host functions (and, for a relocatable build, the memory, table and globals the
/// host creates at the profile's addresses) and instantiates `module`; records the shared
/// handles in the store data. Returns the instance, its linker and where its C stack starts.
pub(super) fn instantiate(
    store: &mut Store<Ctx>,
    module: &Module,
    profile: &Profile,
) -> Result<(wasmtime::Instance, Linker<Ctx>, u32), Error> {
    let mut linker = Linker::new(module.engine());
    imports::add_to_linker(&mut linker, module).map_err(Error::instantiate)?;
    match profile.linking {
        Linking::Relocatable => {
            let memory = Memory::new(&mut *store, MemoryType::new(profile.initial_pages, Some(32768)))
                .map_err(Error::instantiate)?;
            let table =
                Table::new(&mut *store, TableType::new(RefType::FUNCREF, profile.table_initial, None), Ref::Func(None))
                    .map_err(Error::instantiate)?;
            let stack_pointer = i32_global(store, Mutability::Var, profile.stack_pointer)?;
            let definitions: [(&str, &str, Extern); 6] = [
                ("env", "memory", memory.into()),
                ("env", "__indirect_function_table", table.into()),
                ("env", "__memory_base", i32_global(store, Mutability::Const, profile.memory_base)?.into()),
                ("env", "__table_base", i32_global(store, Mutability::Const, profile.table_base)?.into()),
                ("env", "__stack_pointer", stack_pointer.into()),
                ("GOT.mem", "__heap_base", i32_global(store, Mutability::Var, profile.heap_base)?.into()),
            ];
            for (module_name, name, item) in definitions {
                linker.define(&*store, module_name, name, item).map_err(Error::instantiate)?;
            }
            store.data_mut().shared = Some(Shared { memory, table, stack_pointer });
            // The start function applies global relocations.
            let instance = linker.instantiate(&mut *store, module).map_err(Error::instantiate)?;
            Ok((instance, linker, profile.stack_pointer))
        }
        Linking::Fixed => {
            // Only the memory is imported (by some modules: 0.5's initdb defines its own).
            let imported = module.imports().find_map(|import| match (import.module(), import.name(), import.ty()) {
                ("env", "memory", wasmtime::ExternType::Memory(ty)) => Some(ty),
                _ => None,
            });
            let created = match imported {
                Some(ty) => {
                    let memory = Memory::new(&mut *store, ty).map_err(Error::instantiate)?;
                    linker.define(&*store, "env", "memory", memory).map_err(Error::instantiate)?;
                    Some(memory)
                }
                None => None,
            };
            let instance = linker.instantiate(&mut *store, module).map_err(Error::instantiate)?;
            let memory = created
                .or_else(|| instance.get_memory(&mut *store, "memory"))
                .ok_or_else(|| Error::instantiate("module has no memory"))?;
            let table = instance
                .get_table(&mut *store, "__indirect_function_table")
                .ok_or_else(|| Error::instantiate("module does not export its table"))?;
            let stack_pointer = instance
                .get_global(&mut *store, "__stack_pointer")
                .ok_or_else(|| Error::instantiate("module does not export __stack_pointer"))?;
            let stack_top = stack_pointer.get(&mut *store).i32().unwrap_or(0) as u32;
            store.data_mut().shared = Some(Shared { memory, table, stack_pointer });
            Ok((instance, linker, stack_top))
        }
    }
}

/// Records the symbols side modules may import: the main module's exports (data addresses
/// relocated by the memory base, 0 for a build that is not relocatable) and the host
/// functions it imports.
pub(super) fn register_symbols(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    linker: &Linker<Ctx>,
    module: &Module,
    memory_base: u32,
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
                    store.data_mut().dylink.main_data.insert(name, (memory_base as i32).wrapping_add(offset));
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
pub(super) fn func(store: &mut Store<Ctx>, instance: &wasmtime::Instance, name: &str) -> Result<Func, Error> {
    instance.get_func(&mut *store, name).ok_or_else(|| Error::instantiate(format!("module does not export {name}")))
}

/// The export `name`, a function of type `P -> R`.
pub(super) fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    name: &str,
) -> Result<TypedFunc<P, R>, Error> {
    func(store, instance, name)?.typed(&*store).map_err(|err| Error::instantiate(format!("export {name}: {err}")))
}

/// The module's exports the imports call back into, recorded in the store data. initdb's
/// module lacks `free` and the temp-return accessors (it loads no side modules): host
/// functions that do nothing stand in for them.
pub(super) fn runtime_exports(store: &mut Store<Ctx>, instance: &wasmtime::Instance) -> Result<Exports, Error> {
    let free = match instance.get_func(&mut *store, "free") {
        Some(free) => free.typed(&*store).map_err(Error::instantiate)?,
        None => Func::wrap(&mut *store, |_: i32| {}).typed(&*store).map_err(Error::instantiate)?,
    };
    let tempret_set = instance
        .get_func(&mut *store, "_emscripten_tempret_set")
        .unwrap_or_else(|| Func::wrap(&mut *store, |_: i32| {}));
    let tempret_get =
        instance.get_func(&mut *store, "_emscripten_tempret_get").unwrap_or_else(|| Func::wrap(&mut *store, || 0i32));
    let exports = Exports {
        set_threw: typed(store, instance, "setThrew")?,
        malloc: typed(store, instance, "malloc")?,
        calloc: typed(store, instance, "calloc")?,
        free,
        memalign: typed(store, instance, "emscripten_builtin_memalign")?,
        dl_seterr: typed(store, instance, "__dl_seterr")?,
        tempret_set,
        tempret_get,
        longjmp: instance.get_tag(&mut *store, crate::engine::LONGJMP_TAG),
    };
    store.data_mut().exports = Some(exports.clone());
    Ok(exports)
}

/// A NUL-terminated copy of `text` in malloc'ed guest memory.
pub(super) fn guest_string(store: &mut Store<Ctx>, text: &str) -> Result<i32, Error> {
    let exports = store.data().exports();
    let memory = store.data().shared().memory;
    let ptr = exports.malloc.call(&mut *store, text.len() as i32 + 1).map_err(Error::guest)?;
    memory.write(&mut *store, ptr as usize, text.as_bytes()).map_err(Error::trap)?;
    memory.write(&mut *store, ptr as usize + text.len(), &[0]).map_err(Error::trap)?;
    Ok(ptr)
}

/// Puts `args` in guest memory and returns the address of their NULL-terminated pointer
/// array. argv lives in malloc'ed memory: PGlite keeps the pointer and reads it again later.
pub(super) fn write_argv(store: &mut Store<Ctx>, args: &[&str]) -> Result<i32, Error> {
    let mut pointers = Vec::new();
    for arg in args {
        pointers.extend_from_slice(&(guest_string(store, arg)? as u32).to_le_bytes());
    }
    pointers.extend_from_slice(&[0; 4]);
    let malloc = store.data().exports().malloc;
    let memory = store.data().shared().memory;
    let argv = malloc.call(&mut *store, pointers.len() as i32).map_err(Error::guest)?;
    memory.write(&mut *store, argv as usize, &pointers).map_err(Error::trap)?;
    Ok(argv)
}

/// Runs `main` with `args` (the program's name first) as Emscripten's `callMain` does: its
/// exit code, whether it returned it or called `exit`; after an exit the stack pointer is put
/// back where it was.
pub(super) fn call_main(store: &mut Store<Ctx>, main: TypedFunc<(i32, i32), i32>, args: &[&str]) -> Result<i32, Error> {
    let argv = write_argv(store, args)?;
    let stack_pointer = store.data().shared().stack_pointer;
    let sp = stack_pointer.get(&mut *store);
    match main.call(&mut *store, (args.len() as i32, argv)) {
        Ok(code) => Ok(code),
        Err(err) => match err.downcast_ref::<GuestExit>() {
            Some(GuestExit(code)) => {
                let code = *code;
                stack_pointer.set(&mut *store, sp).map_err(Error::instantiate)?;
                Ok(code)
            }
            None => Err(Error::guest(err)),
        },
    }
}
