//! Character-set conversion between UTF8 (every PGlite cluster's server encoding) and the
//! client encodings PostgreSQL supports, for the conversion functions the host stands in for.
//!
//! PostgreSQL converts through functions in side modules (`utf8_and_iso8859_1.so`, ...). PGlite
//! 0.2 ships none of them, and 0.3's cannot load (they import `UtfToLocal` and friends, which
//! its core does not export), so `SET client_encoding = 'LATIN1'` failed or crashed the
//! backend. The host answers those modules' `dlopen` itself (`imports/dylink.rs`) with
//! functions that convert here: LATIN1 exactly (a byte is its code point), the others with
//! `encoding_rs`'s tables (the WHATWG Encoding Standard's, which agree with PostgreSQL's on
//! every character in common use). Sans I/O; errors are described, not raised.

/// PostgreSQL's `pg_enc` numbers (stable since 9.x) of the encodings converted here.
pub(crate) mod pg_enc {
    pub(crate) const UTF8: i32 = 6;
    pub(crate) const LATIN1: i32 = 8;
}

/// Why a conversion stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConvError {
    /// The input is not valid in its encoding (SQLSTATE 22021): the encoding's name and the
    /// offending bytes.
    Invalid { encoding: &'static str, bytes: Vec<u8> },
    /// A character has no equivalent in the target encoding (SQLSTATE 22P05).
    Untranslatable { from: &'static str, to: &'static str, bytes: Vec<u8> },
    /// The pair is not one this host converts.
    Unsupported { from: i32, to: i32 },
}

impl ConvError {
    /// PostgreSQL's SQLSTATE for the error.
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            ConvError::Invalid { .. } => "22021",
            ConvError::Untranslatable { .. } => "22P05",
            ConvError::Unsupported { .. } => "0A000",
        }
    }

    /// PostgreSQL's message for the error.
    pub(crate) fn message(&self) -> String {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ");
        match self {
            ConvError::Invalid { encoding, bytes } => {
                format!("invalid byte sequence for encoding \"{encoding}\": {}", hex(bytes))
            }
            ConvError::Untranslatable { from, to, bytes } => format!(
                "character with byte sequence {} in encoding \"{from}\" has no equivalent in encoding \"{to}\"",
                hex(bytes)
            ),
            ConvError::Unsupported { from, to } => {
                format!("conversion between encodings {from} and {to} is not supported by this server")
            }
        }
    }
}

/// A converted prefix of the input: how many input bytes it covers, and the error that stopped
/// it there, if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Converted {
    pub(crate) out: Vec<u8>,
    pub(crate) consumed: usize,
    pub(crate) error: Option<ConvError>,
}

/// PostgreSQL's name and `encoding_rs`'s tables for a `pg_enc` number (`None` for LATIN1,
/// converted exactly by hand).
fn encoding(id: i32) -> Option<(&'static str, Option<&'static encoding_rs::Encoding>)> {
    use encoding_rs as e;
    Some(match id {
        pg_enc::LATIN1 => ("LATIN1", None),
        1 => ("EUC_JP", Some(e::EUC_JP)),
        2 => ("EUC_CN", Some(e::GBK)),
        3 => ("EUC_KR", Some(e::EUC_KR)),
        9 => ("LATIN2", Some(e::ISO_8859_2)),
        10 => ("LATIN3", Some(e::ISO_8859_3)),
        11 => ("LATIN4", Some(e::ISO_8859_4)),
        12 => ("LATIN5", Some(e::WINDOWS_1254)),
        13 => ("LATIN6", Some(e::ISO_8859_10)),
        14 => ("LATIN7", Some(e::ISO_8859_13)),
        15 => ("LATIN8", Some(e::ISO_8859_14)),
        16 => ("LATIN9", Some(e::ISO_8859_15)),
        17 => ("LATIN10", Some(e::ISO_8859_16)),
        18 => ("WIN1256", Some(e::WINDOWS_1256)),
        19 => ("WIN1258", Some(e::WINDOWS_1258)),
        20 => ("WIN866", Some(e::IBM866)),
        21 => ("WIN874", Some(e::WINDOWS_874)),
        22 => ("KOI8R", Some(e::KOI8_R)),
        23 => ("WIN1251", Some(e::WINDOWS_1251)),
        24 => ("WIN1252", Some(e::WINDOWS_1252)),
        25 => ("ISO_8859_5", Some(e::ISO_8859_5)),
        26 => ("ISO_8859_6", Some(e::ISO_8859_6)),
        27 => ("ISO_8859_7", Some(e::ISO_8859_7)),
        28 => ("ISO_8859_8", Some(e::ISO_8859_8)),
        29 => ("WIN1250", Some(e::WINDOWS_1250)),
        30 => ("WIN1253", Some(e::WINDOWS_1253)),
        31 => ("WIN1254", Some(e::WINDOWS_1254)),
        32 => ("WIN1255", Some(e::WINDOWS_1255)),
        33 => ("WIN1257", Some(e::WINDOWS_1257)),
        34 => ("KOI8U", Some(e::KOI8_U)),
        35 => ("SJIS", Some(e::SHIFT_JIS)),
        36 => ("BIG5", Some(e::BIG5)),
        37 => ("GBK", Some(e::GBK)),
        38 => ("UHC", Some(e::EUC_KR)),
        39 => ("GB18030", Some(e::GB18030)),
        _ => return None,
    })
}

