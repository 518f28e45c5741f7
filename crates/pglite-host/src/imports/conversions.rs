//! The functions of PostgreSQL's encoding-conversion modules, which the host stands in for
//! (`dylink.rs` answers their `dlopen`): the magic block and function-info records every
//! module has, and one conversion function for every name, which converts by the encodings it
//! is called with (`encodings.rs`) and raises PostgreSQL's own errors through `errstart` /
//! `errfinish`, as C code would.

use wasmtime::{Caller, Func, FuncType, Val, ValType};

use super::{Ctx, split};
use crate::encodings;

/// `ERROR` as an elog level (PostgreSQL 16–19).
const ERROR: i32 = 21;

/// The function `symbol` of a conversion module: `Pg_magic_func`, a `pg_finfo_*` record, or a
/// conversion function (`utf8_to_iso8859_1`, ...); `None` for anything else (`_PG_init`).
pub(super) fn function(c: &mut Caller<'_, Ctx>, symbol: &str) -> wasmtime::Result<Option<Func>> {
    if symbol == "Pg_magic_func" {
        let block = magic_block(c)?;
        return Ok(Some(Func::wrap(&mut *c, move || block)));
    }
    if symbol.starts_with("pg_finfo_") {
        // Pg_finfo_record { int api_version = 1 }.
        let record = static_bytes(c, &1i32.to_le_bytes())?;
        return Ok(Some(Func::wrap(&mut *c, move || record)));
    }
    if !symbol.contains("_to_") {
        return Ok(None);
    }
    let datum = if c.data().datum_size == 8 { ValType::I64 } else { ValType::I32 };
    let ty = FuncType::new(c.engine(), [ValType::I32], [datum]);
    Ok(Some(Func::new(&mut *c, ty, |mut caller, params, results| {
        let fcinfo = params.first().and_then(Val::i32).unwrap_or(0) as u32;
        let consumed = convert(&mut caller, fcinfo)?;
        results[0] = if caller.data().datum_size == 8 { Val::I64(i64::from(consumed)) } else { Val::I32(consumed) };
        Ok(())
    })))
}

/// Copies `bytes` into memory that lives as long as the instance; returns its address.
fn static_bytes(c: &mut Caller<'_, Ctx>, bytes: &[u8]) -> wasmtime::Result<i32> {
    let malloc = c.data().exports().malloc;
    let ptr = malloc.call(&mut *c, bytes.len() as i32)?;
    let (mut g, _) = split(c);
    g.write(ptr as u32, bytes).map_err(|e| wasmtime::Error::msg(format!("writing a static block: {e:?}")))?;
    Ok(ptr)
}

/// The build's `Pg_magic_struct`: length, major version, FUNC_MAX_ARGS, INDEX_MAX_KEYS,
/// NAMEDATALEN, FLOAT8PASSBYVAL (false on 32-bit wasm until PostgreSQL 19's 8-byte Datum),
/// `FMGR_ABI_EXTRA`, and from PostgreSQL 18 on the module's name and version (NULL here), as
/// PGlite 0.5's and 0.6's own modules have it.
fn magic_block(c: &mut Caller<'_, Ctx>) -> wasmtime::Result<i32> {
    let with_name = c.data().pg_major >= 18;
    let len = if with_name { 64 } else { 56 };
    let mut block = Vec::with_capacity(len as usize);
    let float8_by_value = i32::from(c.data().datum_size == 8);
    for value in [len, c.data().pg_major as i32 * 100, 100, 32, 64, float8_by_value] {
        block.extend_from_slice(&value.to_le_bytes());
    }
    let mut abi = [0u8; 32];
    abi[..10].copy_from_slice(b"PostgreSQL");
    block.extend_from_slice(&abi);
    if with_name {
        block.extend_from_slice(&[0; 8]);
    }
    static_bytes(c, &block)
}

