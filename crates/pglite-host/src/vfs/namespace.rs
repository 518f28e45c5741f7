//! Operations addressed by guest path: open, access, mkdir, unlink, rename, chdir, readlink,
//! truncate. Each goes through the mount table, so read-only mounts refuse writes (`EROFS`),
//! renames never cross mounts (`EXDEV`), and no path leaves its mount. Guest symlinks are never
//! made (the import refuses `symlinkat`).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use super::fd::{Description, Kind};
use super::mount::Node;
use super::{Vfs, oflags};
use crate::errno::{Errno, SysResult};

impl Vfs {
    pub(crate) fn open(&mut self, guest: String, flags: i32, mode: u32) -> SysResult<i32> {
        let acc = flags & oflags::ACCMODE;
        let writes = acc != 0 || flags & (oflags::CREAT | oflags::TRUNC | oflags::APPEND) != 0;
        let host = match self.node(&guest)? {
            Node::Device(dev) => {
                return self.insert(Description { kind: Kind::Device(dev), guest_path: guest, flags, pos: 0 });
            }
            Node::DevDir => {
                let kind = Kind::Dir { host: None, entries: None, file: None, overlays: Vec::new() };
                return self.insert(Description { kind, guest_path: guest, flags, pos: 0 });
            }
            Node::Memory(name) => {
                let file = match self.memory_files.get(&name) {
                    Some(_) if flags & oflags::CREAT != 0 && flags & oflags::EXCL != 0 => return Err(Errno::EXIST),
                    Some(file) => file.clone(),
                    None if flags & oflags::CREAT != 0 => self.memory_files.entry(name).or_default().clone(),
                    None => return Err(Errno::NOENT),
                };
                if flags & oflags::TRUNC != 0 {
                    file.borrow_mut().clear();
                }
                return self.insert(Description { kind: Kind::Memory(file), guest_path: guest, flags, pos: 0 });
            }
            Node::Host { path, mount } => {
                if writes && self.mounts[mount].read_only {
                    return Err(Errno::ROFS);
                }
                path
            }
        };
        self.open_host(host, guest, flags, mode)
    }

