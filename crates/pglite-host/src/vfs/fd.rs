//! The descriptor table and the open file descriptions behind it. `dup` makes two descriptors
//! share one description (and so its offset and flags), as POSIX does. This module hands out
//! and takes back descriptors; it never resolves a path and never moves file data.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Vfs;
use super::dev::Device;
use crate::errno::{Errno, SysResult};

/// Descriptors above this are refused (`EMFILE`, `EBADF`), as a process limit would.
const MAX_FDS: usize = 4096;

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

impl Vfs {
    pub(crate) fn get(&self, fd: i32) -> SysResult<&Desc> {
        usize::try_from(fd).ok().and_then(|i| self.fds.get(i)).and_then(Option::as_ref).ok_or(Errno::BADF)
    }

    fn insert_from(&mut self, desc: Desc, lowest: usize) -> SysResult<i32> {
        let slot = (lowest..).find(|&i| self.fds.get(i).is_none_or(Option::is_none)).ok_or(Errno::MFILE)?;
        if slot >= MAX_FDS {
            return Err(Errno::MFILE);
        }
        if slot >= self.fds.len() {
            self.fds.resize_with(slot + 1, || None);
        }
        self.fds[slot] = Some(desc);
        Ok(slot as i32)
    }

    /// Gives `desc` the lowest free descriptor.
    pub(super) fn insert(&mut self, desc: Description) -> SysResult<i32> {
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
        if slot >= MAX_FDS {
            return Err(Errno::BADF);
        }
        if slot >= self.fds.len() {
            self.fds.resize_with(slot + 1, || None);
        }
        self.fds[slot] = Some(desc);
        Ok(new_fd)
    }

    pub(crate) fn filetype(&self, fd: i32) -> SysResult<u8> {
        Ok(match &self.get(fd)?.borrow().kind {
            Kind::Device(_) => 2,
            Kind::Dir { .. } => 3,
            _ => 4,
        })
    }

    pub(crate) fn fd_flags(&self, fd: i32) -> SysResult<i32> {
        Ok(self.get(fd)?.borrow().flags)
    }

    pub(crate) fn set_fd_flags(&self, fd: i32, flags: i32) -> SysResult<()> {
        self.get(fd)?.borrow_mut().flags |= flags;
        Ok(())
    }
}
