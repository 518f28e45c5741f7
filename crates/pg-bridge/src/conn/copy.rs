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
//!
//! A backend that streams (see [`Backend::streams`]) gets the client's COPY data as the client
//! sends it, in pieces, while the statement runs, and COPY data it makes goes to the client as
//! it comes: memory stays bounded whatever the size. Otherwise the data is held until the
//! client has sent it all, within what the backend takes in one request.

use std::future::Future;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::batch::{Batch, Unnamed};
use super::{Connection, Next};
use crate::filter::{self, Plan};
use crate::protocol::backend::{Severity, TxStatus};
use crate::protocol::frame;
use crate::protocol::frontend::{self as message, FrontendMessage, Part};
use crate::shared::RunGuard;
use crate::{Backend, Error};

/// The savepoint the probe runs in, inside a transaction block.
const SAVEPOINT: &str = "_pgb_copy";

/// About how much of a client's COPY data goes to a streaming backend at a time.
const PIECE: usize = 256 * 1024;

/// Pieces that may wait in each direction of a streamed exchange.
const PIECES_IN_FLIGHT: usize = 2;

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
        let streams = self.shared.backend.streams();
        // ParseComplete and BindComplete: the client sent a simple query.
        let mut early = Some(Plan { drop_leading: 2, skip_ready: usize::from(savepoint), ..Plan::default() });
        let answer = if streams {
            self.exchange_copy(probe.freeze(), running, false, &mut early).await?
        } else {
            self.exchange_started(probe.freeze(), running).await?
        };
        let Some((output, started)) = answer else {
            return Ok(());
        };
        let copy_in = frame::frames(&output).flatten().find(|(tag, _)| *tag == b'G').map(|(_, g)| g.to_vec());
        let mut batch = Batch::new();
        batch.terminated = true;
        batch.unnamed = Unnamed::Dropped;
        // What is left of the plan once COPY data went to the client.
        let (drop_leading, skip_ready) = early.map_or((0, 0), |plan| (plan.drop_leading, plan.skip_ready));
        batch.plan.drop_leading = drop_leading;
        let Some(copy_in) = copy_in else {
            // Not COPY FROM STDIN: it ran, and its output is the answer.
            batch.plan.skip_ready = skip_ready;
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
        if streams {
            let running = self.client.run.start();
            let mut head = BytesMut::new();
            if savepoint {
                head.extend_from_slice(&message::query(&format!(
                    "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
                )));
                batch.plan.skip_ready = 1;
            }
            head.extend_from_slice(&statement);
            // A COPY FROM makes no COPY data: nothing leaves early.
            let Some((output, started)) = self.exchange_copy(head.freeze(), running, true, &mut None).await? else {
                return Ok(());
            };
            return self.finish_turn(batch, output, started).await;
        }
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
            let frame = self.copy_frame().await?;
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
                    res.frames = BytesMut::from(&message::copy_fail(&unexpected(tag, frame.body()))[..]);
                    return Ok(res);
                }
            }
        }
    }

    /// [`exchange_started`](Self::exchange_started) through the backend's streamed exchange:
    /// COPY data it makes goes to the client as it comes (the first piece filtered by `early`,
    /// which is then used up), and with `feed` the client's COPY data goes to the backend as
    /// the client sends it. A client that leaves or fails meanwhile ends the COPY (`CopyFail`)
    /// and the exchange is seen to its end before its error is returned.
    async fn exchange_copy(
        &mut self,
        head: Bytes,
        running: RunGuard,
        feed: bool,
        early: &mut Option<Plan>,
    ) -> Result<Option<(BytesMut, Instant)>, Error> {
        if self.lease.is_none() {
            return Err(Error::BackendGone);
        }
        let cancel = self.client.run.cancel.clone();
        let started = Instant::now();
        let tx_deadline = self.tx_deadline(started);
        let (input, input_rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let (output_tx, output) = mpsc::channel(PIECES_IN_FLIGHT);
        let shared = self.shared.clone();
        let exchange =
            async move { shared.backend.exchange_streamed(head, input_rx, output_tx, cancel, tx_deadline).await };
        let (answer, client) = self.pump(exchange, output, feed.then_some(input), early).await;
        drop(running);
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        let output = session.exchanged(&self.shared.backend, &mut self.client.state, answer).await?;
        client?;
        self.answered(output, started, tx_deadline)
    }

    /// Runs `exchange` to its end, meanwhile writing the pieces of output it hands on to the
    /// client and, while `feed` is open, sending it the client's COPY data. Returns the
    /// exchange's answer and what became of the client.
    async fn pump(
        &mut self,
        exchange: impl Future<Output = Result<BytesMut, Error>>,
        mut pieces: mpsc::Receiver<Bytes>,
        mut feed: Option<mpsc::Sender<Bytes>>,
        early: &mut Option<Plan>,
    ) -> (Result<BytesMut, Error>, Result<(), Error>) {
        tokio::pin!(exchange);
        // The client's next piece, waiting for room; whether it is the last.
        let mut ready: Option<Bytes> = None;
        let mut last = false;
        let mut client = Ok(());
        let answer = loop {
            // A disabled branch's future is still made (and dropped unpolled): the sender is
            // cloned only for a piece that is ready.
            let sender = feed.clone().filter(|_| ready.is_some());
            tokio::select! {
                biased;
                Some(piece) = pieces.recv() => {
                    if client.is_ok()
                        && let Err(error) = self.write_piece(piece, early).await
                    {
                        client = Err(error);
                        // Nobody reads what the COPY makes: stop it.
                        self.client.run.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                        self.shared.backend.cancel().await;
                        if feed.is_some() && !last {
                            ready = Some(ended(ready.take(), "the client stopped reading during COPY"));
                            last = true;
                        }
                    }
                }
                permit = async move {
                    match sender {
                        Some(sender) => sender.reserve_owned().await,
                        None => std::future::pending().await,
                    }
                }, if ready.is_some() && feed.is_some() =>
                {
                    let sent = match permit {
                        Ok(permit) => {
                            drop(permit.send(ready.take().expect("a ready piece")));
                            true
                        }
                        // The exchange is over (it failed): nothing more is read.
                        Err(_) => false,
                    };
                    if last || !sent {
                        ready = None;
                        feed = None;
                    }
                }
                next = self.copy_piece(), if feed.is_some() && ready.is_none() && !last => {
                    match next {
                        Ok((piece, end)) => {
                            ready = Some(piece.freeze());
                            last = end;
                        }
                        Err(error) => {
                            ready = Some(ended(None, "the client left during COPY FROM STDIN"));
                            last = true;
                            client = Err(error);
                        }
                    }
                }
                answer = &mut exchange => break answer,
            }
        };
        // What left before the end.
        while let Ok(piece) = pieces.try_recv() {
            if client.is_ok()
                && let Err(error) = self.write_piece(piece, early).await
            {
                client = Err(error);
            }
        }
        (answer, client)
    }

    /// Writes a piece of COPY output to the client, filtered by `early` if that is still to be
    /// done.
    async fn write_piece(&mut self, piece: Bytes, early: &mut Option<Plan>) -> Result<(), Error> {
        match early.take() {
            Some(plan) => {
                let filtered = filter::filter(BytesMut::from(&piece[..]), &plan)?;
                self.write_output(&filtered.out).await
            }
            None => self.write_output(&piece).await,
        }
    }

    /// The client's next COPY data for a streaming backend: whole messages, as many as it has
    /// sent, up to about [`PIECE`] bytes; whether it is the last, which ends with the client's
    /// `CopyDone` or `CopyFail` and a `Sync`. `Flush` and `Sync` are ignored, as PostgreSQL
    /// ignores them during COPY FROM STDIN; any other message fails the COPY. An error when the
    /// client left or the connection must end.
    async fn copy_piece(&mut self) -> Result<(BytesMut, bool), Error> {
        let mut piece = BytesMut::new();
        loop {
            let frame = if piece.is_empty() {
                self.copy_frame().await?
            } else {
                // What the client has sent already goes with it; nothing is waited for.
                match frame::split_frame(&mut self.client.buf, frame::MAX_MESSAGE_LEN) {
                    Ok(Some(frame)) => frame,
                    _ => return Ok((piece, false)),
                }
            };
            match frame.tag() {
                b'd' => {
                    piece.extend_from_slice(frame.bytes());
                    if piece.len() >= PIECE {
                        return Ok((piece, false));
                    }
                }
                b'c' | b'f' => {
                    piece.extend_from_slice(frame.bytes());
                    piece.extend_from_slice(&message::sync());
                    return Ok((piece, true));
                }
                b'H' | b'S' => {}
                tag => {
                    piece.extend_from_slice(&message::copy_fail(&unexpected(tag, frame.body())));
                    piece.extend_from_slice(&message::sync());
                    return Ok((piece, true));
                }
            }
        }
    }

    /// The client's next message during COPY FROM STDIN; an error when it left or the
    /// connection must end (told to the client first).
    async fn copy_frame(&mut self) -> Result<frame::Frame, Error> {
        match self.next_frame().await? {
            Next::Frame(frame) => Ok(frame),
            Next::Closed => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client left during COPY FROM STDIN",
            ))),
            Next::Stop { sqlstate, message } => {
                self.write_error(Severity::Fatal, sqlstate, &message).await;
                let _ = self.stream.flush().await;
                Err(Error::Io(std::io::Error::new(std::io::ErrorKind::Interrupted, message)))
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

/// Why a COPY FROM STDIN fails when the client sends a message of type `tag` in its data.
fn unexpected(tag: u8, body: &[u8]) -> String {
    match message::decode(tag, body) {
        Ok(FrontendMessage::Terminate) => "the client ended the connection during COPY".to_owned(),
        _ => format!("unexpected message type 0x{tag:02X} during COPY from stdin"),
    }
}

/// `ready` (COPY data on its way) followed by a `CopyFail` for `reason` and a `Sync`: the end
/// of a COPY the client cannot finish.
fn ended(ready: Option<Bytes>, reason: &str) -> Bytes {
    let mut res = BytesMut::new();
    if let Some(ready) = ready {
        res.extend_from_slice(&ready);
    }
    res.extend_from_slice(&message::copy_fail(reason));
    res.extend_from_slice(&message::sync());
    res.freeze()
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
