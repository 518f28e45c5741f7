//! The command filter: a verdict for the SQL text of one Query or Parse, without any I/O.
//!
//! COPY, LISTEN and NOTIFY can never work on the shared single-session backend (COPY cannot
//! be resumed across exchanges, notifications would reach the wrong client), so a message
//! containing one as the first keyword of any statement is refused whole. Everything else is
//! allowed, and the verdict notes the statements that touch per-client session state, which the
//! connection then scopes to its client (renamed prepared statements, replayed settings).

use std::ops::Range;

use smallvec::SmallVec;

use crate::lexer::{self, LexOptions, Statement, TokenKind};

/// The classified statements of one text (usually one).
pub(crate) type ClassifiedStatements = SmallVec<[Classified; 1]>;

/// What to do with one Query or Parse text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Never forward: answer `0A000` naming `command`.
    Refuse { command: &'static str },
    /// Forward, after the per-statement treatment in `statements` (one entry per non-empty
    /// statement, in order).
    Allow { statements: ClassifiedStatements },
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
    let mut res = ClassifiedStatements::new();
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

/// A word of a statement's head in upper case, for comparing with keywords. Kept on the stack:
/// words longer than any keyword compared with are left empty, which matches none.
#[derive(Default)]
struct Upper {
    buf: [u8; 16],
    len: usize,
}

impl Upper {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn word(sql: &[u8], statement: &Statement, idx: usize) -> Option<Upper> {
    let token = statement.head.get(idx)?;
    if token.kind != TokenKind::Word {
        return None;
    }
    let text = &sql[token.span.clone()];
    let mut upper = Upper::default();
    if let Some(buf) = upper.buf.get_mut(..text.len()) {
        buf.copy_from_slice(text);
        buf.make_ascii_uppercase();
        upper.len = text.len();
    }
    Some(upper)
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
            if word(sql, statement, 2).is_some_and(|w| w.as_slice() == b"ALL") {
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
