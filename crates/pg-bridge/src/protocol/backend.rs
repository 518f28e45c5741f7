//! Backend messages: read from the backend's output (errors and notices, parameter status,
//! ready status, text rows), and built for the bridge's own replies with pgwire's message
//! types. Messages from the backend are forwarded as the bytes it produced; reading them never
//! copies more than the field asked for.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey};

use crate::Error;
use crate::protocol::frame::frames;

/// The transaction status carried by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// Reads the status byte of a `ReadyForQuery` frame.
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// Severity of a synthetic error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

/// A growing buffer of encoded backend messages.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    buf: BytesMut,
}

fn put<M: Message>(buf: &mut BytesMut, msg: &M) -> Result<(), Error> {
    msg.encode(buf).map_err(|source| Error::Encode { source: Box::new(source) })
}

impl Replies {
    /// An empty buffer.
    pub(crate) fn new() -> Replies {
        Replies::default()
    }

    /// Appends an `ErrorResponse`.
    pub(crate) fn error(&mut self, severity: Severity, sqlstate: &str, message: &str) -> Result<(), Error> {
        self.error_with_hint(severity, sqlstate, message, None)
    }

    /// Appends an `ErrorResponse` with an optional `HINT`.
    pub(crate) fn error_with_hint(
        &mut self,
        severity: Severity,
        sqlstate: &str,
        message: &str,
        hint: Option<&str>,
    ) -> Result<(), Error> {
        let severity = match severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut fields = vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', sqlstate.to_owned()),
            (b'M', message.to_owned()),
        ];
        if let Some(hint) = hint {
            fields.push((b'H', hint.to_owned()));
        }
        put(&mut self.buf, &ErrorResponse::new(fields))
    }

    /// Appends a `ReadyForQuery`.
    pub(crate) fn ready(&mut self, status: TxStatus) -> Result<(), Error> {
        let status = match status {
            TxStatus::Idle => TransactionStatus::Idle,
            TxStatus::InTransaction => TransactionStatus::Transaction,
            TxStatus::Failed => TransactionStatus::Error,
        };
        put(&mut self.buf, &ReadyForQuery::new(status))
    }

    /// Appends a `CommandComplete`.
    pub(crate) fn command_complete(&mut self, tag: &str) -> Result<(), Error> {
        put(&mut self.buf, &CommandComplete::new(tag.to_owned()))
    }

    /// Appends `AuthenticationOk`.
    pub(crate) fn auth_ok(&mut self) -> Result<(), Error> {
        put(&mut self.buf, &Authentication::Ok)
    }

    /// Appends `AuthenticationSASL` offering SCRAM-SHA-256.
    pub(crate) fn auth_sasl(&mut self) -> Result<(), Error> {
        put(&mut self.buf, &Authentication::SASL(vec!["SCRAM-SHA-256".to_owned()]))
    }

    /// Appends `AuthenticationMD5Password` with `salt`.
    pub(crate) fn auth_md5(&mut self, salt: [u8; 4]) -> Result<(), Error> {
        put(&mut self.buf, &Authentication::MD5Password(salt.to_vec()))
    }

    /// Appends `AuthenticationSASLContinue`.
    pub(crate) fn auth_sasl_continue(&mut self, data: &[u8]) -> Result<(), Error> {
        put(&mut self.buf, &Authentication::SASLContinue(data.to_vec().into()))
    }

    /// Appends `AuthenticationSASLFinal`.
    pub(crate) fn auth_sasl_final(&mut self, data: &[u8]) -> Result<(), Error> {
        put(&mut self.buf, &Authentication::SASLFinal(data.to_vec().into()))
    }

    /// Appends a `ParameterStatus`.
    pub(crate) fn parameter_status(&mut self, name: &str, value: &str) -> Result<(), Error> {
        put(&mut self.buf, &ParameterStatus::new(name.to_owned(), value.to_owned()))
    }

    /// Appends a protocol-3.0 `BackendKeyData`.
    pub(crate) fn backend_key(&mut self, pid: i32, secret: i32) -> Result<(), Error> {
        put(&mut self.buf, &BackendKeyData::new(pid, SecretKey::I32(secret)))
    }

    /// Appends `NegotiateProtocolVersion` offering 3.0 (as the full version number, like the
    /// PostgreSQL server) and listing unsupported options.
    pub(crate) fn negotiate_protocol(&mut self, unsupported: Vec<String>) -> Result<(), Error> {
        put(&mut self.buf, &NegotiateProtocolVersion::new(196_608, unsupported))
    }

    /// The encoded messages.
    pub(crate) fn into_bytes(self) -> BytesMut {
        self.buf
    }
}

