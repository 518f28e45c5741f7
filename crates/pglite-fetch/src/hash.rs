//! SHA-256 over `impl Read` and the hex spelling pins use.
//!
//! Sans-IO: nothing here opens a file or a socket; callers hand in readers.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Lowercase hex of a digest, the spelling used by pins, receipts and errors.
pub(crate) fn to_hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut res = String::with_capacity(digest.len() * 2);
    for byte in digest {
        res.push(DIGITS[usize::from(byte >> 4)] as char);
        res.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    res
}

/// Hashes everything `reader` yields; returns the hex digest and the byte count.
pub fn sha256_hex(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut writer = HashingWriter::new(io::sink());
    let n_bytes = io::copy(&mut reader, &mut writer)?;
    Ok((writer.finish().0, n_bytes))
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    n_bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), n_bytes: 0 }
    }

    pub(crate) fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Returns the hex digest and the inner writer.
    pub(crate) fn finish(self) -> (String, W) {
        (to_hex(&self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
