//! Backend messages the bridge writes itself, built with pgwire's message types.
//!
//! Only synthetic replies are built here (errors, startup messages, ReadyForQuery); messages
//! from the backend are forwarded as the bytes it produced.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey};

use crate::Error;

/// The transaction status carried by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// Reads the status byte of a `ReadyForQuery` frame.
    pub(crate) fn from_byte(b: u8) -> Option<TxStatus> {
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

/// A buffer holding one `ErrorResponse`, for the many places that only need that.
pub(crate) fn error_frame(severity: Severity, sqlstate: &str, message: &str) -> Result<BytesMut, Error> {
    let mut replies = Replies::new();
    replies.error(severity, sqlstate, message)?;
    Ok(replies.into_bytes())
}
