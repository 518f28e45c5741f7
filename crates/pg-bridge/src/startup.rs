//! The startup phase of one connection, answered by the bridge itself.
//!
//! SSLRequest and GSSENCRequest get `N`; a CancelRequest is matched against the per-client
//! keys and the connection closed without a reply; protocol 3.0 is accepted and newer 3.x
//! minors or `_pq_.*` options get NegotiateProtocolVersion; the Unix socket trusts and TCP
//! trusts or checks the role's stored password (`auth.rs`, as `Config::tcp_auth` says); the
//! database name is checked. The client's settings are then applied once on the backend (an invalid one is FATAL, as in
//! PostgreSQL) so its ParameterStatus values are the ones the backend really reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::config::TcpAuth;
use crate::conn::{Client, Connection};
use crate::protocol::backend::{Replies, Severity, TxStatus, error_frame};
use crate::protocol::frame;
use crate::session::{ClientState, Started};
use crate::shared::{CancelEntry, RunState, Shared};
use crate::socket::{Owner, Socket};
use crate::{Backend, Error, auth, settings};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Distinct startup settings remembered; pools use a handful.
const STARTUP_CACHE_LIMIT: usize = 256;

/// Ends a connection with a FATAL error; the error is also returned for the caller's log.
async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, sqlstate: &str, reason: String) -> Error {
    fatal_with_hint(stream, sqlstate, reason, None).await
}

/// [`fatal`] with a `HINT`.
async fn fatal_with_hint<S: AsyncWrite + Unpin>(
    stream: &mut S,
    sqlstate: &str,
    reason: String,
    hint: Option<&str>,
) -> Error {
    let mut replies = Replies::new();
    if replies.error_with_hint(Severity::Fatal, sqlstate, &reason, hint).is_ok() {
        let _ = stream.write_all(&replies.into_bytes()).await;
        let _ = stream.flush().await;
    }
    Error::Rejected { sqlstate: sqlstate.to_owned(), reason }
}

/// Reads one startup-phase packet body.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<bytes::Bytes>, Result<frame::FrameError, std::io::Error>> {
    loop {
        match frame::split_startup(buf) {
            Ok(Some(packet)) => return Ok(Some(packet)),
            Ok(None) => {}
            Err(e) => return Err(Ok(e)),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Err(e)),
        }
    }
}

fn startup_params(body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut res = Vec::new();
    let mut parts = body.split(|&b| b == 0);
    loop {
        let name = parts.next()?;
        if name.is_empty() {
            // The terminating empty name must be the very last byte.
            return (parts.next() == Some(&[][..]) && parts.next().is_none()).then_some(res);
        }
        let value = parts.next()?;
        res.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
}

/// A connection past the negotiation phase, handed from the acceptor thread to the runtime
/// that serves clients: its socket (registered nowhere), its startup packet's version and
/// settings, bytes it sent after that packet, and its connection slot (if one was free).
pub(crate) struct Greeted {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    minor: u32,
    params: Vec<(String, String)>,
    permit: Option<OwnedSemaphorePermit>,
}

/// An accepted socket, registered with no runtime.
pub(crate) enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

/// The negotiation phase of one accepted connection, on the acceptor thread: SSL and GSS
/// requests answered `N`, a CancelRequest carried out, then the startup packet read. Runs
/// where a long query on the serving runtime cannot hold it up, so a cancel request is
/// carried out while the query it cancels runs.
pub(crate) async fn greet<B: Backend>(shared: Arc<Shared<B>>, stream: Stream) -> Option<Greeted> {
    // Taken before the startup packet so a flood of half-open connections counts too.
    let permit = shared.slots.clone().try_acquire_owned().ok();
    let mut buf = BytesMut::with_capacity(1024);
    let (stream, minor, params) = match stream {
        Stream::Unix(stream) => {
            let (stream, minor, params) = negotiate_owned(&shared, stream, &mut buf).await?;
            (Stream::Unix(stream), minor, params)
        }
        Stream::Tcp(stream) => {
            let (stream, minor, params) = negotiate_owned(&shared, stream, &mut buf).await?;
            (Stream::Tcp(stream), minor, params)
        }
    };
    Some(Greeted { stream, buf, minor, params, permit })
}

/// [`negotiate`] on `stream`, registered with the calling task's runtime for as long as it
/// takes; the stream is returned unregistered.
async fn negotiate_owned<B: Backend, T>(
    shared: &Arc<Shared<B>>,
    stream: T,
    buf: &mut BytesMut,
) -> Option<(T, u32, Vec<(String, String)>)>
where
    T: Owner + Unpin + Send,
{
    let mut socket =
        Socket::new(stream).inspect_err(|error| tracing::warn!(%error, "registering a connection")).ok()?;
    let negotiated = tokio::time::timeout(shared.config.startup_timeout, negotiate(shared, &mut socket, buf)).await;
    let (minor, params) = match negotiated {
        Ok(Ok(Some(startup))) => startup,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection refused during startup");
            return None;
        }
        Err(_) => {
            let _ = fatal(&mut socket, "08P01", "timeout expired during the startup phase".to_owned()).await;
            return None;
        }
    };
    let stream = socket.into_inner().inspect_err(|error| tracing::warn!(%error, "handing over a connection")).ok()?;
    Some((stream, minor, params))
}

