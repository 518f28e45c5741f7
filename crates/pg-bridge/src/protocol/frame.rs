//! Splitting raw bytes into protocol frames, before anything is decoded.
//!
//! Owns the size limits. A frame is only ever split off once it is complete, and the advertised
//! length is checked against the limit as soon as the five header bytes are there, so a hostile
//! length never causes an allocation: the caller's buffer only grows by what really arrived.
//! This module must not look inside frame bodies; `message` does that.

use bytes::{Buf, Bytes, BytesMut};

/// Largest typed frontend message accepted, header included (PostgreSQL's own limit is 1 GiB).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// Largest startup-phase packet, as in PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Why bytes could not be split into a frame. Every variant ends the connection with `08P01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is smaller than the length field itself.
    TooShort { len: u32 },
    /// The length field exceeds the limit; nothing was buffered for it.
    TooLarge { len: u32, limit: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooShort { len } => write!(f, "invalid message length {len}"),
            FrameError::TooLarge { len, limit } => {
                write!(f, "message length {len} exceeds the limit of {limit} bytes")
            }
        }
    }
}

/// One complete typed frame: the type byte, then the length, then the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// The message type byte.
    pub(crate) fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message body, without type and length.
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The whole frame as it arrived, ready to be forwarded unchanged.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Splits one typed frame off the front of `buf`, or returns `Ok(None)` until it is complete.
pub(crate) fn split_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::TooShort { len });
    }
    let total = len as usize + 1;
    if total > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    if buf.len() < total {
        // No `reserve(total)` here: the buffer grows only with bytes that really arrive.
        return Ok(None);
    }
    Ok(Some(Frame { bytes: buf.split_to(total).freeze() }))
}

/// Splits one untyped startup-phase packet (length, then body) off the front of `buf`.
///
/// The returned bytes are the body, without the length word.
pub(crate) fn split_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    // The shortest legal startup packet is an SSLRequest: length and code, 8 bytes.
    if len < 8 {
        return Err(FrameError::TooShort { len });
    }
    if len as usize > MAX_STARTUP_LEN {
        return Err(FrameError::TooLarge { len, limit: MAX_STARTUP_LEN });
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    let mut packet = buf.split_to(len as usize);
    packet.advance(4);
    Ok(Some(packet.freeze()))
}

/// Walks the frames of a backend output buffer, which the backend produced complete.
///
/// Yields `(tag, whole frame)`. A truncated tail is reported as one last `Err` so the caller can
/// treat the backend as broken rather than guess.
pub fn frames(buf: &[u8]) -> Frames<'_> {
    Frames { buf }
}

/// Iterator returned by [`frames`].
pub struct Frames<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(u8, &'a [u8]), FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < 5 {
            self.buf = &[];
            return Some(Err(FrameError::TooShort { len: 0 }));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let total = len as usize + 1;
        if len < 4 || total > self.buf.len() {
            self.buf = &[];
            return Some(Err(FrameError::TooShort { len }));
        }
        let (frame, rest) = self.buf.split_at(total);
        self.buf = rest;
        Some(Ok((frame[0], frame)))
    }
}

#[cfg(test)]
mod tests;
