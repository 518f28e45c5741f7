//! Emscripten's `invoke_*` trampolines and its longjmp, in wasm.
//!
//! A function that calls `setjmp` (PostgreSQL's `PG_TRY`, the main loop) makes each of its
//! calls through an `invoke_*` import, which the host answered: ~150 host calls a query on the
//! extended protocol, each a round trip out of wasm and back with wasmtime's bookkeeping, and a
//! longjmp was a host error unwinding to the nearest one. Here each `invoke_*` call site calls a
//! function the patch adds instead, which saves the C stack pointer, calls the table entry
//! inside a `try_table` and, when the tag `LONGJMP_TAG` is caught, puts the stack pointer back
//! and calls `setThrew(1, 0)`, as the host did; `_emscripten_throw_longjmp` becomes `throw`.
//! The imports stay (a module the patch could not rewrite still uses them), the tag is
//! exported so the host throws and catches the same one. A side module (`Plan::side`) gets the
//! same trampolines, catching the main module's tag, which it imports, and calling the main
//! module's `setThrew` (imported too if it did not already).
//!
//! A trap is not an exception: a wasm stack overflow would pass these trampolines by, where the
//! host's turned it into PostgreSQL's `54001` at the nearest `setjmp`. So `check_stack_depth`,
//! which PostgreSQL calls at every level of its recursions, calls the imported
//! `STACK_CHECK` every `STACK_CHECK_EVERY` calls, and the host raises `54001` there when the
//! wasm stack runs low (`interrupts::stack_check`), before it runs out.
//!
//! Adding that import moves every defined function up by one index; everything that names a
//! function (calls, exports, element segments, the start function, names) is renumbered.

use std::collections::HashMap;
use std::convert::Infallible;

use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasm_encoder::{
    BlockType, Catch, CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, Instruction, Module, SectionId, TagKind, TagSection, TagType,
    TypeSection, ValType,
};
use wasmparser::{Parser, TypeRef};

use super::{LONGJMP_TAG, PatchError, STACK_CHECK, STACK_CHECK_EVERY, Scan, zero_skipping_start};

type Result<T> = std::result::Result<T, ReencodeError<Infallible>>;

/// Where a module finds `setThrew`.
#[derive(Clone, Copy)]
enum SetThrew {
    /// The main module's own, by function index.
    Defined(u32),
    /// A side module's import of the main module's, by function index.
    Imported(u32),
    /// A side module that does not import it: the rewrite adds the import.
    Added,
}

/// What the rewrite needs, found in the module; a module without all of it is not rewritten.
pub(super) struct Plan {
    /// Each `invoke_*` import: its function index and type index.
    invokes: Vec<(u32, u32)>,
    throw_longjmp: Option<u32>,
    set_threw: SetThrew,
    /// The main module's (a side module has none: it calls the main module's).
    check_stack_depth: Option<u32>,
    stack_pointer: u32,
    table: u32,
}

impl Plan {
    /// The plan for a side module (loaded by `dlopen`): its trampolines catch the tag it imports
    /// from the main module and call the main module's `setThrew`; the main module's
    /// `check_stack_depth` guards its recursions.
    pub(super) fn side(scan: &Scan<'_>) -> Option<Plan> {
        Plan::found(scan)
    }

    /// The plan for the main module: it defines and exports the tag, `setThrew` and
    /// `check_stack_depth`, and must have `_emscripten_throw_longjmp`.
    pub(super) fn main(scan: &Scan<'_>) -> Option<Plan> {
        let mut plan = Plan::found(scan)?;
        let i32_ = wasmparser::ValType::I32;
        let defined_with = |name: &str, params: &[wasmparser::ValType]| {
            scan.exported_func(name).filter(|&f| {
                f >= scan.imported_funcs
                    && scan.func_type(f).is_some_and(|t| t.params() == params && t.results().is_empty())
            })
        };
        plan.throw_longjmp?;
        // A main module defines it (an import of that name would not be the main module's).
        plan.set_threw = SetThrew::Defined(defined_with("setThrew", &[i32_, i32_])?);
        plan.check_stack_depth = Some(defined_with("check_stack_depth", &[])?);
        Some(plan)
    }

