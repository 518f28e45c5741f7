//! The command filter: a verdict for the SQL text of one Query or Parse, without any I/O.
//!
//! COPY, LISTEN and NOTIFY can never work on the shared single-session backend (COPY cannot
//! be resumed across exchanges, notifications would reach the wrong client), so a message
//! containing one as the first keyword of any statement is refused whole. Everything else is
//! allowed, and the verdict notes the statements that touch per-client session state, which the
//! connection then scopes to its client (renamed prepared statements, replayed settings).

use std::ops::Range;

use crate::lexer::{self, LexOptions, Statement, TokenKind};

/// What to do with one Query or Parse text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Never forward: answer `0A000` naming `command`.
    Refuse { command: &'static str },
    /// Forward, after the per-statement treatment in `statements` (one entry per non-empty
    /// statement, in order).
    Allow { statements: Vec<Classified> },
}

/// One non-empty statement and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    /// Byte range of the statement, without its `;`.
    pub(crate) span: Range<usize>,
    /// How it touches session state.
    pub(crate) kind: StatementKind,
}

/// How one statement touches session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatementKind {
    /// Nothing the bridge needs to scope.
    Plain,
    /// `SET`, `RESET name`, `set_config(..)` and the like: settings may have changed.
    Settings,
    /// `RESET ALL`: settings return to the client's startup values.
    ResetAll,
    /// `RESET name`: that setting returns to the client's startup value.
    Reset { name: String },
    /// `DISCARD ALL`: reset everything this client owns, not the backend.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`: this client's prepared statements only.
    DeallocateAll,
    /// `PREPARE name`, `EXECUTE name`, `DEALLOCATE [PREPARE] name`: the name is renamed.
    NamedStatement { name: Range<usize>, value: Vec<u8> },
    /// State that outlives the transaction and cannot be renamed per client: session-level
    /// advisory locks (`pg_advisory_lock(..)`, `pg_advisory_unlock_all()`) and cursors
    /// (`DECLARE .. WITH HOLD`, `CLOSE ALL`). The client keeps the backend while it holds any.
    SessionScoped,
}

impl StatementKind {
    /// Whether the statement may change this client's settings.
    pub(crate) fn touches_settings(&self) -> bool {
        matches!(
            self,
            StatementKind::Settings | StatementKind::Reset { .. } | StatementKind::ResetAll | StatementKind::DiscardAll
        )
    }
}

/// Classifies the SQL text of one Query or Parse message.
pub(crate) fn classify(sql: &[u8], options: LexOptions) -> Verdict {
    let statements = lexer::statements(sql, options);
    let mut res = Vec::with_capacity(statements.len());
    for statement in &statements {
        if let Some(command) = refused(sql, statement) {
            return Verdict::Refuse { command };
        }
        if !statement.head.is_empty() {
            res.push(Classified { span: statement.span.clone(), kind: kind(sql, statement) });
        }
    }
    Verdict::Allow { statements: res }
}

fn word(sql: &[u8], statement: &Statement, idx: usize) -> Option<Vec<u8>> {
    let token = statement.head.get(idx)?;
    (token.kind == TokenKind::Word).then(|| sql[token.span.clone()].to_ascii_uppercase())
}

fn refused(sql: &[u8], statement: &Statement) -> Option<&'static str> {
    match word(sql, statement, 0)?.as_slice() {
        b"COPY" => Some("COPY"),
        b"LISTEN" => Some("LISTEN"),
        b"NOTIFY" => Some("NOTIFY"),
        _ => None,
    }
}

fn kind(sql: &[u8], statement: &Statement) -> StatementKind {
    let first = word(sql, statement, 0).unwrap_or_default();
    let second = word(sql, statement, 1).unwrap_or_default();
    let name_at = |idx: usize| {
        let token = statement.head.get(idx)?;
        let value = lexer::identifier_value(sql, token)?;
        Some(StatementKind::NamedStatement { name: token.span.clone(), value })
    };
    match (first.as_slice(), second.as_slice()) {
        (b"SET", b"LOCAL" | b"TRANSACTION") => {}
        (b"SET", _) => return StatementKind::Settings,
        (b"RESET", b"ALL") => return StatementKind::ResetAll,
        (b"RESET", _) => {
            if let Some(name) = statement.head.get(1).and_then(|t| lexer::identifier_value(sql, t)) {
                let name = match String::from_utf8_lossy(&name).as_ref() {
                    // `RESET SESSION AUTHORIZATION`, `RESET TIME ZONE`.
                    "session" => "session_authorization".to_owned(),
                    "time" => "timezone".to_owned(),
                    other => other.to_owned(),
                };
                return StatementKind::Reset { name };
            }
            return StatementKind::Settings;
        }
        (b"DISCARD", b"ALL") => return StatementKind::DiscardAll,
        (b"DEALLOCATE", b"ALL") => return StatementKind::DeallocateAll,
        (b"DEALLOCATE", b"PREPARE") => {
            if word(sql, statement, 2).as_deref() == Some(b"ALL") {
                return StatementKind::DeallocateAll;
            }
            if let Some(named) = name_at(2) {
                return named;
            }
        }
        (b"DEALLOCATE" | b"PREPARE" | b"EXECUTE", _) => {
            if let Some(named) = name_at(1) {
                return named;
            }
        }
        _ => {}
    }
    if statement.mentions.set_config {
        StatementKind::Settings
    } else if statement.mentions.advisory || matches!(first.as_slice(), b"DECLARE" | b"CLOSE") {
        StatementKind::SessionScoped
    } else {
        StatementKind::Plain
    }
}

#[cfg(test)]
mod tests;
