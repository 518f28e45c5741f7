//! The one owner of session state: the backend session as the bridge knows it ([`Session`],
//! which lives inside the lease, so only the client holding the lease reaches it) and each
//! client's own session state between its turns ([`ClientState`]). Everything that moves the
//! backend from one client's state to another's, records what a client changed, or cleans up
//! after it is a method here; other modules ask, they do not write these fields.
//!
//! The backend is the truth. What a client may have changed is what the backend reports
//! ([`Backend::session_events`], by any route: functions, `DO` blocks, protocol messages), and
//! what it did change is read from the backend (`pg_settings`, `pg_locks`, `pg_cursors`,
//! `pg_class`), never from the client's SQL text.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};

use crate::protocol::backend::{first_error, parameter_status};
use crate::protocol::frame::frames;
use crate::protocol::frontend;
use crate::settings::{self, Settings};
use crate::{Backend, Error, SessionEvents};

/// What every client starts from.
pub(crate) struct Baseline {
    /// All settings after the session baseline, in `current_setting` form.
    pub(crate) settings: Settings,
    /// The backend's own role.
    pub(crate) user: String,
    /// The settings PostgreSQL reports with `ParameterStatus`, as named in those messages.
    pub(crate) reported: Vec<String>,
    /// The bridge sends `ParameterStatus` itself (the backend does not).
    pub(crate) synthesize_reports: bool,
    /// The backend takes connection defaults (else they are applied as session settings).
    pub(crate) connection_defaults: bool,
}

/// The backend's session state, guarded by the lease.
#[derive(Debug)]
pub(crate) struct Session {
    /// Connection defaults in effect on the backend.
    defaults: Settings,
    /// Session-level overrides currently in effect on the backend.
    applied: Settings,
    /// The client whose state the backend holds: it can skip comparing when it takes the
    /// lease again.
    applied_for: Option<u32>,
    /// `ParameterStatus` values currently in effect on the backend.
    reported: Settings,
    /// Which client's Parse the backend's unnamed statement holds, if it is known.
    unnamed_owner: Option<u32>,
    /// The client whose prepared statements the backend holds (only that client's ever are).
    statements_of: Option<u32>,
    /// The backend still holds the statements of a client whose turn is over: they are
    /// deallocated at the start of the next client exchange.
    deallocate_pending: bool,
    /// Set once an exchange failed and the backend did not recover: it is not used again.
    broken: bool,
    /// Counts fresh backend sessions: a client that used an older one lost its state.
    generation: u64,
    /// `broken`, readable without the lease (new connections check it at startup).
    gone: Arc<AtomicBool>,
}

/// A backend error: its SQLSTATE and message.
pub(crate) type BackendError = (String, String);

/// Runs one internal simple query; returns its output or the backend's error. The
/// `ParameterStatus` values it reports are recorded in `reported`.
async fn internal_query<B: Backend>(
    backend: &B,
    sql: &str,
    reported: &mut Settings,
) -> Result<Result<BytesMut, BackendError>, Error> {
    let out = backend.exchange(frontend::query(sql)).await?;
    // The bridge's own statements change nothing of a client's.
    let _ = backend.session_events();
    note_parameter_statuses(&out, reported);
    Ok(match first_error(&out) {
        Some(error) => Err(error),
        None => Ok(out),
    })
}

/// Records the `ParameterStatus` frames of a backend output.
fn note_parameter_statuses(output: &[u8], reported: &mut Settings) {
    for (tag, frame) in frames(output).flatten() {
        if tag == b'S'
            && let Some((name, value)) = parameter_status(frame)
        {
            reported.insert(name, value);
        }
    }
}

fn failed(what: &str, (code, message): BackendError) -> Error {
    Error::Upstream { reason: format!("{what}: {code} {message}") }
}

