//! Structural decoding of one typed frontend frame, and re-encoding of the few we rewrite.
//!
//! Decoding borrows from the frame and checks every count and terminator against the frame's
//! own length, so a malformed body is an error value, never a panic or an over-read into the
//! next frame (pgwire 0.42's decoders do both, see the research notes). Text stays as raw bytes:
//! it is in the client's encoding, and re-encoding it through `String` would corrupt it.

use bytes::{BufMut, Bytes, BytesMut};

/// A decoded frontend message; byte slices point into the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrontendMessage<'a> {
    /// `Q`: a simple query.
    Query { sql: &'a [u8] },
    /// `P`: statement name, query text, then the parameter type OIDs kept as raw bytes.
    Parse { statement: &'a [u8], sql: &'a [u8], param_types: &'a [u8] },
    /// `B`: portal and statement names, then formats, values and result formats as raw bytes.
    Bind { portal: &'a [u8], statement: &'a [u8], rest: &'a [u8] },
    /// `D`: `b'S'` for a statement or `b'P'` for a portal.
    Describe { kind: u8, name: &'a [u8] },
    /// `E`: portal name and row limit.
    Execute { portal: &'a [u8], max_rows: i32 },
    /// `C`: `b'S'` for a statement or `b'P'` for a portal.
    Close { kind: u8, name: &'a [u8] },
    /// `S`.
    Sync,
    /// `H`.
    Flush,
    /// `X`.
    Terminate,
    /// `F`: a fast-path function call; forwarded whole, answered by `V` and `Z`.
    FunctionCall,
    /// `d`, `c` or `f` outside COPY: PostgreSQL ignores them, and so do we.
    CopyStray,
}

/// Why a frame body is malformed. The connection is closed with `08P01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// What was wrong, for the FATAL message.
    pub(crate) reason: String,
}

impl Malformed {
    fn new(tag: u8, what: &str) -> Malformed {
        Malformed { reason: format!("invalid frontend message type {}: {what}", tag.escape_ascii()) }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Reader<'a> {
    fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let Some(nul) = memchr::memchr(0, self.buf) else {
            return Err(Malformed::new(self.tag, "missing string terminator"));
        };
        let (s, rest) = self.buf.split_at(nul);
        self.buf = &rest[1..];
        Ok(s)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed::new(self.tag, "message too short"));
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(s)
    }
    fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn count(&mut self) -> Result<usize, Malformed> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| Malformed::new(self.tag, "negative count"))
    }
    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn finish(&self) -> Result<(), Malformed> {
        if self.buf.is_empty() { Ok(()) } else { Err(Malformed::new(self.tag, "trailing bytes after message")) }
    }
}

/// Decodes one frame body of type `tag`, requiring that it is consumed exactly.
pub(crate) fn decode(tag: u8, body: &[u8]) -> Result<FrontendMessage<'_>, Malformed> {
    let mut r = Reader { buf: body, tag };
    let msg = match tag {
        b'Q' => FrontendMessage::Query { sql: r.cstr()? },
        b'P' => {
            let statement = r.cstr()?;
            let sql = r.cstr()?;
            let start = r.buf;
            let n = r.count()?;
            r.take(n * 4)?;
            let param_types = &start[..2 + n * 4];
            FrontendMessage::Parse { statement, sql, param_types }
        }
        b'B' => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            let start = r.buf;
            let n_formats = r.count()?;
            r.take(n_formats * 2)?;
            let n_params = r.count()?;
            for _ in 0..n_params {
                let len = r.i32()?;
                if len >= 0 {
                    r.take(len as usize)?;
                } else if len != -1 {
                    return Err(Malformed::new(tag, "invalid parameter length"));
                }
            }
            let n_results = r.count()?;
            r.take(n_results * 2)?;
            let rest = &start[..start.len() - r.buf.len()];
            FrontendMessage::Bind { portal, statement, rest }
        }
        b'D' | b'C' => {
            let kind = r.byte()?;
            if kind != b'S' && kind != b'P' {
                return Err(Malformed::new(tag, "invalid object kind"));
            }
            let name = r.cstr()?;
            if tag == b'D' { FrontendMessage::Describe { kind, name } } else { FrontendMessage::Close { kind, name } }
        }
        b'E' => {
            let portal = r.cstr()?;
            let max_rows = r.i32()?;
            FrontendMessage::Execute { portal, max_rows }
        }
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'X' => FrontendMessage::Terminate,
        b'F' => {
            r.i32()?;
            let n_formats = r.count()?;
            r.take(n_formats * 2)?;
            let n_args = r.count()?;
            for _ in 0..n_args {
                let len = r.i32()?;
                if len >= 0 {
                    r.take(len as usize)?;
                } else if len != -1 {
                    return Err(Malformed::new(tag, "invalid argument length"));
                }
            }
            r.i16()?;
            FrontendMessage::FunctionCall
        }
        b'd' => {
            r.buf = &[];
            FrontendMessage::CopyStray
        }
        b'c' => FrontendMessage::CopyStray,
        b'f' => {
            r.cstr()?;
            FrontendMessage::CopyStray
        }
        _ => return Err(Malformed::new(tag, "unknown message type")),
    };
    r.finish()?;
    Ok(msg)
}

