//! The changes the host makes to PostgreSQL's module before compiling it: `memset` of a large
//! range to zero writes only the pages that are not zero already, and Emscripten's `invoke_*`
//! trampolines and longjmp run in wasm (`invokes`, where its doc says why).
//!
//! Boot zeroes the 128 MB buffer pool: Emscripten's anonymous `mmap` is `memalign` plus
//! `memset`, over memory fresh from `memory.grow` that is zero already. Written, every page of
//! it cost the kernel a page to clear and the guest a pass to zero it again, half of a warm
//! restart. Read, a fresh page is the kernel's shared zero page (on huge pages, with the
//! kernel's `transparent_hugepage/use_zero_page`, its huge zero page): nothing is allocated
//! until PostgreSQL puts a buffer there. So a large zeroing `memset` first reads each 4 KiB
//! chunk and writes (`memory.fill`, one per run of chunks that hold something) only what is not
//! zero; smaller or non-zero fills, and a range that would wrap past 4 GiB, run the module's own
//! code. Within the memory's bounds the result is the same bytes in every case; a fill past
//! them traps either way.
//!
//! The `memset` patch alone keeps every function's index and only prepends code to `memset`'s
//! body; with the invokes the module is re-encoded (one import more, so the defined functions
//! are renumbered). Either way its data and the names and addresses it exports are unchanged
//! (`facts` reads the original file). A module with neither a `memset` of the type
//! `(i32, i32, i32) -> i32` nor all the invokes' rewrite needs is compiled as it is.

use std::borrow::Cow;

use wasm_encoder::{BlockType, CodeSection, Function, MemArg, RawSection, ValType};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

mod invokes;

/// A side module (`dlopen`) with its invokes in wasm (see `invokes`) when the main module's
/// are (`main_rewritten`: the side module catches the main module's tag), else as it is.
pub(crate) fn patch_side(wasm: &[u8], main_rewritten: bool) -> Cow<'_, [u8]> {
    let rewritten = main_rewritten
        .then(|| Scan::new(wasm).ok())
        .flatten()
        .and_then(|scan| invokes::Plan::side(&scan).map(|plan| invokes::rewrite(wasm, &scan, &plan, None)));
    match rewritten {
        Some(Ok(bytes)) => Cow::Owned(bytes),
        Some(Err(err)) => {
            tracing::info!(%err, "a side module could not be rewritten; compiled as it is");
            Cow::Borrowed(wasm)
        }
        None => Cow::Borrowed(wasm),
    }
}

/// Part of the compiled module's cache name: a change to the patch must change it.
pub(crate) const TAG: &str = "x2";

/// Part of a side module's compiled cache name when its invokes run in wasm.
pub(crate) const SIDE_TAG: &str = "s1";

/// The exception tag a longjmp throws, exported by a module whose invokes run in wasm
/// (`invokes`).
pub(crate) const LONGJMP_TAG: &str = "__nself_longjmp";

/// The function such a module imports from `env` to have its wasm stack checked.
pub(crate) const STACK_CHECK: &str = "__nself_stack_check";

/// `check_stack_depth` calls the stack check once in this many calls.
const STACK_CHECK_EVERY: i32 = 16;

/// Fills shorter than this run the module's own `memset`.
const LARGE: i32 = 64 << 10;

/// The granularity of the check: a page of the kernel's.
const CHUNK: i32 = 4 << 10;

/// `wasm` with its `memset` patched, or `wasm` itself when there is nothing to patch.
pub(crate) fn patch(wasm: &[u8]) -> Cow<'_, [u8]> {
    match patched(wasm) {
        Ok(Some(bytes)) => Cow::Owned(bytes),
        Ok(None) => {
            tracing::info!("the module has nothing the host patches; compiled as it is");
            Cow::Borrowed(wasm)
        }
        Err(err) => {
            tracing::info!(%err, "the module could not be read for patching; compiled as it is");
            Cow::Borrowed(wasm)
        }
    }
}

type PatchError = Box<dyn std::error::Error + Send + Sync>;