impl Session {
    /// Applies the session baseline and records the settings it leaves.
    pub(crate) async fn bootstrap<B: Backend>(backend: &B) -> Result<(Session, Baseline), Error> {
        let mut reported: Settings = backend.parameter_status().into_iter().collect();
        let sql = backend.session_baseline();
        if !sql.trim().is_empty() {
            internal_query(backend, sql, &mut reported)
                .await?
                .map_err(|e| failed("applying the session baseline", e))?;
        }
        let out = internal_query(backend, settings::SNAPSHOT_SQL, &mut reported)
            .await?
            .map_err(|e| failed("reading the backend's settings", e))?;
        let settings = settings::rows(&out);
        let user = settings.get("session_authorization").cloned().unwrap_or_default();
        let baseline = Baseline {
            settings,
            user,
            reported: backend.reported_parameters(),
            synthesize_reports: !backend.reports_parameters(),
            connection_defaults: backend.has_connection_defaults(),
        };
        let session = Session {
            defaults: Settings::new(),
            applied: Settings::new(),
            applied_for: None,
            reported,
            unnamed_owner: None,
            statements_of: None,
            deallocate_pending: false,
            broken: false,
            generation: 0,
            gone: Arc::new(AtomicBool::new(false)),
        };
        Ok((session, baseline))
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
            self.defaults = Settings::new();
            self.applied = Settings::new();
            self.applied_for = None;
            self.reported = backend.parameter_status().into_iter().collect();
            self.unnamed_owner = None;
            self.statements_of = None;
            self.deallocate_pending = false;
            self.generation += 1;
        } else {
            self.broken = true;
            self.gone.store(true, Ordering::SeqCst);
        }
    }

    /// One exchange of `client`'s messages: a failure is handled (fresh session or broken)
    /// before it is returned, and what the backend reports may have changed is noted for
    /// when the client's turn ends.
    pub(crate) async fn exchange<B: Backend>(
        &mut self,
        backend: &B,
        client: &mut ClientState,
        frames: Bytes,
        cancel: Arc<AtomicBool>,
        deadline: Option<std::time::Instant>,
    ) -> Result<BytesMut, Error> {
        let answer = backend.exchange_cancellable(frames, cancel, deadline).await;
        self.exchanged(backend, client, answer).await
    }

    /// What [`exchange`](Self::exchange) does with the answer of an exchange made elsewhere.
    pub(crate) async fn exchanged<B: Backend>(
        &mut self,
        backend: &B,
        client: &mut ClientState,
        answer: Result<BytesMut, Error>,
    ) -> Result<BytesMut, Error> {
        match answer {
            Ok(out) => {
                let events = backend.session_events().unwrap_or_else(SessionEvents::anything);
                client.events.merge(&events);
                Ok(out)
            }
            Err(error) => {
                self.exchange_failed(backend).await;
                Err(error)
            }
        }
    }

    /// Runs one internal simple query for the lease holder; the unnamed statement is gone
    /// afterwards, and a failed exchange is handled like any other.
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

    /// The backend holds the prepared statements of one client only, the one whose turn it
    /// is, under the names it gave them: another client's are deallocated as `client` takes
    /// the backend (they stay in that client's state and are made again when it names them),
    /// and `client`'s own are gone unless it held the backend last.
    fn hand_over_statements(&mut self, client: &mut ClientState) {
        if self.statements_of == Some(client.id) {
            return;
        }
        if self.statements_of.is_some() {
            // In the same exchange as the client's own messages (see `take_deallocate`).
            self.deallocate_pending = true;
            self.statements_of = None;
        }
        client.statements.retain(|_, recreate| !matches!(recreate, client::Recreate::Lost));
        client.missing = client.statements.keys().cloned().collect();
    }

    /// Whether the statements of a client whose turn is over are still to be deallocated: the
    /// caller puts `DEALLOCATE ALL` before the messages it sends.
    pub(crate) fn take_deallocate(&mut self) -> bool {
        std::mem::take(&mut self.deallocate_pending)
    }

    /// Deallocates another client's statements now, if that is still to be done.
    pub(crate) async fn deallocate_now<B: Backend>(&mut self, backend: &B) -> Result<(), Error> {
        if self.take_deallocate()
            && let Err((code, message)) = self.internal(backend, "DEALLOCATE ALL").await?
        {
            tracing::warn!(code, message, "deallocating another client's prepared statements failed");
        }
        Ok(())
    }

    /// Records whether the backend holds `client`'s prepared statements after its turn.
    pub(crate) fn note_statements(&mut self, client: &ClientState) {
        if client.statements_on_backend() {
            self.statements_of = Some(client.id);
        } else if self.statements_of == Some(client.id) {
            self.statements_of = None;
        }
    }

    /// Puts `client`'s state on the backend as it takes the lease, unless it is there
    /// already. A client with state that lived only on an older backend session (prepared
    /// statements, session locks, cursors, temporary objects) gets
    /// [`Error::BackendRestarted`]; one without carries on, its settings put on the new
    /// session like any client's. (No other client can have been in a transaction: the one in
    /// a transaction holds the lease.)
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
            Some(generation) if generation != self.generation && client.had_backend_state() => {
                return Err(Error::BackendRestarted);
            }
            _ => client.generation = Some(self.generation),
        }
        // The batch's own statements (fresh) are not among those gone.
        self.hand_over_statements(client);
        let fresh = std::mem::take(&mut client.fresh);
        client.statements.extend(fresh);
        if self.applied_for == Some(client.id) {
            // Nobody else had the backend since this client's state was put on it.
            return Ok(());
        }
        if baseline.connection_defaults && self.defaults != client.login {
            let mut changes = Vec::new();
            for name in self.defaults.keys().filter(|name| !client.login.contains_key(*name)) {
                let value = match name.as_str() {
                    "session_authorization" => baseline.user.clone(),
                    _ => baseline.settings.get(name).cloned().unwrap_or_default(),
                };
                changes.push((name.clone(), value));
            }
            for (name, value) in &client.login {
                if self.defaults.get(name) != Some(value) {
                    changes.push((name.clone(), value.clone()));
                }
            }
            let refused = match backend.set_connection_defaults(&changes).await {
                Ok(refused) => refused,
                Err(error) => {
                    self.exchange_failed(backend).await;
                    return Err(error);
                }
            };
            if refused.iter().any(|name| name == "session_authorization") {
                // The client's role was dropped (or renamed) since it logged in: it must not go
                // on as whoever the backend was before.
                self.defaults = Settings::new();
                self.applied_for = None;
                return Err(Error::Rejected {
                    sqlstate: "28000".to_owned(),
                    reason: format!("role \"{}\" does not exist", client.user),
                });
            }
            if !refused.is_empty() {
                // Found valid at the client's startup; a setting's role dropped since, say.
                tracing::warn!(?refused, client = client.id, "connection defaults refused");
            }
            self.defaults = client.login.clone();
        }
        match settings::switch_sql(&self.applied, &client.overrides, &baseline.user) {
            None => {}
            Some(sql) => match self.internal(backend, &sql).await? {
                Err((code, message)) => {
                    // The client's settings stopped being valid (a dropped role, say); it
                    // runs with whatever the backend has, which is logged.
                    tracing::warn!(code, message, client = client.id, "re-applying a client's settings failed");
                }
                Ok(_) => self.applied = client.overrides.clone(),
            },
        }
        self.applied_for = Some(client.id);
        Ok(())
    }
}

mod client;
mod settle;
mod start;

pub(crate) use client::{ClientState, Recreate};
pub(crate) use start::{RoleLogin, Started};