    /// What both kinds need: the invokes, the stack pointer, the table, no tags of its own;
    /// `setThrew` as a side module finds it.
    fn found(scan: &Scan<'_>) -> Option<Plan> {
        if scan.tags {
            return None;
        }
        let i32_ = wasmparser::ValType::I32;
        let (mut funcs, mut globals, mut tables) = (0u32, 0u32, 0u32);
        let (mut invokes, mut throw_longjmp, mut stack_pointer, mut table) = (Vec::new(), None, None, None);
        let mut set_threw = SetThrew::Added;
        for import in &scan.imports {
            let env = import.module == "env";
            match import.ty {
                TypeRef::Func(index) | TypeRef::FuncExact(index) => {
                    let ty = scan.types.get(index as usize)?;
                    if env && import.name.starts_with("invoke_") {
                        // The table index first, at most one result.
                        if ty.params().first() != Some(&i32_) || ty.results().len() > 1 {
                            return None;
                        }
                        invokes.push((funcs, index));
                    } else if env && import.name == "_emscripten_throw_longjmp" {
                        throw_longjmp = Some(funcs);
                    } else if env && import.name == "setThrew" {
                        if ty.params() != [i32_, i32_] || !ty.results().is_empty() {
                            return None;
                        }
                        set_threw = SetThrew::Imported(funcs);
                    }
                    funcs += 1;
                }
                TypeRef::Global(ty) => {
                    if env
                        && import.name == "__stack_pointer"
                        && ty.mutable
                        && ty.content_type == wasmparser::ValType::I32
                    {
                        stack_pointer = Some(globals);
                    }
                    globals += 1;
                }
                TypeRef::Table(ty) => {
                    if env
                        && import.name == "__indirect_function_table"
                        && ty.element_type == wasmparser::RefType::FUNCREF
                    {
                        table = Some(tables);
                    }
                    tables += 1;
                }
                TypeRef::Memory(_) | TypeRef::Tag(_) => {}
            }
        }
        // A module that is not relocatable (0.5+) defines and exports them.
        let exported = |name: &str, kind: wasmparser::ExternalKind| {
            scan.exports.iter().find(|e| e.name == name && e.kind == kind).map(|e| e.index)
        };
        let stack_pointer = stack_pointer.or_else(|| exported("__stack_pointer", wasmparser::ExternalKind::Global));
        let table = table.or_else(|| exported("__indirect_function_table", wasmparser::ExternalKind::Table));
        let void = |f: &u32| scan.func_type(*f).is_some_and(|t| t.params().is_empty() && t.results().is_empty());
        if invokes.is_empty() || throw_longjmp.is_some_and(|f| !void(&f)) {
            return None;
        }
        Some(Plan {
            invokes,
            throw_longjmp,
            set_threw,
            check_stack_depth: None,
            stack_pointer: stack_pointer?,
            table: table?,
        })
    }

    /// How many `invoke_*` imports get a trampoline.
    pub(super) fn invokes(&self) -> usize {
        self.invokes.len()
    }
}

/// The module rewritten (see the module's doc), with `memset` (an index among the defined
/// functions) patched too.
pub(super) fn rewrite(
    wasm: &[u8],
    scan: &Scan<'_>,
    plan: &Plan,
    memset: Option<u32>,
) -> std::result::Result<Vec<u8>, PatchError> {
    let types = u32::try_from(scan.types.len())?;
    let defined = u32::try_from(scan.func_types.len())?;
    // The added function import (the main module's stack check, or a side module's
    // `setThrew`) goes after the other function imports.
    let added = u32::from(plan.check_stack_depth.is_some() || matches!(plan.set_threw, SetThrew::Added));
    let first_trampoline = scan.imported_funcs + added + defined;
    let mut callee_types: Vec<wasmparser::FuncType> = Vec::new();
    let mut trampolines = Vec::new();
    let mut trampoline_of = HashMap::new();
    for (i, &(import, ty_index)) in plan.invokes.iter().enumerate() {
        let ty = &scan.types[ty_index as usize];
        let callee = wasmparser::FuncType::new(ty.params()[1..].iter().copied(), ty.results().iter().copied());
        let at = match callee_types.iter().position(|t| *t == callee) {
            Some(at) => at,
            None => {
                callee_types.push(callee);
                callee_types.len() - 1
            }
        };
        trampolines.push(Trampoline {
            ty: ty_index,
            callee_ty: types + 2 + u32::try_from(at)?,
            params: u32::try_from(ty.params().len())?,
            result: ty.results().first().copied(),
        });
        trampoline_of.insert(import, first_trampoline + u32::try_from(i)?);
    }
    let mut rewriter = Rewriter {
        plan,
        imported_funcs: scan.imported_funcs,
        added,
        void_ty: types,
        callee_types,
        trampolines,
        trampoline_of,
        counter: scan.imported_globals + scan.defined_globals,
        memset,
        check_stack_depth: plan.check_stack_depth.map(|f| f - scan.imported_funcs),
        next_defined: 0,
        // A side module imports the tag and needs no counter.
        tag_done: plan.check_stack_depth.is_none(),
        global_done: plan.check_stack_depth.is_none(),
    };
    let mut module = Module::new();
    rewriter.parse_core_module(&mut module, Parser::new(0), wasm)?;
    Ok(module.finish())
}

