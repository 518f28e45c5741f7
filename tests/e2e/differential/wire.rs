//! The differential suite's view of the wire: frontend messages built for scripts (each with a
//! readable label), and backend messages normalized into comparable, printable [`Msg`]s.
//!
//! `Query`, `Sync`, `Flush`, `Terminate`, startup and `CopyFail` come from the workspace codec
//! (`pg_bridge::protocol::frontend`); its generic frame builder is crate-private, so the other
//! frontend messages are laid out here. Backend frames are read with the codec's decoders.
//! Normalization keeps everything a client can see except what differs between any two
//! servers: the backend key, and (in row descriptions) which table OID a column comes from.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use pg_bridge::protocol::backend::{data_row, fields, parameter_status, ready_status};
use pg_bridge::protocol::frontend;

/// One frontend message of a script.
#[derive(Clone)]
pub(crate) struct Fe {
    /// Its type byte.
    pub(crate) tag: u8,
    /// The whole frame.
    pub(crate) bytes: Bytes,
    /// What it is, for reports: `Parse("s1", "SELECT $1")`.
    pub(crate) label: String,
}

fn fe(tag: u8, body: &[u8], label: String) -> Fe {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(tag);
    buf.put_u32(u32::try_from(body.len() + 4).expect("a message under 4 GiB"));
    buf.put_slice(body);
    Fe { tag, bytes: buf.freeze(), label }
}

fn cstr(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(s);
    buf.push(0);
}

/// Up to 60 characters of `s`, quoted.
fn short(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= 60 {
        format!("{flat:?}")
    } else {
        format!("{:?}…", flat.chars().take(60).collect::<String>())
    }
}

/// `Query(sql)`.
pub(crate) fn q(sql: &str) -> Fe {
    Fe { tag: b'Q', bytes: frontend::query(sql), label: format!("Query({})", short(sql)) }
}

/// `Query` with raw bytes (text in a client encoding other than UTF-8).
pub(crate) fn q_bytes(sql: &[u8]) -> Fe {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    fe(b'Q', &body, format!("Query({})", short(&String::from_utf8_lossy(sql))))
}

/// `Parse(name, sql, parameter type OIDs)`.
pub(crate) fn parse(name: &str, sql: &str, types: &[u32]) -> Fe {
    let mut body = Vec::new();
    cstr(&mut body, name.as_bytes());
    cstr(&mut body, sql.as_bytes());
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for oid in types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    fe(b'P', &body, format!("Parse({name:?}, {}, {types:?})", short(sql)))
}

/// A `Bind` or `FunctionCall` argument.
#[derive(Clone)]
pub(crate) enum Param {
    /// Text format.
    Text(Vec<u8>),
    /// Binary format.
    Binary(Vec<u8>),
    /// SQL NULL (sent with text format).
    Null,
}

/// A text-format parameter.
pub(crate) fn t(value: &str) -> Param {
    Param::Text(value.as_bytes().to_vec())
}

impl Param {
    fn label(&self) -> String {
        match self {
            Param::Text(v) if v.len() <= 40 => short(&String::from_utf8_lossy(v)),
            Param::Text(v) => format!("text({} bytes)", v.len()),
            Param::Binary(v) if v.len() <= 16 => format!("bin({})", hex(v)),
            Param::Binary(v) => format!("bin({} bytes)", v.len()),
            Param::Null => "NULL".to_owned(),
        }
    }
}

/// Formats (only when some are binary: none means all text) and values of `params`.
fn put_params(body: &mut Vec<u8>, params: &[Param]) {
    if params.iter().any(|p| matches!(p, Param::Binary(_))) {
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&i16::from(matches!(p, Param::Binary(_))).to_be_bytes());
        }
    } else {
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Param::Text(v) | Param::Binary(v) => {
                body.extend_from_slice(&i32::try_from(v.len()).expect("a parameter under 2 GiB").to_be_bytes());
                body.extend_from_slice(v);
            }
            Param::Null => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

/// `Bind(portal, statement, params, result formats)`.
pub(crate) fn bind(portal: &str, statement: &str, params: &[Param], result_formats: &[i16]) -> Fe {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    cstr(&mut body, statement.as_bytes());
    put_params(&mut body, params);
    body.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        body.extend_from_slice(&f.to_be_bytes());
    }
    let labels: Vec<String> = params.iter().map(Param::label).collect();
    fe(b'B', &body, format!("Bind({portal:?}, {statement:?}, [{}], {result_formats:?})", labels.join(", ")))
}

