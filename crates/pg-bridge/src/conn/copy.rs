//! COPY with the client.
//!
//! A backend that streams (see [`Backend::streams`]) runs COPY as PostgreSQL does. A batch
//! that may run one (a simple query with a COPY statement, or the `Execute` of a portal whose
//! statement is a COPY) goes in a streamed exchange, and what happens is learnt from the
//! backend, not from the text: whenever it has read everything and waits for more, it says so
//! with what it said meanwhile. After a `CopyInResponse` that goes to the client, whose COPY
//! data then goes to the backend as the client sends it, up to its `CopyDone` or `CopyFail`;
//! any other wait ends the exchange, and the client's next messages are handled as usual.
//! COPY data the backend makes goes to the client as it comes. Memory stays bounded whatever
//! the size, and a COPY may be anywhere: in a query with other statements, or in the
//! extended protocol.
//!
//! Otherwise (PGlite 0.2: one request, one reply) a COPY alone in a simple query is run with a
//! probe. PGlite cannot take `COPY ... FROM STDIN` as a simple query there (it waits for data
//! its single-call transport never brings), but it can in the extended protocol when the data
//! comes in the same request. So the bridge learns from the backend what the statement is,
//! without reading its text: it runs it as Parse/Bind/Execute followed by a `CopyFail` (the
//! probe). A COPY FROM STDIN answers with its `CopyInResponse`, then fails on the `CopyFail`,
//! having changed nothing; that response goes to the client, whose `CopyData` is collected
//! until `CopyDone` or `CopyFail`, then the statement runs again with the data in one
//! exchange, within what the backend takes in one request. Anything else (COPY TO STDOUT, a
//! server file, an error) ran as it should: its output is the answer. Inside a transaction
//! block the probe runs in a savepoint, rolled back when it was only a probe, so the failure
//! it ends in does not fail the client's transaction.

