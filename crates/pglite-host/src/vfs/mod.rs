//! The guest's file system: a mount table over guest absolute paths, the fd table, pipes and
//! devices. It owns every host file the guest can reach and must never let a guest path
//! resolve outside its mount (`..` is resolved lexically, guest symlinks are refused, and host
//! directories are checked to stay beneath their mount root).
//!
//! This module holds the [`Vfs`] type and the guest's flag values; its parts live beside it:
//! `mount` (where a guest path lands), `namespace` (operations on paths), `fd` (the descriptor
//! table and the open file descriptions it shares), `io` (reading and writing through a
//! descriptor), `dir` (directory listings), `pipe`, `dev` (`/dev` and the standard streams) and
//! `stat`. None of them knows about wasm or guest memory: the imports translate.

mod dev;
mod dir;
mod fd;
mod io;
mod mount;
mod namespace;
mod pipe;
mod stat;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use self::dev::{Device, LogSink};
use self::fd::{Desc, Description, Kind, Locked};
pub(crate) use self::mount::Mount;

/// Guest `open` flags (Linux generic values, as musl in Emscripten uses them).
pub(crate) mod oflags {
    pub(crate) const ACCMODE: i32 = 0o3;
    pub(crate) const WRONLY: i32 = 0o1;
    pub(crate) const RDWR: i32 = 0o2;
    pub(crate) const CREAT: i32 = 0o100;
    pub(crate) const EXCL: i32 = 0o200;
    pub(crate) const TRUNC: i32 = 0o1000;
    pub(crate) const APPEND: i32 = 0o2000;
    pub(crate) const DIRECTORY: i32 = 0o200000;
    pub(crate) const DSYNC: i32 = 0o10000;
    /// `O_SYNC` includes the `O_DSYNC` bit.
    pub(crate) const SYNC: i32 = 0o4010000;
}

/// `dirfd` value meaning "relative to the current directory".
pub(crate) const AT_FDCWD: i32 = -100;

/// Size of one record written by `getdents64`, as the Emscripten runtime writes them.
pub(crate) const DIRENT_SIZE: u64 = 280;

/// One instance's file system: its mounts, current directory, descriptors and in-memory files.
pub(crate) struct Vfs {
    mounts: Vec<Mount>,
    cwd: String,
    fds: Vec<Option<Desc>>,
    /// Host directories already checked to lie beneath their mount root.
    verified_dirs: HashSet<PathBuf>,
    /// Guest path prefixes kept in memory instead of on disk, and those files.
    memory_prefixes: Vec<String>,
    memory_files: HashMap<String, Arc<Locked<Vec<u8>>>>,
    /// When false (building a template), `fsync` is skipped; the caller syncs the tree once.
    pub(crate) durable: bool,
    stdout: LogSink,
    stderr: LogSink,
}

impl Vfs {
    /// `mounts` need not be sorted; a mount for `/` must be present.
    pub(crate) fn new(mut mounts: Vec<Mount>, durable: bool) -> Vfs {
        // Longest prefix first, so the first match is the most specific mount.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.guest.len()));
        let dev = |d| {
            Some(Arc::new(Locked::new(Description {
                kind: Kind::Device(d),
                guest_path: String::new(),
                flags: 0,
                pos: 0,
            })))
        };
        Vfs {
            mounts,
            cwd: "/".to_owned(),
            fds: vec![dev(Device::Stdin), dev(Device::Stdout), dev(Device::Stderr)],
            verified_dirs: HashSet::new(),
            memory_prefixes: Vec::new(),
            memory_files: HashMap::new(),
            durable,
            stdout: LogSink::default(),
            stderr: LogSink::default(),
        }
    }

    /// Keeps files whose guest path starts with `prefix` in memory: PGlite 0.2 probes and
    /// rewrites its socket-emulation files on every query, which need not touch the disk.
    pub(crate) fn keep_in_memory(&mut self, prefix: &str) {
        self.memory_prefixes.push(prefix.to_owned());
    }
}

#[cfg(test)]
mod tests;
