//! The one owner of session state: the backend session as the bridge knows it ([`Session`],
//! which lives inside the lease, so only the client holding the lease reaches it) and each
//! client's own session state between its turns ([`ClientState`]). Everything that moves the
//! backend from one client's state to another's, records what a client changed, or cleans up
//! after it is a method here; other modules ask, they do not write these fields.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};

use crate::protocol::backend::{first_error, text_rows};
use crate::protocol::frame::frames;
use crate::protocol::frontend::{self, Part};
use crate::settings::{self, Settings};
use crate::{Backend, Error};

/// What every client starts from: the backend's settings after the session baseline.
pub(crate) struct Baseline {
    /// All settings after the session baseline, in `current_setting` form.
    pub(crate) settings: Settings,
    /// The settings the baseline SQL changed from the backend's own defaults, restored after
    /// `RESET`.
    pub(crate) changes: Settings,
    /// The backend's own role.
    pub(crate) user: String,
}

/// A client's session state as the bridge keeps it while the client is not on the backend.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub(crate) id: u32,
    /// Settings from the startup packet (and the role), restored after `RESET`.
    startup: Settings,
    /// The settings this client has now, as overrides of the baseline.
    overrides: Settings,
    /// A statement may have changed settings; take a snapshot when idle.
    settings_dirty: bool,
    /// Settings reset by `RESET`, to restore to the startup values when idle.
    restore: BTreeSet<String>,
    /// Backend names of this client's prepared statements, closed when it leaves.
    statements: HashSet<Vec<u8>>,
    /// The client holds session-level advisory locks or `WITH HOLD` cursors. They cannot be
    /// told apart from other clients' on the one backend session, so it keeps the lease until
    /// it lets go of them: others wait, and its `pg_advisory_unlock_all()` and `CLOSE ALL`
    /// touch only its own.
    holds: bool,
    /// The backend session this client has used; state on an older one is gone.
    generation: Option<u64>,
}

impl ClientState {
    pub(crate) fn new(id: u32, startup: Settings) -> ClientState {
        ClientState {
            id,
            overrides: startup.clone(),
            startup,
            settings_dirty: false,
            restore: BTreeSet::new(),
            statements: HashSet::new(),
            holds: false,
            generation: None,
        }
    }

    /// A statement may have changed this client's settings.
    pub(crate) fn settings_may_change(&mut self) {
        self.settings_dirty = true;
    }

    /// `RESET name`: the setting goes back to the client's startup value.
    pub(crate) fn reset(&mut self, name: &str) {
        self.restore.insert(name.to_owned());
    }

    /// `RESET ALL` (and `DISCARD ALL`): every startup setting goes back to its startup value.
    pub(crate) fn reset_all(&mut self, baseline: &Baseline) {
        let names = self.startup.keys().chain(baseline.changes.keys());
        self.restore.extend(names.cloned());
    }

    /// The client prepared a statement with this backend name.
    pub(crate) fn prepared(&mut self, name: Vec<u8>) {
        self.statements.insert(name);
    }

    /// The client closed its statement with this backend name.
    pub(crate) fn closed(&mut self, name: &[u8]) {
        self.statements.remove(name);
    }

    /// Forgets every prepared statement, returning their backend names to close.
    pub(crate) fn take_statements(&mut self) -> Vec<Vec<u8>> {
        self.statements.drain().collect()
    }

    /// Whether the client keeps the backend between transactions.
    pub(crate) fn holds(&self) -> bool {
        self.holds
    }

    /// Whether the client left nothing on the backend that needs cleaning up.
    pub(crate) fn has_backend_state(&self) -> bool {
        !self.statements.is_empty() || self.holds
    }
}

