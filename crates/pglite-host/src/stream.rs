//! Streamed exchanges: a request whose tail comes while PostgreSQL runs, and a reply whose COPY
//! data leaves as it is made, so that a COPY of any size passes in bounded memory. PostgreSQL
//! reads and writes through the wire callbacks (0.3 and later); its read blocks until the next
//! piece comes, as a backend's `recv` waits for its client. Whoever feeds it learns what it
//! said before each wait: a `CopyInResponse` there means it waits for COPY data, which the
//! client sends only once it has seen that. 0.2's single buffer cannot stream.

use postgres_protocol::message::frontend;

use crate::imports::Ctx;

/// How much of the reply's COPY data waits before it is handed on (see [`Stream::output`]).
pub const PIECE: usize = 256 * 1024;

/// The moving parts of a streamed exchange (see
/// [`Pglite::exec_streamed_async`](crate::Pglite::exec_streamed_async)).
pub struct Stream {
    /// The rest of the request after its first bytes, in pieces of whole messages; `None` at its
    /// end. An end inside a COPY fails the COPY as a `CopyFail` would. Called on the exchange's
    /// thread whenever PostgreSQL waits for more input, with what it said since the last call
    /// (whole messages, maybe none: it may still hold some that it has not flushed), which is
    /// then not in what the exchange returns; it may block until the next piece comes.
    pub input: Box<dyn FnMut(Vec<u8>) -> Option<Vec<u8>> + Send>,
    /// Takes the reply as it is made, in pieces of whole messages that end with a `CopyData`,
    /// once at least [`PIECE`] bytes of them wait: only COPY data leaves early, so errors and
    /// `ReadyForQuery` are always in what the exchange returns. Returns false when nobody takes
    /// them any more; later pieces are then dropped. It may block.
    pub output: Box<dyn FnMut(Vec<u8>) -> bool + Send>,
}

/// [`Stream::input`].
type Input = Box<dyn FnMut(Vec<u8>) -> Option<Vec<u8>> + Send>;

/// A [`Stream`] attached to an exchange.
pub(crate) struct Flow {
    input: Option<Input>,
    /// What followed a COPY's end in the same piece, read next.
    held: Option<Vec<u8>>,
    /// The input ended inside a COPY, and PostgreSQL was given its end.
    ended_copy: bool,
    output: Option<Box<dyn FnMut(Vec<u8>) -> bool + Send>>,
}

impl From<Stream> for Flow {
    fn from(stream: Stream) -> Flow {
        Flow { input: Some(stream.input), held: None, ended_copy: false, output: Some(stream.output) }
    }
}

/// Before PostgreSQL waits for a streamed request's next piece: has it send what it holds
/// (0.5+), so that what it said goes with the wait (see [`Stream::input`]).
pub(crate) fn flush_before_wait(mut store: impl wasmtime::AsContextMut<Data = Ctx>) -> wasmtime::Result<()> {
    let ctx = store.as_context().data();
    if ctx.waits()
        && let Some(flush) = ctx.wait_flush.clone()
    {
        flush.call(&mut store, ())?;
    }
    Ok(())
}

/// How far the reply so far (`Ctx::wire_out`) is known to hold whole frames.
#[derive(Debug, Default)]
pub(crate) struct OutScan {
    /// End of the whole frames.
    whole: usize,
    /// End of the last `CopyData` among them.
    data_end: usize,
}

impl Ctx {
    /// Whether PostgreSQL's next read waits for the next piece of a streamed request.
    fn waits(&self) -> bool {
        self.wire_pos >= self.wire_in.len()
            && self.stream.as_ref().is_some_and(|flow| flow.held.is_none() && flow.input.is_some())
    }

    /// Whether request bytes wait to be read; when those at hand are used up, the stream's next
    /// piece is fetched (waiting for it).
    pub(crate) fn input_left(&mut self) -> bool {
        while self.wire_pos >= self.wire_in.len() {
            let Some(flow) = self.stream.as_mut() else {
                return false;
            };
            let next = match (flow.held.take(), flow.input.as_mut()) {
                (Some(held), _) => Some(held),
                (None, Some(input)) => {
                    let said = whole_frames(&mut self.wire_out, &mut self.out_scan);
                    input(said)
                }
                (None, None) => None,
            };
            match next.map(|piece| split_after_copy_end(piece, &mut flow.held)) {
                Some(piece) => {
                    self.wire_base += self.wire_in.len();
                    self.wire_in = piece;
                    self.wire_pos = 0;
                }
                None => {
                    flow.input = None;
                    return false;
                }
            }
        }
        true
    }

