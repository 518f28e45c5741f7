//! The backend lease and the work done while holding it.
//!
//! `Session` is the backend's state as the bridge knows it (whose settings are applied, the
//! reported parameters, who owns the unnamed statement). It lives inside the lease mutex, so
//! only the owning client can read or change it. This module also filters backend output on its
//! way to a client: notifications and COPY frames never pass, injected responses are dropped,
//! and `CommandComplete` tags of rewritten statements are restored.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::reply::{Replies, Severity, TxStatus};
use crate::settings::{self, Settings};
use crate::{Backend, Error, frame, message};

/// The backend's session state, guarded by the lease.
#[derive(Debug)]
pub(crate) struct Session {
    /// Overrides of the baseline currently in effect on the backend.
    pub(crate) applied: Settings,
    /// The client whose settings `applied` are, as that client last recorded them: it can
    /// skip comparing them when it takes the lease again.
    pub(crate) applied_for: Option<u32>,
    /// `ParameterStatus` values currently in effect on the backend.
    pub(crate) reported: Settings,
    /// Which client's Parse the backend's unnamed statement holds, if it is known.
    pub(crate) unnamed_owner: Option<u32>,
    /// Set once an exchange failed and the backend did not recover: it is not used again.
    pub(crate) broken: bool,
    /// Counts fresh backend sessions: a client that used an older one lost its state.
    pub(crate) generation: u64,
    /// `broken`, readable without the lease (new connections check it at startup).
    pub(crate) gone: Arc<AtomicBool>,
}

impl Session {
    /// After a failed exchange: a fresh session if the backend recovered, else broken.
    pub(crate) async fn exchange_failed<B: Backend>(&mut self, backend: &B) {
        if backend.recovered().await {
            tracing::warn!(generation = self.generation + 1, "backend restarted; clients of the old session are ended");
            self.applied = Settings::new();
            self.applied_for = None;
            self.reported = backend.parameter_status().into_iter().collect();
            self.unnamed_owner = None;
            self.generation += 1;
        } else {
            self.broken = true;
            self.gone.store(true, Ordering::SeqCst);
        }
    }
}

impl Session {
    /// Runs one internal simple query for the lease holder: the `ParameterStatus` values it
    /// reports are recorded, the unnamed statement is gone afterwards, and a failed exchange
    /// is handled like any other.
    pub(crate) async fn internal<B: Backend>(
        &mut self,
        backend: &B,
        sql: &str,
    ) -> Result<Result<BytesMut, (String, String)>, Error> {
        match internal_query(backend, sql, &mut self.reported).await {
            Ok(out) => {
                self.unnamed_owner = None;
                Ok(out)
            }
            Err(error) => {
                self.exchange_failed(backend).await;
                Err(error)
            }
        }
    }
}

/// What `bootstrap` learnt about the backend.
pub(crate) struct Boot {
    pub(crate) session: Session,
    pub(crate) baseline: Settings,
    pub(crate) baseline_changes: Settings,
    pub(crate) backend_user: String,
}

/// Runs one internal simple query; returns its output or the backend's error.
pub(crate) async fn internal_query<B: Backend>(
    backend: &B,
    sql: &str,
    reported: &mut Settings,
) -> Result<Result<BytesMut, (String, String)>, Error> {
    let out = backend.exchange(message::query(sql)).await?;
    settings::parameter_statuses(&out, reported);
    Ok(match settings::first_error(&out) {
        Some(error) => Err(error),
        None => Ok(out),
    })
}

fn failed(what: &str, (code, message): (String, String)) -> Error {
    Error::Upstream { reason: format!("{what}: {code} {message}") }
}

/// Applies the session baseline and records the settings it leaves.
pub(crate) async fn bootstrap<B: Backend>(backend: &B) -> Result<Boot, Error> {
    let mut reported: Settings = backend.parameter_status().into_iter().collect();
    let defaults = internal_query(backend, settings::SNAPSHOT_SQL, &mut reported)
        .await?
        .map_err(|e| failed("reading the backend's settings", e))?;
    let defaults = settings::rows(&defaults);
    let sql = backend.session_baseline();
    let baseline = if sql.trim().is_empty() {
        defaults.clone()
    } else {
        internal_query(backend, sql, &mut reported).await?.map_err(|e| failed("applying the session baseline", e))?;
        let out = internal_query(backend, settings::SNAPSHOT_SQL, &mut reported)
            .await?
            .map_err(|e| failed("reading the backend's settings", e))?;
        settings::rows(&out)
    };
    let baseline_changes = settings::overrides(&baseline, &defaults);
    let backend_user = baseline.get("session_authorization").cloned().unwrap_or_default();
    Ok(Boot {
        session: Session {
            applied: Settings::new(),
            applied_for: None,
            reported,
            unnamed_owner: None,
            broken: false,
            generation: 0,
            gone: Arc::new(AtomicBool::new(false)),
        },
        baseline,
        baseline_changes,
        backend_user,
    })
}

/// How to post-process the output of one exchange for its client.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Responses to messages the bridge prepended (`ParseComplete`, `BindComplete`,
    /// `CloseComplete`) that the client must not see.
    pub(crate) drop_leading: usize,
    /// For a simple query: `CommandComplete` tags to replace, by statement index.
    pub(crate) tags: Vec<(usize, String)>,
}