/// The backend's session state, guarded by the lease.
#[derive(Debug)]
pub(crate) struct Session {
    /// Overrides of the baseline currently in effect on the backend.
    applied: Settings,
    /// The client whose settings `applied` are, as that client last recorded them: it can
    /// skip comparing them when it takes the lease again.
    applied_for: Option<u32>,
    /// `ParameterStatus` values currently in effect on the backend.
    reported: Settings,
    /// Which client's Parse the backend's unnamed statement holds, if it is known.
    unnamed_owner: Option<u32>,
    /// Set once an exchange failed and the backend did not recover: it is not used again.
    broken: bool,
    /// Counts fresh backend sessions: a client that used an older one lost its state.
    generation: u64,
    /// `broken`, readable without the lease (new connections check it at startup).
    gone: Arc<AtomicBool>,
}

/// Returns a row when the backend session holds session-level advisory locks or `WITH HOLD`
/// cursors. Run only when idle, so they can only be those of the client holding the lease.
/// (PGlite 0.3's single-user backend shows its locks with no pid, and its own pid as 0.)
const HOLDS_SQL: &str = "SELECT 1 WHERE EXISTS (SELECT FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND (pid = pg_catalog.pg_backend_pid() OR pid IS NULL)) \
     OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)";

/// A backend error: its SQLSTATE and message.
pub(crate) type BackendError = (String, String);

/// Runs one internal simple query; returns its output or the backend's error.
async fn internal_query<B: Backend>(
    backend: &B,
    sql: &str,
    reported: &mut Settings,
) -> Result<Result<BytesMut, BackendError>, Error> {
    let out = backend.exchange(frontend::query(sql)).await?;
    settings::parameter_statuses(&out, reported);
    Ok(match first_error(&out) {
        Some(error) => Err(error),
        None => Ok(out),
    })
}

fn failed(what: &str, (code, message): BackendError) -> Error {
    Error::Upstream { reason: format!("{what}: {code} {message}") }
}

impl Session {
    /// Applies the session baseline and records the settings it leaves.
    pub(crate) async fn bootstrap<B: Backend>(backend: &B) -> Result<(Session, Baseline), Error> {
        let mut reported: Settings = backend.parameter_status().into_iter().collect();
        let defaults = internal_query(backend, settings::SNAPSHOT_SQL, &mut reported)
            .await?
            .map_err(|e| failed("reading the backend's settings", e))?;
        let defaults = settings::rows(&defaults);
        let sql = backend.session_baseline();
        let settings = if sql.trim().is_empty() {
            defaults.clone()
        } else {
            internal_query(backend, sql, &mut reported)
                .await?
                .map_err(|e| failed("applying the session baseline", e))?;
            let out = internal_query(backend, settings::SNAPSHOT_SQL, &mut reported)
                .await?
                .map_err(|e| failed("reading the backend's settings", e))?;
            settings::rows(&out)
        };
        let changes = settings::overrides(&settings, &defaults);
        let user = settings.get("session_authorization").cloned().unwrap_or_default();
        let session = Session {
            applied: Settings::new(),
            applied_for: None,
            reported,
            unnamed_owner: None,
            broken: false,
            generation: 0,
            gone: Arc::new(AtomicBool::new(false)),
        };
        Ok((session, Baseline { settings, changes, user }))
    }

    /// The flag set when the backend is gone for good, readable without the lease.
    pub(crate) fn gone_flag(&self) -> Arc<AtomicBool> {
        self.gone.clone()
    }

    /// Records `ParameterStatus` values the backend sent.
    pub(crate) fn note_reported(&mut self, parameters: &[(String, String)]) {
        for (name, value) in parameters {
            self.reported.insert(name.clone(), value.clone());
        }
    }

    /// Which client's Parse the unnamed statement holds.
    pub(crate) fn unnamed_owner(&self) -> Option<u32> {
        self.unnamed_owner
    }

    /// Records who owns the unnamed statement after an exchange (`None`: nobody's).
    pub(crate) fn set_unnamed_owner(&mut self, owner: Option<u32>) {
        self.unnamed_owner = owner;
    }

