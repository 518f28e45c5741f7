//! `PgliteBackend`: the bridge's [`pg_bridge::Backend`] over a running PGlite instance.
//!
//! An exchange is one `exec_protocol` call, run inline on the calling task's thread. PGlite is
//! never asked for anything the bridge did not send, apart from one query at construction that
//! reads the values a PostgreSQL server reports at startup (single-user PGlite has no startup
//! phase).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::{Bytes, BytesMut};
use pg_bridge::protocol::backend::{field, text_rows};
use pg_bridge::protocol::frame;
use pg_bridge::protocol::frontend;
use pglite_host::Pglite;

use crate::Error;

/// The settings a PostgreSQL server reports with `ParameterStatus` at startup (`GUC_REPORT`),
/// in the order it reports them, each with the major version from which it is reported:
/// `search_path` from PostgreSQL 18 on.
const REPORTED: [(&str, u32); 15] = [
    ("application_name", 0),
    ("client_encoding", 0),
    ("DateStyle", 0),
    ("default_transaction_read_only", 0),
    ("in_hot_standby", 0),
    ("integer_datetimes", 0),
    ("IntervalStyle", 0),
    ("is_superuser", 0),
    ("scram_iterations", 0),
    ("search_path", 18),
    ("server_encoding", 0),
    ("server_version", 0),
    ("session_authorization", 0),
    ("standard_conforming_strings", 0),
    ("TimeZone", 0),
];

/// A `CopyFail` frame, put before every `Sync` of a batch (see [`with_copy_fail`]).
static COPY_FAIL: std::sync::LazyLock<Bytes> =
    std::sync::LazyLock::new(|| frontend::copy_fail("COPY is not supported by this server"));

/// The single PostgreSQL session of a PGlite instance, as the bridge sees it.
pub struct PgliteBackend {
    host: Arc<Pglite>,
    params: Vec<(String, String)>,
}

impl PgliteBackend {
    /// Wraps a running instance; reads the values it reports to clients at startup.
    pub async fn new(host: Arc<Pglite>) -> Result<PgliteBackend, Error> {
        let names = REPORTED.map(|(name, _)| format!("'{name}'")).join(", ");
        let sql = format!(
            "SELECT name, pg_catalog.current_setting(name) \
             FROM unnest(ARRAY[{names}]::pg_catalog.text[]) WITH ORDINALITY AS s(name, idx) ORDER BY idx"
        );
        let reply = host.exec_protocol_async(frontend::query(&sql).to_vec(), Default::default()).await?;
        let params = reported_by(parse_settings(&reply)?);
        Ok(PgliteBackend { host, params })
    }

    /// The instance behind this backend.
    pub fn host(&self) -> &Arc<Pglite> {
        &self.host
    }
}