/// The result of filtering one exchange's output.
#[derive(Debug)]
pub(crate) struct Filtered {
    /// Bytes for the client.
    pub(crate) out: BytesMut,
    /// The status of the last `ReadyForQuery`, if any.
    pub(crate) ready: Option<TxStatus>,
    /// `ParameterStatus` changes seen, for the client's own bookkeeping.
    pub(crate) parameters: Vec<(String, String)>,
}

/// Filters backend output for a client according to `plan`.
pub(crate) fn filter(output: BytesMut, plan: &Plan, session: &mut Session) -> Result<Filtered, Error> {
    if plan.drop_leading == 0 && plan.tags.is_empty() {
        // Usually nothing is to be removed or replaced: the output goes out as it is.
        let mut res = Filtered { out: BytesMut::new(), ready: None, parameters: Vec::new() };
        let mut clean = true;
        for item in frame::backend_frames(&output) {
            let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
            match tag {
                b'A' | b'K' | b'G' | b'W' | b'H' => {
                    clean = false;
                    break;
                }
                b'S' => {
                    if let Some(parameter) = settings::parameter_status(bytes) {
                        res.parameters.push(parameter);
                    }
                }
                b'Z' => res.ready = bytes.get(5).copied().and_then(TxStatus::from_byte),
                _ => {}
            }
        }
        if clean {
            for (name, value) in &res.parameters {
                session.reported.insert(name.clone(), value.clone());
            }
            res.out = output;
            return Ok(res);
        }
    }
    filter_copy(&output, plan, session)
}

/// `filter` for output from which something is removed or replaced.
fn filter_copy(output: &[u8], plan: &Plan, session: &mut Session) -> Result<Filtered, Error> {
    let mut res = Filtered { out: BytesMut::with_capacity(output.len()), ready: None, parameters: Vec::new() };
    let mut to_drop = plan.drop_leading;
    let mut statement_idx = 0usize;
    let mut in_copy_out = false;
    for item in frame::backend_frames(output) {
        let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
        if to_drop > 0 {
            if matches!(tag, b'1' | b'2' | b'3') {
                to_drop -= 1;
                continue;
            }
            to_drop = 0;
        }
        match tag {
            // Notifications belong to nobody here; the backend key is the bridge's business.
            b'A' | b'K' => {}
            // COPY IN / BOTH was already aborted by the backend; its error follows.
            b'G' | b'W' => {}
            b'H' => in_copy_out = true,
            b'd' | b'c' if in_copy_out => {}
            b'C' if in_copy_out => {
                in_copy_out = false;
                statement_idx += 1;
                let mut replies = Replies::new();
                replies.error(Severity::Error, "0A000", "COPY is not supported by this server")?;
                res.out.extend_from_slice(&replies.into_bytes());
            }
            b'S' => {
                if let Some((name, value)) = settings::parameter_status(bytes) {
                    session.reported.insert(name.clone(), value.clone());
                    res.parameters.push((name, value));
                }
                res.out.extend_from_slice(bytes);
            }
            b'C' | b'I' => {
                match plan.tags.iter().find(|(idx, _)| *idx == statement_idx) {
                    Some((_, new_tag)) if tag == b'C' => {
                        let mut replies = Replies::new();
                        replies.command_complete(new_tag)?;
                        res.out.extend_from_slice(&replies.into_bytes());
                    }
                    _ => res.out.extend_from_slice(bytes),
                }
                statement_idx += 1;
            }
            b'Z' => {
                res.ready = bytes.get(5).copied().and_then(TxStatus::from_byte);
                statement_idx = 0;
                res.out.extend_from_slice(bytes);
            }
            _ => res.out.extend_from_slice(bytes),
        }
    }
    Ok(res)
}

/// Returns a row when the backend session holds session-level advisory locks or `WITH HOLD`
/// cursors. Run only when idle, so they can only be those of the client holding the lease.
/// (PGlite 0.3's single-user backend shows its locks with no pid, and its own pid as 0.)
pub(crate) const HOLDS_SQL: &str = "SELECT 1 WHERE EXISTS (SELECT FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND (pid = pg_catalog.pg_backend_pid() OR pid IS NULL)) \
     OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)";

/// Frames that end whatever the client left open on the backend: an unfinished extended
/// sequence (forced into an error, then synced), a transaction (rolled back) and its prepared
/// statements (closed).
pub(crate) fn cleanup_frames(pending_extended: bool, holds: bool, statements: impl Iterator<Item = Vec<u8>>) -> Bytes {
    let mut batch = BytesMut::new();
    if pending_extended {
        // Executing a portal that cannot exist fails the open sequence, so the Sync that
        // follows never commits its implicit transaction. If the sequence had already failed,
        // both are swallowed until the Sync, which answers either way.
        batch.extend_from_slice(&message::build(
            b'E',
            &[message::Part::Cstr(b"_pgb_no_such_portal"), message::Part::Raw(&[0, 0, 0, 0])],
        ));
        batch.extend_from_slice(&message::sync());
    }
    batch.extend_from_slice(&message::query("ROLLBACK"));
    if holds {
        batch.extend_from_slice(&message::query("CLOSE ALL"));
        batch.extend_from_slice(&message::query("SELECT pg_catalog.pg_advisory_unlock_all()"));
    }
    // LISTEN is refused, but a function can still run it; notifications are dropped anyway.
    batch.extend_from_slice(&message::query("UNLISTEN *"));
    for name in statements {
        batch.extend_from_slice(&message::close_statement(&name));
    }
    batch.extend_from_slice(&message::sync());
    batch.freeze()
}