    /// After a failed exchange: a fresh session if the backend recovered, else broken.
    async fn exchange_failed<B: Backend>(&mut self, backend: &B) {
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

    /// One exchange for the lease holder; a failure is handled (fresh session or broken)
    /// before it is returned.
    pub(crate) async fn exchange<B: Backend>(&mut self, backend: &B, frames: Bytes) -> Result<BytesMut, Error> {
        match backend.exchange(frames).await {
            Ok(out) => Ok(out),
            Err(error) => {
                self.exchange_failed(backend).await;
                Err(error)
            }
        }
    }

    /// Runs one internal simple query for the lease holder: the `ParameterStatus` values it
    /// reports are recorded, the unnamed statement is gone afterwards, and a failed exchange
    /// is handled like any other.
    pub(crate) async fn internal<B: Backend>(
        &mut self,
        backend: &B,
        sql: &str,
    ) -> Result<Result<BytesMut, BackendError>, Error> {
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

    /// Puts `client`'s settings on the backend as it takes the lease, unless they are there
    /// already. A client whose state lived on an older backend session gets
    /// [`Error::BackendRestarted`].
    pub(crate) async fn enter<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<(), Error> {
        if self.broken {
            return Err(Error::BackendGone);
        }
        match client.generation {
            Some(generation) if generation != self.generation => return Err(Error::BackendRestarted),
            _ => client.generation = Some(self.generation),
        }
        if self.applied_for == Some(client.id) {
            // Nobody else had the backend since this client's settings were put on it.
            return Ok(());
        }
        match settings::switch_sql(&self.applied, &client.overrides, &baseline.settings) {
            None => self.applied_for = Some(client.id),
            Some(sql) => match self.internal(backend, &sql).await? {
                Err((code, message)) => {
                    // The client's settings stopped being valid (a dropped role, say); it
                    // runs with whatever the backend has, which is logged.
                    tracing::warn!(code, message, client = client.id, "re-applying a client's settings failed");
                }
                Ok(_) => {
                    self.applied = client.overrides.clone();
                    self.applied_for = Some(client.id);
                }
            },
        }
        Ok(())
    }

    /// Applies a new client's startup settings once: returns the `ParameterStatus` values it
    /// then has, or the backend's error (an invalid setting ends the connection, as in
    /// PostgreSQL).
    pub(crate) async fn apply_startup<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        startup: &Settings,
    ) -> Result<Result<Settings, BackendError>, Error> {
        if self.broken {
            return Err(Error::BackendGone);
        }
        let Some(sql) = settings::switch_sql(&self.applied, startup, &baseline.settings) else {
            return Ok(Ok(self.reported.clone()));
        };
        match self.internal(backend, &sql).await? {
            Err(error) => Ok(Err(error)),
            Ok(_) => {
                self.applied = startup.clone();
                self.applied_for = None;
                Ok(Ok(self.reported.clone()))
            }
        }
    }

    /// After a client's turn ends idle: restores what `RESET` reset to its startup values and
    /// records its settings if they may have changed, then, if the turn may have taken or
    /// released session-level locks or cursors (or the client holds some), finds out whether
    /// it still holds any. Returns `ParameterStatus` frames for the client.
    pub(crate) async fn settle<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
        check_holds: bool,
        discard_all: bool,
    ) -> Result<BytesMut, Error> {
        let status_frames = self.settle_settings(backend, baseline, client).await?;
        if check_holds || client.holds {
            self.settle_holds(backend, client, discard_all).await?;
        }
        Ok(status_frames)
    }

