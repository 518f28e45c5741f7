//! Refusals: statements and messages answered with an error instead of being forwarded, the
//! way PostgreSQL would answer them (inside a transaction, the backend raises the error itself
//! so the transaction fails as it would).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Connection;
use super::batch::Unnamed;
use crate::protocol::backend::{Replies, Severity};
use crate::protocol::frontend::{self as message, Part};
use crate::{Backend, Error};

/// Why a statement or message is answered with an error instead of being forwarded.
#[derive(Clone, Debug)]
pub(super) struct Refusal {
    sqlstate: &'static str,
    message: String,
}

impl Refusal {
    pub(super) fn unsupported(command: &str) -> Refusal {
        Refusal { sqlstate: "0A000", message: format!("{command} is not supported by this server") }
    }

    /// COPY FROM STDIN in a simple query with other statements: the bridge runs it on its own.
    pub(super) fn copy_not_alone() -> Refusal {
        Refusal {
            sqlstate: "0A000",
            message: "COPY FROM STDIN must be the only statement of its query on this server".to_owned(),
        }
    }

    /// COPY FROM STDIN through the extended protocol: the backend would wait for data the
    /// client sends only after it saw the COPY begin.
    pub(super) fn extended_copy_in() -> Refusal {
        Refusal {
            sqlstate: "0A000",
            message: "COPY FROM STDIN through the extended query protocol is not supported by this server; \
                      send it as a simple query"
                .to_owned(),
        }
    }

    pub(super) fn too_large(len: usize, max: usize) -> Refusal {
        Refusal {
            sqlstate: "54000",
            message: format!("message of {len} bytes is larger than this server accepts ({max} bytes)"),
        }
    }

    /// A statement that makes the backend raise this error itself.
    fn raise_sql(&self) -> String {
        format!(
            "DO $pgb$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$pgb$",
            self.sqlstate,
            self.message.replace('\'', "''")
        )
    }
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    /// Answers a refused message instead of forwarding it: a simple `Query` at once, an
    /// extended-protocol message at the `Sync` that ends its group (the rest is discarded).
    pub(super) async fn refuse(&mut self, simple_query: bool, refusal: Refusal) -> Result<(), Error> {
        if !self.batch.is_empty() {
            self.send().await?;
        }
        if !simple_query {
            if self.lease.is_none() {
                self.write_error(Severity::Error, refusal.sqlstate, &refusal.message).await;
            }
            self.discarding = Some(refusal);
            return Ok(());
        }
        if self.lease.is_some() {
            // Let the backend raise the error, so an open transaction is aborted exactly as
            // PostgreSQL would.
            self.batch.push(&message::query(&refusal.raise_sql()));
            self.batch.plan.raised = true;
            self.batch.terminated = true;
            self.batch.unnamed = Unnamed::Dropped;
            self.send().await
        } else {
            let mut replies = Replies::new();
            replies.error(Severity::Error, refusal.sqlstate, &refusal.message)?;
            replies.ready(self.client.tx)?;
            self.stream.write_all(&replies.into_bytes()).await?;
            Ok(())
        }
    }

    /// Answers the `Sync` that ends a group with a refused message.
    pub(super) async fn finish_refusal(&mut self, refusal: &Refusal) -> Result<(), Error> {
        if self.lease.is_none() {
            let mut replies = Replies::new();
            replies.ready(self.client.tx)?;
            self.stream.write_all(&replies.into_bytes()).await?;
            return Ok(());
        }
        // Something of this group already ran, or a transaction is open: the backend raises
        // the error itself so the group or transaction fails as it would in PostgreSQL.
        let sql = refusal.raise_sql();
        self.batch.put(b'P', &[Part::Cstr(b""), Part::Cstr(sql.as_bytes()), Part::Raw(&[0, 0])]);
        self.batch.put(b'B', &[Part::Cstr(b""), Part::Cstr(b""), Part::Raw(&[0, 0, 0, 0, 0, 0])]);
        self.batch.put(b'E', &[Part::Cstr(b""), Part::Raw(&[0, 0, 0, 0])]);
        self.batch.push(&message::sync());
        self.batch.terminated = true;
        self.batch.plan.drop_leading += 2;
        self.batch.plan.raised = true;
        self.batch.unnamed = Unnamed::Dropped;
        self.send().await
    }
}