/// One `invoke_*` trampoline to add.
struct Trampoline {
    /// The import's type, the trampoline's too.
    ty: u32,
    /// The type of the table entries it calls.
    callee_ty: u32,
    /// Parameters, the table index first.
    params: u32,
    result: Option<wasmparser::ValType>,
}

struct Rewriter<'p> {
    plan: &'p Plan,
    imported_funcs: u32,
    /// Function imports the rewrite adds (0 or 1), after the module's own.
    added: u32,
    /// The added type `() -> ()`: the tag's and the stack check's; `setThrew`'s type follows it,
    /// then the callee types.
    void_ty: u32,
    callee_types: Vec<wasmparser::FuncType>,
    trampolines: Vec<Trampoline>,
    /// Each `invoke_*` import's trampoline, by function index (after renumbering).
    trampoline_of: HashMap<u32, u32>,
    /// The added global counting down `check_stack_depth`'s calls to the next stack check.
    counter: u32,
    memset: Option<u32>,
    /// The main module's, among its defined functions.
    check_stack_depth: Option<u32>,
    /// The defined function whose body comes next.
    next_defined: u32,
    tag_done: bool,
    global_done: bool,
}

impl Rewriter<'_> {
    fn trampoline(&self, t: &Trampoline) -> Result<Function> {
        let sp = t.params;
        let mut f = Function::new([(1, ValType::I32)]);
        let result = t.result.map(ValType::try_from).transpose()?;
        let block = result.map_or(BlockType::Empty, BlockType::Result);
        let set_threw = match self.plan.set_threw {
            SetThrew::Defined(f) => f + self.added,
            SetThrew::Imported(f) => f,
            SetThrew::Added => self.imported_funcs,
        };
        let mut ins = f.instructions();
        ins.global_get(self.plan.stack_pointer)
            .local_set(sp)
            .block(BlockType::Empty)
            .try_table(block, [Catch::One { tag: 0, label: 0 }]);
        for arg in 1..t.params {
            ins.local_get(arg);
        }
        ins.local_get(0)
            .call_indirect(self.plan.table, t.callee_ty)
            .end()
            .return_()
            .end()
            // A longjmp passed here: the C stack as it was, `__THREW__` set, a zero returned.
            .local_get(sp)
            .global_set(self.plan.stack_pointer)
            .i32_const(1)
            .i32_const(0)
            .call(set_threw);
        match result {
            None => {}
            Some(ValType::I64) => {
                ins.i64_const(0);
            }
            Some(ValType::F32) => {
                ins.f32_const(0.0.into());
            }
            Some(ValType::F64) => {
                ins.f64_const(0.0.into());
            }
            Some(_) => {
                ins.i32_const(0);
            }
        }
        ins.end();
        Ok(f)
    }

    /// `f` (a prologue) followed by the body of the defined function `func`.
    fn body_after(&mut self, mut f: Function, func: &wasmparser::FunctionBody<'_>) -> Result<Function> {
        let mut reader = func.get_operators_reader()?;
        while !reader.eof() {
            f.instruction(&self.parse_instruction(&mut reader)?);
        }
        Ok(f)
    }

    fn locals(&mut self, func: &wasmparser::FunctionBody<'_>) -> Result<Vec<(u32, ValType)>> {
        let mut locals = Vec::new();
        for pair in func.get_locals_reader()? {
            let (count, ty) = pair?;
            locals.push((count, self.val_type(ty)?));
        }
        Ok(locals)
    }

    /// Sections the module lacks that must come before `before` (none: the end).
    fn add_missing(&mut self, module: &mut Module, before: Option<SectionId>) {
        let past = |id: SectionId| before.is_none_or(|b| section_order(b) > section_order(id));
        if !self.tag_done && past(SectionId::Tag) {
            let mut tags = TagSection::new();
            tags.tag(TagType { kind: TagKind::Exception, func_type_idx: self.void_ty });
            module.section(&tags);
            self.tag_done = true;
        }
        if !self.global_done && past(SectionId::Global) {
            let mut globals = GlobalSection::new();
            self.add_counter(&mut globals);
            module.section(&globals);
        }
    }

    fn add_counter(&mut self, globals: &mut GlobalSection) {
        let ty = GlobalType { val_type: ValType::I32, mutable: true, shared: false };
        globals.global(ty, &ConstExpr::i32_const(STACK_CHECK_EVERY));
        self.global_done = true;
    }
}

