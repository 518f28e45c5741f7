//! Parses the data-bundle file list out of PGlite's Emscripten JS glue.
//!
//! The glue calls `loadPackage({files:[{filename:"/tmp/pglite/bin/initdb",start:0,end:12},...],
//! remote_package_size:N})` (0.2, 0.3) or passes the same object to the file packager's
//! function, `(async function(metadata){...})({files:[...]})` (0.5 on); each entry names a guest absolute path and its byte range inside
//! the `.data` bundle. Sans-IO: this module reads a `&str` and never touches the disk; it also
//! never trusts the glue: every filename must be absolute and free of `.`/`..` components.

/// One file inside the `.data` bundle: a guest absolute path and its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Guest absolute path, e.g. `/tmp/pglite/bin/postgres`.
    pub filename: String,
    /// Offset of the first byte inside the data bundle.
    pub start: u64,
    /// Offset one past the last byte inside the data bundle.
    pub end: u64,
}

impl PackageFile {
    /// The guest path without its leading `/`, for joining under an extraction root.
    pub fn relative_path(&self) -> &str {
        self.filename.trim_start_matches('/')
    }

    /// Length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Why the JS glue's file list could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlueError {
    /// The glue has no `loadPackage({files:[` call.
    #[error("no `loadPackage({{files:[` call found")]
    NoFileList,
    /// The list is not in the expected shape.
    #[error("unexpected syntax at byte {offset}: {expected}")]
    Syntax {
        /// Byte offset into the glue.
        offset: usize,
        /// What the parser was looking for.
        expected: &'static str,
    },
    /// An entry lacks `filename`, `start` or `end`.
    #[error("entry {index} lacks `{field}`")]
    MissingField {
        /// Zero-based entry index.
        index: usize,
        /// The missing key.
        field: &'static str,
    },
    /// A filename is relative or has `.`, `..` or empty components.
    #[error("unsafe guest path {path:?}")]
    UnsafePath {
        /// The offending filename.
        path: String,
    },
    /// A byte range is inverted or runs past the end of the data bundle.
    #[error("{path:?} has range {start}..{end} outside the {data_len}-byte data bundle")]
    BadRange {
        /// The file whose range is bad.
        path: String,
        /// Declared start.
        start: u64,
        /// Declared end.
        end: u64,
        /// Size of the data bundle.
        data_len: u64,
    },
}

/// What opens the file list: 0.2 and 0.3 call `loadPackage`, later releases call the file
/// packager's function with the metadata object.
const MARKERS: [&str; 2] = ["loadPackage({files:[", "})({files:["];

/// Parses the `loadPackage({files:[...]` list; validates every guest path.
pub fn parse_package_files(js: &str) -> Result<Vec<PackageFile>, GlueError> {
    let start =
        MARKERS.iter().find_map(|marker| js.find(marker).map(|at| at + marker.len())).ok_or(GlueError::NoFileList)?;
    let mut parser = Parser { src: js.as_bytes(), pos: start };
    let mut res = Vec::new();
    parser.skip_ws();
    if parser.eat(b']') {
        return Ok(res);
    }
    loop {
        let file = parser.entry(res.len())?;
        validate_guest_path(&file.filename)?;
        res.push(file);
        parser.skip_ws();
        if parser.eat(b']') {
            return Ok(res);
        }
        parser.expect(b',', "`,` or `]` after an entry")?;
    }
}

/// Checks that every range lies inside a data bundle of `data_len` bytes.
pub fn check_ranges(files: &[PackageFile], data_len: u64) -> Result<(), GlueError> {
    for file in files {
        if file.start > file.end || file.end > data_len {
            return Err(GlueError::BadRange {
                path: file.filename.clone(),
                start: file.start,
                end: file.end,
                data_len,
            });
        }
    }
    Ok(())
}

