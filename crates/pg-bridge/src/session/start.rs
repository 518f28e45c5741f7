//! A new client's start on the backend, and what it is told of reported settings: its role's
//! login facts read (for password authentication), its login checked and its settings applied
//! (with the notices PostgreSQL raises doing so), and `ParameterStatus` for reported settings
//! its turns change, where the backend does not send them itself.

use bytes::{Bytes, BytesMut};

use super::{BackendError, Baseline, ClientState, Session, note_parameter_statuses};
use crate::protocol::backend::{Replies, Severity, error_frame, text_rows, with_severity};
use crate::protocol::frame::frames;
use crate::protocol::frontend;
use crate::settings::{self, Settings};
use crate::{Backend, Error};

/// What a new client's startup settings come to: the `ParameterStatus` values it starts with,
/// the notices applying them raised (as PostgreSQL sends them at startup), and the settings as
/// the backend spells them (`DateStyle=German` is `German, DMY`, a long `application_name`
/// truncated), which setting again raises nothing.
#[derive(Clone, Debug)]
pub(crate) struct Started {
    pub(crate) reported: Settings,
    pub(crate) notices: Bytes,
    pub(crate) login: Settings,
}

/// What a login as one role is checked against, as `pg_authid` has it at the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleLogin {
    /// `rolcanlogin`.
    pub(crate) can_login: bool,
    /// `rolpassword`: a SCRAM secret or an md5 hash, `None` when the role has no password.
    pub(crate) secret: Option<String>,
    /// `rolvaliduntil` has passed.
    pub(crate) expired: bool,
}

/// The id of the bridge's own state on the backend; clients count from 1.
const OWN_ID: u32 = 0;

