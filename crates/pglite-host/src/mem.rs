//! Bounds-checked access to the guest's linear memory. Every guest pointer is untrusted:
//! an out-of-range pointer becomes `EFAULT`, never a host panic.

use crate::errno::{Errno, SysResult};

/// A view of guest memory for the duration of one host call.
pub(crate) struct Guest<'a>(pub(crate) &'a mut [u8]);

impl Guest<'_> {
    pub(crate) fn slice(&self, addr: u32, len: u32) -> SysResult<&[u8]> {
        let start = addr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::FAULT)?;
        self.0.get(start..end).ok_or(Errno::FAULT)
    }

    pub(crate) fn slice_mut(&mut self, addr: u32, len: u32) -> SysResult<&mut [u8]> {
        let start = addr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::FAULT)?;
        self.0.get_mut(start..end).ok_or(Errno::FAULT)
    }

    pub(crate) fn write(&mut self, addr: u32, bytes: &[u8]) -> SysResult<()> {
        self.slice_mut(addr, bytes.len() as u32)?.copy_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn u32(&self, addr: u32) -> SysResult<u32> {
        let b = self.slice(addr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&self, addr: u32) -> SysResult<i32> {
        self.u32(addr).map(|v| v as i32)
    }

    pub(crate) fn i16(&self, addr: u32) -> SysResult<i16> {
        let b = self.slice(addr, 2)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn put_u32(&mut self, addr: u32, v: u32) -> SysResult<()> {
        self.write(addr, &v.to_le_bytes())
    }

    pub(crate) fn put_i32(&mut self, addr: u32, v: i32) -> SysResult<()> {
        self.write(addr, &v.to_le_bytes())
    }

    pub(crate) fn put_u64(&mut self, addr: u32, v: u64) -> SysResult<()> {
        self.write(addr, &v.to_le_bytes())
    }

    /// A NUL-terminated string starting at `addr`, as UTF-8 (paths and messages are ASCII in
    /// practice; invalid bytes are replaced rather than failing the call).
    pub(crate) fn cstr(&self, addr: u32) -> SysResult<String> {
        let tail = self.0.get(addr as usize..).ok_or(Errno::FAULT)?;
        let len = tail.iter().position(|&b| b == 0).ok_or(Errno::FAULT)?;
        Ok(String::from_utf8_lossy(&tail[..len]).into_owned())
    }

    /// The `{ptr, len}` pairs of a WASI iovec array.
    pub(crate) fn iovecs(&self, iov: u32, count: u32) -> SysResult<Vec<(u32, u32)>> {
        (0..count)
            .map(|i| {
                let at = iov.checked_add(i.checked_mul(8).ok_or(Errno::FAULT)?).ok_or(Errno::FAULT)?;
                Ok((self.u32(at)?, self.u32(at + 4)?))
            })
            .collect()
    }
}
