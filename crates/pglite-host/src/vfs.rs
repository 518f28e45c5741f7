//! The guest's file system: a mount table over guest absolute paths, the fd table, pipes and
//! devices. It owns every host file the guest can reach and must never let a guest path
//! resolve outside its mount (`..` is resolved lexically, guest symlinks are refused, and host
//! directories are checked to stay beneath their mount root).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::errno::{Errno, SysResult};

/// Shared state behind descriptors (dup'd fds, memory files, pipes). A mutex rather than a
/// `RefCell` only so the store can move between the threads that take turns running it; it is
/// never contended.
#[derive(Default)]
pub(crate) struct Locked<T>(Mutex<T>);

impl<T> Locked<T> {
    pub(crate) fn new(value: T) -> Locked<T> {
        Locked(Mutex::new(value))
    }

    pub(crate) fn borrow(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn borrow_mut(&self) -> MutexGuard<'_, T> {
        self.borrow()
    }
}

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

/// One mount: a guest path prefix backed by a host directory (or a single host file).
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    pub(crate) guest: String,
    pub(crate) host: PathBuf,
    pub(crate) read_only: bool,
    /// Further read-only directories overlaid on `host` (extension bundles): a path resolves to
    /// the first layer holding it, and directory listings merge all layers.
    pub(crate) overlays: Vec<PathBuf>,
}

impl Mount {
    pub(crate) fn new(guest: impl Into<String>, host: impl Into<PathBuf>, read_only: bool) -> Mount {
        Mount { guest: guest.into(), host: host.into(), read_only, overlays: Vec::new() }
    }

    fn covers(&self, guest: &str) -> bool {
        self.guest == "/"
            || (guest.starts_with(&self.guest) && matches!(guest.as_bytes().get(self.guest.len()), None | Some(b'/')))
    }
}

/// Where a guest path lands.
#[derive(Clone, Debug)]
enum Node {
    Host { path: PathBuf, mount: usize },
    Memory(String),
    Device(Device),
    DevDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    Null,
    Random,
    Stdin,
    Stdout,
    Stderr,
}

/// What an open file description refers to.
pub(crate) enum Kind {
    File(File),
    Memory(Arc<Locked<Vec<u8>>>),
    Dir { host: Option<PathBuf>, entries: Option<Vec<(String, u8)>>, file: Option<File>, overlays: Vec<PathBuf> },
    PipeRead(Arc<Locked<VecDeque<u8>>>),
    PipeWrite(Arc<Locked<VecDeque<u8>>>),
    Device(Device),
}

/// An open file description; `dup` shares it (and so its offset) between descriptors.
pub(crate) struct Description {
    pub(crate) kind: Kind,
    pub(crate) guest_path: String,
    pub(crate) flags: i32,
    pub(crate) pos: u64,
}

pub(crate) type Desc = Arc<Locked<Description>>;

/// Output the guest writes to fd 1 and 2, forwarded to `tracing` a line at a time.
#[derive(Default)]
pub(crate) struct LogSink {
    line: Vec<u8>,
}

