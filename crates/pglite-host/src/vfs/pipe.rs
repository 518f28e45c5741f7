//! Pipes: a byte queue shared by a read and a write descriptor. The guest is one process with
//! one thread, so nothing could ever fill an empty pipe while a reader waits: reads never
//! block (`EAGAIN`), writes never fill up, and poll reports readability from the queue.

use std::collections::VecDeque;
use std::sync::Arc;

use super::fd::{Description, Kind, Locked};
use super::{Vfs, oflags};
use crate::errno::{Errno, SysResult};

/// The bytes written and not yet read.
pub(super) type Queue = Arc<Locked<VecDeque<u8>>>;

impl Vfs {
    /// A new pipe: (read descriptor, write descriptor).
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

    /// For `poll`: whether a read of `fd` would find data now (`None`: not a descriptor).
    pub(crate) fn is_readable_now(&self, fd: i32) -> Option<bool> {
        let desc = self.get(fd).ok()?.borrow();
        Some(match &desc.kind {
            Kind::PipeRead(pipe) => !pipe.borrow().is_empty(),
            _ => true,
        })
    }
}

/// Moves up to `buf.len()` queued bytes into `buf`; an empty pipe is `EAGAIN`.
pub(super) fn read(pipe: &Queue, buf: &mut [u8]) -> SysResult<usize> {
    let mut pipe = pipe.borrow_mut();
    if pipe.is_empty() {
        return Err(Errno::AGAIN);
    }
    let n = buf.len().min(pipe.len());
    for (dst, src) in buf.iter_mut().zip(pipe.drain(..n)) {
        *dst = src;
    }
    Ok(n)
}

/// Queues all of `data`.
pub(super) fn write(pipe: &Queue, data: &[u8]) -> usize {
    pipe.borrow_mut().extend(data);
    data.len()
}