/// One call of a conversion function: `(int src_encoding, int dest_encoding, cstring src,
/// cstring dest, int len, bool noError)`, returning how many source bytes it converted.
fn convert(caller: &mut Caller<'_, Ctx>, fcinfo: u32) -> wasmtime::Result<i32> {
    let datum = caller.data().datum_size;
    // FunctionCallInfoBaseData: four words and a short before the NullableDatum arguments,
    // each a Datum and its null flag padded to two Datums.
    let header = (4 * 4 + 1 + 1 + 2u32).div_ceil(datum) * datum;
    let arg = |n: u32| header + n * 2 * datum;
    let fault = |e| wasmtime::Error::msg(format!("conversion arguments out of bounds: {e:?}"));
    let (from, to, src, dest, len, no_error) = {
        let (g, _) = split(caller);
        (
            g.i32(fcinfo + arg(0)).map_err(fault)?,
            g.i32(fcinfo + arg(1)).map_err(fault)?,
            g.u32(fcinfo + arg(2)).map_err(fault)?,
            g.u32(fcinfo + arg(3)).map_err(fault)?,
            g.i32(fcinfo + arg(4)).map_err(fault)?,
            g.slice(fcinfo + arg(5), 1).map_err(fault)?[0] != 0,
        )
    };
    let converted = {
        let (g, _) = split(caller);
        let input = g.slice(src, len.max(0) as u32).map_err(fault)?;
        encodings::convert(from, to, input)
    };
    {
        let (mut g, _) = split(caller);
        g.write(dest, &converted.out).map_err(fault)?;
        g.write(dest + converted.out.len() as u32, &[0]).map_err(fault)?;
    }
    match converted.error {
        Some(error) if !no_error => raise(caller, error.sqlstate(), &error.message()),
        _ => Ok(converted.consumed as i32),
    }
}

/// PostgreSQL's `MAKE_SQLSTATE`.
fn sqlstate_code(sqlstate: &str) -> i32 {
    sqlstate.bytes().enumerate().map(|(i, ch)| (i32::from(ch.wrapping_sub(b'0')) & 0x3f) << (6 * i)).sum()
}

/// Raises `ERROR sqlstate: message` in the guest as `ereport` would; returns the longjmp that
/// unwinds to PostgreSQL's error handling.
fn raise(caller: &mut Caller<'_, Ctx>, sqlstate: &str, message: &str) -> wasmtime::Result<i32> {
    let func = |caller: &Caller<'_, Ctx>, name: &str| {
        caller
            .data()
            .dylink
            .main_funcs
            .get(name)
            .copied()
            .ok_or_else(|| wasmtime::Error::msg(format!("the module does not export {name}")))
    };
    let (errstart, errcode, errmsg, errfinish) =
        (func(caller, "errstart")?, func(caller, "errcode")?, func(caller, "errmsg")?, func(caller, "errfinish")?);
    let exports = caller.data().exports();
    let mut text = message.as_bytes().to_vec();
    text.push(0);
    let text_ptr = exports.malloc.call(&mut *caller, text.len() as i32)?;
    let fmt_ptr = exports.malloc.call(&mut *caller, 3)?;
    let args_ptr = exports.malloc.call(&mut *caller, 4)?;
    {
        let (mut g, _) = split(caller);
        let fault = |e| wasmtime::Error::msg(format!("writing an error message: {e:?}"));
        g.write(text_ptr as u32, &text).map_err(fault)?;
        g.write(fmt_ptr as u32, b"%s\0").map_err(fault)?;
        g.put_i32(args_ptr as u32, text_ptr).map_err(fault)?;
    }
    let mut out = [Val::I32(0)];
    errstart.call(&mut *caller, &[Val::I32(ERROR), Val::I32(0)], &mut out)?;
    errcode.call(&mut *caller, &[Val::I32(sqlstate_code(sqlstate))], &mut out)?;
    // errmsg copies the formatted text into the error being built.
    errmsg.call(&mut *caller, &[Val::I32(fmt_ptr), Val::I32(args_ptr)], &mut out)?;
    for ptr in [text_ptr, fmt_ptr, args_ptr] {
        exports.free.call(&mut *caller, ptr)?;
    }
    errfinish.call(&mut *caller, &[Val::I32(0), Val::I32(0), Val::I32(0)], &mut [])?;
    Err(wasmtime::Error::msg(format!("errfinish returned after ERROR {sqlstate}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlstates_pack_as_postgresql_does() {
        // MAKE_SQLSTATE('2','2','0','2','1') and ('2','2','P','0','5').
        assert_eq!(super::sqlstate_code("22021"), 2 | 2 << 6 | 2 << 18 | 1 << 24);
        assert_eq!(super::sqlstate_code("22P05"), 2 | 2 << 6 | 32 << 12 | 5 << 24);
    }
}