/// Where a section goes in a module (the binary format's order, not the ids').
fn section_order(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

impl Reencode for Rewriter<'_> {
    type Error = Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32> {
        Ok(if func < self.imported_funcs { func } else { func + self.added })
    }

    fn instruction<'a>(&mut self, op: wasmparser::Operator<'a>) -> Result<Instruction<'a>> {
        if let wasmparser::Operator::Call { function_index } = op {
            if Some(function_index) == self.plan.throw_longjmp {
                return Ok(Instruction::Throw(0));
            }
            if let Some(&trampoline) = self.trampoline_of.get(&function_index) {
                return Ok(Instruction::Call(trampoline));
            }
        }
        utils::instruction(self, op)
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_type_section(self, types, section)?;
        types.ty().function([], []);
        types.ty().function([ValType::I32, ValType::I32], []);
        for ty in &self.callee_types {
            types.ty().func_type(&ty.clone().try_into()?);
        }
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_import_section(self, imports, section)?;
        if self.plan.check_stack_depth.is_some() {
            imports.import("env", STACK_CHECK, EntityType::Function(self.void_ty));
        } else {
            if matches!(self.plan.set_threw, SetThrew::Added) {
                imports.import("env", "setThrew", EntityType::Function(self.void_ty + 1));
            }
            let tag = TagType { kind: TagKind::Exception, func_type_idx: self.void_ty };
            imports.import("env", LONGJMP_TAG, EntityType::Tag(tag));
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_function_section(self, functions, section)?;
        for t in &self.trampolines {
            functions.function(t.ty);
        }
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<()> {
        self.add_missing(module, before);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_global_section(self, globals, section)?;
        self.add_counter(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<()> {
        utils::parse_export_section(self, exports, section)?;
        if self.plan.check_stack_depth.is_some() {
            exports.export(LONGJMP_TAG, ExportKind::Tag, 0);
        }
        Ok(())
    }

    fn parse_function_body(&mut self, code: &mut CodeSection, func: wasmparser::FunctionBody<'_>) -> Result<()> {
        let index = self.next_defined;
        self.next_defined += 1;
        if Some(index) == self.memset {
            let locals = self.locals(&func)?;
            let f = self.body_after(zero_skipping_start(locals), &func)?;
            code.function(&f);
        } else if Some(index) == self.check_stack_depth {
            let locals = self.locals(&func)?;
            let mut f = Function::new(locals);
            f.instructions()
                .global_get(self.counter)
                .i32_eqz()
                .if_(BlockType::Empty)
                .i32_const(STACK_CHECK_EVERY)
                .global_set(self.counter)
                .call(self.imported_funcs)
                .else_()
                .global_get(self.counter)
                .i32_const(1)
                .i32_sub()
                .global_set(self.counter)
                .end();
            let f = self.body_after(f, &func)?;
            code.function(&f);
        } else {
            utils::parse_function_body(self, code, func)?;
        }
        Ok(())
    }

    fn parse_code_section(&mut self, code: &mut CodeSection, section: wasmparser::CodeSectionReader<'_>) -> Result<()> {
        utils::parse_code_section(self, code, section)?;
        for t in &self.trampolines {
            code.function(&self.trampoline(t)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
