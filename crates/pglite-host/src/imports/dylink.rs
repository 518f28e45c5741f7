//! The side-module loader behind `dlopen`/`dlsym` (`_dlopen_js`, `_dlsym_js`), reproducing the
//! Emscripten runtime's `loadWebAssemblyModule`: PostgreSQL loads `plpgsql.so`,
//! `dict_snowball.so` and extensions this way, and initdb itself needs the first two.

use std::collections::HashMap;

use wasmtime::{Caller, Extern, ExternType, Func, Global, GlobalType, Linker, Mutability, Ref, Val, ValType};

use super::{Ctx, split};
use crate::errno::Errno;

/// What the loader knows: the main module's symbols and every loaded library.
#[derive(Default)]
pub(crate) struct Registry {
    /// Main-module function exports, by name.
    pub(crate) main_funcs: HashMap<String, Func>,
    /// Main-module data exports: addresses already relocated by the memory base.
    pub(crate) main_data: HashMap<String, i32>,
    /// Host functions the main module imports, for side modules importing the same names.
    pub(crate) host_funcs: HashMap<String, Func>,
    /// The global offset table: one mutable global per symbol, shared by all side modules.
    got: HashMap<String, Global>,
    /// Table slots handed out for functions, so a symbol gets one index.
    slots: HashMap<(String, String), u32>,
    /// Loaded libraries by path, and the libc handles pointing at them.
    libs: HashMap<String, Library>,
    handles: HashMap<u32, String>,
    /// Where compiled side modules are cached (shared with the main module's cache).
    pub(crate) module_cache: Option<std::path::PathBuf>,
}

struct Library {
    funcs: HashMap<String, Func>,
    data: HashMap<String, i32>,
    /// One of PostgreSQL's encoding-conversion modules, answered by the host (see
    /// `encodings.rs`): its symbols are made when looked up.
    conversions: bool,
}

/// PostgreSQL's encoding-conversion modules (`src/backend/utils/mb/conversion_procs`), which
/// PGlite lacks (0.2) or ships unable to load (0.3+: they call core functions the build does
/// not export, `pg_utf8_islegal`, `UtfToLocal`), so the host stands in for them (19 has
/// `cyrillic` for `cyrillic_and_mic`, and no MULE_INTERNAL ones).
pub(crate) const CONVERSION_MODULES: [&str; 25] = [
    "cyrillic",
    "cyrillic_and_mic",
    "euc2004_sjis2004",
    "euc_cn_and_mic",
    "euc_jp_and_sjis",
    "euc_kr_and_mic",
    "euc_tw_and_big5",
    "latin2_and_win1250",
    "latin_and_mic",
    "utf8_and_big5",
    "utf8_and_cyrillic",
    "utf8_and_euc2004",
    "utf8_and_euc_cn",
    "utf8_and_euc_jp",
    "utf8_and_euc_kr",
    "utf8_and_euc_tw",
    "utf8_and_gb18030",
    "utf8_and_gbk",
    "utf8_and_iso8859",
    "utf8_and_iso8859_1",
    "utf8_and_johab",
    "utf8_and_sjis",
    "utf8_and_sjis2004",
    "utf8_and_uhc",
    "utf8_and_win",
];

/// Whether the library at guest path `name` is one of [`CONVERSION_MODULES`].
fn is_conversion_module(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.strip_suffix(".so").unwrap_or(file);
    CONVERSION_MODULES.contains(&stem)
}

