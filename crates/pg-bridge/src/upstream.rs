//! `UpstreamBackend`: one session on a real PostgreSQL server, used exactly like PGlite.
//!
//! It performs the startup once (trust, cleartext password or SCRAM-SHA-256) and is from then
//! on a single shared session, so the bridge in front of it is a filtering, multiplexing proxy
//! and its tests can run against a native server. It knows nothing about clients.

use std::path::PathBuf;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;

use crate::protocol::backend::{first_error, parameter_status};
use crate::protocol::frame;
use crate::protocol::frontend;
use crate::socket::Socket;
use crate::{Backend, Error};

/// Where the upstream server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// A Unix socket file, e.g. `/run/postgresql/.s.PGSQL.5432`.
    Unix(PathBuf),
    /// A `host:port` TCP address.
    Tcp(String),
}

/// How to open the upstream session.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The server's address.
    pub addr: UpstreamAddr,
    /// The role to log in as.
    pub user: String,
    /// The database to connect to.
    pub database: String,
    /// The password, for cleartext or SCRAM-SHA-256 authentication.
    pub password: Option<String>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

/// A shared session on a real PostgreSQL server.
pub struct UpstreamBackend {
    conn: Mutex<Conn>,
    params: Vec<(String, String)>,
    addr: UpstreamAddr,
    pid: i32,
    secret: i32,
}

async fn open(addr: &UpstreamAddr) -> Result<Box<dyn Stream>, Error> {
    Ok(match addr {
        UpstreamAddr::Unix(path) => Box::new(Socket::unix(UnixStream::connect(path).await?)?),
        UpstreamAddr::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Box::new(Socket::tcp(stream)?)
        }
    })
}

fn upstream_error(reason: impl Into<String>) -> Error {
    Error::Upstream { reason: reason.into() }
}

impl Conn {
    /// Waits until a whole backend frame starts at `at` in the read buffer; returns its tag
    /// and length (the tag included).
    async fn frame_at(&mut self, at: usize) -> Result<(u8, usize), Error> {
        loop {
            if let Some(head) = self.buf.get(at..at + 5) {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if len < 4 {
                    return Err(upstream_error("invalid message length from server"));
                }
                if self.buf.len() > at + len {
                    return Ok((head[0], len + 1));
                }
            }
            // Room for a large read; once the last answer's buffer is gone this reuses it.
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(upstream_error("server closed the connection"));
            }
        }
    }

    /// Reads one whole backend frame.
    async fn read_frame(&mut self) -> Result<Bytes, Error> {
        let (_, len) = self.frame_at(0).await?;
        Ok(self.buf.split_to(len).freeze())
    }
}

impl UpstreamBackend {
    /// Connects and logs in; the session is ready for queries when this returns.
    pub async fn connect(config: UpstreamConfig) -> Result<UpstreamBackend, Error> {
        let stream = open(&config.addr).await?;
        let mut conn = Conn { stream, buf: BytesMut::with_capacity(8192) };
        // No application_name: whatever is set here becomes every client's default.
        let params =
            [("user", config.user.as_str()), ("database", config.database.as_str()), ("client_encoding", "UTF8")];
        conn.stream.write_all(&frontend::startup(&params)).await?;
        let password = || {
            config
                .password
                .as_deref()
                .ok_or_else(|| upstream_error("server asked for a password and none is configured"))
        };
        let scram_error = |err: std::io::Error| upstream_error(format!("SCRAM: {err}"));

        let mut params = Vec::new();
        let (mut pid, mut secret) = (0, 0);
        let mut sasl: Option<ScramSha256> = None;
        loop {
            let frame = conn.read_frame().await?;
            let mut body = &frame[5..];
            match frame[0] {
                b'R' if body.len() >= 4 => match body.get_u32() {
                    0 => {}
                    3 => conn.stream.write_all(&frontend::password(password()?)).await?,
                    10 => {
                        let client = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                        conn.stream
                            .write_all(&frontend::sasl_initial_response(SCRAM_SHA_256, client.message()))
                            .await?;
                        sasl = Some(client);
                    }
                    11 => {
                        let client = sasl.as_mut().ok_or_else(|| upstream_error("unexpected SASL message"))?;
                        client.update(body).map_err(scram_error)?;
                        conn.stream.write_all(&frontend::sasl_response(client.message())).await?;
                    }
                    12 => {
                        let mut client = sasl.take().ok_or_else(|| upstream_error("unexpected SASL message"))?;
                        client.finish(body).map_err(scram_error)?;
                    }
                    other => {
                        return Err(upstream_error(format!("unsupported authentication method {other}")));
                    }
                },
                b'S' => {
                    if let Some(param) = parameter_status(&frame) {
                        params.push(param);
                    }
                }
                b'K' if body.len() >= 8 => {
                    pid = body.get_i32();
                    secret = body.get_i32();
                }
                b'Z' => break,
                b'E' => {
                    let (code, message) = first_error(&frame).unwrap_or_default();
                    return Err(upstream_error(format!("server refused the session: {code} {message}")));
                }
                b'N' | b'v' => {}
                other => {
                    return Err(upstream_error(format!("unexpected message {} during startup", other.escape_ascii())));
                }
            }
        }
        Ok(UpstreamBackend { conn: Mutex::new(conn), params, addr: config.addr, pid, secret })
    }
}