/// Of all the settings some major reports, those this server's (its `server_version`) does.
fn reported_by(settings: Vec<(String, String)>) -> Vec<(String, String)> {
    let major = settings
        .iter()
        .find(|(name, _)| name == "server_version")
        .and_then(|(_, version)| version.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
        .unwrap_or(0);
    settings
        .into_iter()
        .filter(|(name, _)| REPORTED.iter().any(|(reported, since)| reported == name && *since <= major))
        .collect()
}

fn parse_settings(reply: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let malformed = || Error::Settings { reason: "malformed reply".to_owned() };
    for frame in frame::frames(reply) {
        let (tag, frame) = frame.map_err(|_| malformed())?;
        if tag == b'E' {
            let code = field(frame, b'C').unwrap_or_default();
            let message = field(frame, b'M').unwrap_or_default();
            return Err(Error::Settings { reason: format!("{code} {message}") });
        }
    }
    text_rows(reply)
        .into_iter()
        .map(|row| match row.as_slice() {
            [Some(name), value] => Ok((name.clone(), value.clone().unwrap_or_default())),
            _ => Err(malformed()),
        })
        .collect()
}

/// `frames` with [`COPY_FAIL`] before each `Sync`: defence in depth should an extended-protocol
/// `COPY FROM STDIN` slip past the bridge's filter.
///
/// PostgreSQL ignores `CopyFail` outside COPY mode, and PGlite 0.2.17 then sends nothing for
/// it when a `Sync` follows, so ordinary batches are answered byte for byte as before. In COPY
/// mode the `CopyFail` ends the COPY with `57014` and the `Sync` gets its `ReadyForQuery`,
/// within the same exchange. Checked on the real artifact, which also showed the limits:
/// a `CopyFail` as the last message after a `Query` earns an extra `ReadyForQuery`, and a
/// `COPY FROM STDIN` sent as a simple `Query` traps PGlite whatever follows it, so
/// simple-protocol COPY is left entirely to the bridge's filter.
fn with_copy_fail(frames: &[u8]) -> Vec<u8> {
    let mut res = Vec::with_capacity(frames.len() + COPY_FAIL.len());
    let mut rest = frames;
    for (tag, frame) in frame::frames(frames).map_while(Result::ok) {
        if tag == b'S' {
            res.extend_from_slice(&COPY_FAIL);
        }
        res.extend_from_slice(frame);
        rest = &rest[frame.len()..];
    }
    // A torn tail is the host's to reject; pass it on untouched.
    res.extend_from_slice(rest);
    res
}

impl pg_bridge::Backend for PgliteBackend {
    async fn exchange(&self, frames: Bytes) -> Result<BytesMut, pg_bridge::Error> {
        match self.host.exec_protocol_async(with_copy_fail(&frames), Default::default()).await {
            Ok(reply) => Ok(BytesMut::from(&reply[..])),
            Err(err) => Err(pg_bridge::Error::Backend(Box::new(err))),
        }
    }

    async fn exchange_cancellable(
        &self,
        frames: Bytes,
        cancel: Arc<AtomicBool>,
        deadline: Option<std::time::Instant>,
    ) -> Result<BytesMut, pg_bridge::Error> {
        let interrupt = pglite_host::Interrupt { cancel: Some(cancel), deadline };
        match self.host.exec_protocol_async(with_copy_fail(&frames), interrupt).await {
            Ok(reply) => Ok(BytesMut::from(&reply[..])),
            Err(err) => Err(pg_bridge::Error::Backend(Box::new(err))),
        }
    }

    fn streams(&self) -> bool {
        self.host.streams()
    }

    async fn exchange_streamed(
        &self,
        head: Bytes,
        mut input: tokio::sync::mpsc::Receiver<Bytes>,
        output: tokio::sync::mpsc::Sender<pg_bridge::Piece>,
        cancel: Arc<AtomicBool>,
        deadline: Option<std::time::Instant>,
    ) -> Result<BytesMut, pg_bridge::Error> {
        // The host runs it on tokio's blocking pool, where its thread may wait for the client.
        let waits = output.clone();
        let mut read = 0;
        let stream = pglite_host::Stream {
            input: Box::new(move |said| {
                waits.blocking_send(pg_bridge::Piece::Waits { said: Bytes::from(said), read }).ok()?;
                let piece = input.blocking_recv()?;
                read += 1;
                Some(Vec::from(piece))
            }),
            output: Box::new(move |piece| output.blocking_send(pg_bridge::Piece::CopyOut(Bytes::from(piece))).is_ok()),
        };
        let interrupt = pglite_host::Interrupt { cancel: Some(cancel), deadline };
        // The bridge runs the COPY with its client: no CopyFail goes in (see `with_copy_fail`).
        match self.host.exec_streamed_async(head.to_vec(), stream, interrupt).await {
            Ok(reply) => Ok(BytesMut::from(&reply[..])),
            Err(err) => Err(pg_bridge::Error::Backend(Box::new(err))),
        }
    }

    fn max_request(&self) -> Option<usize> {
        // Room for the CopyFail frames `with_copy_fail` adds before each Sync.
        Some(self.host.max_request().saturating_sub(64 * 1024))
    }

    async fn recovered(&self) -> bool {
        // The host rebuilds a crashed instance from disk before answering the failed request.
        self.host.healthy()
    }

    fn parameter_status(&self) -> Vec<(String, String)> {
        self.params.clone()
    }

    fn session_events(&self) -> Option<pg_bridge::SessionEvents> {
        let events = self.host.take_session_events();
        Some(pg_bridge::SessionEvents {
            utility: events.utility,
            objects: events.objects,
            cursors: events.cursors,
            statements: events.statements,
            settings: events.settings,
            locks: events.locks,
            custom_settings: events.custom_settings,
            roles: events.roles,
            listen: events.listen,
            listens: events
                .listens
                .into_iter()
                .map(|op| match op {
                    pglite_host::ListenOp::Listen(channel) => pg_bridge::ListenOp::Listen(channel),
                    pglite_host::ListenOp::Unlisten(channel) => pg_bridge::ListenOp::Unlisten(channel),
                    pglite_host::ListenOp::UnlistenAll => pg_bridge::ListenOp::UnlistenAll,
                })
                .collect(),
        })
    }

    fn session_timeouts(&self) -> Option<pg_bridge::SessionTimeouts> {
        // statement_timeout is the host's own (it runs inside the backend).
        let timeouts = self.host.session_timeouts();
        Some(pg_bridge::SessionTimeouts {
            idle_in_transaction: timeouts.idle_in_transaction,
            idle_session: timeouts.idle_session,
            transaction: timeouts.transaction,
        })
    }

    fn delivers_notifications(&self) -> bool {
        self.host.delivers_notifications()
    }

    fn has_connection_defaults(&self) -> bool {
        true
    }

    async fn set_connection_defaults(&self, settings: &[(String, String)]) -> Result<Vec<String>, pg_bridge::Error> {
        self.host.set_connection_defaults(settings).map_err(|err| pg_bridge::Error::Backend(Box::new(err)))
    }

    fn reports_parameters(&self) -> bool {
        // PGlite's single-user backend never turns reporting on.
        false
    }

    fn reported_parameters(&self) -> Vec<String> {
        self.params.iter().map(|(name, _)| name.clone()).collect()
    }

    async fn cancel(&self) -> bool {
        // The client's flag is up: the guest looks at it between two instructions.
        self.host.interrupt();
        true
    }
}

#[cfg(test)]
mod tests;
