//! The rewritten invokes run in wasmtime on a small module shaped like Emscripten's
//! relocatable main module: `invoke_*`, `_emscripten_throw_longjmp`, the stack pointer and the
//! table imported from `env`, `setThrew` and `check_stack_depth` defined and exported, the
//! table filled by an element segment. The host's own invokes and longjmp fail if called, so
//! every case proves the call stayed in wasm.

use std::borrow::Cow;

use wasm_encoder::{
    CodeSection, ConstExpr, ElementSection, Elements, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, Module, RefType, TableType, TypeSection,
    ValType,
};
use wasmtime::{AsContextMut, Caller, Extern, Func, Global, Instance, Mutability, Store, Table, Tag, Val};

use super::super::{LONGJMP_TAG, STACK_CHECK, patch, patch_side};

/// The C stack pointer's value outside any call.
const SP: i32 = 1000;

// Function indices: the imports, then the defined functions.
const INVOKE_II: u32 = 0;
const INVOKE_VI: u32 = 1;
const THROW_LONGJMP: u32 = 2;
const HOST_THROW: u32 = 3;
const SET_THREW: u32 = 4;
const CHECK_STACK_DEPTH: u32 = 5;
const DOUBLE: u32 = 6;
const JUMPS: u32 = 7;
const HOST_JUMPS: u32 = 8;
const RECORD: u32 = 9;
const CALL_II: u32 = 10;
const CALL_VI: u32 = 11;

// Globals: the imported stack pointer, then `__THREW__`, `__threwValue`, how many times
// `check_stack_depth` ran and what `record` was given.
const STACK_POINTER: u32 = 0;
const THREW: u32 = 1;
const THREW_VALUE: u32 = 2;
const CHECKS: u32 = 3;
const RECORDED: u32 = 4;

// Table slots, from the element segment.
const SLOT_DOUBLE: i32 = 0;
const SLOT_JUMPS: i32 = 1;
const SLOT_HOST_JUMPS: i32 = 2;
const SLOT_RECORD: i32 = 3;

/// The module; without `check_stack_depth` if `with_check` is false.
fn module(with_check: bool) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32, ValType::I32], [ValType::I32]); // 0: invoke_ii
    types.ty().function([], []); // 1
    types.ty().function([ValType::I32, ValType::I32], []); // 2: invoke_vi, setThrew
    types.ty().function([ValType::I32], [ValType::I32]); // 3: int callees
    types.ty().function([ValType::I32], []); // 4: void callees

    let mut imports = ImportSection::new();
    imports.import("env", "invoke_ii", EntityType::Function(0));
    imports.import("env", "invoke_vi", EntityType::Function(2));
    imports.import("env", "_emscripten_throw_longjmp", EntityType::Function(1));
    imports.import("env", "host_throw", EntityType::Function(1));
    let sp = GlobalType { val_type: ValType::I32, mutable: true, shared: false };
    imports.import("env", "__stack_pointer", EntityType::Global(sp));
    let table = TableType { element_type: RefType::FUNCREF, table64: false, minimum: 4, maximum: None, shared: false };
    imports.import("env", "__indirect_function_table", EntityType::Table(table));

    let mut functions = FunctionSection::new();
    for ty in [2, 1, 3, 3, 3, 4, 0, 2] {
        functions.function(ty);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
    let mut globals = GlobalSection::new();
    for _ in [THREW, THREW_VALUE, CHECKS, RECORDED] {
        globals.global(GlobalType { val_type: ValType::I32, mutable: true, shared: false }, &ConstExpr::i32_const(0));
    }

    let mut exports = ExportSection::new();
    exports.export("setThrew", ExportKind::Func, SET_THREW);
    if with_check {
        exports.export("check_stack_depth", ExportKind::Func, CHECK_STACK_DEPTH);
    }
    exports.export("call_ii", ExportKind::Func, CALL_II);
    exports.export("call_vi", ExportKind::Func, CALL_VI);
    for (name, global) in [("threw", THREW), ("threw_value", THREW_VALUE), ("checks", CHECKS), ("recorded", RECORDED)] {
        exports.export(name, ExportKind::Global, global);
    }

    let mut elements = ElementSection::new();
    let slots = [DOUBLE, JUMPS, HOST_JUMPS, RECORD];
    elements.active(Some(0), &ConstExpr::i32_const(0), Elements::Functions(Cow::Borrowed(&slots)));

    let mut code = CodeSection::new();
    let body = |f: &mut dyn FnMut(&mut Function)| {
        let mut function = Function::new([]);
        f(&mut function);
        function.instructions().end();
        function
    };
    code.function(&body(&mut |f| {
        f.instructions().local_get(0).global_set(THREW).local_get(1).global_set(THREW_VALUE);
    }));
    code.function(&body(&mut |f| {
        f.instructions().global_get(CHECKS).i32_const(1).i32_add().global_set(CHECKS);
    }));
    code.function(&body(&mut |f| {
        f.instructions().local_get(0).i32_const(2).i32_mul();
    }));
    // A frame of its own on the C stack, then a longjmp.
    code.function(&body(&mut |f| {
        f.instructions().global_get(STACK_POINTER).i32_const(64).i32_sub().global_set(STACK_POINTER);
        f.instructions().call(THROW_LONGJMP).unreachable();
    }));
    code.function(&body(&mut |f| {
        f.instructions().global_get(STACK_POINTER).i32_const(32).i32_sub().global_set(STACK_POINTER);
        f.instructions().call(HOST_THROW).unreachable();
    }));
    code.function(&body(&mut |f| {
        f.instructions().local_get(0).global_set(RECORDED);
    }));
    code.function(&body(&mut |f| {
        f.instructions().local_get(0).local_get(1).call(INVOKE_II);
    }));
    code.function(&body(&mut |f| {
        f.instructions().local_get(0).local_get(1).call(INVOKE_VI);
    }));

    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&elements)
        .section(&code);
    module.finish()
}