pub(super) fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "_dlopen_js", |mut c: Caller<'_, Ctx>, handle: i32| -> wasmtime::Result<i32> {
        match dlopen(&mut c, handle as u32) {
            Ok(()) => Ok(handle),
            Err(Failure::Guest(msg)) => {
                tracing::warn!("dlopen failed: {msg}");
                set_error(&mut c, &msg)?;
                Ok(0)
            }
            Err(Failure::Trap(err)) => Err(err),
        }
    })?;
    linker.func_wrap(
        "env",
        "_dlsym_js",
        |mut c: Caller<'_, Ctx>, handle: i32, sym: i32, _index: i32| -> wasmtime::Result<i32> {
            let (symbol, lib_name) = {
                let (g, ctx) = split(&mut c);
                (g.cstr(sym as u32).unwrap_or_default(), ctx.dylink.handles.get(&(handle as u32)).cloned())
            };
            let Some(lib_name) = lib_name else {
                set_error(&mut c, "dlsym on a handle that is not open")?;
                return Ok(0);
            };
            let lib = &c.data().dylink.libs[&lib_name];
            if let Some(addr) = lib.data.get(&symbol) {
                return Ok(*addr);
            }
            if lib.conversions
                && !lib.funcs.contains_key(&symbol)
                && let Some(func) = super::conversions::function(&mut c, &symbol)?
            {
                let lib = c.data_mut().dylink.libs.get_mut(&lib_name).expect("an open library");
                lib.funcs.insert(symbol.clone(), func);
            }
            match c.data().dylink.libs[&lib_name].funcs.get(&symbol).copied() {
                Some(func) => Ok(slot_for(&mut c, (lib_name, symbol), func)? as i32),
                None => {
                    set_error(
                        &mut c,
                        &format!("Tried to lookup unknown symbol \"{symbol}\" in dynamic library: {lib_name}"),
                    )?;
                    Ok(0)
                }
            }
        },
    )?;
    Ok(())
}

enum Failure {
    /// dlopen fails in the guest (dlerror() explains); the instance is fine.
    Guest(String),
    /// The instance is in an unknown state.
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for Failure {
    fn from(err: wasmtime::Error) -> Failure {
        Failure::Trap(err)
    }
}

impl From<Errno> for Failure {
    fn from(err: Errno) -> Failure {
        Failure::Guest(format!("memory fault reading the library handle ({err:?})"))
    }
}

/// Hands `msg` to libc's `dlerror()` (printf-style, so `%` is escaped).
fn set_error(c: &mut Caller<'_, Ctx>, msg: &str) -> wasmtime::Result<()> {
    let exports = c.data().exports();
    let mut bytes = msg.replace('%', "%%").into_bytes();
    bytes.push(0);
    let ptr = exports.malloc.call(&mut *c, bytes.len() as i32)?;
    if ptr == 0 {
        return Ok(());
    }
    {
        let (mut g, _) = split(c);
        if g.write(ptr as u32, &bytes).is_err() {
            return Ok(());
        }
    }
    exports.dl_seterr.call(&mut *c, (ptr, 0))?;
    exports.free.call(&mut *c, ptr)
}

/// The table slot of `func` under `key`, growing the table the first time.
fn slot_for(c: &mut Caller<'_, Ctx>, key: (String, String), func: Func) -> wasmtime::Result<u32> {
    if let Some(slot) = c.data().dylink.slots.get(&key) {
        return Ok(*slot);
    }
    let table = c.data().shared().table;
    let slot = table.grow(&mut *c, 1, Ref::Func(Some(func)))? as u32;
    c.data_mut().dylink.slots.insert(key, slot);
    Ok(slot)
}

fn got_entry(c: &mut Caller<'_, Ctx>, name: &str) -> wasmtime::Result<Global> {
    if let Some(global) = c.data().dylink.got.get(name) {
        return Ok(*global);
    }
    let global = Global::new(&mut *c, GlobalType::new(ValType::I32, Mutability::Var), Val::I32(0))?;
    c.data_mut().dylink.got.insert(name.to_owned(), global);
    Ok(global)
}

/// `dylink.0` memory info: (memory size, log2 alignment, table size). The section must come
/// first in a side module, right after the 8-byte header.
fn mem_info(wasm: &[u8]) -> Option<(u32, u32, u32)> {
    fn leb(b: &[u8], at: &mut usize) -> Option<u32> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return u32::try_from(value).ok();
            }
        }
        None
    }
    if wasm.get(0..4)? != b"\0asm" || *wasm.get(8)? != 0 {
        return None;
    }
    let mut at = 9;
    let size = leb(wasm, &mut at)? as usize;
    let end = at.checked_add(size)?;
    let name_len = leb(wasm, &mut at)? as usize;
    if wasm.get(at..at + name_len)? != b"dylink.0" {
        return None;
    }
    at += name_len;
    while at < end {
        let kind = *wasm.get(at)?;
        at += 1;
        let len = leb(wasm, &mut at)? as usize;
        let next = at + len;
        if kind == 1 {
            return Some((leb(wasm, &mut at)?, leb(wasm, &mut at)?, leb(wasm, &mut at)?));
        }
        at = next;
    }
    None
}

