//! `PgliteBackend`: the bridge's [`pg_bridge::Backend`] over a running PGlite instance.
//!
//! An exchange is one `exec_protocol` call, run inline on the calling task's thread. PGlite is
//! never asked for anything the bridge did not send, apart from one query at construction that
//! reads the values a PostgreSQL server reports at startup (single-user PGlite has no startup
//! phase).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pglite_host::Pglite;

use crate::{Error, wire};

/// The settings a PostgreSQL 16 server reports with `ParameterStatus` at startup
/// (`GUC_REPORT`), in the order it reports them.
const REPORTED: [&str; 14] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// A `CopyFail` frame, put before every `Sync` of a batch (see [`with_copy_fail`]).
const COPY_FAIL: &[u8] = b"f\0\0\0\x29COPY is not supported by this server\0";

/// The single PostgreSQL session of a PGlite instance, as the bridge sees it.
pub struct PgliteBackend {
    host: Arc<Pglite>,
    params: Vec<(String, String)>,
}

impl PgliteBackend {
    /// Wraps a running instance; reads the values it reports to clients at startup.
    pub async fn new(host: Arc<Pglite>) -> Result<PgliteBackend, Error> {
        let names = REPORTED.map(|name| format!("'{name}'")).join(", ");
        let sql = format!(
            "SELECT name, pg_catalog.current_setting(name) \
             FROM unnest(ARRAY[{names}]::pg_catalog.text[]) WITH ORDINALITY AS s(name, idx) ORDER BY idx"
        );
        let reply = host.exec_protocol_async(wire::query(&sql)).await?;
        let params = parse_settings(&reply)?;
        Ok(PgliteBackend { host, params })
    }

    /// The instance behind this backend.
    pub fn host(&self) -> &Arc<Pglite> {
        &self.host
    }
}

fn parse_settings(reply: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let malformed = || Error::Settings { reason: "malformed reply".to_owned() };
    let mut res = Vec::new();
    for (tag, body) in wire::messages(reply).ok_or_else(malformed)? {
        match tag {
            b'D' => match wire::data_row(body).ok_or_else(malformed)?.as_slice() {
                [Some(name), value] => res.push((name.clone(), value.clone().unwrap_or_default())),
                _ => return Err(malformed()),
            },
            b'E' => {
                let (code, message) = wire::error_fields(body);
                return Err(Error::Settings { reason: format!("{code} {message}") });
            }
            _ => {}
        }
    }
    Ok(res)
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
    while let Some(len) = wire::message_len(rest) {
        if rest[0] == b'S' {
            res.extend_from_slice(COPY_FAIL);
        }
        res.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    // A torn tail is the host's to reject; pass it on untouched.
    res.extend_from_slice(rest);
    res
}

impl pg_bridge::Backend for PgliteBackend {
    async fn exchange(&self, frames: Bytes) -> Result<BytesMut, pg_bridge::Error> {
        match self.host.exec_protocol_async(with_copy_fail(&frames)).await {
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

    fn session_baseline(&self) -> &str {
        pglite_host::SESSION_BASELINE
    }

    async fn cancel(&self) -> bool {
        // One wasm thread runs the query; nothing can interrupt it from outside.
        false
    }
}

#[cfg(test)]
mod tests;
