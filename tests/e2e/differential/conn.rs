//! One side of a differential run: a raw protocol connection on a Unix socket that sends a
//! step's messages and reads the answers the step is owed, recording them normalized.
//!
//! Nothing here waits for time to pass: reads block until a message arrives, bounded by a
//! timeout that only ever fires when a server owes an answer it does not send (recorded as a
//! `<…>` note in the transcript).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use pg_bridge::protocol::backend::parameter_status;
use pg_bridge::protocol::frame::frames;
use pg_bridge::protocol::frontend;

use super::wire::{Fe, Msg, normalize};

/// Bounds waiting for a `ReadyForQuery` owed (large results on the slower wasm side included).
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);

/// Bounds waiting, on the runtime, for the messages native sent for a `Flush`-ended batch.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How many messages to read for a step that holds no `Query`, `Sync` or `FunctionCall`.
pub(super) enum Expect {
    /// The answers to each message, read as native PostgreSQL sends them.
    Native,
    /// Exactly this many (what native sent).
    Count(usize),
}

enum End {
    Timeout,
    Closed,
    Failed(String),
}

/// A connection and what the harness knows of it.
pub(super) struct Side {
    who: &'static str,
    stream: Option<UnixStream>,
    buf: Vec<u8>,
    /// `Query`, `Sync` and `FunctionCall` messages sent, after startup.
    owed: usize,
    /// `ReadyForQuery` messages received, after startup.
    ready: usize,
    /// Why the session is over, once it is.
    ended: Option<String>,
}

impl Side {
    /// Connects to the server on `socket`.
    pub(super) fn connect(who: &'static str, socket: &Path) -> Side {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|err| panic!("connecting to the {who} server at {}: {err}", socket.display()));
        stream.set_write_timeout(Some(SYNC_TIMEOUT)).unwrap();
        Side { who, stream: Some(stream), buf: Vec::new(), owed: 0, ready: 0, ended: None }
    }

