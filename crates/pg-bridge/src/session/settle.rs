//! The end of a client's turn and of the client: what `DISCARD ALL` does for this client
//! alone, the settings it changed and the locks, cursors and temporary objects it holds read
//! from the backend, and the cleanup after it leaves.

use bytes::{Bytes, BytesMut};

use super::{Baseline, ClientState, Recreate, Session, note_parameter_statuses};
use crate::protocol::backend::text_rows;
use crate::protocol::frontend::{self, Part};
use crate::settings;
use crate::{Backend, Error, SessionEvents};

/// A condition that holds when the session has temporary objects (tables, views, sequences,
/// types) in its temporary schema.
macro_rules! temporary_objects {
    () => {
        "pg_catalog.pg_my_temp_schema() <> 0 AND (EXISTS (SELECT FROM pg_catalog.pg_class \
         WHERE relnamespace = pg_catalog.pg_my_temp_schema()) OR EXISTS (SELECT FROM pg_catalog.pg_type \
         WHERE typnamespace = pg_catalog.pg_my_temp_schema() AND typrelid = 0))"
    };
}

/// Returns a row when the backend session holds session-level advisory locks, `WITH HOLD`
/// cursors or temporary objects. Run only when idle, so they can only be those of the client
/// holding the lease. (PGlite 0.3's single-user backend shows its locks with no pid, and its
/// own pid as 0.)
const HOLDS_SQL: &str = concat!(
    "SELECT 1 WHERE EXISTS (SELECT FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND (pid = pg_catalog.pg_backend_pid() OR pid IS NULL)) \
     OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) OR (",
    temporary_objects!(),
    ")"
);

/// Whether the session has a temporary schema: without one it has no temporary objects. Asked
/// first when only those can have changed, because a migration's every `CREATE` and `DROP`
/// pays for it, and this plans in a fraction of [`TEMP_SQL`]'s time.
const TEMP_SCHEMA_SQL: &str = "SELECT pg_catalog.pg_my_temp_schema() <> 0";

/// The temporary-objects part of [`HOLDS_SQL`]: enough when neither locks nor cursors can
/// have changed.
const TEMP_SQL: &str = concat!("SELECT 1 WHERE ", temporary_objects!());

impl Session {
    /// What `DISCARD ALL` does besides the `RESET ALL` the client's own batch ran, for this
    /// client alone: cursors, identity, locks, listeners, plans, temporary objects, sequences.
    /// (Its prepared statements were closed with its batch.)
    pub(crate) async fn discard_all<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<(), Error> {
        let identity = match client.login.get("session_authorization").filter(|_| !baseline.connection_defaults) {
            Some(user) => format!("SET SESSION AUTHORIZATION {}", settings::ident(user)),
            None => "RESET SESSION AUTHORIZATION".to_owned(),
        };
        let sql = format!(
            "CLOSE ALL; {identity}; RESET ROLE; SELECT pg_catalog.pg_advisory_unlock_all(); UNLISTEN *; \
             DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
        );
        if let Err((code, message)) = self.internal(backend, &sql).await? {
            tracing::warn!(code, message, "discarding a client's session state failed");
        }
        client.events.merge(&SessionEvents::anything());
        Ok(())
    }

    /// After a client's turn ends idle: records the settings it changed if it may have changed
    /// any, and finds out whether it holds session-level locks, cursors or temporary objects
    /// if those may have changed (or it held some).
    pub(crate) async fn settle<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<(), Error> {
        let events = std::mem::take(&mut client.events);
        client.custom.extend(events.custom_settings.iter().cloned());
        if events.settings_may_change() {
            self.settle_settings(backend, baseline, client).await?;
        }
        if events.holds_may_change() || client.holds {
            let only_temporary = !client.holds && !events.cursors && !events.locks;
            self.settle_holds(backend, client, only_temporary).await?;
        }
        if events.statements {
            self.settle_statements(backend, client).await?;
        }
        self.note_statements(client);
        Ok(())
    }

