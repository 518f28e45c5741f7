//! `env.__syscall_*`: POSIX calls over the guest file system. They return `-errno`.

use wasmtime::{Caller, Linker};

use super::{Ctx, split};
use crate::errno::{Errno, SysResult};
use crate::mem::Guest;
use crate::vfs::{AT_FDCWD, DIRENT_SIZE};

const AT_SYMLINK_NOFOLLOW: i32 = 0x100;
const AT_REMOVEDIR: i32 = 0x200;
const AT_EMPTY_PATH: i32 = 0x1000;

type C<'a> = Caller<'a, Ctx>;

/// Runs a syscall body and turns its error into the negated errno the guest expects.
pub(super) fn syscall(
    caller: &mut Caller<'_, Ctx>,
    body: impl FnOnce(&mut Guest<'_>, &mut Ctx) -> SysResult<i32>,
) -> i32 {
    let (mut guest, ctx) = split(caller);
    body(&mut guest, ctx).unwrap_or_else(|e| e.neg())
}

pub(super) fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "__syscall_openat", |mut c: C<'_>, dirfd: i32, path: i32, flags: i32, va: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(dirfd, &g.cstr(path as u32)?)?;
            let mode = if va != 0 { g.u32(va as u32)? } else { 0 };
            ctx.vfs.open(guest, flags, mode)
        })
    })?;
    linker.func_wrap("env", "__syscall_fstat64", |mut c: C<'_>, fd: i32, buf: i32| {
        syscall(&mut c, |g, ctx| {
            let st = ctx.vfs.stat_fd(fd)?;
            g.write(buf as u32, &st.to_bytes())?;
            Ok(0)
        })
    })?;
    for (name, follow) in [("__syscall_stat64", true), ("__syscall_lstat64", false)] {
        linker.func_wrap("env", name, move |mut c: C<'_>, path: i32, buf: i32| {
            syscall(&mut c, |g, ctx| {
                let guest = ctx.vfs.resolve(AT_FDCWD, &g.cstr(path as u32)?)?;
                let st = ctx.vfs.stat_path(&guest, follow)?;
                g.write(buf as u32, &st.to_bytes())?;
                Ok(0)
            })
        })?;
    }
    linker.func_wrap("env", "__syscall_newfstatat", |mut c: C<'_>, dirfd: i32, path: i32, buf: i32, flags: i32| {
        syscall(&mut c, |g, ctx| {
            let p = g.cstr(path as u32)?;
            let st = if p.is_empty() && flags & AT_EMPTY_PATH != 0 {
                ctx.vfs.stat_fd(dirfd)?
            } else {
                let guest = ctx.vfs.resolve(dirfd, &p)?;
                ctx.vfs.stat_path(&guest, flags & AT_SYMLINK_NOFOLLOW == 0)?
            };
            g.write(buf as u32, &st.to_bytes())?;
            Ok(0)
        })
    })?;
    linker.func_wrap(
        "env",
        "__syscall_faccessat",
        |mut c: C<'_>, dirfd: i32, path: i32, amode: i32, _flags: i32| {
            syscall(&mut c, |g, ctx| {
                if amode & !7 != 0 {
                    return Err(Errno::INVAL);
                }
                let guest = ctx.vfs.resolve(dirfd, &g.cstr(path as u32)?)?;
                ctx.vfs.access(&guest, amode)?;
                Ok(0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_mkdirat", |mut c: C<'_>, dirfd: i32, path: i32, _mode: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(dirfd, &g.cstr(path as u32)?)?;
            ctx.vfs.mkdir(&guest)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_unlinkat", |mut c: C<'_>, dirfd: i32, path: i32, flags: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(dirfd, &g.cstr(path as u32)?)?;
            ctx.vfs.unlink(&guest, flags & AT_REMOVEDIR != 0)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_rmdir", |mut c: C<'_>, path: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(AT_FDCWD, &g.cstr(path as u32)?)?;
            ctx.vfs.unlink(&guest, true)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_renameat", |mut c: C<'_>, olddir: i32, old: i32, newdir: i32, new: i32| {
        syscall(&mut c, |g, ctx| {
            let from = ctx.vfs.resolve(olddir, &g.cstr(old as u32)?)?;
            let to = ctx.vfs.resolve(newdir, &g.cstr(new as u32)?)?;
            ctx.vfs.rename(&from, &to)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_chdir", |mut c: C<'_>, path: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(AT_FDCWD, &g.cstr(path as u32)?)?;
            ctx.vfs.chdir(guest)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_chmod", |_: C<'_>, _path: i32, _mode: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_getcwd", |mut c: C<'_>, buf: i32, size: i32| {
        syscall(&mut c, |g, ctx| {
            let mut cwd = ctx.vfs.cwd().as_bytes().to_vec();
            cwd.push(0);
            if (size as u32 as usize) < cwd.len() {
                return Err(Errno::RANGE);
            }
            g.write(buf as u32, &cwd)?;
            Ok(cwd.len() as i32)
        })
    })?;
    linker.func_wrap("env", "__syscall_getdents64", |mut c: C<'_>, fd: i32, dirp: i32, count: i32| {
        syscall(&mut c, |g, ctx| {
            let max = (count as u32 as u64 / DIRENT_SIZE) as usize;
            if max == 0 {
                return Err(Errno::INVAL);
            }
            let entries = ctx.vfs.dirents(fd, max)?;
            let mut at = dirp as u32;
            for (ino, off, ty, name) in &entries {
                let mut rec = [0u8; DIRENT_SIZE as usize];
                rec[0..8].copy_from_slice(&ino.to_le_bytes());
                rec[8..16].copy_from_slice(&off.to_le_bytes());
                rec[16..18].copy_from_slice(&(DIRENT_SIZE as u16).to_le_bytes());
                rec[18] = *ty;
                let n = name.len().min(255);
                rec[19..19 + n].copy_from_slice(&name.as_bytes()[..n]);
                g.write(at, &rec)?;
                at += DIRENT_SIZE as u32;
            }
            Ok((entries.len() as u64 * DIRENT_SIZE) as i32)
        })
    })?;
    linker.func_wrap("env", "__syscall_fcntl64", |mut c: C<'_>, fd: i32, cmd: i32, va: i32| {
        syscall(&mut c, |g, ctx| {
            let arg = if va != 0 { g.i32(va as u32)? } else { 0 };
            match cmd {
                // F_DUPFD, F_DUPFD_CLOEXEC
                0 | 1030 => ctx.vfs.dup(fd, arg),
                // F_GETFD, F_SETFD, F_SETLK, F_SETLKW: single process, locks always granted.
                1 | 2 | 13 | 14 => ctx.vfs.get(fd).map(|_| 0),
                3 => ctx.vfs.fd_flags(fd),
                4 => ctx.vfs.set_fd_flags(fd, arg).map(|_| 0),
                // F_GETLK: nobody else holds a lock (l_type = F_UNLCK).
                12 => {
                    g.write(arg as u32, &2i16.to_le_bytes())?;
                    Ok(0)
                }
                _ => Err(Errno::INVAL),
            }
        })
    })?;
    linker.func_wrap("env", "__syscall_ioctl", |_: C<'_>, _fd: i32, _op: i32, _va: i32| Errno::NOTTY.neg())?;
    linker.func_wrap("env", "__syscall_dup", |mut c: C<'_>, fd: i32| syscall(&mut c, |_, ctx| ctx.vfs.dup(fd, 0)))?;
    linker.func_wrap("env", "__syscall_dup3", |mut c: C<'_>, fd: i32, new_fd: i32, _flags: i32| {
        syscall(&mut c, |_, ctx| ctx.vfs.dup3(fd, new_fd))
    })?;
    linker.func_wrap("env", "__syscall_fdatasync", |mut c: C<'_>, fd: i32| {
        syscall(&mut c, |_, ctx| ctx.vfs.sync(fd).map(|_| 0))
    })?;
    linker.func_wrap("env", "__syscall_ftruncate64", |mut c: C<'_>, fd: i32, len: i64| {
        syscall(&mut c, |_, ctx| ctx.vfs.set_len(fd, u64::try_from(len).map_err(|_| Errno::INVAL)?).map(|_| 0))
    })?;
    linker.func_wrap("env", "__syscall_truncate64", |mut c: C<'_>, path: i32, len: i64| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(AT_FDCWD, &g.cstr(path as u32)?)?;
            ctx.vfs.truncate_path(&guest, u64::try_from(len).map_err(|_| Errno::INVAL)?)?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_fallocate", |mut c: C<'_>, fd: i32, _mode: i32, off: i64, len: i64| {
        syscall(&mut c, |_, ctx| {
            let end = off.checked_add(len).and_then(|e| u64::try_from(e).ok()).ok_or(Errno::INVAL)?;
            ctx.vfs.allocate(fd, end).map(|_| 0)
        })
    })?;
    linker.func_wrap("env", "__syscall_fadvise64", |_: C<'_>, _fd: i32, _off: i64, _len: i64, _advice: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_readlinkat", |mut c: C<'_>, dirfd: i32, path: i32, buf: i32, size: i32| {
        syscall(&mut c, |g, ctx| {
            let guest = ctx.vfs.resolve(dirfd, &g.cstr(path as u32)?)?;
            let target = ctx.vfs.readlink(&guest)?;
            let n = target.len().min(size.max(0) as usize);
            g.write(buf as u32, &target[..n])?;
            Ok(n as i32)
        })
    })?;
    // Guest-made symlinks could point anywhere on the host: refused (no tablespaces).
    linker.func_wrap("env", "__syscall_symlinkat", |_: C<'_>, _t: i32, _d: i32, _l: i32| Errno::PERM.neg())?;
    // A pipe's two descriptors go to `fds[0]` (read) and `fds[1]` (write); pipe2's flags
    // (close-on-exec, non-blocking) mean nothing in the guest.
    fn pipe(c: &mut C<'_>, fds: i32) -> i32 {
        syscall(c, |g, ctx| {
            let (r, w) = ctx.vfs.pipe()?;
            g.put_i32(fds as u32, r)?;
            g.put_i32(fds as u32 + 4, w)?;
            Ok(0)
        })
    }
    linker.func_wrap("env", "__syscall_pipe", |mut c: C<'_>, fds: i32| pipe(&mut c, fds))?;
    linker.func_wrap("env", "__syscall_pipe2", |mut c: C<'_>, fds: i32, _flags: i32| pipe(&mut c, fds))?;
    linker.func_wrap(
        "env",
        "__syscall_linkat",
        |mut c: C<'_>, olddir: i32, old: i32, newdir: i32, new: i32, _flags: i32| {
            syscall(&mut c, |g, ctx| {
                let from = ctx.vfs.resolve(olddir, &g.cstr(old as u32)?)?;
                let to = ctx.vfs.resolve(newdir, &g.cstr(new as u32)?)?;
                ctx.vfs.link(&from, &to)?;
                Ok(0)
            })
        },
    )?;
    // One user (root, as Emscripten's runtime says), no permissions or owners to change: the
    // host's own files keep theirs.
    linker.func_wrap("env", "__syscall_umask", |mut c: C<'_>, mask: i32| {
        std::mem::replace(&mut c.data_mut().umask, mask & 0o777)
    })?;
    for name in ["__syscall_getuid32", "__syscall_geteuid32", "__syscall_getgid32", "__syscall_getegid32"] {
        linker.func_wrap("env", name, || 0i32)?;
    }
    linker.func_wrap("env", "__syscall_fchmod", |_: C<'_>, _fd: i32, _mode: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_fchmodat2", |_: C<'_>, _d: i32, _p: i32, _m: i32, _f: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_fchown32", |_: C<'_>, _fd: i32, _u: i32, _g: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_fchownat", |_: C<'_>, _d: i32, _p: i32, _u: i32, _g: i32, _f: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_utimensat", |_: C<'_>, _d: i32, _p: i32, _t: i32, _f: i32| 0i32)?;
    linker.func_wrap("env", "__syscall_poll", |mut c: C<'_>, fds: i32, nfds: i32, _timeout: i32| {
        syscall(&mut c, |g, ctx| {
            let mut ready = 0;
            for i in 0..nfds.max(0) as u32 {
                let at = fds as u32 + i * 8;
                let fd = g.i32(at)?;
                let events = g.i16(at + 4)?;
                // POLLIN 1, POLLOUT 4, POLLERR 8, POLLHUP 16, POLLNVAL 32.
                let mut mask: i16 = match ctx.vfs.is_readable_now(fd) {
                    Some(readable) => (if readable { 1 } else { 0 }) | 4,
                    None => 32,
                };
                mask &= events | 8 | 16 | 32;
                if mask != 0 {
                    ready += 1;
                }
                g.write(at + 6, &mask.to_le_bytes())?;
            }
            Ok(ready)
        })
    })?;
    // select() only serves pg_usleep here: report a timeout.
    linker.func_wrap("env", "__syscall__newselect", |_: C<'_>, _n: i32, _r: i32, _w: i32, _e: i32, _t: i32| 0i32)?;
    Ok(())
}