impl LogSink {
    fn write(&mut self, stream: &str, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.line);
                tracing::debug!(target: "pglite::guest", stream, "{text}");
                self.line.clear();
            } else if self.line.len() < 64 * 1024 {
                self.line.push(b);
            }
        }
    }
}

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

    // ----- paths

    /// The guest absolute path for `path` relative to `dirfd`.
    pub(crate) fn resolve(&self, dirfd: i32, path: &str) -> SysResult<String> {
        if path.is_empty() {
            return Err(Errno::NOENT);
        }
        if path.len() > 4096 {
            return Err(Errno::NAMETOOLONG);
        }
        if path.starts_with('/') {
            return Ok(normalize(path));
        }
        let base = if dirfd == AT_FDCWD { self.cwd.clone() } else { self.get(dirfd)?.borrow().guest_path.clone() };
        Ok(normalize(&format!("{base}/{path}")))
    }

    fn node(&mut self, guest: &str) -> SysResult<Node> {
        if self.memory_prefixes.iter().any(|p| guest.starts_with(p.as_str())) {
            return Ok(Node::Memory(guest.to_owned()));
        }
        if let Some(rest) = guest.strip_prefix("/dev") {
            match rest {
                "" => return Ok(Node::DevDir),
                "/null" | "/tty" | "/console" => return Ok(Node::Device(Device::Null)),
                "/urandom" | "/random" => return Ok(Node::Device(Device::Random)),
                "/stdin" => return Ok(Node::Device(Device::Stdin)),
                "/stdout" => return Ok(Node::Device(Device::Stdout)),
                "/stderr" => return Ok(Node::Device(Device::Stderr)),
                _ => {}
            }
        }
        let (idx, mount) = self.mounts.iter().enumerate().find(|(_, m)| m.covers(guest)).ok_or(Errno::NOENT)?;
        let rel = guest[mount.guest.len()..].trim_start_matches('/');
        let at = |root: &Path| if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let mut root = mount.host.clone();
        let mut path = at(&root);
        if !mount.overlays.is_empty()
            && fs::symlink_metadata(&path).is_err()
            && let Some(layer) = mount.overlays.iter().find(|layer| fs::symlink_metadata(at(layer)).is_ok())
        {
            root = layer.clone();
            path = at(layer);
        }
        if let Some(parent) = path.parent()
            && path != root
        {
            self.check_beneath(parent, &root)?;
        }
        Ok(Node::Host { path, mount: idx })
    }

    /// Refuses a host path whose directory escapes `root` through a symlink. Verified
    /// directories are remembered; renames and removals clear the memory.
    fn check_beneath(&mut self, dir: &Path, root: &Path) -> SysResult<()> {
        if self.verified_dirs.contains(dir) {
            return Ok(());
        }
        match (fs::canonicalize(dir), fs::canonicalize(root)) {
            (Ok(real), Ok(real_root)) => {
                if !real.starts_with(&real_root) {
                    tracing::warn!(dir = %dir.display(), "guest path escapes its mount; refused");
                    return Err(Errno::ACCES);
                }
                self.verified_dirs.insert(dir.to_path_buf());
                Ok(())
            }
            // A missing parent: the operation itself will report ENOENT.
            _ => Ok(()),
        }
    }

    fn host_path(&mut self, guest: &str, write: bool) -> SysResult<(PathBuf, usize)> {
        match self.node(guest)? {
            Node::Host { path, mount } => {
                if write && self.mounts[mount].read_only {
                    return Err(Errno::ROFS);
                }
                Ok((path, mount))
            }
            Node::Device(_) | Node::DevDir | Node::Memory(_) => Err(if write { Errno::PERM } else { Errno::INVAL }),
        }
    }

    // ----- fd table

    pub(crate) fn get(&self, fd: i32) -> SysResult<&Desc> {
        usize::try_from(fd).ok().and_then(|i| self.fds.get(i)).and_then(Option::as_ref).ok_or(Errno::BADF)
    }

    fn insert_from(&mut self, desc: Desc, lowest: usize) -> SysResult<i32> {
        let slot = (lowest..).find(|&i| self.fds.get(i).is_none_or(Option::is_none)).ok_or(Errno::MFILE)?;
        if slot >= 4096 {
            return Err(Errno::MFILE);
        }
        if slot >= self.fds.len() {
            self.fds.resize_with(slot + 1, || None);
        }
        self.fds[slot] = Some(desc);
        Ok(slot as i32)
    }

    fn insert(&mut self, desc: Description) -> SysResult<i32> {
        self.insert_from(Arc::new(Locked::new(desc)), 0)
    }

    pub(crate) fn close(&mut self, fd: i32) -> SysResult<()> {
        let slot = usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)).ok_or(Errno::BADF)?;
        slot.take().ok_or(Errno::BADF)?;
        Ok(())
    }

    /// Closes every descriptor, syncing files first when durable (clean shutdown).
    pub(crate) fn close_all(&mut self) {
        for desc in self.fds.drain(..).flatten() {
            if let Kind::File(file) = &desc.borrow().kind
                && self.durable
            {
                let _ = file.sync_all();
            }
        }
    }

    pub(crate) fn dup(&mut self, fd: i32, lowest: i32) -> SysResult<i32> {
        let desc = self.get(fd)?.clone();
        self.insert_from(desc, usize::try_from(lowest).map_err(|_| Errno::INVAL)?)
    }

    pub(crate) fn dup3(&mut self, fd: i32, new_fd: i32) -> SysResult<i32> {
        if fd == new_fd {
            return Err(Errno::INVAL);
        }
        let desc = self.get(fd)?.clone();
        let slot = usize::try_from(new_fd).map_err(|_| Errno::BADF)?;
        if slot >= 4096 {
            return Err(Errno::BADF);
        }
        if slot >= self.fds.len() {
            self.fds.resize_with(slot + 1, || None);
        }
        self.fds[slot] = Some(desc);
        Ok(new_fd)
    }

    pub(crate) fn pipe(&mut self) -> SysResult<(i32, i32)> {
        let buf = Arc::new(Locked::new(VecDeque::new()));
        let r = self.insert(Description {
            kind: Kind::PipeRead(buf.clone()),
            guest_path: "/pipe".into(),
            flags: 0,
            pos: 0,
        })?;
        let w = self.insert(Description {
            kind: Kind::PipeWrite(buf),
            guest_path: "/pipe".into(),
            flags: oflags::WRONLY,
            pos: 0,
        })?;
        Ok((r, w))
    }

    // ----- namespace operations

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

    /// Every layer's directory for a guest directory in an overlaid mount (empty otherwise).
    fn overlay_dirs(&self, guest: &str) -> Vec<PathBuf> {
        let Some(mount) = self.mounts.iter().find(|m| m.covers(guest)) else { return Vec::new() };
        if mount.overlays.is_empty() {
            return Vec::new();
        }
        let rel = guest[mount.guest.len()..].trim_start_matches('/');
        std::iter::once(&mount.host)
            .chain(&mount.overlays)
            .map(|layer| if rel.is_empty() { layer.clone() } else { layer.join(rel) })
            .filter(|dir| dir.is_dir())
            .collect()
    }

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

    // ----- descriptor operations

    pub(crate) fn read(&mut self, fd: i32, buf: &mut [u8], at: Option<u64>) -> SysResult<usize> {
        let mut desc = self.get(fd)?.borrow_mut();
        let pos = at.unwrap_or(desc.pos);
        let n = match &mut desc.kind {
            Kind::File(file) => read_at_full(file, buf, pos)?,
            Kind::Memory(file) => {
                let file = file.borrow();
                let start = (pos as usize).min(file.len());
                let n = buf.len().min(file.len() - start);
                buf[..n].copy_from_slice(&file[start..start + n]);
                n
            }
            Kind::PipeRead(pipe) => {
                let mut pipe = pipe.borrow_mut();
                if pipe.is_empty() {
                    return Err(Errno::AGAIN);
                }
                let n = buf.len().min(pipe.len());
                for (dst, src) in buf.iter_mut().zip(pipe.drain(..n)) {
                    *dst = src;
                }
                return Ok(n);
            }
            Kind::Device(Device::Random) => {
                rand::fill(buf);
                return Ok(buf.len());
            }
            Kind::Device(_) => return Ok(0),
            Kind::PipeWrite(_) => return Err(Errno::BADF),
            Kind::Dir { .. } => return Err(Errno::ISDIR),
        };
        if at.is_none() {
            desc.pos += n as u64;
        }
        Ok(n)
    }

    pub(crate) fn write(&mut self, fd: i32, data: &[u8], at: Option<u64>) -> SysResult<usize> {
        let desc_rc = self.get(fd)?.clone();
        let mut desc = desc_rc.borrow_mut();
        let append = desc.flags & oflags::APPEND != 0;
        let pos = desc.pos;
        let n = match &mut desc.kind {
            Kind::File(file) => {
                let offset = match at {
                    Some(off) => off,
                    None if append => file.metadata()?.len(),
                    None => pos,
                };
                file.write_all_at(data, offset)?;
                if at.is_none() {
                    desc.pos = offset + data.len() as u64;
                }
                return Ok(data.len());
            }
            Kind::Memory(file) => {
                let mut file = file.borrow_mut();
                let offset = match at {
                    Some(off) => off as usize,
                    None if append => file.len(),
                    None => pos as usize,
                };
                let end = offset.checked_add(data.len()).filter(|&e| e <= 1 << 30).ok_or(Errno::FBIG)?;
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[offset..end].copy_from_slice(data);
                drop(file);
                if at.is_none() {
                    desc.pos = end as u64;
                }
                return Ok(data.len());
            }
            Kind::PipeWrite(pipe) => {
                pipe.borrow_mut().extend(data);
                data.len()
            }
            Kind::Device(Device::Stdout) => {
                self.stdout.write("stdout", data);
                data.len()
            }
            Kind::Device(Device::Stderr) => {
                self.stderr.write("stderr", data);
                data.len()
            }
            Kind::Device(_) => data.len(),
            Kind::PipeRead(_) => return Err(Errno::BADF),
            Kind::Dir { .. } => return Err(Errno::ISDIR),
        };
        Ok(n)
    }

    pub(crate) fn seek(&mut self, fd: i32, offset: i64, whence: i32) -> SysResult<u64> {
        let mut desc = self.get(fd)?.borrow_mut();
        let base = match (&desc.kind, whence) {
            (Kind::PipeRead(_) | Kind::PipeWrite(_), _) => return Err(Errno::SPIPE),
            (_, 0) => 0,
            (_, 1) => desc.pos as i64,
            (Kind::File(file), 2) => file.metadata()?.len() as i64,
            (Kind::Memory(file), 2) => file.borrow().len() as i64,
            (_, 2) => 0,
            _ => return Err(Errno::INVAL),
        };
        let new = base.checked_add(offset).filter(|&p| p >= 0).ok_or(Errno::INVAL)?;
        if let Kind::Dir { entries, .. } = &mut desc.kind
            && new == 0
        {
            *entries = None;
        }
        desc.pos = new as u64;
        Ok(desc.pos)
    }

    pub(crate) fn sync(&mut self, fd: i32) -> SysResult<()> {
        if !self.durable {
            return Ok(());
        }
        let mut desc = self.get(fd)?.borrow_mut();
        match &mut desc.kind {
            Kind::File(file) => file.sync_data()?,
            Kind::Dir { host: Some(host), file, .. } => {
                if file.is_none() {
                    *file = Some(File::open(&*host)?);
                }
                if let Some(file) = file {
                    file.sync_all()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn set_len(&mut self, fd: i32, len: u64) -> SysResult<()> {
        match &self.get(fd)?.borrow().kind {
            Kind::File(file) => Ok(file.set_len(len)?),
            Kind::Memory(file) => {
                file.borrow_mut().resize(usize::try_from(len).ok().filter(|&l| l <= 1 << 30).ok_or(Errno::FBIG)?, 0);
                Ok(())
            }
            _ => Err(Errno::INVAL),
        }
    }

    /// `fallocate`: make sure the file is at least `end` bytes long.
    pub(crate) fn allocate(&mut self, fd: i32, end: u64) -> SysResult<()> {
        match &self.get(fd)?.borrow().kind {
            Kind::File(file) => {
                if file.metadata()?.len() < end {
                    file.set_len(end)?;
                }
                Ok(())
            }
            _ => Err(Errno::BADF),
        }
    }

    /// Directory records from the descriptor's position: `(d_ino, d_off, type, name)`.
    pub(crate) fn dirents(&mut self, fd: i32, max: usize) -> SysResult<Vec<(u64, u64, u8, String)>> {
        let mut desc = self.get(fd)?.borrow_mut();
        let start = (desc.pos / DIRENT_SIZE) as usize;
        let Kind::Dir { host, entries, overlays, .. } = &mut desc.kind else {
            return Err(Errno::NOTDIR);
        };
        if entries.is_none() {
            let mut list = vec![(".".to_owned(), 4u8), ("..".to_owned(), 4u8)];
            match host {
                Some(host) => {
                    let mut names = std::collections::BTreeMap::new();
                    let layers = if overlays.is_empty() { std::slice::from_ref(&*host) } else { overlays.as_slice() };
                    for layer in layers {
                        for entry in fs::read_dir(layer)? {
                            let entry = entry?;
                            let ft = entry.file_type()?;
                            let t = if ft.is_dir() {
                                4
                            } else if ft.is_symlink() {
                                10
                            } else {
                                8
                            };
                            names.entry(entry.file_name().to_string_lossy().into_owned()).or_insert(t);
                        }
                    }
                    list.extend(names);
                }
                None => list.extend(
                    ["null", "random", "urandom", "shm", "stdin", "stdout", "stderr", "tty"]
                        .iter()
                        .map(|n| (n.to_string(), if *n == "shm" { 4 } else { 2 })),
                ),
            }
            *entries = Some(list);
        }
        let list = entries.as_ref().map(Vec::as_slice).unwrap_or_default();
        let out: Vec<_> = list
            .iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, (name, t))| (i as u64 + 1, (i as u64 + 1) * DIRENT_SIZE, *t, name.clone()))
            .collect();
        desc.pos = (start + out.len()) as u64 * DIRENT_SIZE;
        Ok(out)
    }

    pub(crate) fn is_readable_now(&self, fd: i32) -> Option<bool> {
        let desc = self.get(fd).ok()?.borrow();
        Some(match &desc.kind {
            Kind::PipeRead(pipe) => !pipe.borrow().is_empty(),
            _ => true,
        })
    }

    pub(crate) fn filetype(&self, fd: i32) -> SysResult<u8> {
        Ok(match &self.get(fd)?.borrow().kind {
            Kind::Device(_) => 2,
            Kind::Dir { .. } => 3,
            _ => 4,
        })
    }

    /// Reads `len` bytes at `off` of the file behind `fd` (for `mmap`); short files read as zeros.
    pub(crate) fn read_for_mmap(&self, fd: i32, buf: &mut [u8], off: u64) -> SysResult<()> {
        if let Ok(desc) = self.get(fd)
            && let Kind::File(file) = &desc.borrow().kind
        {
            let n = read_at_full(file, buf, off)?;
            buf[n..].fill(0);
            return Ok(());
        }
        buf.fill(0);
        Ok(())
    }

    /// Writes back a shared writable mapping on `munmap`.
    pub(crate) fn write_for_munmap(&self, fd: i32, data: &[u8], off: u64) -> SysResult<()> {
        if let Ok(desc) = self.get(fd)
            && let Kind::File(file) = &desc.borrow().kind
        {
            file.write_all_at(data, off)?;
        }
        Ok(())
    }

    pub(crate) fn fd_flags(&self, fd: i32) -> SysResult<i32> {
        Ok(self.get(fd)?.borrow().flags)
    }

    pub(crate) fn set_fd_flags(&self, fd: i32, flags: i32) -> SysResult<()> {
        self.get(fd)?.borrow_mut().flags |= flags;
        Ok(())
    }
}

fn read_at_full(file: &File, buf: &mut [u8], mut pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Lexical normalisation of a guest absolute path: `.` dropped, `..` pops (never above `/`).
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

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

#[cfg(test)]
mod tests;
