//! The per-statement treatment of a client's SQL on its way in: the filter's verdict, the
//! prepared statements a text makes or names, `DISCARD ALL` scoped to the client, refused commands.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Connection;
use super::batch::Unnamed;
use super::refusal::Refusal;
use crate::classify::{self, Classified, StatementKind, Verdict};
use crate::lexer::LexOptions;
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::{self as message, Part};
use crate::session::Recreate;
use crate::{Backend, Error};

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send> Connection<B, S> {
    pub(super) fn use_unnamed(&mut self) {
        if self.batch.unnamed == Unnamed::Unchanged {
            self.batch.uses_unnamed = true;
        }
    }

    fn lex_options(&self) -> LexOptions {
        LexOptions { standard_strings: self.client.standard_strings }
    }

    /// Applies the per-statement treatment to SQL text; returns the text to send.
    fn rewrite<'a>(&mut self, sql: &'a [u8], statements: &[Classified], simple: bool) -> Cow<'a, [u8]> {
        let mut res = Vec::new();
        let mut copied = 0;
        let replace = |res: &mut Vec<u8>, copied: &mut usize, range: std::ops::Range<usize>, with: &[u8]| {
            res.extend_from_slice(&sql[*copied..range.start]);
            res.extend_from_slice(with);
            *copied = range.end;
        };
        // `DISCARD ALL` runs only alone and outside a transaction block; elsewhere it goes to
        // the backend as it is, which refuses it as PostgreSQL does.
        let alone = statements.len() == 1 && self.client.tx == TxStatus::Idle;
        for (idx, statement) in statements.iter().enumerate() {
            match &statement.kind {
                StatementKind::Plain | StatementKind::Copy { .. } => {}
                StatementKind::DiscardAll if !alone => {}
                StatementKind::DeallocateAll => {
                    // The backend holds this client's statements only: it runs as sent.
                    self.client.state.take_statements();
                }
                StatementKind::DiscardAll => {
                    for name in self.client.state.take_statements() {
                        self.batch.prefix.extend_from_slice(&message::close_statement(&name));
                        self.batch.plan.drop_leading += 1;
                    }
                    // The rest of what DISCARD ALL does is done for this client alone as its
                    // turn ends (nothing else can run in the same batch).
                    self.batch.discard_all = true;
                    replace(&mut res, &mut copied, statement.span.clone(), b" RESET ALL");
                    if simple {
                        self.batch.plan.tags.push((idx, "DISCARD ALL".to_owned()));
                    }
                }
                StatementKind::NamedStatement { value, .. } => {
                    let text = &sql[statement.span.clone()];
                    let is_prepare = text
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                        .is_some_and(|at| text[at..].len() >= 7 && text[at..at + 7].eq_ignore_ascii_case(b"PREPARE"));
                    if is_prepare {
                        let query = message::build(b'Q', &[Part::Cstr(text)]);
                        self.client.state.prepared(value.clone(), Recreate::Query(query));
                    } else {
                        self.batch.references.push(value.clone());
                    }
                }
            }
        }
        if copied == 0 {
            return Cow::Borrowed(sql);
        }
        res.extend_from_slice(&sql[copied..]);
        Cow::Owned(res)
    }

    /// Classifies SQL text, skipping the work for the text last found to hold only plain
    /// statements: clients that do not name their statements send the same text every time.
    fn classify(&mut self, sql: &[u8]) -> Verdict {
        let options = self.lex_options();
        if self.client.plain_sql.1 == Some(options) && self.client.plain_sql.0 == sql {
            return Verdict::Allow { statements: Default::default() };
        }
        let verdict = classify::classify(sql, options, self.shared.refuse);
        if let Verdict::Allow { statements } = &verdict
            && statements.iter().all(|s| s.kind == StatementKind::Plain)
        {
            let (text, lexed) = &mut self.client.plain_sql;
            text.clear();
            text.extend_from_slice(sql);
            *lexed = Some(options);
        }
        verdict
    }

    pub(super) async fn query(&mut self, sql: &[u8]) -> Result<(), Error> {
        match self.classify(sql) {
            Verdict::Refuse { command } => self.refuse(true, Refusal::unsupported(command)).await,
            // Without a streaming backend, a COPY alone is run by the bridge, which learns from
            // the backend whether it reads from the client; with other statements, it must not.
            Verdict::Allow { statements }
                if !self.shared.backend.streams()
                    && statements.len() == 1
                    && matches!(statements[0].kind, StatementKind::Copy { .. }) =>
            {
                self.copy_query(sql).await
            }
            Verdict::Allow { statements }
                if !self.shared.backend.streams()
                    && statements.iter().any(|s| s.kind == StatementKind::Copy { from_stdin: true }) =>
            {
                self.refuse(true, Refusal::copy_not_alone()).await
            }
            Verdict::Allow { statements } => {
                let copy = statements.iter().any(|s| matches!(s.kind, StatementKind::Copy { .. }));
                let rewritten = self.rewrite(sql, &statements, true);
                self.batch.put(b'Q', &[Part::Cstr(&rewritten)]);
                self.batch.terminated = true;
                // A simple query drops the unnamed statement, the client's own included.
                self.client.unnamed_parse.clear();
                self.client.copy_statements.remove(&b""[..]);
                self.batch.unnamed = Unnamed::Dropped;
                // A COPY runs with the client, in a streamed exchange (see `copy`).
                self.send_with(copy).await
            }
        }
    }

    /// `whole` is the Parse frame as the client sent it.
    pub(super) async fn parse(
        &mut self,
        whole: &[u8],
        statement: &[u8],
        sql: &[u8],
        param_types: &[u8],
    ) -> Result<(), Error> {
        match self.classify(sql) {
            Verdict::Refuse { command } => self.refuse(false, Refusal::unsupported(command)).await,
            Verdict::Allow { statements }
                if !self.shared.backend.streams()
                    && statements.iter().any(|s| s.kind == StatementKind::Copy { from_stdin: true }) =>
            {
                self.refuse(false, Refusal::extended_copy_in()).await
            }
            Verdict::Allow { statements } => {
                // Portals of a COPY statement run in a streamed exchange (see `copy`).
                if statements.iter().any(|s| matches!(s.kind, StatementKind::Copy { .. })) {
                    self.client.copy_statements.insert(statement.to_vec());
                } else if !self.client.copy_statements.is_empty() {
                    self.client.copy_statements.remove(statement);
                }
                let rewritten = self.rewrite(sql, &statements, false);
                let changed = matches!(rewritten, Cow::Owned(_));
                let start = self.batch.frames.len();
                let parts = [Part::Cstr(statement), Part::Cstr(&rewritten), Part::Raw(param_types)];
                self.batch.forward(whole, changed, b'P', &parts);
                let sent = &self.batch.frames[start..];
                if statement.is_empty() {
                    // Kept as sent to the backend, to replay it there.
                    self.client.unnamed_parse.clear();
                    self.client.unnamed_parse.extend_from_slice(sent);
                    self.batch.unnamed = Unnamed::Mine;
                } else {
                    let recreate = Recreate::Parse(bytes::Bytes::copy_from_slice(sent));
                    self.client.state.prepared(statement.to_vec(), recreate);
                }
                Ok(())
            }
        }
    }
}
