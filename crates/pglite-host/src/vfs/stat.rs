//! `stat` by path and by descriptor, and the guest's `struct stat` layout. Host files report
//! their real metadata; memory files, pipes, devices and `/dev` get synthetic answers.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;

use super::Vfs;
use super::fd::Kind;
use super::mount::Node;
use crate::errno::{Errno, SysResult};

/// The fields of the guest's 96-byte `struct stat`.
pub(crate) struct Stat {
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) size: u64,
    pub(crate) blocks: u64,
    pub(crate) atime: (i64, u32),
    pub(crate) mtime: (i64, u32),
    pub(crate) ctime: (i64, u32),
    pub(crate) ino: u64,
    pub(crate) dev: u64,
}

impl Stat {
    fn from_meta(meta: &Metadata) -> Stat {
        Stat {
            mode: meta.mode(),
            nlink: meta.nlink() as u32,
            size: meta.size(),
            blocks: meta.blocks(),
            atime: (meta.atime(), meta.atime_nsec() as u32),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            ctime: (meta.ctime(), meta.ctime_nsec() as u32),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    fn synthetic(mode: u32) -> Stat {
        Stat { mode, nlink: 1, size: 0, blocks: 0, atime: (0, 0), mtime: (0, 0), ctime: (0, 0), ino: 1, dev: 5 }
    }

    fn memory(size: usize) -> Stat {
        Stat { size: size as u64, ..Stat::synthetic(0o100600) }
    }

    fn device() -> Stat {
        Stat::synthetic(0o20666)
    }

    /// The 96-byte layout the Emscripten runtime writes (`SYSCALLS.doStat`).
    pub(crate) fn to_bytes(&self) -> [u8; 96] {
        let mut b = [0u8; 96];
        b[0..4].copy_from_slice(&(self.dev as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..12].copy_from_slice(&self.nlink.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..36].copy_from_slice(&4096u32.to_le_bytes());
        b[36..40].copy_from_slice(&(self.blocks as u32).to_le_bytes());
        for (at, (sec, nsec)) in [(40, self.atime), (56, self.mtime), (72, self.ctime)] {
            b[at..at + 8].copy_from_slice(&sec.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&nsec.to_le_bytes());
        }
        b[88..96].copy_from_slice(&self.ino.to_le_bytes());
        b
    }
}

impl Vfs {
    /// `stat` (`follow`) or `lstat` of a guest path.
    pub(crate) fn stat_path(&mut self, guest: &str, follow: bool) -> SysResult<Stat> {
        match self.node(guest)? {
            Node::Device(_) => Ok(Stat::device()),
            Node::DevDir => Ok(Stat::synthetic(0o40755)),
            Node::Memory(name) => match self.memory_files.get(&name) {
                Some(file) => Ok(Stat::memory(file.borrow().len())),
                None => Err(Errno::NOENT),
            },
            Node::Host { path, .. } => {
                let meta = if follow { fs::metadata(&path)? } else { fs::symlink_metadata(&path)? };
                Ok(Stat::from_meta(&meta))
            }
        }
    }

    pub(crate) fn stat_fd(&self, fd: i32) -> SysResult<Stat> {
        let desc = self.get(fd)?.borrow();
        match &desc.kind {
            Kind::File(file) => Ok(Stat::from_meta(&file.metadata()?)),
            Kind::Memory(file) => Ok(Stat::memory(file.borrow().len())),
            Kind::Dir { host: Some(host), .. } => Ok(Stat::from_meta(&fs::metadata(host)?)),
            Kind::Dir { host: None, .. } => Ok(Stat::synthetic(0o40755)),
            Kind::PipeRead(_) | Kind::PipeWrite(_) => Ok(Stat::synthetic(0o10600)),
            Kind::Device(_) => Ok(Stat::device()),
        }
    }
}