/// What the host saw: the longjmp tag, how often the stack check was called and what the
/// main module's `setThrew` (for a side module) was given.
#[derive(Default)]
struct Seen {
    tag: Option<Tag>,
    stack_checks: u32,
    set_threw: Vec<(i32, i32)>,
}

struct Guest {
    store: Store<Seen>,
    instance: Instance,
    sp: Global,
}

impl Guest {
    fn new(wasm: &[u8]) -> Guest {
        let engine = crate::engine::engine();
        let module = wasmtime::Module::new(engine, wasm).unwrap();
        let mut store = Store::new(engine, Seen::default());
        let refuse = |what: &'static str| move || -> wasmtime::Result<()> { Err(wasmtime::Error::msg(what)) };
        let invoke_ii = Func::wrap(&mut store, |_: i32, _: i32| -> wasmtime::Result<i32> {
            Err(wasmtime::Error::msg("the host's invoke_ii was called"))
        });
        let invoke_vi = Func::wrap(&mut store, |_: i32, _: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg("the host's invoke_vi was called"))
        });
        let throw_longjmp = Func::wrap(&mut store, refuse("the host's longjmp was called"));
        // A longjmp that comes through the host, as a side module's does.
        let host_throw = Func::wrap(&mut store, |mut caller: Caller<'_, Seen>| -> wasmtime::Result<()> {
            let tag = caller.data().tag.expect("the module exports its tag");
            let ty = wasmtime::ExnType::from_tag_type(&tag.ty(&caller))?;
            let pre = wasmtime::ExnRefPre::new(&mut caller, ty);
            let exception = wasmtime::ExnRef::new(&mut caller, &pre, &tag, &[])?;
            caller.as_context_mut().throw(exception)
        });
        let stack_check = Func::wrap(&mut store, |mut caller: Caller<'_, Seen>| caller.data_mut().stack_checks += 1);
        // What a side module imports from the main module.
        let set_threw = Func::wrap(&mut store, |mut caller: Caller<'_, Seen>, a: i32, b: i32| {
            caller.data_mut().set_threw.push((a, b))
        });
        let void = wasmtime::FuncType::new(engine, [], []);
        let main_tag = Tag::new(&mut store, &wasmtime::TagType::new(void)).unwrap();
        let sp_ty = wasmtime::GlobalType::new(wasmtime::ValType::I32, Mutability::Var);
        let sp = Global::new(&mut store, sp_ty, Val::I32(SP)).unwrap();
        let table_ty = wasmtime::TableType::new(wasmtime::RefType::FUNCREF, 4, None);
        let table = Table::new(&mut store, table_ty, wasmtime::Ref::Func(None)).unwrap();
        let mut imports: Vec<Extern> = Vec::new();
        for import in module.imports() {
            imports.push(match import.name() {
                "invoke_ii" => invoke_ii.into(),
                "invoke_vi" => invoke_vi.into(),
                "_emscripten_throw_longjmp" => throw_longjmp.into(),
                "host_throw" => host_throw.into(),
                "__stack_pointer" => sp.into(),
                "__indirect_function_table" => table.into(),
                name if name == STACK_CHECK => stack_check.into(),
                "setThrew" => set_threw.into(),
                name if name == LONGJMP_TAG => main_tag.into(),
                name => panic!("unexpected import {name}"),
            });
        }
        let instance = Instance::new(&mut store, &module, &imports).unwrap();
        store.data_mut().tag = Some(instance.get_tag(&mut store, LONGJMP_TAG).unwrap_or(main_tag));
        Guest { store, instance, sp }
    }

    fn rewritten() -> Guest {
        let original = module(true);
        let patched = patch(&original);
        assert!(matches!(patched, Cow::Owned(_)), "the module was not rewritten");
        Guest::new(&patched)
    }

    fn global(&mut self, name: &str) -> i32 {
        self.instance.get_global(&mut self.store, name).unwrap().get(&mut self.store).unwrap_i32()
    }

    fn sp(&mut self) -> i32 {
        self.sp.get(&mut self.store).unwrap_i32()
    }

    fn call_ii(&mut self, slot: i32, arg: i32) -> wasmtime::Result<i32> {
        let call = self.instance.get_typed_func::<(i32, i32), i32>(&mut self.store, "call_ii").unwrap();
        call.call(&mut self.store, (slot, arg))
    }
}

