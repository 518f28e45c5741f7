//! A line-for-line view of Rust source with comments removed and the insides of string and
//! character literals blanked, so that tidy's token checks look at code only.
//!
//! Not a full lexer: just enough of Rust's lexical grammar (nested block comments, escapes, raw
//! strings, char literals as opposed to lifetimes) that a word inside a literal or a comment is
//! never taken for code. Lines keep their numbers and their columns.

/// `text` with every comment and the inside of every string and char literal replaced by
/// spaces, one entry per line of `text`. The quotes themselves are kept.
pub(super) fn code_lines(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let at = |i: usize| chars.get(i).copied();
    let mut i = 0;
    while let Some(c) = at(i) {
        if c == '/' && at(i + 1) == Some('/') {
            while let Some(c) = at(i).filter(|&c| c != '\n') {
                blank(&mut out, c);
                i += 1;
            }
        } else if c == '/' && at(i + 1) == Some('*') {
            let mut depth = 0;
            while let Some(c) = at(i) {
                let pair = (c, at(i + 1).unwrap_or('\0'));
                if pair == ('/', '*') || pair == ('*', '/') {
                    depth += if pair.0 == '/' { 1 } else { -1 };
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c);
                    i += 1;
                }
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while let Some(c) = at(i) {
                i += 1;
                if c == '"' {
                    out.push('"');
                    break;
                }
                blank(&mut out, c);
                if c == '\\'
                    && let Some(escaped) = at(i)
                {
                    blank(&mut out, escaped);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_hashes(&chars, i) {
            let fence: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            out.push('r');
            out.push_str(&fence[1..]);
            out.push('"');
            i += 2 + hashes;
            while let Some(c) = at(i) {
                if c == '"' && (1..=hashes).all(|k| at(i + k) == Some('#')) {
                    out.push_str(&fence);
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c);
                i += 1;
            }
        } else if c == '\'' {
            let len = char_literal_len(&chars, i).unwrap_or(1);
            out.push('\'');
            for &c in &chars[i + 1..i + len] {
                blank(&mut out, c);
            }
            if len > 1 {
                out.pop();
                out.push('\'');
            }
            i += len;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out.lines().map(str::to_owned).collect()
}

/// The number of `#`s of a raw string literal (`r"`, `r#"`, `br"`...) whose `r` is at `i`.
fn raw_string_hashes(chars: &[char], i: usize) -> Option<usize> {
    let before = |k: usize| i.checked_sub(k).map(|k| chars[k]);
    let starts_token = match before(1) {
        Some('b' | 'c') => !before(2).is_some_and(is_ident_char),
        prev => !prev.is_some_and(is_ident_char),
    };
    if chars[i] != 'r' || !starts_token {
        return None;
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The length of the char literal starting at `i` (`'a'`, `'\n'`, `'\u{1F600}'`), or `None`
/// when the quote starts a lifetime or a label.
fn char_literal_len(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1)? {
        '\\' => chars.get(i + 3..)?.iter().position(|&c| c == '\'').map(|end| end + 4),
        '\'' => None,
        _ => (chars.get(i + 2) == Some(&'\'')).then_some(3),
    }
}

pub(super) fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `line` contains `word` as a token: no identifier character just before it, and,
/// when `word` ends in one, none just after it either.
pub(super) fn contains_word(line: &str, word: &str) -> bool {
    let ends_in_ident = word.chars().last().is_some_and(is_ident_char);
    line.match_indices(word).any(|(start, _)| {
        let before = line[..start].chars().next_back();
        let after = line[start + word.len()..].chars().next();
        let joined_before = before.is_some_and(is_ident_char);
        let joined_after = ends_in_ident && after.is_some_and(is_ident_char);
        !joined_before && !joined_after
    })
}