fn patched(wasm: &[u8]) -> Result<Option<Vec<u8>>, PatchError> {
    let scan = Scan::new(wasm)?;
    let memset = scan.memset();
    if let Some(plan) = invokes::Plan::main(&scan) {
        tracing::debug!(invokes = plan.invokes(), "the module's invokes run in wasm");
        return invokes::rewrite(wasm, &scan, &plan, memset).map(Some);
    }
    let Some(memset) = memset.map(|i| i as usize) else { return Ok(None) };
    let mut code = CodeSection::new();
    for (i, body) in scan.bodies.iter().enumerate() {
        if i == memset {
            let Some(function) = zero_skipping(body)? else { return Ok(None) };
            code.function(&function);
        } else {
            code.raw(body.as_bytes());
        }
    }
    let mut module = wasm_encoder::Module::new();
    for (id, range) in scan.sections {
        if id == wasm_encoder::SectionId::Code as u8 {
            module.section(&code);
        } else {
            module.section(&RawSection { id, data: &wasm[range] });
        }
    }
    Ok(Some(module.finish()))
}

/// What the patches need to know of a module, read in one pass.
struct Scan<'a> {
    sections: Vec<(u8, std::ops::Range<usize>)>,
    types: Vec<wasmparser::FuncType>,
    imports: Vec<wasmparser::Import<'a>>,
    imported_funcs: u32,
    imported_globals: u32,
    imported_tables: u32,
    /// The type of each function the module defines.
    func_types: Vec<u32>,
    defined_globals: u32,
    exports: Vec<wasmparser::Export<'a>>,
    bodies: Vec<wasmparser::FunctionBody<'a>>,
    /// The module has a tag section or imports a tag.
    tags: bool,
}

impl<'a> Scan<'a> {
    fn new(wasm: &'a [u8]) -> Result<Scan<'a>, wasmparser::BinaryReaderError> {
        let mut scan = Scan {
            sections: Vec::new(),
            types: Vec::new(),
            imports: Vec::new(),
            imported_funcs: 0,
            imported_globals: 0,
            imported_tables: 0,
            func_types: Vec::new(),
            defined_globals: 0,
            exports: Vec::new(),
            bodies: Vec::new(),
            tags: false,
        };
        for payload in Parser::new(0).parse_all(wasm) {
            let payload = payload?;
            if let Some(section) = payload.as_section() {
                scan.sections.push(section);
            }
            match payload {
                Payload::TypeSection(reader) => {
                    for ty in reader.into_iter_err_on_gc_types() {
                        scan.types.push(ty?);
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import?;
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => scan.imported_funcs += 1,
                            TypeRef::Global(_) => scan.imported_globals += 1,
                            TypeRef::Table(_) => scan.imported_tables += 1,
                            TypeRef::Tag(_) => scan.tags = true,
                            TypeRef::Memory(_) => {}
                        }
                        scan.imports.push(import);
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        scan.func_types.push(ty?);
                    }
                }
                Payload::GlobalSection(reader) => scan.defined_globals = reader.count(),
                Payload::TagSection(_) => scan.tags = true,
                Payload::ExportSection(reader) => {
                    for export in reader {
                        scan.exports.push(export?);
                    }
                }
                Payload::CodeSectionEntry(body) => scan.bodies.push(body),
                _ => {}
            }
        }
        Ok(scan)
    }

    /// The function the module exports as `name`.
    fn exported_func(&self, name: &str) -> Option<u32> {
        self.exports
            .iter()
            .find(|e| e.name == name && matches!(e.kind, ExternalKind::Func | ExternalKind::FuncExact))
            .map(|e| e.index)
    }

    /// The type of function `index` (imported or defined).
    fn func_type(&self, index: u32) -> Option<&wasmparser::FuncType> {
        let ty = match index.checked_sub(self.imported_funcs) {
            Some(defined) => *self.func_types.get(defined as usize)?,
            None => {
                let mut funcs = self.imports.iter().filter_map(|i| match i.ty {
                    TypeRef::Func(t) | TypeRef::FuncExact(t) => Some(t),
                    _ => None,
                });
                funcs.nth(index as usize)?
            }
        };
        self.types.get(ty as usize)
    }

    /// `memset`, as an index among the defined functions, when it has a body and the type
    /// `(i32, i32, i32) -> i32`.
    fn memset(&self) -> Option<u32> {
        let index = self.exported_func("memset")?;
        let defined = index.checked_sub(self.imported_funcs)?;
        let i32_ = wasmparser::ValType::I32;
        let ty = self.func_type(index)?;
        let shaped = ty.params() == [i32_, i32_, i32_] && ty.results() == [i32_];
        (shaped && (defined as usize) < self.bodies.len()).then_some(defined)
    }
}

