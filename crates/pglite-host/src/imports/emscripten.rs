//! The rest of `env`: time, heap growth, `mmap` emulation, memcpy, and the ways the guest ends
//! (abort, assert, exit), plus the handful of JS hooks that are constants outside a browser.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::error::{Abort, GuestExit};
use super::syscalls::syscall;
use super::{Ctx, split};
use crate::errno::Errno;

type C<'a> = Caller<'a, Ctx>;

const MAX_HEAP: u64 = 2 << 30;
const WASM_PAGE: u64 = 65536;

pub(super) fn add_to_linker(linker: &mut Linker<Ctx>, module: &wasmtime::Module) -> wasmtime::Result<()> {
    linker.func_wrap("env", "emscripten_date_now", || -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    })?;
    linker.func_wrap("env", "emscripten_get_now", |c: C<'_>| -> f64 {
        c.data().started.elapsed().as_secs_f64() * 1000.0
    })?;
    linker.func_wrap(
        "env",
        "_emscripten_memcpy_js",
        |mut c: C<'_>, dst: i32, src: i32, n: i32| -> wasmtime::Result<()> {
            let (g, _) = split(&mut c);
            let (dst, src, n) = (dst as u32 as usize, src as u32 as usize, n as u32 as usize);
            if src.checked_add(n).is_none_or(|e| e > g.0.len()) || dst.checked_add(n).is_none_or(|e| e > g.0.len()) {
                return Err(wasmtime::Error::msg("memcpy out of bounds"));
            }
            g.0.copy_within(src..src + n, dst);
            Ok(())
        },
    )?;
    linker.func_wrap("env", "emscripten_resize_heap", |mut c: C<'_>, requested: i32| -> i32 {
        let memory = c.data().shared().memory;
        let requested = requested as u32 as u64;
        let old = memory.data_size(&c) as u64;
        if requested > MAX_HEAP {
            return 0;
        }
        // As the JS runtime: over-allocate by up to 20 % (at most 96 MiB past the request),
        // cutting the surplus down until the growth succeeds.
        for cut in 1..=4u64 {
            let overgrown = (old + old / (5 * cut)).min(requested + 96 * 1024 * 1024);
            let want = requested.max(overgrown).min(MAX_HEAP).div_ceil(WASM_PAGE) * WASM_PAGE;
            let pages = want.saturating_sub(old) / WASM_PAGE;
            if pages == 0 || memory.grow(&mut c, pages).is_ok() {
                return 1;
            }
        }
        0
    })?;
    linker.func_wrap(
        "env",
        "_mmap_js",
        |mut c: C<'_>,
         len: i32,
         _prot: i32,
         _flags: i32,
         fd: i32,
         off: i64,
         allocated: i32,
         addr: i32|
         -> wasmtime::Result<i32> {
            let memalign = c.data().exports().memalign;
            let ptr = memalign.call(&mut c, (65536, len))?;
            if ptr == 0 {
                return Ok(Errno::NOMEM.0);
            }
            Ok(syscall(&mut c, |g, ctx| {
                let buf = g.slice_mut(ptr as u32, len as u32)?;
                ctx.vfs.read_for_mmap(fd, buf, off as u64)?;
                g.put_i32(allocated as u32, 1)?;
                g.put_u32(addr as u32, ptr as u32)?;
                Ok(0)
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "_munmap_js",
        |mut c: C<'_>, addr: i32, len: i32, prot: i32, flags: i32, fd: i32, off: i64| {
            syscall(&mut c, |g, ctx| {
                // PROT_WRITE and not MAP_PRIVATE: write the mapping back, as the JS `doMsync`.
                if prot & 2 != 0 && flags & 2 == 0 {
                    ctx.vfs.write_for_munmap(fd, g.slice(addr as u32, len as u32)?, off as u64)?;
                }
                Ok(0)
            })
        },
    )?;
    // libc's own time zone is UTC; PostgreSQL uses its bundled tz database regardless.
    linker.func_wrap(
        "env",
        "_tzset_js",
        |mut c: C<'_>, timezone: i32, daylight: i32, std_name: i32, dst_name: i32| {
            syscall(&mut c, |g, _| {
                g.put_i32(timezone as u32, 0)?;
                g.put_i32(daylight as u32, 0)?;
                g.write(std_name as u32, b"UTC\0")?;
                g.write(dst_name as u32, b"UTC\0")?;
                Ok(0)
            });
        },
    )?;
    // `struct tm` in UTC; 0.5+ return an int (0) where earlier releases return nothing.
    for import in module.imports().filter(|i| matches!(i.name(), "_localtime_js" | "_gmtime_js")) {
        let wasmtime::ExternType::Func(ty) = import.ty() else { continue };
        linker.func_new("env", import.name(), ty, |mut c, params, results| {
            let (time, tm) = (params[0].unwrap_i64(), params[1].unwrap_i32());
            syscall(&mut c, |g, _| {
                for (i, v) in broken_down_utc(time).iter().enumerate() {
                    g.put_i32(tm as u32 + 4 * i as u32, *v)?;
                }
                Ok(0)
            });
            if let Some(result) = results.first_mut() {
                *result = wasmtime::Val::I32(0);
            }
            Ok(())
        })?;
    }
    // mktime in UTC: normalises the fields, fills in the weekday and day of the year.
    linker.func_wrap("env", "_mktime_js", |mut c: C<'_>, tm: i32| -> i64 {
        let (g, _) = split(&mut c);
        let mut fields = [0i64; 6];
        for (i, field) in fields.iter_mut().enumerate() {
            match g.i32(tm as u32 + 4 * i as u32) {
                Ok(v) => *field = i64::from(v),
                Err(_) => return -1,
            }
        }
        let [sec, min, hour, mday, mon, year] = fields;
        let (year, mon) = (year + 1900 + mon.div_euclid(12), mon.rem_euclid(12));
        let time = days_from_civil(year, mon + 1, 1) * 86_400 + (mday - 1) * 86_400 + hour * 3600 + min * 60 + sec;
        let (mut g, _) = split(&mut c);
        for (i, v) in broken_down_utc(time).iter().enumerate().take(9) {
            if g.put_i32(tm as u32 + 4 * i as u32, *v).is_err() {
                return -1;
            }
        }
        time
    })?;
    linker.func_wrap("env", "emscripten_get_heap_max", || MAX_HEAP as u32 as i32)?;
    linker.func_wrap("env", "_abort_js", || -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Abort("abort()".into())))
    })?;
    linker.func_wrap(
        "env",
        "__assert_fail",
        |mut c: C<'_>, cond: i32, file: i32, line: i32, _func: i32| -> wasmtime::Result<()> {
            let (g, _) = split(&mut c);
            let msg = format!(
                "assertion `{}` failed at {}:{line}",
                g.cstr(cond as u32).unwrap_or_default(),
                g.cstr(file as u32).unwrap_or_default()
            );
            Err(wasmtime::Error::new(Abort(msg)))
        },
    )?;
    for name in ["exit", "emscripten_force_exit"] {
        linker.func_wrap("env", name, |_: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(GuestExit(code)))
        })?;
    }
    linker.func_wrap("env", "__call_sighandler", |mut c: C<'_>, fp: i32, sig: i32| -> wasmtime::Result<()> {
        let table = c.data().shared().table;
        let func = table
            .get(&mut c, fp as u32 as u64)
            .and_then(|r| r.as_func().flatten().copied())
            .ok_or_else(|| wasmtime::Error::msg("signal handler is not a function"))?;
        func.typed::<i32, ()>(&c)?.call(&mut c, sig)
    })?;
    linker.func_wrap("env", "emscripten_asm_const_int", |_: C<'_>, _code: i32, _sig: i32, _argbuf: i32| 0i32)?;
    linker.func_wrap("env", "is_web_env", || 0i32)?;
    linker.func_wrap("env", "_emscripten_system", |_: C<'_>, cmd: i32| if cmd == 0 { 0i32 } else { 127 << 8 })?;
    linker.func_wrap("env", "_setitimer_js", |_: C<'_>, _which: i32, _ms: f64| 0i32)?;
    linker.func_wrap("env", "_emscripten_runtime_keepalive_clear", || {})?;
    linker.func_wrap("env", "emscripten_set_main_loop", |_: C<'_>, _f: i32, _fps: i32, _inf: i32| {})?;
    linker.func_wrap("env", "getaddrinfo", getaddrinfo)?;
    Ok(())
}

/// `getaddrinfo` for numeric addresses (and `localhost`) only, as the JS runtime without a
/// resolver: there is no network inside the guest, but PostgreSQL 18+ parses the addresses of
/// `pg_hba.conf`'s host lines with it and refuses to start when that fails. Only text is
/// parsed (`core::net`'s address types; nothing here opens a socket or resolves a name).
fn getaddrinfo(mut c: C<'_>, node: i32, service: i32, hints: i32, out: i32) -> wasmtime::Result<i32> {
    const EAI_NONAME: i32 = -2;
    const EAI_FAIL: i32 = -4;
    let parsed = {
        let (g, _) = split(&mut c);
        let host = if node == 0 { None } else { g.cstr(node as u32).ok() };
        let port = if service == 0 { Some(0) } else { g.cstr(service as u32).ok().and_then(|s| s.parse::<u16>().ok()) };
        let family = if hints == 0 { 0 } else { g.i32(hints as u32 + 4).unwrap_or(0) };
        let socktype = if hints == 0 { 0 } else { g.i32(hints as u32 + 8).unwrap_or(0) };
        let protocol = if hints == 0 { 0 } else { g.i32(hints as u32 + 12).unwrap_or(0) };
        let addr = match host.as_deref() {
            None | Some("localhost") => Some(core::net::IpAddr::from([127, 0, 0, 1])),
            Some(text) => text.parse::<core::net::IpAddr>().ok(),
        };
        (addr, port, family, socktype, protocol)
    };
    let (Some(addr), Some(port), family, socktype, protocol) = parsed else {
        return Ok(EAI_NONAME);
    };
    // AF_INET 2, AF_INET6 10 (Emscripten's values); a family asked for must match.
    let (af, sockaddr) = match addr {
        core::net::IpAddr::V4(v4) => {
            let mut sa = vec![0u8; 16];
            sa[0..2].copy_from_slice(&2u16.to_le_bytes());
            sa[2..4].copy_from_slice(&port.to_be_bytes());
            sa[4..8].copy_from_slice(&v4.octets());
            (2, sa)
        }
        core::net::IpAddr::V6(v6) => {
            let mut sa = vec![0u8; 28];
            sa[0..2].copy_from_slice(&10u16.to_le_bytes());
            sa[2..4].copy_from_slice(&port.to_be_bytes());
            sa[8..24].copy_from_slice(&v6.octets());
            (10, sa)
        }
    };
    if family != 0 && family != af {
        return Ok(EAI_NONAME);
    }
    let malloc = c.data().exports().malloc;
    let (sa_ptr, ai_ptr) = (malloc.call(&mut c, sockaddr.len() as i32)?, malloc.call(&mut c, 32)?);
    if sa_ptr == 0 || ai_ptr == 0 {
        return Ok(EAI_FAIL);
    }
    let (mut g, _) = split(&mut c);
    // struct addrinfo: flags, family, socktype, protocol, addrlen, addr, canonname, next.
    let fields = [0, af, socktype, protocol, sockaddr.len() as i32, sa_ptr, 0, 0];
    let written = g
        .write(sa_ptr as u32, &sockaddr)
        .and_then(|()| fields.iter().enumerate().try_for_each(|(i, v)| g.put_i32(ai_ptr as u32 + 4 * i as u32, *v)));
    Ok(match written.and_then(|()| g.put_i32(out as u32, ai_ptr)) {
        Ok(()) => 0,
        Err(_) => EAI_FAIL,
    })
}

/// Days from 1970-01-01 to the civil date `year`-`month`-`day` (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `struct tm` fields (sec, min, hour, mday, mon, year-1900, wday, yday, isdst, gmtoff) in UTC.
fn broken_down_utc(time: i64) -> [i32; 10] {
    let days = time.div_euclid(86_400);
    let secs = time.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let mday = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUMULATIVE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUMULATIVE[(month - 1) as usize] + mday - 1 + i64::from(leap && month > 2);
    let wday = (days + 4).rem_euclid(7);
    [
        (secs % 60) as i32,
        (secs / 60 % 60) as i32,
        (secs / 3600) as i32,
        mday as i32,
        (month - 1) as i32,
        (year - 1900) as i32,
        wday as i32,
        yday as i32,
        0,
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::broken_down_utc;

    #[test]
    fn utc_breakdown_matches_known_dates() {
        // 2024-02-29 12:34:56 UTC, a Thursday, day 59 of a leap year.
        assert_eq!(broken_down_utc(1_709_210_096), [56, 34, 12, 29, 1, 124, 4, 59, 0, 0]);
        // The epoch: Thursday 1970-01-01.
        assert_eq!(broken_down_utc(0), [0, 0, 0, 1, 0, 70, 4, 0, 0, 0]);
        // 1969-12-31 23:59:59, before the epoch.
        assert_eq!(broken_down_utc(-1), [59, 59, 23, 31, 11, 69, 3, 364, 0, 0]);
    }

    #[test]
    fn civil_days_invert_the_breakdown() {
        for time in [0i64, 1_709_210_096, -86_400 * 400, 4_102_444_800] {
            let tm = broken_down_utc(time);
            let days = super::days_from_civil(i64::from(tm[5]) + 1900, i64::from(tm[4]) + 1, i64::from(tm[3]));
            assert_eq!(days * 86_400 + i64::from(tm[2]) * 3600 + i64::from(tm[1]) * 60 + i64::from(tm[0]), time);
        }
    }
}
