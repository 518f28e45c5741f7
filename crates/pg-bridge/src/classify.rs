//! The command filter: a verdict for the SQL text of one Query or Parse, without any I/O.
//!
//! A message containing, as the first keyword of any statement, a command the bridge is told to
//! refuse (COPY, LISTEN, NOTIFY: see [`Refuse`]) is refused whole. Everything else is allowed,
//! and the verdict notes the statements that name prepared statements (the connection makes a
//! client's statements again on the backend when it needs them).

use std::ops::Range;

use smallvec::SmallVec;

use crate::Refuse;
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

/// How one statement touches session state the bridge must scope to its client. (Settings,
/// locks and the like are learnt from the backend after the fact, whatever route changed
/// them; only the names of prepared statements are rewritten on the way in.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatementKind {
    /// Nothing the bridge needs to scope.
    Plain,
    /// `COPY`: run by the bridge when alone in a simple query (see `conn::copy`);
    /// `from_stdin` when it reads from the client.
    Copy { from_stdin: bool },
    /// `DISCARD ALL`: reset everything this client owns, not the backend.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`: this client's prepared statements only.
    DeallocateAll,
    /// `PREPARE name`, `EXECUTE name`, `DEALLOCATE [PREPARE] name`, `EXPLAIN ... EXECUTE
    /// name`, `CREATE TABLE ... AS EXECUTE name`: the statement it names.
    NamedStatement { name: Range<usize>, value: Vec<u8> },
}

/// Classifies the SQL text of one Query or Parse message.
pub(crate) fn classify(sql: &[u8], options: LexOptions, refuse: Refuse) -> Verdict {
    let statements = lexer::statements(sql, options);
    let mut res = ClassifiedStatements::new();
    for statement in &statements {
        if let Some(command) = refused(sql, statement, refuse) {
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

fn refused(sql: &[u8], statement: &Statement, refuse: Refuse) -> Option<&'static str> {
    match word(sql, statement, 0)?.as_slice() {
        b"COPY" if refuse.copy => Some("COPY"),
        b"LISTEN" if refuse.listen => Some("LISTEN"),
        b"NOTIFY" if refuse.notify => Some("NOTIFY"),
        _ => None,
    }
}

fn kind(sql: &[u8], statement: &Statement) -> StatementKind {
    let first = word(sql, statement, 0).unwrap_or_default();
    let second = word(sql, statement, 1).unwrap_or_default();
    let named = |token: &crate::lexer::Token| {
        let value = lexer::identifier_value(sql, token)?;
        Some(StatementKind::NamedStatement { name: token.span.clone(), value })
    };
    let name_at = |idx: usize| named(statement.head.get(idx)?);
    match (first.as_slice(), second.as_slice()) {
        (b"COPY", _) => return StatementKind::Copy { from_stdin: statement.mentions.from_stdin },
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
        // Two-phase commit, not a prepared statement.
        (b"PREPARE", b"TRANSACTION") => {}
        (b"DEALLOCATE" | b"PREPARE" | b"EXECUTE", _) => {
            if let Some(named) = name_at(1) {
                return named;
            }
        }
        (b"EXPLAIN" | b"CREATE", _) => {
            if let Some(named) = statement.mentions.execute_target.as_ref().and_then(named) {
                return named;
            }
        }
        _ => {}
    }
    StatementKind::Plain
}

#[cfg(test)]
mod tests;
