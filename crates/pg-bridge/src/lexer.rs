//! A PostgreSQL SQL lexer just deep enough to find statement boundaries and first keywords.
//!
//! It knows whitespace, `--` and nested `/* */` comments, `'..'` (with `''`), `E'..'` (with
//! backslash escapes), `U&'..'`, `B'..'`, `X'..'`, `N'..'`, `".."` and `U&".."` identifiers, and
//! `$tag$..$tag$` dollar quotes, which is what it takes to tell `COPY t ...` from
//! `SELECT ';COPY'`. It works on raw bytes (the text is in the client's encoding; every
//! non-ASCII byte counts as an identifier letter, as in `scan.l`) and never fails: an
//! unterminated quote or comment simply runs to the end, where PostgreSQL would raise a
//! syntax error.

use std::ops::Range;

use smallvec::SmallVec;

/// How many leading tokens of a statement are kept; classification never needs more.
const HEAD_TOKENS: usize = 6;

/// One lexical token, by kind and byte range in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    /// What the token is.
    pub(crate) kind: TokenKind,
    /// Where it is in the input.
    pub(crate) span: Range<usize>,
}

/// Kinds of token the classifier distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// An unquoted identifier or keyword (numbers count too; they never match a keyword).
    Word,
    /// A `".."` or `U&".."` identifier; the span covers the quotes.
    QuotedIdent,
    /// Any string literal, including dollar quotes.
    Str,
    /// A `$1` parameter.
    Param,
    /// Any other punctuation or operator byte.
    Punct,
}

/// One statement: its range (without the terminating `;`) and its first tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Byte range in the input, from the end of the previous `;`.
    pub(crate) span: Range<usize>,
    /// Up to the first few tokens, comments and whitespace skipped.
    pub(crate) head: SmallVec<[Token; HEAD_TOKENS]>,
    /// Unquoted words seen anywhere in the statement that the classifier cares about.
    pub(crate) mentions: Mentions,
}

/// Words that matter wherever they appear in a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mentions {
    /// The token after the first `EXECUTE` (the statement `EXPLAIN ... EXECUTE name` and
    /// `CREATE TABLE ... AS EXECUTE name` run).
    pub(crate) execute_target: Option<Token>,
    /// The last token was the first `EXECUTE`.
    after_execute: bool,
    /// `FROM STDIN` outside parentheses: a `COPY` that reads from the client.
    pub(crate) from_stdin: bool,
    /// Parentheses open at this point.
    depth: u32,
    /// The last token was `FROM` outside parentheses.
    after_from: bool,
}

/// Lexing options that depend on the client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LexOptions {
    /// `standard_conforming_strings` is on: backslashes in `'..'` are ordinary characters.
    pub(crate) standard_strings: bool,
}

impl Default for LexOptions {
    fn default() -> LexOptions {
        LexOptions { standard_strings: true }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// `IDENT_CONT[b]`: whether `b` continues an unquoted identifier (a table: the lexer asks
/// this for nearly every byte of a statement).
const IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    table
};

fn is_ident_cont(b: u8) -> bool {
    IDENT_CONT[usize::from(b)]
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The statements of one text; most texts hold one, kept without a heap allocation.
pub(crate) type Statements = SmallVec<[Statement; 1]>;

/// Splits `sql` into statements. An input with no statements yields one empty statement, as
/// PostgreSQL answers an empty query with `EmptyQueryResponse`.
pub(crate) fn statements(sql: &[u8], options: LexOptions) -> Statements {
    let mut lexer = Lexer { sql, pos: 0, options };
    let mut res = Statements::new();
    let mut current = Statement { span: 0..0, head: SmallVec::new(), mentions: Mentions::default() };
    while let Some(token) = lexer.next_token() {
        if token.kind == TokenKind::Punct && sql[token.span.start] == b';' {
            current.span.end = token.span.start;
            let next_start = token.span.end;
            res.push(std::mem::replace(
                &mut current,
                Statement { span: next_start..next_start, head: SmallVec::new(), mentions: Mentions::default() },
            ));
            continue;
        }
        let mentions = &mut current.mentions;
        let word = |text: &[u8]| token.kind == TokenKind::Word && sql[token.span.clone()].eq_ignore_ascii_case(text);
        if token.kind == TokenKind::Punct {
            match sql[token.span.start] {
                b'(' => mentions.depth += 1,
                b')' => mentions.depth = mentions.depth.saturating_sub(1),
                _ => {}
            }
        }
        mentions.from_stdin |= mentions.after_from && word(b"STDIN");
        mentions.after_from = mentions.depth == 0 && word(b"FROM");
        if mentions.after_execute {
            mentions.after_execute = false;
            // `EXECUTE FUNCTION f()` (`PROCEDURE` before 11) of a trigger runs no prepared
            // statement.
            if !word(b"FUNCTION") && !word(b"PROCEDURE") {
                mentions.execute_target = Some(token.clone());
            }
        } else if mentions.execute_target.is_none()
            && token.kind == TokenKind::Word
            && sql[token.span.clone()].eq_ignore_ascii_case(b"EXECUTE")
        {
            mentions.after_execute = true;
        }
        if current.head.len() < HEAD_TOKENS {
            current.head.push(token);
        }
    }
    current.span.end = sql.len();
    // A trailing empty statement after the last `;` is not a statement of its own, unless it is
    // the only one.
    if current.head.is_empty() && !res.is_empty() {
        return res;
    }
    res.push(current);
    res
}

struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    options: LexOptions,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.sql.get(self.pos + ahead).copied()
    }