    /// After a turn in which `PREPARE` or `DEALLOCATE` ran (by any route): the client's
    /// statements as the backend has them. Those it no longer has were deallocated; those it
    /// has that the client did not make itself were made by a function or `DO` block.
    async fn settle_statements<B: Backend>(&mut self, backend: &B, client: &mut ClientState) -> Result<(), Error> {
        let out = match self.internal(backend, "SELECT name, statement FROM pg_catalog.pg_prepared_statements").await? {
            Ok(out) => out,
            Err((code, message)) => {
                tracing::warn!(code, message, "reading the backend's prepared statements failed");
                return Ok(());
            }
        };
        let on_backend: std::collections::HashMap<Vec<u8>, String> = text_rows(&out)
            .into_iter()
            .filter_map(|row| match row.as_slice() {
                [Some(name), statement] => Some((name.clone().into_bytes(), statement.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        let fresh = std::mem::take(&mut client.fresh);
        client.statements.extend(fresh);
        let missing = &client.missing;
        client.statements.retain(|name, _| missing.contains(name) || on_backend.contains_key(name));
        for (name, text) in on_backend {
            client.statements.entry(name).or_insert_with(|| recreate_from_text(&text));
        }
        Ok(())
    }

    async fn settle_settings<B: Backend>(
        &mut self,
        backend: &B,
        baseline: &Baseline,
        client: &mut ClientState,
    ) -> Result<(), Error> {
        let Ok(out) = self.internal(backend, &settings::session_sql(&client.custom)).await? else {
            return Ok(());
        };
        let rows = settings::rows(&out);
        let login_user = client.login.get("session_authorization").unwrap_or(&baseline.user).clone();
        let mut overrides = settings::session_overrides(&rows, &login_user);
        if !baseline.connection_defaults {
            // Startup settings are session settings here: one `RESET` took back to the
            // backend's default is put back, as PostgreSQL's `RESET` returns to it.
            let restore: Vec<(String, String)> = client
                .login
                .iter()
                .filter(|(name, _)| name.as_str() != "session_authorization" && !rows.contains_key(*name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            if !restore.is_empty() {
                let calls: Vec<String> = restore
                    .iter()
                    .map(|(name, value)| {
                        format!(
                            "pg_catalog.set_config({}, {}, false)",
                            settings::literal(name),
                            settings::literal(value)
                        )
                    })
                    .collect();
                if let Err((code, message)) = self.internal(backend, &format!("SELECT {}", calls.join(", "))).await? {
                    tracing::warn!(code, message, "restoring a client's startup settings failed");
                }
                overrides.extend(restore);
            }
            if let Some(user) = client.login.get("session_authorization")
                && !overrides.contains_key("session_authorization")
            {
                overrides.insert("session_authorization".to_owned(), user.clone());
            }
        }
        client.overrides = overrides;
        self.applied = client.overrides.clone();
        self.applied_for = Some(client.id);
        Ok(())
    }

    /// Finds out whether the client still holds session-level advisory locks, `WITH HOLD`
    /// cursors or temporary objects (then it keeps the lease); only temporary objects when
    /// `only_temporary` (it held nothing, and neither locks nor cursors changed).
    async fn settle_holds<B: Backend>(
        &mut self,
        backend: &B,
        client: &mut ClientState,
        only_temporary: bool,
    ) -> Result<(), Error> {
        if only_temporary {
            let has_schema = self.internal(backend, TEMP_SCHEMA_SQL).await?;
            if has_schema.is_ok_and(|out| text_rows(&out).first().is_some_and(|row| row[..] == [Some("f".into())])) {
                client.holds = false;
                return Ok(());
            }
        }
        let sql = if only_temporary { TEMP_SQL } else { HOLDS_SQL };
        client.holds = match self.internal(backend, sql).await? {
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
    /// transaction, its locks, cursors and temporary objects, its prepared statements; the
    /// next client to enter resets its settings.
    /// `unlisten` is what the backend should stop listening on: `None` for everything.
    pub(crate) async fn clean_up_after<B: Backend>(
        &mut self,
        backend: &B,
        client: &mut ClientState,
        pending: bool,
        unlisten: Option<&[String]>,
    ) {
        if self.broken || client.generation.is_some_and(|g| g != self.generation) {
            return;
        }
        // Its statements are on the backend only if it held them last; else the names may be
        // another client's now.
        let statements = client.take_statements();
        let statements = if self.statements_of == Some(client.id) { statements } else { Vec::new() };
        self.note_statements(client);
        let frames = cleanup_frames(pending, client.holds, unlisten, statements.into_iter());
        match backend.exchange(frames).await {
            Ok(out) => {
                let _ = backend.session_events();
                note_parameter_statuses(&out, &mut self.reported);
                // `Query` drops the unnamed statement.
                self.unnamed_owner = None;
            }
            Err(error) => {
                tracing::error!(%error, "cleaning up after a client failed");
                self.exchange_failed(backend).await;
            }
        }
    }
}

/// How to make again a statement the backend says `text` made: `text` itself if it is a lone
/// `PREPARE` (as a function or `DO` block ran it), else nothing can.
fn recreate_from_text(text: &str) -> Recreate {
    let options = crate::lexer::LexOptions::default();
    let statements = crate::lexer::statements(text.as_bytes(), options);
    let lone_prepare = statements.iter().filter(|s| !s.head.is_empty()).count() == 1
        && statements.iter().find(|s| !s.head.is_empty()).and_then(|s| s.head.first()).is_some_and(|token| {
            token.kind == crate::lexer::TokenKind::Word
                && text.as_bytes()[token.span.clone()].eq_ignore_ascii_case(b"PREPARE")
        });
    if lone_prepare { Recreate::Query(frontend::query(text)) } else { Recreate::Lost }
}

/// Frames that end whatever the client left open on the backend: an unfinished extended
/// sequence (forced into an error, then synced), a transaction (rolled back), its locks,
/// cursors and temporary objects, and its prepared statements (closed).
fn cleanup_frames(
    pending_extended: bool,
    holds: bool,
    unlisten: Option<&[String]>,
    statements: impl Iterator<Item = Vec<u8>>,
) -> Bytes {
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
        batch.extend_from_slice(&frontend::query("DISCARD TEMP"));
    }
    // Other clients may listen on the same backend: only the channels nobody else needs.
    match unlisten {
        None => batch.extend_from_slice(&frontend::query("UNLISTEN *")),
        Some(channels) => {
            for channel in channels {
                batch.extend_from_slice(&frontend::query(&format!("UNLISTEN {}", settings::ident(channel))));
            }
        }
    }
    for name in statements {
        batch.extend_from_slice(&frontend::close_statement(&name));
    }
    batch.extend_from_slice(&frontend::sync());
    batch.freeze()
}
