//! The patched `memset` against the module's own, run side by side in wasmtime on a small
//! module built for the purpose: every case must leave the same memory and return the same.

use std::borrow::Cow;

use wasm_encoder::{
    BlockType, CodeSection, CustomSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    ImportSection, MemArg, MemorySection, MemoryType, Module, NameMap, NameSection, TypeSection, ValType,
};
use wasmtime::{Func, Instance, Store};

use super::{CHUNK, LARGE, patch};

const MEMORY: usize = 1 << 20;

/// A module shaped like PostgreSQL's where it matters: `dylink.0` first and a `name` section
/// last, an imported function before the defined ones, another function before `memset`, and
/// `memset` a plain byte loop with locals of several types. `memset_type` lets a test give it
/// the wrong signature.
fn module(memset_type: u32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    types.ty().function([ValType::I32; 3], [ValType::I32]);
    types.ty().function([ValType::I32; 3], []);
    let mut imports = ImportSection::new();
    imports.import("env", "seven", EntityType::Function(0));
    let mut functions = FunctionSection::new();
    functions.function(0);
    functions.function(memset_type);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: (MEMORY >> 16) as u64,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("other", ExportKind::Func, 1);
    exports.export("memset", ExportKind::Func, 2);
    exports.export("memory", ExportKind::Memory, 0);

    let mut code = CodeSection::new();
    let mut other = Function::new([]);
    other.instructions().call(0).i32_const(1).i32_add().end();
    code.function(&other);
    let mut memset = Function::new([(1, ValType::I32), (2, ValType::I64), (1, ValType::V128)]);
    let byte = MemArg { offset: 0, align: 0, memory_index: 0 };
    let i = 3;
    memset
        .instructions()
        .block(BlockType::Empty)
        .loop_(BlockType::Empty)
        .local_get(i)
        .local_get(2)
        .i32_ge_u()
        .br_if(1)
        .local_get(0)
        .local_get(i)
        .i32_add()
        .local_get(1)
        .i32_store8(byte)
        .local_get(i)
        .i32_const(1)
        .i32_add()
        .local_set(i)
        .br(0)
        .end()
        .end();
    if memset_type == 1 {
        memset.instructions().local_get(0);
    }
    memset.instructions().end();
    code.function(&memset);

    // Memory info: no memory, table or alignment of its own.
    let dylink = CustomSection { name: "dylink.0".into(), data: vec![1, 4, 0, 0, 0, 0].into() };
    let mut function_names = NameMap::new();
    function_names.append(1, "other");
    function_names.append(2, "memset");
    let mut names = NameSection::new();
    names.functions(&function_names);
    let mut module = Module::new();
    module
        .section(&dylink)
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code)
        .section(&names);
    module.finish()
}

struct Guest {
    store: Store<()>,
    instance: Instance,
}

impl Guest {
    fn new(wasm: &[u8]) -> Guest {
        let engine = crate::engine::engine();
        let module = wasmtime::Module::new(engine, wasm).unwrap();
        let mut store = Store::new(engine, ());
        let seven = Func::wrap(&mut store, || 7i32);
        let instance = Instance::new(&mut store, &module, &[seven.into()]).unwrap();
        Guest { store, instance }
    }

    fn memory(&mut self) -> &mut [u8] {
        let memory = self.instance.get_memory(&mut self.store, "memory").unwrap();
        memory.data_mut(&mut self.store)
    }

    fn memset(&mut self, dst: u32, byte: i32, len: u32) -> wasmtime::Result<u32> {
        let memset = self.instance.get_typed_func::<(u32, i32, u32), u32>(&mut self.store, "memset").unwrap();
        memset.call(&mut self.store, (dst, byte, len))
    }
}

/// Runs `memset(dst, byte, len)` on the module as built and as patched, each on a fresh memory
/// with `dirty` bytes set first, and checks both end the same.
fn same(dst: u32, byte: i32, len: u32, dirty: &[usize]) {
    let original = module(1);
    let patched = patch(&original);
    assert!(matches!(patched, Cow::Owned(_)), "the module's memset is patched");
    let mut outcomes = Vec::new();
    for wasm in [&original[..], &patched[..]] {
        let mut guest = Guest::new(wasm);
        for (n, &at) in dirty.iter().enumerate() {
            guest.memory()[at] = 0x80 | n as u8;
        }
        let returned = guest.memset(dst, byte, len).unwrap();
        outcomes.push((returned, guest.memory().to_vec()));
    }
    assert_eq!(outcomes[0].0, dst, "memset returns its destination");
    assert_eq!(outcomes[0].0, outcomes[1].0);
    let first_difference = outcomes[0].1.iter().zip(&outcomes[1].1).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "memset({dst}, {byte}, {len}) over {dirty:?}");
}

#[test]
fn a_large_zero_fill_of_fresh_memory() {
    same(4099, 0, 300_001, &[]);
}