    fn next_token(&mut self) -> Option<Token> {
        self.skip_trivia();
        let start = self.pos;
        let b = self.peek(0)?;
        let kind = match b {
            b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', !self.options.standard_strings);
                TokenKind::Str
            }
            b'"' => {
                self.pos += 1;
                self.quoted(b'"', false);
                TokenKind::QuotedIdent
            }
            b'$' => {
                if self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
                    self.pos += 1;
                    while self.peek(0).is_some_and(|d| d.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    TokenKind::Param
                } else if let Some(tag_end) = self.dollar_tag_end(self.pos) {
                    let tag = &self.sql[self.pos..tag_end];
                    self.pos = tag_end;
                    match find(&self.sql[self.pos..], tag) {
                        Some(at) => self.pos += at + tag.len(),
                        None => self.pos = self.sql.len(),
                    }
                    TokenKind::Str
                } else {
                    self.pos += 1;
                    TokenKind::Punct
                }
            }
            b'0'..=b'9' => {
                while self.peek(0).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_') {
                    self.pos += 1;
                }
                TokenKind::Word
            }
            b if is_ident_start(b) => {
                let next = self.peek(1);
                let next2 = self.peek(2);
                match (b.to_ascii_lowercase(), next, next2) {
                    (b'e', Some(b'\''), _) => {
                        self.pos += 2;
                        self.quoted(b'\'', true);
                        TokenKind::Str
                    }
                    (b'b' | b'x' | b'n', Some(b'\''), _) => {
                        self.pos += 2;
                        self.quoted(b'\'', false);
                        TokenKind::Str
                    }
                    (b'u', Some(b'&'), Some(q @ (b'\'' | b'"'))) => {
                        self.pos += 3;
                        self.quoted(q, false);
                        if q == b'"' { TokenKind::QuotedIdent } else { TokenKind::Str }
                    }
                    _ => {
                        let rest = &self.sql[self.pos + 1..];
                        self.pos += 1 + rest.iter().position(|&c| !is_ident_cont(c)).unwrap_or(rest.len());
                        TokenKind::Word
                    }
                }
            }
            _ => {
                self.pos += 1;
                TokenKind::Punct
            }
        };
        Some(Token { kind, span: start..self.pos })
    }

    /// Skips whitespace and comments, nested block comments included.
    fn skip_trivia(&mut self) {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b), _) if is_space(b) => {
                    let rest = &self.sql[self.pos + 1..];
                    self.pos += 1 + rest.iter().position(|&c| !is_space(c)).unwrap_or(rest.len());
                }
                (Some(b'-'), Some(b'-')) => {
                    while self.peek(0).is_some_and(|c| c != b'\n' && c != b'\r') {
                        self.pos += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.pos += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (None, _) => return,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Consumes the rest of a quoted token after its opening quote. A doubled quote is an
    /// escaped quote; with `backslash`, so is a backslash followed by anything.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        while let Some(b) = self.peek(0) {
            if backslash && b == b'\\' {
                self.pos = (self.pos + 2).min(self.sql.len());
            } else if b == quote {
                if self.peek(1) == Some(quote) {
                    self.pos += 2;
                } else {
                    self.pos += 1;
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// If a dollar-quote tag (`$`, optional identifier, `$`) starts at `at`, returns its end.
    fn dollar_tag_end(&self, at: usize) -> Option<usize> {
        let mut i = at + 1;
        if let Some(&first) = self.sql.get(i)
            && first != b'$'
            && !is_ident_start(first)
        {
            return None;
        }
        while let Some(&b) = self.sql.get(i) {
            if b == b'$' {
                return Some(i + 1);
            }
            if !(is_ident_start(b) || b.is_ascii_digit()) {
                return None;
            }
            i += 1;
        }
        None
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of an identifier token as PostgreSQL sees it: unquoted words are folded to lower
/// case (ASCII only, like `downcase_identifier` for multibyte encodings), quoted ones unescaped.
pub(crate) fn identifier_value(sql: &[u8], token: &Token) -> Option<Vec<u8>> {
    let text = &sql[token.span.clone()];
    match token.kind {
        TokenKind::Word => Some(text.to_ascii_lowercase()),
        TokenKind::QuotedIdent if text.first() == Some(&b'"') && text.len() >= 2 => {
            let inner = &text[1..text.len() - 1];
            let mut res = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                res.push(inner[i]);
                i += if inner[i] == b'"' { 2 } else { 1 };
            }
            Some(res)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