/// Serves one greeted connection from its startup packet to its end, on the runtime that
/// serves clients.
pub(crate) async fn run<B: Backend>(shared: Arc<Shared<B>>, greeted: Greeted, shutdown: watch::Receiver<bool>) {
    match greeted.stream {
        Stream::Unix(stream) => match Socket::new(stream) {
            Ok(socket) => {
                serve(shared, socket, false, greeted.buf, greeted.minor, greeted.params, greeted.permit, shutdown).await
            }
            Err(error) => tracing::warn!(%error, "registering a unix connection"),
        },
        Stream::Tcp(stream) => match Socket::new(stream) {
            Ok(socket) => {
                serve(shared, socket, true, greeted.buf, greeted.minor, greeted.params, greeted.permit, shutdown).await
            }
            Err(error) => tracing::warn!(%error, "registering a tcp connection"),
        },
    }
}

#[expect(clippy::too_many_arguments, reason = "the parts of a greeted connection, passed on once")]
async fn serve<B: Backend, S>(
    shared: Arc<Shared<B>>,
    mut stream: S,
    tcp: bool,
    buf: BytesMut,
    minor: u32,
    params: Vec<(String, String)>,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.config.startup_timeout;
    let started = tokio::time::timeout(timeout, startup(&shared, &mut stream, tcp, permit, buf, minor, params)).await;
    let client = match started {
        Ok(Ok(Some(client))) => client,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection refused during startup");
            return;
        }
        Err(_) => {
            let _ = fatal(&mut stream, "08P01", "timeout expired during the startup phase".to_owned()).await;
            return;
        }
    };
    let pid = client.pid;
    let mut connection = Connection::new(shared.clone(), stream, client, shutdown);
    if let Err(error) = connection.serve().await {
        tracing::debug!(%error, "connection ended with an error");
    }
    connection.finish().await;
    shared.hub.leave(pid);
    shared.cancel_keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
}

/// Negotiation until the startup packet: its protocol minor and settings, or `None` when the
/// connection was a cancel request or closed.
async fn negotiate<B: Backend, S>(
    shared: &Arc<Shared<B>>,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<(u32, Vec<(String, String)>)>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut negotiations = 0;
    loop {
        let packet = match read_packet(stream, buf).await {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(None),
            Err(Ok(error)) => {
                return Err(fatal(stream, "08P01", format!("invalid startup packet: {error}")).await);
            }
            Err(Err(error)) => return Err(error.into()),
        };
        let mut body = &packet[..];
        let code = body.get_u32();
        match code {
            SSL_REQUEST | GSSENC_REQUEST if body.is_empty() && negotiations < 2 => {
                negotiations += 1;
                if !buf.is_empty() {
                    // Bytes after the request but before our answer: a client trying to
                    // smuggle a plaintext message past a TLS upgrade.
                    return Err(fatal(stream, "08P01", "received unencrypted data after SSL request".to_owned()).await);
                }
                stream.write_all(b"N").await?;
            }
            CANCEL_REQUEST if body.len() == 8 => {
                let pid = body.get_i32();
                let secret = body.get_i32();
                cancel(shared, pid, secret).await;
                return Ok(None);
            }
            _ => {
                let major = code >> 16;
                let minor = code & 0xffff;
                if major != 3 {
                    return Err(fatal(
                        stream,
                        "0A000",
                        format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
                    )
                    .await);
                }
                let Some(params) = startup_params(body) else {
                    return Err(fatal(stream, "08P01", "invalid startup packet layout".to_owned()).await);
                };
                return Ok(Some((minor, params)));
            }
        }
    }
}