/// Converts `input` from encoding `from` to encoding `to` (one of them UTF8), stopping at the
/// first error.
pub(crate) fn convert(from: i32, to: i32, input: &[u8]) -> Converted {
    match (from, to) {
        (pg_enc::UTF8, to) => match encoding(to) {
            Some((name, table)) => from_utf8(input, name, table),
            None => unsupported(from, to),
        },
        (from, pg_enc::UTF8) => match encoding(from) {
            Some((name, table)) => to_utf8(input, name, table),
            None => unsupported(from, to),
        },
        _ => unsupported(from, to),
    }
}

fn unsupported(from: i32, to: i32) -> Converted {
    Converted { out: Vec::new(), consumed: 0, error: Some(ConvError::Unsupported { from, to }) }
}

/// The valid UTF-8 prefix of `input` and, if it stops short, the bytes PostgreSQL names in its
/// error: the malformed sequence, as long as the lead byte says it should be.
fn valid_utf8(input: &[u8]) -> (&str, Option<Vec<u8>>) {
    match std::str::from_utf8(input) {
        Ok(text) => (text, None),
        Err(err) => {
            let good = err.valid_up_to();
            let text = std::str::from_utf8(&input[..good]).unwrap_or_default();
            let lead = input[good];
            let want = match lead {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            (text, Some(input[good..(good + want).min(input.len())].to_vec()))
        }
    }
}

fn from_utf8(input: &[u8], name: &'static str, table: Option<&'static encoding_rs::Encoding>) -> Converted {
    let (text, bad) = valid_utf8(input);
    let untranslatable = |at: usize, c: char| ConvError::Untranslatable {
        from: "UTF8",
        to: name,
        bytes: input[at..at + c.len_utf8()].to_vec(),
    };
    let mut res = Converted { out: Vec::with_capacity(text.len()), consumed: text.len(), error: None };
    match table {
        None => {
            for (at, c) in text.char_indices() {
                match u8::try_from(u32::from(c)) {
                    Ok(byte) => res.out.push(byte),
                    Err(_) => {
                        res.consumed = at;
                        res.error = Some(untranslatable(at, c));
                        return res;
                    }
                }
            }
        }
        Some(table) => {
            let mut encoder = table.new_encoder();
            let mut at = 0;
            loop {
                let room = encoder.max_buffer_length_from_utf8_without_replacement(text.len() - at).unwrap_or(16);
                res.out.reserve(room);
                let (result, read) =
                    encoder.encode_from_utf8_to_vec_without_replacement(&text[at..], &mut res.out, true);
                at += read;
                match result {
                    encoding_rs::EncoderResult::InputEmpty => break,
                    encoding_rs::EncoderResult::OutputFull => {}
                    encoding_rs::EncoderResult::Unmappable(c)
                        if table == encoding_rs::EUC_JP
                            && let Some(bytes) = jis_x_0212(c) =>
                    {
                        res.out.extend_from_slice(&bytes);
                    }
                    encoding_rs::EncoderResult::Unmappable(c) => {
                        let start = at - c.len_utf8();
                        res.consumed = start;
                        res.error = Some(untranslatable(start, c));
                        return res;
                    }
                }
            }
        }
    }
    if let Some(bytes) = bad {
        res.error = Some(ConvError::Invalid { encoding: "UTF8", bytes });
    }
    res
}

/// The EUC_JP bytes of `c` in JIS X 0212 (`0x8f` and two bytes), which PostgreSQL's EUC_JP
/// encodes and the WHATWG encoder does not (it only decodes them): the decoder's table,
/// reversed once.
fn jis_x_0212(c: char) -> Option<[u8; 3]> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, [u8; 3]>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = std::collections::HashMap::new();
        for first in 0xa1..=0xfeu8 {
            for second in 0xa1..=0xfeu8 {
                let bytes = [0x8f, first, second];
                let (text, malformed) = encoding_rs::EUC_JP.decode_without_bom_handling(&bytes);
                let mut chars = text.chars();
                if let (false, Some(decoded), None) = (malformed, chars.next(), chars.next()) {
                    table.entry(decoded).or_insert(bytes);
                }
            }
        }
        table
    });
    table.get(&c).copied()
}