fn describe_or_close(tag: u8, kind: u8, name: &str) -> Fe {
    let mut body = vec![kind];
    cstr(&mut body, name.as_bytes());
    let what = if tag == b'D' { "Describe" } else { "Close" };
    fe(tag, &body, format!("{what}({}, {name:?})", kind as char))
}

/// `Describe(S, name)`.
pub(crate) fn describe_statement(name: &str) -> Fe {
    describe_or_close(b'D', b'S', name)
}

/// `Describe(P, name)`.
pub(crate) fn describe_portal(name: &str) -> Fe {
    describe_or_close(b'D', b'P', name)
}

/// `Close(S, name)`.
pub(crate) fn close_statement(name: &str) -> Fe {
    describe_or_close(b'C', b'S', name)
}

/// `Close(P, name)`.
pub(crate) fn close_portal(name: &str) -> Fe {
    describe_or_close(b'C', b'P', name)
}

/// `Execute(portal, max_rows)`; 0 is no limit.
pub(crate) fn execute(portal: &str, max_rows: i32) -> Fe {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    body.extend_from_slice(&max_rows.to_be_bytes());
    fe(b'E', &body, format!("Execute({portal:?}, {max_rows})"))
}

/// `Sync`.
pub(crate) fn sync() -> Fe {
    Fe { tag: b'S', bytes: frontend::sync(), label: "Sync".to_owned() }
}

/// `Flush`.
pub(crate) fn flush() -> Fe {
    Fe { tag: b'H', bytes: Bytes::from_static(frontend::FLUSH), label: "Flush".to_owned() }
}

/// `CopyData`.
pub(crate) fn copy_data(data: &[u8]) -> Fe {
    fe(b'd', data, format!("CopyData({})", short(&String::from_utf8_lossy(data))))
}

/// `CopyDone`.
pub(crate) fn copy_done() -> Fe {
    fe(b'c', &[], "CopyDone".to_owned())
}

/// `CopyFail(reason)`.
pub(crate) fn copy_fail(reason: &str) -> Fe {
    Fe { tag: b'f', bytes: frontend::copy_fail(reason), label: format!("CopyFail({reason:?})") }
}

/// `FunctionCall(function OID, arguments, result format)`.
pub(crate) fn function_call(oid: u32, args: &[Param], result_format: i16) -> Fe {
    let mut body = oid.to_be_bytes().to_vec();
    put_params(&mut body, args);
    body.extend_from_slice(&result_format.to_be_bytes());
    let labels: Vec<String> = args.iter().map(Param::label).collect();
    fe(b'F', &body, format!("FunctionCall({oid}, [{}], {result_format})", labels.join(", ")))
}

/// A normalized backend message: a name and its parts, compared and printed as text.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Msg {
    /// `RowDescription`, `ErrorResponse`, … or `<…>` for something the harness observed.
    pub(crate) kind: String,
    /// The message's contents, each rendered as text.
    pub(crate) parts: Vec<String>,
}

impl Msg {
    /// A message of `kind` with `parts`.
    pub(crate) fn new(kind: &str, parts: Vec<String>) -> Msg {
        Msg { kind: kind.to_owned(), parts }
    }