/// The `ErrorResponse` frame `frame` with severity `severity` (the fields otherwise as they
/// are): how a backend's error to a setting becomes the FATAL that ends a connection.
pub fn with_severity(frame: &[u8], severity: &str) -> BytesMut {
    let mut body = Vec::with_capacity(frame.len());
    for (code, value) in fields(frame) {
        body.push(code);
        body.extend_from_slice(if matches!(code, b'S' | b'V') { severity.as_bytes() } else { value });
        body.push(0);
    }
    body.push(0);
    let mut res = BytesMut::with_capacity(body.len() + 5);
    res.extend_from_slice(&[frame.first().copied().unwrap_or(b'E')]);
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(&body);
    res
}

/// A buffer holding one `ErrorResponse`, for the many places that only need that.
pub(crate) fn error_frame(severity: Severity, sqlstate: &str, message: &str) -> Result<BytesMut, Error> {
    let mut replies = Replies::new();
    replies.error(severity, sqlstate, message)?;
    Ok(replies.into_bytes())
}

/// The fields of an `ErrorResponse` or `NoticeResponse` frame (type, length and body), each
/// as its one-letter code and text. Empty for a malformed frame.
pub fn fields(frame: &[u8]) -> impl Iterator<Item = (u8, &[u8])> + '_ {
    frame.get(5..).unwrap_or_default().split(|&b| b == 0).filter_map(|field| Some((*field.first()?, &field[1..])))
}

/// One field of an `ErrorResponse` or `NoticeResponse` frame, as text.
pub fn field(frame: &[u8], code: u8) -> Option<String> {
    fields(frame).find(|(c, _)| *c == code).map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

/// The SQLSTATE and message of the first `ErrorResponse` in a backend output.
pub fn first_error(output: &[u8]) -> Option<(String, String)> {
    let (_, frame) = frames(output).flatten().find(|(tag, _)| *tag == b'E')?;
    Some((field(frame, b'C').unwrap_or_default(), field(frame, b'M').unwrap_or_default()))
}

/// Decodes one `ParameterStatus` frame into its name and value.
pub fn parameter_status(frame: &[u8]) -> Option<(String, String)> {
    let body = frame.get(5..)?;
    let mut parts = body.split(|&b| b == 0);
    let name = String::from_utf8_lossy(parts.next()?).into_owned();
    let value = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((name, value))
}

/// The transaction status of a `ReadyForQuery` frame.
pub fn ready_status(frame: &[u8]) -> Option<TxStatus> {
    frame.get(5).copied().and_then(TxStatus::from_byte)
}

/// The values of a `DataRow` frame (`None` for SQL NULL), or `None` when it is malformed.
pub fn data_row(frame: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let body = frame.get(5..)?;
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut res = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            res.push(None);
            continue;
        }
        let value = body.get(at..at + len as usize)?;
        at += len as usize;
        res.push(Some(value));
    }
    (at == body.len()).then_some(res)
}

/// The text rows of a backend output (`DataRow`s), values decoded as UTF-8.
pub fn text_rows(output: &[u8]) -> Vec<Vec<Option<String>>> {
    frames(output)
        .flatten()
        .filter(|(tag, _)| *tag == b'D')
        .filter_map(|(_, frame)| data_row(frame))
        .map(|row| row.into_iter().map(|value| value.map(|v| String::from_utf8_lossy(v).into_owned())).collect())
        .collect()
}

#[cfg(test)]
mod tests;