#[test]
fn a_call_through_an_invoke_returns_what_the_callee_does() {
    let mut guest = Guest::rewritten();
    assert_eq!(guest.call_ii(SLOT_DOUBLE, 21).unwrap(), 42);
    assert_eq!((guest.global("threw"), guest.sp()), (0, SP));
    let call_vi = guest.instance.get_typed_func::<(i32, i32), ()>(&mut guest.store, "call_vi").unwrap();
    call_vi.call(&mut guest.store, (SLOT_RECORD, 9)).unwrap();
    assert_eq!(guest.global("recorded"), 9);
}

#[test]
fn a_longjmp_is_caught_by_the_nearest_invoke_with_the_stack_pointer_put_back() {
    let mut guest = Guest::rewritten();
    assert_eq!(guest.call_ii(SLOT_JUMPS, 5).unwrap(), 0);
    assert_eq!((guest.global("threw"), guest.global("threw_value"), guest.sp()), (1, 0, SP));
    // The next call goes on as usual.
    assert_eq!(guest.call_ii(SLOT_DOUBLE, 4).unwrap(), 8);
}

#[test]
fn a_longjmp_the_host_throws_is_caught_the_same_way() {
    let mut guest = Guest::rewritten();
    assert_eq!(guest.call_ii(SLOT_HOST_JUMPS, 5).unwrap(), 0);
    assert_eq!((guest.global("threw"), guest.sp()), (1, SP));
}

#[test]
fn a_trap_passes_the_invokes_by() {
    let mut guest = Guest::rewritten();
    // The slot holds a function of another type: call_indirect traps.
    let err = guest.call_ii(SLOT_RECORD, 1).unwrap_err();
    assert_eq!(err.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::BadSignature), "{err:?}");
    assert_eq!(guest.global("threw"), 0);
}

#[test]
fn check_stack_depth_asks_the_host_once_in_sixteen_calls_and_still_runs() {
    let mut guest = Guest::rewritten();
    let check = guest.instance.get_typed_func::<(), ()>(&mut guest.store, "check_stack_depth").unwrap();
    for _ in 0..40 {
        check.call(&mut guest.store, ()).unwrap();
    }
    assert_eq!(guest.global("checks"), 40);
    assert_eq!(guest.store.data().stack_checks, 2);
}

#[test]
fn a_module_without_check_stack_depth_keeps_its_invokes() {
    let original = module(false);
    // Nothing else to patch (no memset): the module is compiled as it came.
    assert!(matches!(patch(&original), Cow::Borrowed(_)));
}

#[test]
fn a_side_module_catches_the_main_modules_tag_and_calls_its_set_threw() {
    let original = module(false);
    assert!(
        matches!(patch_side(&original, false), Cow::Borrowed(_)),
        "rewritten with the main module's invokes in the host"
    );
    let patched = patch_side(&original, true);
    assert!(matches!(patched, Cow::Owned(_)), "the side module was not rewritten");
    let mut guest = Guest::new(&patched);
    assert_eq!(guest.call_ii(SLOT_DOUBLE, 21).unwrap(), 42);
    assert_eq!(guest.call_ii(SLOT_JUMPS, 5).unwrap(), 0);
    assert_eq!(guest.call_ii(SLOT_HOST_JUMPS, 5).unwrap(), 0);
    assert_eq!(guest.sp(), SP);
    // The main module's setThrew, not the side module's own (never called).
    assert_eq!(guest.store.data().set_threw, [(1, 0), (1, 0)]);
    assert_eq!(guest.global("threw"), 0);
}