    /// Something the harness observed rather than a message (a timeout, a closed connection).
    pub(crate) fn note(what: String) -> Msg {
        Msg { kind: format!("<{what}>"), parts: Vec::new() }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        for part in &self.parts {
            write!(f, " {part}")?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 64 bits: long values are compared through their length and this hash.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A value as text: quoted if it is short UTF-8, hex if short binary, else its length, hash
/// and beginning.
pub(crate) fn value(v: Option<&[u8]>) -> String {
    let Some(v) = v else { return "NULL".to_owned() };
    match std::str::from_utf8(v) {
        Ok(s) if v.len() <= 200 => format!("{s:?}"),
        Ok(s) => format!("<{} bytes fnv={:016x} {:?}…>", v.len(), fnv(v), s.chars().take(24).collect::<String>()),
        Err(_) if v.len() <= 64 => format!("x'{}'", hex(v)),
        Err(_) => format!("<{} binary bytes fnv={:016x} x'{}'…>", v.len(), fnv(v), hex(&v[..16])),
    }
}

/// Error and notice fields kept: all but the server's source file, line and routine (`F L R`),
/// which say where in PostgreSQL's C code the message was raised.
const KEPT_FIELDS: &[u8] = b"SVCMDHPpqWstcdn";

struct Body<'a> {
    buf: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Option<String> {
        let nul = self.buf.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.buf[..nul]).into_owned();
        self.buf = &self.buf[nul + 1..];
        Some(s)
    }
}

/// Normalizes one backend frame (type, length, body).
pub(crate) fn normalize(tag: u8, frame: &[u8]) -> Msg {
    decode(tag, frame).unwrap_or_else(|| Msg::new("Malformed", vec![format!("{:?}", tag as char), hex(frame)]))
}

fn decode(tag: u8, frame: &[u8]) -> Option<Msg> {
    let mut body = Body { buf: frame.get(5..)? };
    let msg = match tag {
        b'R' => match body.i32()? {
            0 => Msg::new("AuthenticationOk", vec![]),
            code => Msg::new("Authentication", vec![code.to_string()]),
        },
        b'S' => {
            let (name, value) = parameter_status(frame)?;
            Msg::new("ParameterStatus", vec![format!("{name}={value:?}")])
        }
        b'K' => Msg::new("BackendKeyData", vec!["<masked>".to_owned()]),
        b'Z' => {
            ready_status(frame)?;
            Msg::new("ReadyForQuery", vec![(frame[5] as char).to_string()])
        }
        b'T' => {
            let n = body.i16()?;
            let mut parts = Vec::new();
            for _ in 0..n {
                let name = body.cstr()?;
                let table = if body.i32()? == 0 { "0" } else { "*" };
                let (attnum, oid, len, typmod, format) =
                    (body.i16()?, body.i32()?, body.i16()?, body.i32()?, body.i16()?);
                parts.push(format!(
                    "{name:?}(table={table} col={attnum} type={oid} len={len} mod={typmod} fmt={format})"
                ));
            }
            Msg::new("RowDescription", parts)
        }
        b'D' => Msg::new("DataRow", data_row(frame)?.into_iter().map(value).collect()),
        b'C' => Msg::new("CommandComplete", vec![format!("{:?}", body.cstr()?)]),
        b'E' | b'N' => {
            let kind = if tag == b'E' { "ErrorResponse" } else { "NoticeResponse" };
            let kept = fields(frame).filter(|(code, _)| KEPT_FIELDS.contains(code));
            let parts = kept.map(|(code, v)| format!("{}={:?}", code as char, String::from_utf8_lossy(v)));
            Msg::new(kind, parts.collect())
        }
        b'I' => Msg::new("EmptyQueryResponse", vec![]),
        b'1' => Msg::new("ParseComplete", vec![]),
        b'2' => Msg::new("BindComplete", vec![]),
        b'3' => Msg::new("CloseComplete", vec![]),
        b'n' => Msg::new("NoData", vec![]),
        b's' => Msg::new("PortalSuspended", vec![]),
        b't' => {
            let n = body.i16()?;
            let oids: Option<Vec<String>> = (0..n).map(|_| body.i32().map(|oid| oid.to_string())).collect();
            Msg::new("ParameterDescription", oids?)
        }
        b'A' => {
            body.i32()?;
            Msg::new("NotificationResponse", vec!["pid=<masked>".to_owned(), body.cstr()?, body.cstr()?])
        }
        b'V' => {
            let len = body.i32()?;
            let v = if len < 0 { None } else { Some(body.take(len as usize)?) };
            Msg::new("FunctionCallResponse", vec![value(v)])
        }
        b'G' | b'H' | b'W' => {
            let kind = match tag {
                b'G' => "CopyInResponse",
                b'H' => "CopyOutResponse",
                _ => "CopyBothResponse",
            };
            let format = body.take(1)?[0];
            let n = body.i16()?;
            let columns: Option<Vec<String>> = (0..n).map(|_| body.i16().map(|f| f.to_string())).collect();
            Msg::new(kind, vec![format!("format={format}"), format!("columns={:?}", columns?)])
        }
        b'd' => Msg::new("CopyData", vec![value(Some(body.buf))]),
        b'c' => Msg::new("CopyDone", vec![]),
        b'v' => {
            let mut parts = vec![format!("newest={}", body.i32()?)];
            let n = body.i32()?;
            for _ in 0..n {
                parts.push(format!("{:?}", body.cstr()?));
            }
            Msg::new("NegotiateProtocolVersion", parts)
        }
        _ => Msg::new("Unknown", vec![format!("{:?}", tag as char), hex(body.buf)]),
    };
    Some(msg)
}