fn dlopen(c: &mut Caller<'_, Ctx>, handle: u32) -> Result<(), Failure> {
    {
        let (g, _) = split(c);
        let name = g.cstr(handle + 36)?;
        if is_conversion_module(&name) {
            let ctx = c.data_mut();
            ctx.dylink.libs.entry(name.clone()).or_insert_with(|| Library {
                funcs: HashMap::new(),
                data: HashMap::new(),
                conversions: true,
            });
            ctx.dylink.handles.insert(handle, name);
            return Ok(());
        }
    }
    let (name, wasm) = {
        let (g, ctx) = split(c);
        let name = g.cstr(handle + 36)?;
        let (ptr, len) = (g.u32(handle + 28)?, g.u32(handle + 32)?);
        let wasm = if ptr != 0 {
            g.slice(ptr, len)?.to_vec()
        } else {
            read_guest_file(ctx, &name)
                .map_err(|e| Failure::Guest(format!("Could not load dynamic lib: {name}: {e:?}")))?
        };
        (name, wasm)
    };
    if c.data().dylink.libs.contains_key(&name) {
        c.data_mut().dylink.handles.insert(handle, name);
        return Ok(());
    }

    let (mem_size, align_log2, table_size) = mem_info(&wasm)
        .ok_or_else(|| Failure::Guest(format!("Could not load dynamic lib: {name}: not a side module")))?;
    let exports = c.data().exports();
    let shared = c.data().shared();
    let align = 1u32 << align_log2.min(16);
    let memory_base = if mem_size > 0 {
        let raw = exports.calloc.call(&mut *c, ((mem_size + align) as i32, 1))? as u32;
        if raw == 0 {
            return Err(Failure::Guest(format!("Could not load dynamic lib: {name}: out of memory")));
        }
        raw.div_ceil(align) * align
    } else {
        0
    };
    let table_base = shared.table.size(&*c) as u32;
    if table_size > 0 {
        shared.table.grow(&mut *c, u64::from(table_size), Ref::Func(None))?;
    }
    {
        let (mut g, _) = split(c);
        g.write(handle + 8, &[1])?;
        for (off, v) in [(12, memory_base), (16, mem_size), (20, table_base), (24, table_size)] {
            g.put_u32(handle + off, v)?;
        }
    }
    let cache = c.data().dylink.module_cache.clone();
    let longjmp = c.data().exports().longjmp;
    let module = crate::engine::compile_cached(c.engine(), &wasm, cache.as_deref(), longjmp.is_some())
        .map_err(|e| Failure::Guest(format!("Could not load dynamic lib: {name}: {e}")))?;

    let mut imports = Vec::new();
    let mut needed = Vec::new();
    for import in module.imports() {
        let field = import.name();
        let ext: Extern = match (import.module(), field, import.ty()) {
            ("env", "memory", _) => shared.memory.into(),
            ("env", "__indirect_function_table", _) => shared.table.into(),
            ("env", "__stack_pointer", _) => shared.stack_pointer.into(),
            ("env", "__memory_base", _) => const_global(c, memory_base)?.into(),
            ("env", "__table_base", _) => const_global(c, table_base)?.into(),
            ("GOT.mem", _, _) => {
                let global = got_entry(c, field)?;
                if let Some(addr) = c.data().dylink.main_data.get(field).copied() {
                    global.set(&mut *c, Val::I32(addr))?;
                }
                needed.push(field.to_owned());
                global.into()
            }
            ("GOT.func", _, _) => {
                let global = got_entry(c, field)?;
                if let Some(func) = c.data().dylink.main_funcs.get(field).copied() {
                    let slot = slot_for(c, (String::new(), field.to_owned()), func)?;
                    global.set(&mut *c, Val::I32(slot as i32))?;
                }
                needed.push(field.to_owned());
                global.into()
            }
            (_, _, ExternType::Func(ty)) => resolve_func(c, field, ty).into(),
            // The main module's longjmp tag, for a side module rewritten to catch it.
            ("env", crate::engine::LONGJMP_TAG, ExternType::Tag(_)) if let Some(tag) = longjmp => tag.into(),
            (m, f, _) => {
                return Err(Failure::Guest(format!("Could not load dynamic lib: {name}: unsupported import {m}.{f}")));
            }
        };
        imports.push(ext);
    }
    let instance = wasmtime::Instance::new(&mut *c, &module, &imports)?;

    let mut lib = Library { funcs: HashMap::new(), data: HashMap::new(), conversions: false };
    let export_list: Vec<_> = instance.exports(&mut *c).map(|e| (e.name().to_owned(), e.into_extern())).collect();
    for (export, ext) in export_list {
        match ext {
            Extern::Func(func) => {
                lib.funcs.insert(export, func);
            }
            Extern::Global(global) => {
                if let Val::I32(offset) = global.get(&mut *c) {
                    lib.data.insert(export, (memory_base as i32).wrapping_add(offset));
                }
            }
            _ => {}
        }
    }
    // As the JS runtime's reportUndefinedSymbols: a GOT entry nobody defines fails the dlopen,
    // instead of a crash on first use (pgcrypto on 0.2.17 needs OpenSSL the core lacks).
    let mut unresolved = Vec::new();
    for sym in &needed {
        let global = c.data().dylink.got[sym];
        if global.get(&mut *c).unwrap_i32() != 0 {
            continue;
        }
        if let Some(addr) = lib.data.get(sym) {
            global.set(&mut *c, Val::I32(*addr))?;
        } else if let Some(func) = lib.funcs.get(sym).copied() {
            let slot = slot_for(c, (name.clone(), sym.clone()), func)?;
            global.set(&mut *c, Val::I32(slot as i32))?;
        } else {
            unresolved.push(sym.clone());
        }
    }
    if let Some(first) = unresolved.first() {
        return Err(Failure::Guest(format!(
            "Could not load dynamic lib: {name}\nError: bad export type for '{first}': undefined ({} unresolved symbols)",
            unresolved.len()
        )));
    }
    for init in ["__wasm_apply_data_relocs", "__wasm_call_ctors"] {
        if let Some(func) = lib.funcs.get(init).copied() {
            func.call(&mut *c, &[], &mut [])?;
        }
    }
    tracing::debug!(library = %name, mem_size, table_size, "side module loaded");
    let ctx = c.data_mut();
    ctx.dylink.libs.insert(name.clone(), lib);
    ctx.dylink.handles.insert(handle, name);
    Ok(())
}