#[test]
fn a_large_zero_fill_clears_what_is_there_and_nothing_else() {
    let (dst, len) = (4099usize, 300_001usize);
    let dirty = [
        dst - 1,
        dst,
        dst + 63,
        dst + 64,
        dst + 3 * CHUNK as usize + 17,
        dst + len - len % CHUNK as usize - 1,
        dst + len - len % CHUNK as usize,
        dst + len - 1,
        dst + len,
    ];
    same(dst as u32, 0, len as u32, &dirty);
}

#[test]
fn a_zero_fill_of_exactly_the_threshold_up_to_the_end_of_memory() {
    let dst = MEMORY - LARGE as usize;
    same(dst as u32, 0, LARGE as u32, &[dst + LARGE as usize - 1, dst - 1]);
    same(dst as u32 - 1, 0, LARGE as u32, &[dst - 1, dst + 5 * CHUNK as usize]);
    same(dst as u32 - 1, 0, LARGE as u32 - 1, &[dst - 1, dst + 5 * CHUNK as usize]);
}

#[test]
fn other_fills_run_the_modules_own_code() {
    same(1000, 0x5a, 200_000, &[999, 5000, 200_999, 201_000]);
    same(1000, 0x100, 200_000, &[5000]);
    same(1000, 0, 100, &[999, 1000, 1099, 1100]);
    same(1000, 0, 0, &[1000]);
}

#[test]
fn runs_of_chunks_with_something_in_them_between_zero_ones() {
    let chunk = CHUNK as usize;
    let dst = 3 * chunk + 100;
    // Dirty, dirty, zero, dirty, zero, zero, dirty, then the tail.
    let dirty: Vec<usize> = [0, 1, 3, 6].iter().map(|n| dst + n * chunk + 4000).chain([dst + 20 * chunk + 7]).collect();
    same(dst as u32, 0, 20 * CHUNK as u32 + 9, &dirty);
    // Every chunk dirty: one run to the end.
    let dirty: Vec<usize> = (0..17).map(|n| dst + n * chunk + 2 * n).collect();
    same(dst as u32, 0, 17 * CHUNK as u32, &dirty);
}

#[test]
fn a_fill_past_the_end_of_memory_still_traps() {
    let original = module(1);
    let patched = patch(&original).into_owned();
    for wasm in [original, patched] {
        let mut guest = Guest::new(&wasm);
        assert!(guest.memset((MEMORY - LARGE as usize) as u32, 0, 2 * LARGE as u32).is_err());
        // A range whose end wraps past 4 GiB.
        assert!(guest.memset((MEMORY - LARGE as usize) as u32, 0, u32::MAX - 10).is_err());
    }
}

#[test]
fn every_other_function_and_export_is_unchanged() {
    let original = module(1);
    let patched = patch(&original);
    let mut guest = Guest::new(&patched);
    let other = guest.instance.get_typed_func::<(), i32>(&mut guest.store, "other").unwrap();
    assert_eq!(other.call(&mut guest.store, ()).unwrap(), 8);
    let exports = |wasm: &[u8]| {
        let module = wasmtime::Module::new(crate::engine::engine(), wasm).unwrap();
        module.exports().map(|e| format!("{} {:?}", e.name(), e.ty())).collect::<Vec<_>>()
    };
    assert_eq!(exports(&original), exports(&patched));

    // Section by section: all but the code section byte for byte, in the same order, and in
    // the code section every body but memset's.
    let sections = |wasm: &[u8]| {
        let mut sections = Vec::new();
        let mut bodies = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let payload = payload.unwrap();
            if let wasmparser::Payload::CodeSectionEntry(body) = &payload {
                bodies.push(body.as_bytes().to_vec());
            }
            if let Some((id, range)) = payload.as_section() {
                let bytes = if id == wasm_encoder::SectionId::Code as u8 { Vec::new() } else { wasm[range].to_vec() };
                sections.push((id, bytes));
            }
        }
        (sections, bodies)
    };
    let (before, bodies_before) = sections(&original);
    let (after, bodies_after) = sections(&patched);
    assert_eq!(before.first().map(|s| s.0), Some(0), "dylink.0 comes first");
    assert_eq!(before, after);
    assert_eq!(bodies_before.len(), bodies_after.len());
    assert_eq!(bodies_before[0], bodies_after[0]);
    assert_ne!(bodies_before[1], bodies_after[1]);
}

#[test]
fn a_module_without_a_memset_of_that_shape_is_left_as_it_is() {
    let wrong_type = module(2);
    assert!(matches!(patch(&wrong_type), Cow::Borrowed(_)));
    assert!(matches!(patch(b"\0asm\x01\0\0\0"), Cow::Borrowed(_)));
    assert!(matches!(patch(b"not a module"), Cow::Borrowed(_)));
}
