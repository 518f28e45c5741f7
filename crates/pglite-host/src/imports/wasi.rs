//! `wasi_snapshot_preview1`, bound to the module's *imported* memory (which is why
//! wasmtime-wasi cannot be used). These return a positive errno.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::error::GuestExit;
use super::{Ctx, split};
use crate::errno::SysResult;
use crate::mem::Guest;

type C<'a> = Caller<'a, Ctx>;

/// The environment the Emscripten runtime gives a program under Node (0.2 and 0.3 read
/// their configuration from argv instead; later releases' is in [`Ctx::environ`]).
pub(crate) const ENVIRON: &[&str] = &[
    "USER=web_user",
    "LOGNAME=web_user",
    "PATH=/",
    "PWD=/",
    "HOME=/home/web_user",
    "LANG=C.UTF-8",
    "_=./this.program",
];

fn wasi(caller: &mut C<'_>, body: impl FnOnce(&mut Guest<'_>, &mut Ctx) -> SysResult<()>) -> i32 {
    let (mut guest, ctx) = split(caller);
    match body(&mut guest, ctx) {
        Ok(()) => 0,
        Err(e) => e.0,
    }
}

fn read_iovs(g: &mut Guest<'_>, ctx: &mut Ctx, fd: i32, iov: i32, n: i32, offset: Option<u64>) -> SysResult<u32> {
    let mut total: u64 = 0;
    for (ptr, len) in g.iovecs(iov as u32, n as u32)? {
        if len == 0 {
            continue;
        }
        let at = offset.map(|o| o + total);
        let got = ctx.vfs.read(fd, g.slice_mut(ptr, len)?, at);
        let got = match got {
            Ok(got) => got,
            // Data already read is returned; the error shows up on the next call.
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        };
        total += got as u64;
        if got < len as usize {
            break;
        }
    }
    Ok(total as u32)
}

fn write_iovs(g: &mut Guest<'_>, ctx: &mut Ctx, fd: i32, iov: i32, n: i32, offset: Option<u64>) -> SysResult<u32> {
    let mut total: u64 = 0;
    for (ptr, len) in g.iovecs(iov as u32, n as u32)? {
        let at = offset.map(|o| o + total);
        total += ctx.vfs.write(fd, g.slice(ptr, len)?, at)? as u64;
    }
    Ok(total as u32)
}

pub(super) fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    linker.func_wrap(M, "fd_read", |mut c: C<'_>, fd: i32, iov: i32, n: i32, out: i32| {
        wasi(&mut c, |g, ctx| {
            let total = read_iovs(g, ctx, fd, iov, n, None)?;
            g.put_u32(out as u32, total)
        })
    })?;
    linker.func_wrap(M, "fd_pread", |mut c: C<'_>, fd: i32, iov: i32, n: i32, off: i64, out: i32| {
        wasi(&mut c, |g, ctx| {
            let total = read_iovs(g, ctx, fd, iov, n, Some(off as u64))?;
            g.put_u32(out as u32, total)
        })
    })?;
    linker.func_wrap(M, "fd_write", |mut c: C<'_>, fd: i32, iov: i32, n: i32, out: i32| {
        wasi(&mut c, |g, ctx| {
            let total = write_iovs(g, ctx, fd, iov, n, None)?;
            g.put_u32(out as u32, total)
        })
    })?;
    linker.func_wrap(M, "fd_pwrite", |mut c: C<'_>, fd: i32, iov: i32, n: i32, off: i64, out: i32| {
        wasi(&mut c, |g, ctx| {
            let total = write_iovs(g, ctx, fd, iov, n, Some(off as u64))?;
            g.put_u32(out as u32, total)
        })
    })?;
    linker.func_wrap(M, "fd_seek", |mut c: C<'_>, fd: i32, off: i64, whence: i32, out: i32| {
        wasi(&mut c, |g, ctx| {
            let pos = ctx.vfs.seek(fd, off, whence)?;
            g.put_u64(out as u32, pos)
        })
    })?;
    linker.func_wrap(M, "fd_close", |mut c: C<'_>, fd: i32| wasi(&mut c, |_, ctx| ctx.vfs.close(fd)))?;
    linker.func_wrap(M, "fd_sync", |mut c: C<'_>, fd: i32| wasi(&mut c, |_, ctx| ctx.vfs.sync(fd)))?;
    linker.func_wrap(M, "fd_fdstat_get", |mut c: C<'_>, fd: i32, buf: i32| {
        wasi(&mut c, |g, ctx| {
            let mut stat = [0u8; 24];
            stat[0] = ctx.vfs.filetype(fd)?;
            g.write(buf as u32, &stat)
        })
    })?;
    linker.func_wrap(M, "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| {
        wasi(&mut c, |g, ctx| {
            g.put_u32(count as u32, ctx.environ.len() as u32)?;
            g.put_u32(size as u32, ctx.environ.iter().map(|e| e.len() as u32 + 1).sum())
        })
    })?;
    linker.func_wrap(M, "environ_get", |mut c: C<'_>, ptrs: i32, buf: i32| {
        wasi(&mut c, |g, ctx| {
            let mut at = buf as u32;
            for (i, var) in ctx.environ.iter().enumerate() {
                g.put_u32(ptrs as u32 + 4 * i as u32, at)?;
                g.write(at, var.as_bytes())?;
                g.write(at + var.len() as u32, &[0])?;
                at += var.len() as u32 + 1;
            }
            Ok(())
        })
    })?;
    linker.func_wrap(M, "random_get", |mut c: C<'_>, buf: i32, len: i32| {
        wasi(&mut c, |g, _| {
            let bytes = g.slice_mut(buf as u32, len as u32)?;
            rand::fill(bytes);
            Ok(())
        })
    })?;
    linker.func_wrap(M, "clock_time_get", |mut c: C<'_>, id: i32, _precision: i64, out: i32| {
        wasi(&mut c, |g, ctx| {
            let ns = if id == 0 {
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            } else {
                ctx.started.elapsed().as_nanos() as u64
            };
            g.put_u64(out as u32, ns)
        })
    })?;
    linker.func_wrap(M, "proc_exit", |_: C<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(GuestExit(code)))
    })?;
    Ok(())
}