/// What the exchange still waits for.
struct Expect {
    /// `ReadyForQuery` messages still due, one per `Query`, `Sync` or `FunctionCall`.
    ready: usize,
    /// The kinds of unit in order (`b'Q'`, `b'S'`, `b'F'`), to know how to abort a COPY, and
    /// whether the unit ends a COPY itself (it carries `CopyDone` or `CopyFail`: the bridge's
    /// own COPY, which needs no aborting).
    units: Vec<(u8, bool)>,
    /// Responses still due for the trailing messages after the last `Sync`.
    trailing: usize,
}

fn expectations(frames: &[u8]) -> Result<(Expect, bool), Error> {
    let mut expect = Expect { ready: 0, units: Vec::new(), trailing: 0 };
    let mut ends_with_flush = false;
    let mut ends_copy = false;
    let mut at = 0;
    while at < frames.len() {
        let (tag, whole) = frame::frames(&frames[at..])
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| upstream_error("the bridge passed an incomplete frame"))?;
        at += whole.len();
        ends_with_flush = tag == b'H';
        match tag {
            b'Q' | b'S' | b'F' => {
                expect.ready += 1;
                expect.units.push((tag, ends_copy));
                expect.trailing = 0;
                ends_copy = false;
            }
            b'c' | b'f' => ends_copy = true,
            b'P' | b'B' | b'D' | b'E' | b'C' => expect.trailing += 1,
            _ => {}
        }
    }
    Ok((expect, ends_with_flush))
}

impl Backend for UpstreamBackend {
    async fn exchange(&self, frames: Bytes) -> Result<BytesMut, Error> {
        let (mut expect, ends_with_flush) = expectations(&frames)?;
        // The bridge exchanges from one task at a time: the lock is nearly always free.
        let mut conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(_) => self.conn.lock().await,
        };
        conn.stream.write_all(&frames).await?;
        if expect.trailing > 0 && !ends_with_flush {
            // Without a Flush the server would keep these responses buffered.
            conn.stream.write_all(frontend::FLUSH).await?;
        }
        // The answer is taken from the read buffer in one piece once it is complete: frames
        // are only looked at where they lie.
        let mut scanned = 0;
        let mut units_done = 0;
        while expect.ready > 0 || expect.trailing > 0 {
            let (tag, len) = conn.frame_at(scanned).await?;
            scanned += len;
            match tag {
                b'Z' => {
                    expect.ready = expect.ready.saturating_sub(1);
                    units_done += 1;
                }
                b'G' | b'W' if !expect.units.get(units_done).is_some_and(|u| u.1) => {
                    // A COPY slipped past the filter (e.g. run from a function): abort it now,
                    // the session must never wait for copy data.
                    let extended = expect.units.get(units_done).is_none_or(|u| u.0 == b'S');
                    let mut abort = BytesMut::from(&frontend::copy_fail("COPY is not supported by this server")[..]);
                    if extended {
                        abort.extend_from_slice(&frontend::sync());
                        if expect.units.get(units_done).is_none() {
                            // The trailing part had no Sync of its own; ours will answer.
                            expect.ready += 1;
                            expect.trailing = 0;
                        }
                    }
                    conn.stream.write_all(&abort).await?;
                }
                _ if expect.ready == 0 => match tag {
                    b'1' | b'2' | b'3' | b'T' | b'n' | b'C' | b's' | b'I' => {
                        expect.trailing = expect.trailing.saturating_sub(1);
                    }
                    b'E' => expect.trailing = 0,
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(conn.buf.split_to(scanned))
    }

    fn parameter_status(&self) -> Vec<(String, String)> {
        self.params.clone()
    }

    async fn cancel(&self) -> bool {
        let Ok(mut stream) = open(&self.addr).await else {
            return false;
        };
        if stream.write_all(&frontend::cancel_request(self.pid, self.secret)).await.is_err() {
            return false;
        }
        // The server closes without replying; wait for that so the cancel has been delivered.
        let mut sink = [0u8; 16];
        let _ = stream.read(&mut sink).await;
        true
    }
}