    fn next(&mut self, deadline: Instant) -> Result<(u8, Vec<u8>), End> {
        loop {
            match frames(&self.buf).next() {
                Some(Ok((tag, frame))) => {
                    let frame = frame.to_vec();
                    self.buf.drain(..frame.len());
                    return Ok((tag, frame));
                }
                Some(Err(_)) if self.buf.len() >= 5 && u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) < 4 => {
                    return Err(End::Failed(format!("malformed frame header {:?}", &self.buf[..5])));
                }
                // Incomplete: read more.
                _ => {}
            }
            let stream = self.stream.as_mut().ok_or(End::Closed)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 256 * 1024];
            match stream.read(&mut chunk) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(End::Timeout);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(End::Failed(err.to_string())),
            }
        }
    }

    /// Records how the session ended; nothing more is sent or read.
    fn end(&mut self, msgs: &mut Vec<Msg>, end: End, waiting_for: &str) {
        let why = match end {
            End::Timeout => format!("no {waiting_for} within the timeout"),
            End::Closed => "connection closed".to_owned(),
            End::Failed(err) => format!("connection failed: {err}"),
        };
        msgs.push(Msg::note(why.clone()));
        self.ended = Some(why);
        self.stream = None;
    }

    fn send(&mut self, bytes: &[u8], msgs: &mut Vec<Msg>) -> bool {
        let Some(stream) = self.stream.as_mut() else { return false };
        match stream.write_all(bytes) {
            Ok(()) => true,
            Err(err) => {
                // Whatever the server said before it closed is still worth reading.
                msgs.push(Msg::note(format!("write failed: {}", err.kind())));
                false
            }
        }
    }

    /// The startup phase: the startup message, then every message up to the first
    /// `ReadyForQuery` (or the end of the connection). The `ParameterStatus` messages are
    /// sorted, in the place of the first one.
    pub(super) fn startup(&mut self, params: &[(&str, &str)]) -> Vec<Msg> {
        let mut msgs = Vec::new();
        let mut status = Vec::new();
        let mut status_at = None;
        let sent = self.send(&frontend::startup(params), &mut msgs);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            match self.next(deadline) {
                Ok((b'S', frame)) => {
                    status_at.get_or_insert(msgs.len());
                    status.push((parameter_status(&frame), normalize(b'S', &frame)));
                }
                Ok((tag, frame)) => {
                    msgs.push(normalize(tag, &frame));
                    if tag == b'Z' {
                        break;
                    }
                }
                Err(end) => {
                    self.end(&mut msgs, end, "ReadyForQuery");
                    break;
                }
            }
        }
        status.sort_by(|a, b| a.0.cmp(&b.0));
        let at = status_at.unwrap_or(msgs.len());
        msgs.splice(at..at, status.into_iter().map(|(_, msg)| msg));
        if !sent && self.ended.is_none() {
            self.ended = Some("startup not sent".to_owned());
        }
        msgs
    }

    /// Sends `step` and reads what it is owed (see [`Expect`]).
    pub(super) fn step(&mut self, step: &[Fe], expect: Expect) -> Vec<Msg> {
        let mut msgs = Vec::new();
        if let Some(why) = &self.ended {
            msgs.push(Msg::note(format!("not run: {why}")));
            return msgs;
        }
        let bytes: Vec<u8> = step.iter().flat_map(|m| m.bytes.iter().copied()).collect();
        if !self.send(&bytes, &mut msgs) {
            // Read what is left until the server closes.
            let deadline = Instant::now() + FLUSH_TIMEOUT;
            loop {
                match self.next(deadline) {
                    Ok((tag, frame)) => msgs.push(normalize(tag, &frame)),
                    Err(end) => {
                        self.end(&mut msgs, end, "end of connection");
                        return msgs;
                    }
                }
            }
        }
        self.owed += step.iter().filter(|m| matches!(m.tag, b'Q' | b'S' | b'F')).count();
        // Answers owed: to this step's queries and Syncs, or to a COPY's query an earlier step
        // began, whose data this step sent.
        if self.ready < self.owed {
            let deadline = Instant::now() + SYNC_TIMEOUT;
            while self.ready < self.owed {
                match self.next(deadline) {
                    Ok((tag, frame)) => {
                        self.ready += usize::from(tag == b'Z');
                        msgs.push(normalize(tag, &frame));
                        if tag == b'G' && !step.iter().any(|m| matches!(m.tag, b'c' | b'f')) {
                            // The server waits for COPY data, which the next step sends; the
                            // Syncs sent after the COPY's Execute went into the COPY, which
                            // ignores them.
                            let swallowed = step.iter().rev().take_while(|m| m.tag != b'E').filter(|m| m.tag == b'S');
                            self.owed -= swallowed.count();
                            break;
                        }
                    }
                    Err(end) => {
                        self.end(&mut msgs, end, "ReadyForQuery");
                        break;
                    }
                }
            }
            return msgs;
        }
        match expect {
            Expect::Native => self.read_answers(step, &mut msgs),
            Expect::Count(count) => {
                let deadline = Instant::now() + FLUSH_TIMEOUT;
                while msgs.len() < count {
                    match self.next(deadline) {
                        Ok((tag, frame)) => {
                            self.ready += usize::from(tag == b'Z');
                            msgs.push(normalize(tag, &frame));
                        }
                        Err(End::Timeout) => {
                            let got = msgs.len();
                            msgs.push(Msg::note(format!("{got} of {count} messages within {FLUSH_TIMEOUT:?}")));
                            break;
                        }
                        Err(end) => {
                            self.end(&mut msgs, end, "message");
                            break;
                        }
                    }
                }
            }
        }
        msgs
    }

    /// Reads the answer to each message of a batch with no `Sync`: up to the message that
    /// completes it, or to an error (after which the server skips to the next `Sync`).
    fn read_answers(&mut self, step: &[Fe], msgs: &mut Vec<Msg>) {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        for m in step {
            let completes: &[u8] = match m.tag {
                b'P' => b"1",
                b'B' => b"2",
                b'D' => b"Tn",
                b'E' => b"CsIGHW",
                b'C' => b"3",
                _ => continue,
            };
            loop {
                let (tag, frame) = self.next(deadline).unwrap_or_else(|_| {
                    let so_far: Vec<String> = msgs.iter().map(Msg::to_string).collect();
                    panic!(
                        "the {} server sent no complete answer to {} (script error?); so far:\n{}",
                        self.who,
                        m.label,
                        so_far.join("\n")
                    )
                });
                msgs.push(normalize(tag, &frame));
                if tag == b'E' {
                    return;
                }
                if completes.contains(&tag) {
                    break;
                }
            }
        }
    }

    /// Sends `Terminate` and closes.
    pub(super) fn terminate(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.write_all(frontend::TERMINATE);
        }
    }
}