async fn startup<B: Backend, S>(
    shared: &Arc<Shared<B>>,
    stream: &mut S,
    tcp: bool,
    permit: Option<OwnedSemaphorePermit>,
    mut buf: BytesMut,
    minor: u32,
    params: Vec<(String, String)>,
) -> Result<Option<Client>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut replies = Replies::new();
    let unsupported: Vec<String> =
        params.iter().filter(|(name, _)| name.starts_with("_pq_.")).map(|(name, _)| name.clone()).collect();
    if minor > 0 || !unsupported.is_empty() {
        replies.negotiate_protocol(unsupported)?;
    }
    let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let Some(user) = param("user").filter(|u| !u.is_empty()) else {
        return Err(fatal(stream, "28000", "no PostgreSQL user name specified in startup packet".to_owned()).await);
    };
    if param("replication").is_some_and(|r| r != "false" && r != "0" && r != "off" && r != "no") {
        return Err(fatal(stream, "0A000", "replication connections are not supported".to_owned()).await);
    }
    let database = param("database").filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());

    let mut can_login = true;
    if tcp && shared.config.tcp_auth == TcpAuth::Password {
        stream.write_all(&replies.into_bytes()).await?;
        replies = Replies::new();
        match auth::authenticate(shared, stream, &mut buf, &user, &mut replies).await? {
            auth::Outcome::Authenticated { can_login: allowed } => can_login = allowed,
            auth::Outcome::Refused { sqlstate, message } => return Err(fatal(stream, sqlstate, message).await),
            auth::Outcome::Closed => return Ok(None),
        }
    }
    let Some(permit) = permit else {
        return Err(fatal(stream, "53300", "sorry, too many clients already".to_owned()).await);
    };
    replies.auth_ok()?;
    // From here on PostgreSQL has said AuthenticationOk before a FATAL.
    let after_auth = |replies: Replies, sqlstate: &str, reason: String, hint: Option<String>| {
        let mut res = replies.into_bytes();
        let mut error = Replies::new();
        let built = error.error_with_hint(Severity::Fatal, sqlstate, &reason, hint.as_deref());
        res.extend_from_slice(&error.into_bytes());
        (built, res, Error::Rejected { sqlstate: sqlstate.to_owned(), reason })
    };
    if !can_login {
        // Read at this login, so it holds even where the startup cache would admit the role.
        let reason = format!("role \"{user}\" is not permitted to log in");
        let (built, bytes, error) = after_auth(replies, "28000", reason, None);
        built?;
        return Err(refuse(stream, &bytes, error).await);
    }
    let served = &shared.config.database;
    if database != *served && !shared.config.database_aliases.contains(&database) {
        let hint = format!("This server serves the one database \"{served}\".");
        let (built, bytes, error) =
            after_auth(replies, "3D000", format!("database \"{database}\" does not exist"), Some(hint));
        built?;
        return Err(refuse(stream, &bytes, error).await);
    }
    let startup = match settings::from_startup(&params) {
        Ok(startup) => startup,
        Err(reason) => {
            let (built, bytes, error) = after_auth(replies, "42704", reason, None);
            built?;
            return Err(refuse(stream, &bytes, error).await);
        }
    };
    if shared.gone.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(fatal(stream, "57P03", "the database system is not available".to_owned()).await);
    }
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let mut state = ClientState::new(id, &user, startup, &shared.baseline);
    let asked = state.login().clone();
    let cached = shared.startup_cache.lock().unwrap_or_else(|p| p.into_inner()).get(&asked).cloned();
    let started = match cached {
        Some(started) => started,
        None => {
            let started = match start_session(shared, &mut state).await? {
                Ok(started) => started,
                Err(fatal) => {
                    let mut bytes = replies.into_bytes();
                    bytes.extend_from_slice(&fatal);
                    let reason = crate::protocol::backend::field(&fatal, b'M').unwrap_or_default();
                    let sqlstate = crate::protocol::backend::field(&fatal, b'C').unwrap_or_default();
                    return Err(refuse(stream, &bytes, Error::Rejected { sqlstate, reason }).await);
                }
            };
            let mut cache = shared.startup_cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= STARTUP_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(asked, started.clone());
            started
        }
    };
    let mut startup_replies = replies.into_bytes();
    startup_replies.extend_from_slice(&started.notices);
    let mut replies = Replies::new();
    for (name, value) in &started.reported {
        replies.parameter_status(name, value)?;
    }

    // The pid only has to be unique among our clients; keep it clear of real pids' range.
    let pid = 0x4000_0000 | (id as i32 & 0x3fff_ffff);
    let secret: i32 = rand::rng().random();
    let run = Arc::new(RunState::default());
    shared.cancel_keys.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, CancelEntry { secret, run: run.clone() });
    replies.backend_key(pid, secret)?;
    replies.ready(TxStatus::Idle)?;
    startup_replies.extend_from_slice(&replies.into_bytes());
    stream.write_all(&startup_replies).await?;
    let standard_strings = started.reported.get("standard_conforming_strings").is_none_or(|v| v == "on");
    state.set_login(started.login);
    state.set_reported(started.reported);
    Ok(Some(Client::new(state, pid, run, permit, buf, standard_strings)))
}

/// Checks a new client's login and startup settings on the backend and puts them on it: an
/// invalid one is the FATAL `ErrorResponse` that ends the connection, as in PostgreSQL, and the
/// `ParameterStatus` values are the backend's answers.
async fn start_session<B: Backend>(
    shared: &Arc<Shared<B>>,
    state: &mut ClientState,
) -> Result<Result<Started, Bytes>, Error> {
    let mut session = shared.lease.lock().await;
    match session.start(&shared.backend, &shared.baseline, state).await {
        Err(Error::BackendGone) => {
            Ok(Err(error_frame(Severity::Fatal, "57P03", "the database system is not available")?.freeze()))
        }
        other => other,
    }
}

/// Writes `bytes` (replies ending in a FATAL) and returns `error` for the caller's log.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], error: Error) -> Error {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    error
}

/// Cancels the client with this key if it is running something now; never replies.
async fn cancel<B: Backend>(shared: &Arc<Shared<B>>, pid: i32, secret: i32) {
    let run = {
        let keys = shared.cancel_keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&pid).filter(|entry| entry.secret == secret).map(|entry| entry.run.clone())
    };
    if run.is_some_and(|run| run.cancel()) {
        shared.backend.cancel().await;
    }
}