impl Session {
    /// Reads `role`'s login facts from `pg_authid` (`None`: no such role). Run as the
    /// backend's own role with its own settings (entered as any client's state would be, so
    /// the identity and `search_path` the last client left do not matter), and never cached:
    /// a password changed a moment ago is the one read.
    pub(crate) async fn role_login<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        role: &str,
    ) -> Result<Result<Option<RoleLogin>, BackendError>, Error> {
        let mut own = ClientState::new(OWN_ID, &baseline.user, Settings::new(), baseline);
        self.enter(backend, baseline, &mut own).await?;
        let sql = format!(
            "SELECT rolcanlogin, rolpassword, rolvaliduntil OPERATOR(pg_catalog.<) pg_catalog.now() \
             FROM pg_catalog.pg_authid WHERE rolname OPERATOR(pg_catalog.=) {}",
            settings::literal(role)
        );
        let out = match self.internal(backend, &sql).await? {
            Ok(out) => out,
            Err(error) => return Ok(Err(error)),
        };
        let rows = text_rows(&out);
        Ok(Ok(rows.first().map(|row| {
            let flag = |idx: usize| row.get(idx).cloned().flatten().is_some_and(|value| value == "t");
            RoleLogin { can_login: flag(0), secret: row.get(1).cloned().flatten(), expired: flag(2) }
        })))
    }

    /// Checks a new client's startup settings and puts them on the backend: an invalid one is
    /// the backend's error (which ends the connection, as in PostgreSQL); else the
    /// `ParameterStatus` values the client starts with and the notices PostgreSQL raised
    /// applying them (an `application_name` of 64 bytes or more is truncated, with a notice).
    pub(crate) async fn start<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<Result<Started, Bytes>, Error> {
        if self.broken {
            return Err(Error::BackendGone);
        }
        // Checked in a transaction rolled back, so nothing sticks but the notices: the role
        // (NULL when it does not exist), then each setting.
        let names: Vec<String> =
            client.login.keys().filter(|name| name.as_str() != "session_authorization").cloned().collect();
        let calls: Vec<String> = client
            .login
            .iter()
            .filter(|(name, _)| name.as_str() != "session_authorization")
            .map(|(name, value)| {
                format!("pg_catalog.set_config({}, {}, true)", settings::literal(name), settings::literal(value))
            })
            .collect();
        let mut check = format!(
            "BEGIN; SELECT (SELECT rolcanlogin::pg_catalog.text FROM pg_catalog.pg_roles WHERE rolname = {}); ",
            settings::literal(&client.user)
        );
        if !calls.is_empty() {
            check.push_str(&format!("SELECT {}; ", calls.join(", ")));
        }
        check.push_str("ROLLBACK");
        let out = backend.exchange(frontend::query(&check)).await;
        let out = match out {
            Ok(out) => out,
            Err(error) => {
                self.exchange_failed(backend).await;
                return Err(error);
            }
        };
        let _ = backend.session_events();
        note_parameter_statuses(&out, &mut self.reported);
        self.unnamed_owner = None;
        let role = &client.user;
        let refused = |message: String| -> Result<Result<Started, Bytes>, Error> {
            Ok(Err(error_frame(Severity::Fatal, "28000", &message)?.freeze()))
        };
        match text_rows(&out).first().and_then(|row| row.first().cloned()) {
            Some(None) => return refused(format!("role \"{role}\" does not exist")),
            Some(Some(can_login)) if can_login != "true" => {
                return refused(format!("role \"{role}\" is not permitted to log in"));
            }
            _ => {}
        }
        if let Some((_, error)) = frames(&out).flatten().find(|(tag, _)| *tag == b'E') {
            return Ok(Err(with_severity(error, "FATAL").freeze()));
        }
        let mut notices = BytesMut::new();
        for (tag, frame) in frames(&out).flatten() {
            if tag == b'N' {
                notices.extend_from_slice(frame);
            }
        }
        if let Some(values) = text_rows(&out).get(1) {
            for (name, value) in names.iter().zip(values) {
                client.login.insert(name.clone(), value.clone().unwrap_or_default());
            }
            if !baseline.connection_defaults {
                client.overrides = client.login.clone();
            }
        }
        self.enter(backend, baseline, client).await?;
        let reported = self.read_reported(backend, baseline).await?;
        client.reported = reported.clone();
        Ok(Ok(Started { reported, notices: notices.freeze(), login: client.login.clone() }))
    }

    /// The current values of the reported settings, as the backend has them.
    async fn read_reported<B: Backend>(&mut self, backend: &B, baseline: &Baseline) -> Result<Settings, Error> {
        if !baseline.synthesize_reports {
            return Ok(self.reported.clone());
        }
        let out = match self.internal(backend, &settings::values_sql(&baseline.reported)).await? {
            Ok(out) => out,
            Err((code, message)) => {
                tracing::warn!(code, message, "reading the reported settings failed");
                return Ok(self.reported.clone());
            }
        };
        let mut res = Settings::new();
        for row in text_rows(&out) {
            if let [Some(name), value] = row.as_slice() {
                res.insert(name.clone(), value.clone().unwrap_or_default());
            }
        }
        Ok(res)
    }

    /// After an exchange ended in `ReadyForQuery`: tells the client (with `ParameterStatus`
    /// frames, returned) about reported settings its turn changed, where the backend does not
    /// send them itself. In a failed transaction nothing can be read, and nothing was changed
    /// since it failed.
    pub(crate) async fn report<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
        failed_transaction: bool,
    ) -> Result<BytesMut, Error> {
        let mut res = BytesMut::new();
        if !baseline.synthesize_reports || !client.events.settings_may_change() || failed_transaction {
            return Ok(res);
        }
        let now = self.read_reported(backend, baseline).await?;
        let mut replies = Replies::new();
        for (name, value) in &now {
            if client.reported.get(name) != Some(value) {
                replies.parameter_status(name, value)?;
            }
        }
        client.reported = now;
        res.extend_from_slice(&replies.into_bytes());
        Ok(res)
    }
}