    /// The bytes for PostgreSQL's next read: [`input_left`](Self::input_left), except that a
    /// stream whose input ended while PostgreSQL still reads (inside a COPY, which an end
    /// of input there would turn into a lost connection and a dead instance) gets a `CopyFail`
    /// and a `Sync` first, once.
    pub(crate) fn input_for_read(&mut self) -> bool {
        if self.input_left() {
            return true;
        }
        let Some(flow) = self.stream.as_mut().filter(|flow| !flow.ended_copy) else {
            return false;
        };
        flow.ended_copy = true;
        let mut end = bytes::BytesMut::new();
        frontend::copy_fail("the request ended inside COPY", &mut end).expect("no NUL in the reason");
        frontend::sync(&mut end);
        let end = end.to_vec();
        self.wire_base += self.wire_in.len();
        self.wire_in = end;
        self.wire_pos = 0;
        true
    }

    /// How many request bytes PostgreSQL has read in this call.
    pub(crate) fn wire_taken(&self) -> usize {
        self.wire_base + self.wire_pos
    }

    /// Sets the request of the next call and empties the reply.
    pub(crate) fn set_input(&mut self, request: &[u8]) {
        self.wire_in.clear();
        self.wire_in.extend_from_slice(request);
        self.wire_pos = 0;
        self.wire_base = 0;
        self.wire_out.clear();
        self.out_scan = OutScan::default();
    }

    /// The reply so far (all of it that did not leave through a stream).
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        self.wire_in.clear();
        self.out_scan = OutScan::default();
        std::mem::take(&mut self.wire_out)
    }

    /// Appends reply bytes PostgreSQL wrote; with a stream attached, hands on the COPY data
    /// once enough waits.
    pub(crate) fn put_output(&mut self, bytes: &[u8]) {
        self.wire_out.extend_from_slice(bytes);
        let Some(flow) = self.stream.as_mut() else {
            return;
        };
        let scan = &mut self.out_scan;
        scan.advance(&self.wire_out);
        if scan.data_end < PIECE {
            return;
        }
        let rest = self.wire_out.split_off(scan.data_end);
        let piece = std::mem::replace(&mut self.wire_out, rest);
        scan.whole -= scan.data_end;
        scan.data_end = 0;
        if let Some(output) = flow.output.as_mut()
            && !output(piece)
        {
            flow.output = None;
        }
    }
}

impl OutScan {
    /// Takes in the whole frames of `out` after those already seen.
    fn advance(&mut self, out: &[u8]) {
        while let Some(len) = crate::instance::frame_len(&out[self.whole..]) {
            let tag = out[self.whole];
            self.whole += len;
            if tag == b'd' {
                self.data_end = self.whole;
            }
        }
    }
}

/// The whole frames of the reply so far, taken out of it (PGlite's debugging notices dropped);
/// a torn frame at its end stays, and so does everything from a cancel's `57014` on: the
/// exchange's end words it with the reason the statement was cancelled for (see
/// `interrupts::finish_exchange`).
fn whole_frames(out: &mut Vec<u8>, scan: &mut OutScan) -> Vec<u8> {
    scan.advance(out);
    let mut end = 0;
    while end < scan.whole {
        let len = crate::instance::frame_len(&out[end..]).expect("whole frames");
        if out[end] == b'E' && memchr::memmem::find(&out[end..end + len], b"C57014\0").is_some() {
            break;
        }
        end += len;
    }
    let rest = out.split_off(end);
    let mut said = std::mem::replace(out, rest);
    *scan = OutScan::default();
    crate::instance::drop_debug_notices(&mut said);
    said
}

/// `piece` up to and including its first `CopyDone` or `CopyFail`, the rest put in `held`:
/// PGlite 0.3 drops what follows a COPY's end in the same read (a `Sync` there went
/// unanswered), so the next message comes in a read of its own.
fn split_after_copy_end(mut piece: Vec<u8>, held: &mut Option<Vec<u8>>) -> Vec<u8> {
    let mut at = 0;
    while let Some(len) = crate::instance::frame_len(&piece[at..]) {
        let tag = piece[at];
        at += len;
        if matches!(tag, b'c' | b'f') && at < piece.len() {
            *held = Some(piece.split_off(at));
            break;
        }
    }
    piece
}