fn const_global(c: &mut Caller<'_, Ctx>, value: u32) -> wasmtime::Result<Global> {
    Global::new(&mut *c, GlobalType::new(ValType::I32, Mutability::Const), Val::I32(value as i32))
}

/// A side module's function import: the main module's export, a host import of the same name,
/// or a lazy binding to whichever loaded library exports it (often the module itself).
fn resolve_func(c: &mut Caller<'_, Ctx>, field: &str, ty: wasmtime::FuncType) -> Func {
    let reg = &c.data().dylink;
    let alias = match field {
        "setTempRet0" => Some(c.data().exports().tempret_set),
        "getTempRet0" => Some(c.data().exports().tempret_get),
        _ => None,
    };
    if let Some(func) =
        alias.or_else(|| reg.main_funcs.get(field).copied()).or_else(|| reg.host_funcs.get(field).copied())
    {
        return func;
    }
    if field.starts_with("invoke_") {
        return Func::new(&mut *c, ty.clone(), super::invoke::trampoline(&ty));
    }
    let symbol = field.to_owned();
    Func::new(&mut *c, ty, move |mut caller, params, results| {
        let func = caller.data().dylink.libs.values().find_map(|lib| lib.funcs.get(&symbol).copied());
        match func {
            Some(func) => func.call(&mut caller, params, results),
            None => Err(wasmtime::Error::msg(format!("call to unresolved symbol {symbol}"))),
        }
    })
}

fn read_guest_file(ctx: &mut Ctx, guest_path: &str) -> Result<Vec<u8>, Errno> {
    let guest = ctx.vfs.resolve(crate::vfs::AT_FDCWD, guest_path)?;
    let fd = ctx.vfs.open(guest, 0, 0)?;
    let size = ctx.vfs.stat_fd(fd)?.size as usize;
    let mut buf = vec![0u8; size];
    let n = ctx.vfs.read(fd, &mut buf, Some(0));
    ctx.vfs.close(fd)?;
    buf.truncate(n?);
    Ok(buf)
}