/// Accepts only absolute paths whose components are all normal names.
pub fn validate_guest_path(path: &str) -> Result<(), GlueError> {
    let unsafe_path = || GlueError::UnsafePath { path: path.to_owned() };
    let rest = path.strip_prefix('/').ok_or_else(unsafe_path)?;
    let is_bad = |component: &str| {
        component.is_empty() || component == "." || component == ".." || component.contains(['\\', '\0'])
    };
    if rest.split('/').any(is_bad) {
        return Err(unsafe_path());
    }
    Ok(())
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.src.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.src.get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), GlueError> {
        self.skip_ws();
        if self.eat(byte) { Ok(()) } else { Err(self.syntax(expected)) }
    }

    fn syntax(&self, expected: &'static str) -> GlueError {
        GlueError::Syntax { offset: self.pos, expected }
    }

    /// `{filename:"...",start:N,end:N}` with keys in any order, quoted or not.
    fn entry(&mut self, index: usize) -> Result<PackageFile, GlueError> {
        self.expect(b'{', "`{` opening an entry")?;
        let (mut filename, mut start, mut end) = (None, None, None);
        loop {
            self.skip_ws();
            if self.eat(b'}') {
                break;
            }
            let key = self.key()?;
            self.expect(b':', "`:` after a key")?;
            self.skip_ws();
            match key.as_str() {
                "filename" => filename = Some(self.string()?),
                "start" => start = Some(self.number()?),
                "end" => end = Some(self.number()?),
                _ => return Err(self.syntax("one of `filename`, `start`, `end`")),
            }
            self.skip_ws();
            if !self.eat(b',') {
                self.expect(b'}', "`,` or `}` in an entry")?;
                break;
            }
        }
        let missing = |field| GlueError::MissingField { index, field };
        Ok(PackageFile {
            filename: filename.ok_or_else(|| missing("filename"))?,
            start: start.ok_or_else(|| missing("start"))?,
            end: end.ok_or_else(|| missing("end"))?,
        })
    }

    fn key(&mut self) -> Result<String, GlueError> {
        if self.src.get(self.pos) == Some(&b'"') {
            return self.string();
        }
        let begin = self.pos;
        while self.src.get(self.pos).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            self.pos += 1;
        }
        if begin == self.pos {
            return Err(self.syntax("a key"));
        }
        Ok(String::from_utf8_lossy(&self.src[begin..self.pos]).into_owned())
    }

    /// A double-quoted string; only the escapes `\"`, `\\` and `\/` are understood, which is
    /// all a filename in the glue can need. Anything else is refused rather than guessed at.
    fn string(&mut self) -> Result<String, GlueError> {
        if !self.eat(b'"') {
            return Err(self.syntax("a string"));
        }
        let mut bytes = Vec::new();
        loop {
            match self.src.get(self.pos) {
                None => return Err(self.syntax("closing `\"`")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    match self.src.get(self.pos + 1) {
                        Some(&escaped @ (b'"' | b'\\' | b'/')) => bytes.push(escaped),
                        _ => return Err(self.syntax("one of the escapes \\\" \\\\ \\/")),
                    }
                    self.pos += 2;
                }
                Some(&byte) => {
                    bytes.push(byte);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| self.syntax("UTF-8 in a string"))
    }

    /// A non-negative integer as a minifier writes it: `5037e3` is 5037000, `1.5e3` is 1500.
    fn number(&mut self) -> Result<u64, GlueError> {
        let bad = GlueError::Syntax { offset: self.pos, expected: "a non-negative integer" };
        let integer = self.digits();
        let fraction = if self.eat(b'.') { self.digits() } else { String::new() };
        if integer.is_empty() && fraction.is_empty() {
            return Err(bad);
        }
        let mut exponent = -(fraction.len() as i64);
        if self.eat(b'e') || self.eat(b'E') {
            self.eat(b'+');
            exponent += self.digits().parse::<i64>().map_err(|_| bad.clone())?;
        }
        let mut mantissa = integer + &fraction;
        while exponent < 0 && mantissa.ends_with('0') {
            mantissa.pop();
            exponent += 1;
        }
        let mantissa = mantissa.trim_start_matches('0');
        if mantissa.is_empty() {
            return Ok(0);
        }
        if exponent < 0 || mantissa.len() as i64 + exponent > 20 {
            return Err(bad);
        }
        let value = mantissa.parse::<u128>().map_err(|_| bad.clone())? * 10u128.pow(exponent as u32);
        u64::try_from(value).map_err(|_| bad)
    }

    fn digits(&mut self) -> String {
        let begin = self.pos;
        while self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.src[begin..self.pos]).into_owned()
    }
}