    async fn settle_settings<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<BytesMut, Error> {
        let mut status_frames = BytesMut::new();
        if !client.settings_dirty && client.restore.is_empty() {
            return Ok(status_frames);
        }
        let mut calls = Vec::new();
        for name in std::mem::take(&mut client.restore) {
            let value = client.startup.get(&name).or_else(|| baseline.changes.get(&name));
            if let Some(value) = value {
                calls.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    settings::literal(&name),
                    settings::literal(value)
                ));
            }
        }
        if !calls.is_empty() {
            let sql = format!("SELECT {}", calls.join(", "));
            match self.internal(backend, &sql).await? {
                Err((code, message)) => tracing::warn!(code, message, "restoring a client's startup settings failed"),
                Ok(out) => {
                    // ParameterStatus may arrive at any time; these tell the client about
                    // values RESET put back to its startup settings.
                    for (tag, bytes) in frames(&out).flatten() {
                        if tag == b'S' {
                            status_frames.extend_from_slice(bytes);
                        }
                    }
                }
            }
        }
        if let Ok(out) = self.internal(backend, settings::SNAPSHOT_SQL).await? {
            client.overrides = settings::overrides(&settings::rows(&out), &baseline.settings);
            self.applied = client.overrides.clone();
            self.applied_for = Some(client.id);
        }
        client.settings_dirty = false;
        Ok(status_frames)
    }

    /// Finds out whether the client still holds session-level advisory locks or `WITH HOLD`
    /// cursors (then it keeps the lease). `DISCARD ALL` releases them, as PostgreSQL's does.
    async fn settle_holds<B: Backend>(
        &mut self,
        backend: &B,
        client: &mut ClientState,
        discard_all: bool,
    ) -> Result<(), Error> {
        let mut sql = String::new();
        if discard_all && client.holds {
            sql.push_str("CLOSE ALL; SELECT pg_catalog.pg_advisory_unlock_all(); ");
        }
        sql.push_str(HOLDS_SQL);
        client.holds = match self.internal(backend, &sql).await? {
            Ok(out) => !text_rows(&out).is_empty(),
            Err((code, message)) => {
                // Cannot tell: keeping the lease is the safe side (the idle timeout bounds it).
                tracing::warn!(code, message, "checking a client's session locks failed");
                true
            }
        };
        Ok(())
    }

    /// Undoes everything a departed client left on the backend: an open extended sequence or
    /// transaction, its locks and cursors, its prepared statements.
    pub(crate) async fn clean_up_after<B: Backend>(&mut self, backend: &B, client: &mut ClientState, pending: bool) {
        if self.broken || client.generation.is_some_and(|g| g != self.generation) {
            return;
        }
        let frames = cleanup_frames(pending, client.holds, client.statements.drain());
        match self.exchange(backend, frames).await {
            Ok(out) => {
                settings::parameter_statuses(&out, &mut self.reported);
                // `Query` drops the unnamed statement.
                self.unnamed_owner = None;
            }
            Err(error) => tracing::error!(%error, "cleaning up after a client failed"),
        }
    }
}

/// Frames that end whatever the client left open on the backend: an unfinished extended
/// sequence (forced into an error, then synced), a transaction (rolled back) and its prepared
/// statements (closed).
fn cleanup_frames(pending_extended: bool, holds: bool, statements: impl Iterator<Item = Vec<u8>>) -> Bytes {
    let mut batch = BytesMut::new();
    if pending_extended {
        // Executing a portal that cannot exist fails the open sequence, so the Sync that
        // follows never commits its implicit transaction. If the sequence had already failed,
        // both are swallowed until the Sync, which answers either way.
        batch
            .extend_from_slice(&frontend::build(b'E', &[Part::Cstr(b"_pgb_no_such_portal"), Part::Raw(&[0, 0, 0, 0])]));
        batch.extend_from_slice(&frontend::sync());
    }
    batch.extend_from_slice(&frontend::query("ROLLBACK"));
    if holds {
        batch.extend_from_slice(&frontend::query("CLOSE ALL"));
        batch.extend_from_slice(&frontend::query("SELECT pg_catalog.pg_advisory_unlock_all()"));
    }
    // LISTEN is refused, but a function can still run it; notifications are dropped anyway.
    batch.extend_from_slice(&frontend::query("UNLISTEN *"));
    for name in statements {
        batch.extend_from_slice(&frontend::close_statement(&name));
    }
    batch.extend_from_slice(&frontend::sync());
    batch.freeze()
}
