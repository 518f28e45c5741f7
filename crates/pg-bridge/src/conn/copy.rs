//! COPY in a simple query, run by the bridge.
//!
//! PGlite cannot take `COPY ... FROM STDIN` as a simple query (it waits for data its
//! single-call transport never brings), but it can in the extended protocol when the data
//! comes in the same request. So the bridge learns from the backend what the statement is,
//! without reading its text: it runs it as Parse/Bind/Execute followed by a `CopyFail` (the
//! probe). A COPY FROM STDIN answers with its `CopyInResponse`, then fails on the `CopyFail`,
//! having changed nothing; that response goes to the client, whose `CopyData` is collected
//! until `CopyDone` or `CopyFail`, then the statement runs again with the data in one
//! exchange. Anything else (COPY TO STDOUT, a server file, an error) ran as it should: its
//! output is the answer. Inside a transaction block the probe runs in a savepoint, rolled back
//! when it was only a probe, so the failure it ends in does not fail the client's transaction.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::batch::{Batch, Unnamed};
use super::{Connection, Next};
use crate::protocol::backend::TxStatus;
use crate::protocol::frame;
use crate::protocol::frontend::{self as message, FrontendMessage, Part};
use crate::{Backend, Error};

/// The savepoint the probe runs in, inside a transaction block.
const SAVEPOINT: &str = "_pgb_copy";

/// What the client sent for a COPY FROM STDIN.
struct CopyIn {
    /// Its `CopyData` frames as sent, and the `CopyDone` or `CopyFail` that ended them.
    frames: BytesMut,
    /// The data did not fit in one request to the backend: the COPY fails with this.
    too_large: Option<String>,
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    /// Runs the simple query `sql`, a single COPY statement.
    pub(super) async fn copy_query(&mut self, sql: &[u8]) -> Result<(), Error> {
        if !self.batch.is_empty() {
            self.send().await?;
        }
        // The probe's unnamed statement replaces whatever was there.
        self.client.unnamed_parse.clear();
        let running = self.client.run.start();
        if self.stopping() {
            self.ending = Some(("57P01", "terminating connection due to administrator command"));
            return Ok(());
        }
        self.acquire().await?;
        if let Some(session) = self.lease.as_mut() {
            session.deallocate_now(&self.shared.backend).await?;
            session.set_unnamed_owner(None);
        }
        let savepoint = self.client.tx == TxStatus::InTransaction;
        let mut probe = BytesMut::new();
        if savepoint {
            probe.extend_from_slice(&message::query(&format!("SAVEPOINT {SAVEPOINT}")));
        }
        let statement = statement(sql);
        probe.extend_from_slice(&statement);
        probe.extend_from_slice(&message::copy_fail("the bridge's probe"));
        probe.extend_from_slice(&message::sync());
        let Some((output, started)) = self.exchange_started(probe.freeze(), running).await? else {
            return Ok(());
        };
        let copy_in = frame::frames(&output).flatten().find(|(tag, _)| *tag == b'G').map(|(_, g)| g.to_vec());
        let mut batch = Batch::new();
        batch.terminated = true;
        batch.unnamed = Unnamed::Dropped;
        // ParseComplete and BindComplete: the client sent a simple query.
        batch.plan.drop_leading = 2;
        let Some(copy_in) = copy_in else {
            // Not COPY FROM STDIN: it ran, and its output is the answer.
            batch.plan.skip_ready = usize::from(savepoint);
            self.finish_turn(batch, output, started).await?;
            if savepoint && self.client.tx == TxStatus::InTransaction {
                self.release_savepoint().await?;
            }
            return Ok(());
        };
        // Until the COPY is over: no notifications, and a client that leaves has its
        // sequence cleaned up.
        self.client.pending = true;
        self.write_output(&copy_in).await?;
        let data = self.copy_data().await?;
        let running = self.client.run.start();
        if savepoint {
            batch.prefix.extend_from_slice(&message::query(&format!(
                "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
            )));
            batch.plan.skip_ready = 1;
        }
        batch.frames.extend_from_slice(&statement);
        match &data.too_large {
            Some(reason) => batch.frames.extend_from_slice(&message::copy_fail(reason)),
            None => batch.frames.extend_from_slice(&data.frames),
        }
        batch.frames.extend_from_slice(&message::sync());
        let mut frames = std::mem::take(&mut batch.prefix);
        frames.extend_from_slice(&batch.frames);
        let Some((output, started)) = self.exchange_started(frames.freeze(), running).await? else {
            return Ok(());
        };
        self.finish_turn(batch, output, started).await
    }

    /// Reads the client's COPY data up to its `CopyDone` or `CopyFail`. `Flush` and `Sync`
    /// are ignored, as PostgreSQL ignores them during COPY FROM STDIN; any other message fails
    /// the COPY.
    async fn copy_data(&mut self) -> Result<CopyIn, Error> {
        let max = self.shared.max_request.unwrap_or(usize::MAX).saturating_sub(64 * 1024);
        let mut res = CopyIn { frames: BytesMut::new(), too_large: None };
        loop {
            let frame = match self.next_frame().await? {
                Next::Frame(frame) => frame,
                Next::Closed => {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client left during COPY FROM STDIN",
                    )));
                }
                Next::Stop { sqlstate, message } => {
                    self.write_error(crate::protocol::backend::Severity::Fatal, sqlstate, &message).await;
                    let _ = self.stream.flush().await;
                    return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::Interrupted, message)));
                }
            };
            match frame.tag() {
                b'd' => {
                    if res.too_large.is_none() {
                        if res.frames.len() + frame.bytes().len() > max {
                            res.too_large = Some(format!(
                                "COPY data of more than {max} bytes is more than this server takes in one COPY"
                            ));
                            res.frames = BytesMut::new();
                        } else {
                            res.frames.extend_from_slice(frame.bytes());
                        }
                    }
                }
                b'c' | b'f' => {
                    res.frames.extend_from_slice(frame.bytes());
                    return Ok(res);
                }
                b'H' | b'S' => {}
                tag => {
                    let reason = match message::decode(tag, frame.body()) {
                        Ok(FrontendMessage::Terminate) => "the client ended the connection during COPY".to_owned(),
                        _ => format!("unexpected message type 0x{tag:02X} during COPY from stdin"),
                    };
                    res.frames = BytesMut::from(&message::copy_fail(&reason)[..]);
                    return Ok(res);
                }
            }
        }
    }

    /// Releases the probe's savepoint, which a COPY that ran in a transaction block left.
    async fn release_savepoint(&mut self) -> Result<(), Error> {
        let Some(session) = self.lease.as_mut() else {
            return Ok(());
        };
        if let Err((code, message)) =
            session.internal(&self.shared.backend, &format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?
        {
            tracing::warn!(code, message, "releasing the COPY probe's savepoint failed");
        }
        Ok(())
    }
}

/// Parse, Bind and Execute of `sql` in the unnamed statement and portal.
fn statement(sql: &[u8]) -> BytesMut {
    let mut res = BytesMut::new();
    message::put(&mut res, b'P', &[Part::Cstr(b""), Part::Cstr(sql), Part::Raw(&0u16.to_be_bytes())]);
    // No parameter formats, no parameters, no result formats.
    message::put(&mut res, b'B', &[Part::Cstr(b""), Part::Cstr(b""), Part::Raw(&[0; 6])]);
    message::put(&mut res, b'E', &[Part::Cstr(b""), Part::Raw(&0u32.to_be_bytes())]);
    res
}