/// Builds a frame of type `tag` from body parts, each `Some` part followed by a NUL when it is a
/// C string. Used to re-encode only the messages whose names we rewrite.
pub fn build(tag: u8, parts: &[Part<'_>]) -> Bytes {
    let mut out = BytesMut::new();
    put(&mut out, tag, parts);
    out.freeze()
}

/// Appends a frame with `tag` whose body is `parts` to `out`.
pub fn put(out: &mut BytesMut, tag: u8, parts: &[Part<'_>]) {
    let body_len: usize = parts
        .iter()
        .map(|p| match p {
            Part::Cstr(s) => s.len() + 1,
            Part::Raw(s) => s.len(),
        })
        .sum();
    out.reserve(body_len + 5);
    out.put_u8(tag);
    out.put_u32((body_len + 4) as u32);
    for part in parts {
        match part {
            Part::Cstr(s) => {
                out.put_slice(s);
                out.put_u8(0);
            }
            Part::Raw(s) => out.put_slice(s),
        }
    }
}

/// One piece of a message body for [`build`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// A C string; the NUL is appended.
    Cstr(&'a [u8]),
    /// Bytes copied as they are.
    Raw(&'a [u8]),
}

/// A `Query` frame for bridge-internal SQL.
pub fn query(sql: &str) -> Bytes {
    build(b'Q', &[Part::Cstr(sql.as_bytes())])
}

/// A `Sync` frame.
pub fn sync() -> Bytes {
    Bytes::from_static(b"S\0\0\0\x04")
}

/// A `C` frame closing statement `name`.
pub fn close_statement(name: &[u8]) -> Bytes {
    build(b'C', &[Part::Raw(b"S"), Part::Cstr(name)])
}

#[cfg(test)]
mod tests;

/// A `Terminate` frame.
pub const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// A `Flush` frame.
pub const FLUSH: &[u8] = b"H\0\0\0\x04";

fn built(write: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Bytes {
    let mut buf = BytesMut::new();
    // postgres-protocol only fails on a string holding a NUL, which none of our callers pass.
    write(&mut buf).expect("no NUL inside a protocol string");
    buf.freeze()
}

/// A protocol 3.0 `StartupMessage` with these parameters.
pub fn startup(params: &[(&str, &str)]) -> Bytes {
    built(|buf| postgres_protocol::message::frontend::startup_message(params.iter().copied(), buf))
}

/// A `PasswordMessage` carrying a cleartext password.
pub fn password(password: &str) -> Bytes {
    built(|buf| postgres_protocol::message::frontend::password_message(password.as_bytes(), buf))
}

/// The first `SASLInitialResponse` of an exchange using `mechanism`.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    built(|buf| postgres_protocol::message::frontend::sasl_initial_response(mechanism, data, buf))
}

/// A later `SASLResponse`.
pub fn sasl_response(data: &[u8]) -> Bytes {
    built(|buf| postgres_protocol::message::frontend::sasl_response(data, buf))
}

/// A `CancelRequest` for the backend with this key.
pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    buf.freeze()
}

/// A `CopyFail` with this reason.
pub fn copy_fail(reason: &str) -> Bytes {
    built(|buf| postgres_protocol::message::frontend::copy_fail(reason, buf))
}