use std::future::Future;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::batch::{Batch, Unnamed};
use super::{Connection, Next};
use crate::filter::{self, Filtered, Plan};
use crate::protocol::backend::TxStatus;
use crate::protocol::frame;
use crate::protocol::frontend::{self as message, FrontendMessage, Part};
use crate::shared::RunGuard;
use crate::{Backend, Error, Piece};

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
    /// Runs the simple query `sql`, a single COPY statement, on a backend that does not
    /// stream (see the module's doc).
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
            self.finish_turn(batch, output, started, None).await?;
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
        self.finish_turn(batch, output, started, None).await
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

    /// [`exchange_started`](Self::exchange_started) through the backend's streamed exchange,
    /// a COPY in it running with the client (see the module's doc). Also returns what went to
    /// the client on the way, filtered by `plan` (its bytes already written). A client that
    /// leaves or stops reading meanwhile ends the COPY, and the exchange is seen to its end
    /// before its error is returned.
    pub(super) async fn exchange_copy(
        &mut self,
        head: Bytes,
        running: RunGuard,
        plan: &mut Plan,
    ) -> Result<Option<(BytesMut, Instant, Filtered)>, Error> {
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
        let pumped = self.pump(exchange, output, input, plan).await;
        drop(running);
        let Some(session) = self.lease.as_mut() else {
            return Err(Error::BackendGone);
        };
        let mut held = pumped.held;
        let answer = pumped.answer.map(|rest| {
            held.unsplit(rest);
            held
        });
        let output = session.exchanged(&self.shared.backend, &mut self.client.state, answer).await?;
        if pumped.client.is_err() {
            // The turn ends here: what is cleaned up after the client depends on where the
            // backend stands.
            match frame::frames(&output).flatten().filter(|(tag, _)| *tag == b'Z').last() {
                Some((_, ready)) => {
                    self.client.tx = crate::protocol::backend::ready_status(ready).unwrap_or(TxStatus::Failed);
                    self.client.pending = false;
                }
                None => self.client.pending = true,
            }
        }
        pumped.client?;
        Ok(self.answered(output, started, tx_deadline)?.map(|(output, started)| (output, started, pumped.written)))
    }

    /// Runs `exchange` to its end: writes what the backend hands on to the client when it is
    /// COPY data or leads to a COPY FROM STDIN, feeds that COPY the client's data, and ends the
    /// input at any other wait, keeping what was said then for the answer.
    async fn pump(
        &mut self,
        exchange: impl Future<Output = Result<BytesMut, Error>>,
        mut pieces: mpsc::Receiver<Piece>,
        input: mpsc::Sender<Bytes>,
        plan: &mut Plan,
    ) -> Pumped {
        tokio::pin!(exchange);
        let mut feed = Some(input);
        let mut copy = CopyState::default();
        // The client's next piece, waiting for room; whether it ends the COPY's data.
        let mut ready: Option<Bytes> = None;
        let mut last = false;
        let mut res =
            Pumped { answer: Ok(BytesMut::new()), client: Ok(()), held: BytesMut::new(), written: Filtered::default() };
        res.answer = loop {
            // A disabled branch's future is still made (and dropped unpolled): the sender is
            // cloned only for a piece that is ready.
            let sender = feed.clone().filter(|_| ready.is_some());
            tokio::select! {
                biased;
                Some(piece) = pieces.recv() => {
                    let wanted = self.take_piece(piece, &mut copy, plan, &mut res).await;
                    if !wanted {
                        feed = None;
                        ready = None;
                    } else if res.client.is_err() && copy.active() && !last {
                        // Nobody reads what the COPY says: it fails.
                        ready = Some(ended(ready.take(), "the client stopped reading during COPY"));
                        last = true;
                    }
                }
                permit = async move {
                    match sender {
                        Some(sender) => sender.reserve_owned().await,
                        None => std::future::pending().await,
                    }
                }, if ready.is_some() && feed.is_some() =>
                {
                    match permit {
                        Ok(permit) => {
                            drop(permit.send(ready.take().expect("a ready piece")));
                            copy.sent += 1;
                            if last {
                                copy.fed_end = true;
                                last = false;
                            }
                        }
                        // The exchange is over (it failed): nothing more is read.
                        Err(_) => {
                            ready = None;
                            feed = None;
                        }
                    }
                }
                next = self.copy_piece(), if feed.is_some() && copy.active() && ready.is_none() && res.client.is_ok() => {
                    match next {
                        Ok((piece, end)) => {
                            ready = Some(piece.freeze());
                            last = end;
                        }
                        Err(error) => {
                            ready = Some(ended(None, "the client left during COPY FROM STDIN"));
                            last = true;
                            res.client = Err(error);
                        }
                    }
                }
                answer = &mut exchange => break answer,
            }
        };
        // What was handed on before the end.
        while let Ok(piece) = pieces.try_recv() {
            self.take_piece(piece, &mut copy, plan, &mut res).await;
        }
        res
    }

    /// Takes a piece the backend handed on: COPY data and what leads to the client's COPY
    /// data go to the client; what it said once no COPY wants the client's data (its end, an
    /// error, `ReadyForQuery`) is held for the answer, which the turn's bookkeeping reads.
    /// Returns whether the backend is to get more input: not after a wait that followed
    /// everything it was sent, unless a COPY wants more.
    async fn take_piece(&mut self, piece: Piece, copy: &mut CopyState, plan: &mut Plan, res: &mut Pumped) -> bool {
        let bytes = match piece {
            Piece::CopyOut(bytes) => bytes,
            Piece::Waits { said, read } => {
                copy.saw(&said);
                if !copy.active() {
                    res.held.extend_from_slice(&said);
                    // A wait before it read what was sent decides nothing.
                    return read < copy.sent;
                }
                // Until the COPY is over: no notifications, and a client that leaves has its
                // sequence cleaned up.
                self.client.pending = true;
                said
            }
        };
        if bytes.is_empty() || res.client.is_err() {
            return true;
        }
        let mut out = std::mem::take(&mut res.held);
        out.extend_from_slice(&bytes);
        let result = match filter::filter(out, plan) {
            Ok(mut filtered) => {
                let out = std::mem::take(&mut filtered.out);
                res.written = std::mem::take(&mut res.written).then(filtered);
                self.write_output(&out).await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            res.client = Err(error);
            // Nobody reads what the COPY makes: stop it.
            self.client.run.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            self.shared.backend.cancel().await;
        }
        true
    }

    /// The client's next COPY data for a streaming backend: whole messages, as many as it has
    /// sent, up to about [`PIECE`] bytes; whether it ends the data, with the client's
    /// `CopyDone` or `CopyFail`, or with a message that has no place in COPY (passed on for
    /// the backend to fail the COPY with, as PostgreSQL does). `Flush` and `Sync` are left out,
    /// as PostgreSQL ignores them during COPY FROM STDIN; a `Terminate` fails the COPY. An
    /// error when the client left or the connection must end.
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
                b'H' | b'S' => {}
                b'X' => {
                    piece.extend_from_slice(&message::copy_fail(&unexpected(b'X', frame.body())));
                    return Ok((piece, true));
                }
                _ => {
                    piece.extend_from_slice(frame.bytes());
                    return Ok((piece, true));
                }
            }
        }
    }

    /// The client's next message during COPY FROM STDIN; an error when it left or the
    /// connection must end (`Rejected`: the FATAL the connection ends with). Cancel-safe: it
    /// writes nothing.
    async fn copy_frame(&mut self) -> Result<frame::Frame, Error> {
        match self.next_frame().await? {
            Next::Frame(frame) => Ok(frame),
            Next::Closed => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client left during COPY FROM STDIN",
            ))),
            Next::Stop { sqlstate, message } => Err(Error::Rejected { sqlstate: sqlstate.to_owned(), reason: message }),
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

/// `ready` (COPY data on its way) followed by a `CopyFail` for `reason`: the end of a COPY
/// the client cannot finish.
fn ended(ready: Option<Bytes>, reason: &str) -> Bytes {
    let mut res = BytesMut::new();
    if let Some(ready) = ready {
        res.extend_from_slice(&ready);
    }
    res.extend_from_slice(&message::copy_fail(reason));
    res.freeze()
}

/// What a streamed exchange came to (see `pump`).
struct Pumped {
    answer: Result<BytesMut, Error>,
    client: Result<(), Error>,
    /// What the backend said at the wait that ended its input: the answer's start.
    held: BytesMut,
    /// What went to the client on the way.
    written: Filtered,
}

/// Where a streamed exchange's COPY FROM STDIN stands, as the backend said it.
#[derive(Default)]
struct CopyState {
    /// A `CopyInResponse` was said, and no end of that COPY since.
    copying: bool,
    /// The client's data up to its end went to the backend.
    fed_end: bool,
    /// Pieces of input sent to the backend.
    sent: usize,
}

impl CopyState {
    /// Takes in what the backend said.
    fn saw(&mut self, said: &[u8]) {
        for (tag, _) in frame::frames(said).flatten() {
            match tag {
                b'G' => {
                    self.copying = true;
                    self.fed_end = false;
                }
                b'C' | b'E' | b'Z' => self.copying = false,
                _ => {}
            }
        }
    }

    /// Whether the backend is in a COPY FROM STDIN that wants the client's data.
    fn active(&self) -> bool {
        self.copying && !self.fed_end
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