/// `memset`'s body with the large-zero-fill path in front of it (see the module's doc).
fn zero_skipping(body: &wasmparser::FunctionBody<'_>) -> Result<Option<Function>, wasmparser::BinaryReaderError> {
    let mut reader = body.get_locals_reader()?;
    let mut locals = Vec::new();
    for _ in 0..reader.get_count() {
        let (count, ty) = reader.read()?;
        let ty = match ty {
            wasmparser::ValType::I32 => ValType::I32,
            wasmparser::ValType::I64 => ValType::I64,
            wasmparser::ValType::F32 => ValType::F32,
            wasmparser::ValType::F64 => ValType::F64,
            wasmparser::ValType::V128 => ValType::V128,
            wasmparser::ValType::Ref(_) => return Ok(None),
        };
        locals.push((count, ty));
    }
    let expression = &body.as_bytes()[reader.original_position() - body.range().start..];
    let mut f = zero_skipping_start(locals);
    f.raw(expression.iter().copied());
    Ok(Some(f))
}

/// A function with `memset`'s own `locals` (after its three parameters) and four more, that
/// starts with the large-zero-fill path (see the module's doc): `memset`'s body goes after it.
pub(super) fn zero_skipping_start(mut locals: Vec<(u32, ValType)>) -> Function {
    // memset's parameters: the destination, the byte, the length.
    let (dst, byte, len) = (0, 1, 2);
    let next = 3 + locals.iter().map(|&(count, _)| count).sum::<u32>();
    // The patch's own locals: the chunk being looked at, the end of the range, where the run of
    // chunks with something in them (not yet zeroed) starts (`at` when there is none), the scan.
    let (at, end, run, scan) = (next, next + 1, next + 2, next + 3);
    locals.push((4, ValType::I32));
    let mut f = Function::new(locals);
    let v128 = |offset| MemArg { offset, align: 0, memory_index: 0 };
    f.instructions()
        // A zero fill, large, whose end does not wrap (so `at + CHUNK` below cannot either).
        .local_get(byte)
        .i32_eqz()
        .local_get(len)
        .i32_const(LARGE)
        .i32_ge_u()
        .i32_and()
        .local_get(dst)
        .local_get(len)
        .i32_add()
        .local_tee(end)
        .local_get(dst)
        .i32_ge_u()
        .i32_and()
        .if_(BlockType::Empty)
        .local_get(dst)
        .local_tee(at)
        .local_set(run)
        .block(BlockType::Empty) // done
        .loop_(BlockType::Empty) // each chunk
        // Less than a chunk left: zero the run and the rest, and stop.
        .local_get(end)
        .local_get(at)
        .i32_sub()
        .i32_const(CHUNK)
        .i32_lt_u()
        .if_(BlockType::Empty)
        .local_get(run)
        .i32_const(0)
        .local_get(end)
        .local_get(run)
        .i32_sub()
        .memory_fill(0)
        .br(2)
        .end()
        .local_get(at)
        .local_set(scan)
        .block(BlockType::Empty) // something there
        .loop_(BlockType::Empty) // each 64 bytes
        .local_get(scan)
        .v128_load(v128(0))
        .local_get(scan)
        .v128_load(v128(16))
        .v128_or()
        .local_get(scan)
        .v128_load(v128(32))
        .v128_or()
        .local_get(scan)
        .v128_load(v128(48))
        .v128_or()
        .v128_any_true()
        .br_if(1)
        .local_get(scan)
        .i32_const(64)
        .i32_add()
        .local_tee(scan)
        .local_get(at)
        .i32_const(CHUNK)
        .i32_add()
        .i32_lt_u()
        .br_if(0)
        .end()
        // All zero: zero the run before it, if there is one; a run starts after it.
        .local_get(at)
        .local_get(run)
        .i32_ne()
        .if_(BlockType::Empty)
        .local_get(run)
        .i32_const(0)
        .local_get(at)
        .local_get(run)
        .i32_sub()
        .memory_fill(0)
        .end()
        .local_get(at)
        .i32_const(CHUNK)
        .i32_add()
        .local_tee(at)
        .local_set(run)
        .br(1)
        .end()
        // Something there: the chunk joins the run.
        .local_get(at)
        .i32_const(CHUNK)
        .i32_add()
        .local_set(at)
        .br(0)
        .end()
        .end()
        .local_get(dst)
        .return_()
        .end();
    f
}

#[cfg(test)]
mod tests;