fn to_utf8(input: &[u8], name: &'static str, table: Option<&'static encoding_rs::Encoding>) -> Converted {
    let Some(table) = table else {
        // LATIN1: every byte is the code point of the same number.
        let out: String = input.iter().map(|&b| char::from(b)).collect();
        return Converted { out: out.into_bytes(), consumed: input.len(), error: None };
    };
    let mut decoder = table.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(input.len() * 2);
    let mut res = Converted { out: Vec::new(), consumed: 0, error: None };
    let mut at = 0;
    loop {
        out.reserve(decoder.max_utf8_buffer_length_without_replacement(input.len() - at).unwrap_or(16));
        let (result, read) = decoder.decode_to_string_without_replacement(&input[at..], &mut out, true);
        at += read;
        match result {
            encoding_rs::DecoderResult::InputEmpty => {
                res.consumed = at;
                break;
            }
            encoding_rs::DecoderResult::OutputFull => continue,
            encoding_rs::DecoderResult::Malformed(bad, _) => {
                let end = at;
                let start = end.saturating_sub(usize::from(bad));
                res.consumed = start;
                res.error =
                    Some(ConvError::Invalid { encoding: name, bytes: input[start..end.max(start + 1)].to_vec() });
                break;
            }
        }
    }
    res.out = out.into_bytes();
    res
}

#[cfg(test)]
mod tests {
    use super::{ConvError, convert, pg_enc};

    #[test]
    fn latin1_round_trips_and_refuses_what_it_lacks() {
        let latin1 = convert(pg_enc::UTF8, pg_enc::LATIN1, "été".as_bytes());
        assert_eq!((latin1.out.as_slice(), latin1.error), (&[0xe9, b't', 0xe9][..], None));
        assert_eq!(convert(pg_enc::LATIN1, pg_enc::UTF8, &[0xe9, b't', 0xe9]).out, "été".as_bytes());
        let euro = convert(pg_enc::UTF8, pg_enc::LATIN1, "a€b".as_bytes());
        assert_eq!((euro.out.as_slice(), euro.consumed), (&b"a"[..], 1));
        assert_eq!(
            euro.error.unwrap().message(),
            "character with byte sequence 0xe2 0x82 0xac in encoding \"UTF8\" has no equivalent in encoding \"LATIN1\""
        );
    }

    #[test]
    fn multibyte_encodings_round_trip() {
        for (encoding, text) in
            [(24, "€ café"), (35, "日本語のテキスト"), (1, "日本語 é"), (37, "中文字符"), (23, "Привет")]
        {
            let there = convert(pg_enc::UTF8, encoding, text.as_bytes());
            assert_eq!(there.error, None, "{encoding}");
            let back = convert(encoding, pg_enc::UTF8, &there.out);
            assert_eq!((back.out.as_slice(), back.error), (text.as_bytes(), None), "{encoding}");
        }
    }

    #[test]
    fn invalid_input_is_named() {
        let bad = convert(pg_enc::UTF8, pg_enc::LATIN1, b"ok\xff");
        assert_eq!((bad.consumed, bad.error.as_ref().map(ConvError::sqlstate)), (2, Some("22021")));
        assert_eq!(bad.error.unwrap().message(), "invalid byte sequence for encoding \"UTF8\": 0xff");
        let sjis = convert(35, pg_enc::UTF8, b"a\x82");
        assert_eq!(sjis.error.map(|e| e.sqlstate()), Some("22021"));
        assert!(matches!(convert(pg_enc::UTF8, 7, b"x").error, Some(ConvError::Unsupported { .. })));
    }
}
