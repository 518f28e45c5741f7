//! Data through a descriptor: read, write, seek, sync, resize, and the reads and write-backs
//! behind the guest's emulated `mmap`. Every call is addressed by descriptor, never by path;
//! a `sync` is a real `fsync` whenever the file system is durable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::dev::Device;
use super::fd::Kind;
use super::{Vfs, oflags, pipe};
use crate::errno::{Errno, SysResult};

/// Memory files are refused growth past this (`EFBIG`).
const MAX_MEMORY_FILE: usize = 1 << 30;

impl Vfs {
    /// Reads at `at`, or at the descriptor's offset (then advanced) when `None`.
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
            Kind::PipeRead(queue) => return pipe::read(queue, buf),
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

    /// Writes at `at`, or at the descriptor's offset (the end with `O_APPEND`) when `None`.
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
                let end = offset.checked_add(data.len()).filter(|&e| e <= MAX_MEMORY_FILE).ok_or(Errno::FBIG)?;
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
            Kind::PipeWrite(queue) => pipe::write(queue, data),
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
                file.borrow_mut()
                    .resize(usize::try_from(len).ok().filter(|&l| l <= MAX_MEMORY_FILE).ok_or(Errno::FBIG)?, 0);
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
}

/// Reads until `buf` is full or the file ends (retrying interrupted reads).
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