    /// `open` of a host path in a mount that allows it: a directory, or a file.
    fn open_host(&mut self, host: PathBuf, guest: String, flags: i32, mode: u32) -> SysResult<i32> {
        let acc = flags & oflags::ACCMODE;
        let meta = fs::metadata(&host);
        if let Ok(meta) = &meta
            && meta.is_dir()
        {
            if acc != 0 {
                return Err(Errno::ISDIR);
            }
            if flags & oflags::CREAT != 0 && flags & oflags::EXCL != 0 {
                return Err(Errno::EXIST);
            }
            let overlays = self.overlay_dirs(&guest);
            let kind = Kind::Dir { host: Some(host), entries: None, file: None, overlays };
            return self.insert(Description { kind, guest_path: guest, flags, pos: 0 });
        }
        if flags & oflags::DIRECTORY != 0 {
            return Err(if meta.is_ok() { Errno::NOTDIR } else { Errno::NOENT });
        }
        let mut opts = OpenOptions::new();
        opts.read(acc != oflags::WRONLY)
            .write(acc == oflags::WRONLY || acc == oflags::RDWR)
            .truncate(flags & oflags::TRUNC != 0)
            .mode((mode & 0o777) | 0o600);
        // PostgreSQL 16's default wal_sync_method here is open_datasync: it opens WAL files
        // O_DSYNC and never calls fdatasync, so the flag is what makes a commit durable.
        if self.durable && flags & oflags::DSYNC != 0 {
            let sync =
                if flags & oflags::SYNC == oflags::SYNC { rustix::fs::OFlags::SYNC } else { rustix::fs::OFlags::DSYNC };
            opts.custom_flags(sync.bits() as i32);
        }
        if flags & oflags::CREAT != 0 {
            if flags & oflags::EXCL != 0 {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            if acc == 0 {
                // O_RDONLY|O_CREAT: std refuses create without write access.
                opts.write(true);
            }
        }
        let file = opts.open(&host)?;
        self.insert(Description { kind: Kind::File(file), guest_path: guest, flags, pos: 0 })
    }

    pub(crate) fn access(&mut self, guest: &str, amode: i32) -> SysResult<()> {
        let (host, mount) = match self.node(guest)? {
            Node::Device(_) | Node::DevDir => return Ok(()),
            Node::Memory(name) => {
                return if self.memory_files.contains_key(&name) { Ok(()) } else { Err(Errno::NOENT) };
            }
            Node::Host { path, mount } => (path, mount),
        };
        let meta = fs::metadata(&host)?;
        let bits = meta.permissions().mode();
        let denied = (amode & 4 != 0 && bits & 0o444 == 0)
            || (amode & 2 != 0 && (bits & 0o222 == 0 || self.mounts[mount].read_only))
            || (amode & 1 != 0 && bits & 0o111 == 0);
        if denied { Err(Errno::ACCES) } else { Ok(()) }
    }

    pub(crate) fn mkdir(&mut self, guest: &str) -> SysResult<()> {
        let (host, _) = self.host_path(guest, true)?;
        fs::DirBuilder::new().mode(0o700).create(host)?;
        Ok(())
    }

    pub(crate) fn unlink(&mut self, guest: &str, dir: bool) -> SysResult<()> {
        if let Node::Memory(name) = self.node(guest)? {
            return self.memory_files.remove(&name).map(drop).ok_or(Errno::NOENT);
        }
        let (host, _) = self.host_path(guest, true)?;
        if dir {
            fs::remove_dir(&host)?;
            self.verified_dirs.clear();
        } else {
            let meta = fs::symlink_metadata(&host)?;
            if meta.is_dir() {
                return Err(Errno::ISDIR);
            }
            fs::remove_file(host)?;
        }
        Ok(())
    }

    pub(crate) fn rename(&mut self, from: &str, to: &str) -> SysResult<()> {
        match (self.node(from)?, self.node(to)?) {
            (Node::Memory(from), Node::Memory(to)) => {
                let file = self.memory_files.remove(&from).ok_or(Errno::NOENT)?;
                self.memory_files.insert(to, file);
                return Ok(());
            }
            (Node::Memory(_), _) | (_, Node::Memory(_)) => return Err(Errno::XDEV),
            _ => {}
        }
        let (src, m1) = self.host_path(from, true)?;
        let (dst, m2) = self.host_path(to, true)?;
        if m1 != m2 {
            return Err(Errno::XDEV);
        }
        fs::rename(src, dst)?;
        self.verified_dirs.clear();
        Ok(())
    }

    /// A hard link `to` of the regular file `from`, within one mount.
    pub(crate) fn link(&mut self, from: &str, to: &str) -> SysResult<()> {
        if matches!(self.node(from)?, Node::Memory(_)) || matches!(self.node(to)?, Node::Memory(_)) {
            return Err(Errno::XDEV);
        }
        let (src, m1) = self.host_path(from, true)?;
        let (dst, m2) = self.host_path(to, true)?;
        if m1 != m2 {
            return Err(Errno::XDEV);
        }
        if !fs::symlink_metadata(&src)?.is_file() {
            return Err(Errno::PERM);
        }
        fs::hard_link(src, dst)?;
        Ok(())
    }

    pub(crate) fn chdir(&mut self, guest: String) -> SysResult<()> {
        match self.node(&guest)? {
            Node::DevDir => {}
            Node::Device(_) | Node::Memory(_) => return Err(Errno::NOTDIR),
            Node::Host { path, .. } => {
                if !fs::metadata(path)?.is_dir() {
                    return Err(Errno::NOTDIR);
                }
            }
        }
        self.cwd = guest;
        Ok(())
    }

    pub(crate) fn cwd(&self) -> &str {
        &self.cwd
    }

    pub(crate) fn readlink(&mut self, guest: &str) -> SysResult<Vec<u8>> {
        let (host, _) = self.host_path(guest, false)?;
        let target = fs::read_link(host)?;
        Ok(target.into_os_string().into_encoded_bytes())
    }

    pub(crate) fn truncate_path(&mut self, guest: &str, len: u64) -> SysResult<()> {
        let (host, _) = self.host_path(guest, true)?;
        OpenOptions::new().write(true).open(host)?.set_len(len)?;
        Ok(())
    }
}
