//! Sleeps in test code: which lines are test code, and which sleeps there are excused (by a
//! `// tidy: allow sleep (why)` marker or by [`super::ALLOWED_SLEEPS`]).

use std::collections::BTreeMap;

use super::code::{code_lines, contains_word, is_ident_char};
use super::{AllowedSleep, SLEEP_MARKER, SourceFile, Violation};

/// Check 4b: no sleeps in test code unless marked (`// tidy: allow sleep (why)`) or allow-listed;
/// allow-list entries that match nothing are reported too.
pub(super) fn check_sleeps(files: &[SourceFile], allowed: &[AllowedSleep]) -> Vec<Violation> {
    let test_code = test_code_lines(files);
    let mut used = vec![false; allowed.len()];
    let mut res = Vec::new();
    for file in files {
        let raw: Vec<&str> = file.text.lines().collect();
        for (idx, line) in code_lines(&file.text).iter().enumerate() {
            let is_test = test_code[&file.path][idx];
            if !is_test || !["sleep(", "sleep_until("].iter().any(|call| contains_word(line, call)) {
                continue;
            }
            if [Some(idx), idx.checked_sub(1)].into_iter().flatten().any(|k| has_sleep_marker(raw[k])) {
                continue;
            }
            let entry = allowed.iter().position(|entry| entry.path == file.path && entry.code == raw[idx].trim());
            match entry {
                Some(entry) => used[entry] = true,
                None => {
                    res.push(Violation::new(&file.path, idx + 1, format!("sleeps in test code: `{}`", raw[idx].trim())))
                }
            }
        }
    }
    for (entry, _) in allowed.iter().zip(used).filter(|(_, used)| !used) {
        res.push(Violation::new(
            entry.path,
            0,
            format!("ALLOWED_SLEEPS entry `{}` matches no sleep: remove it", entry.code),
        ));
    }
    for entry in allowed.iter().filter(|entry| entry.reason.trim().is_empty()) {
        res.push(Violation::new(entry.path, 0, format!("ALLOWED_SLEEPS entry `{}` gives no reason", entry.code)));
    }
    res
}

fn has_sleep_marker(line: &str) -> bool {
    let reason = line.split_once(SLEEP_MARKER).and_then(|(_, rest)| rest.rsplit_once(')'));
    reason.is_some_and(|(reason, _)| !reason.trim().is_empty())
}

/// For each file, which of its lines are test code: everything in files under a `tests/`
/// directory, files named `tests.rs`, modules declared `#[cfg(test)] mod name;` (and their
/// submodules), and the lines of inline `#[cfg(test)] mod name { ... }` blocks.
fn test_code_lines(files: &[SourceFile]) -> BTreeMap<String, Vec<bool>> {
    let code: Vec<Vec<String>> = files.iter().map(|file| code_lines(&file.text)).collect();
    let mut test_modules = Vec::new();
    let mut inline = BTreeMap::new();
    for (file, code) in files.iter().zip(&code) {
        let (declared, blocks) = cfg_test_modules(code);
        test_modules.extend(declared.iter().map(|name| format!("{}/{name}", module_dir(&file.path))));
        inline.insert(&file.path, blocks);
    }
    let mut res = BTreeMap::new();
    for (file, code) in files.iter().zip(&code) {
        let (dirs, name) = file.path.rsplit_once('/').unwrap_or(("", &file.path));
        let whole = dirs.split('/').any(|dir| dir == "tests")
            || name == "tests.rs"
            || test_modules
                .iter()
                .any(|module| file.path == format!("{module}.rs") || file.path.starts_with(&format!("{module}/")));
        let mut lines = vec![whole; code.len()];
        for block in &inline[&file.path] {
            lines[block.clone()].fill(true);
        }
        res.insert(file.path.clone(), lines);
    }
    res
}

/// The directory a file's submodules live in: `a/lib.rs` -> `a`, `a/foo.rs` -> `a/foo`.
fn module_dir(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    match name {
        "lib.rs" | "main.rs" | "mod.rs" => dir.to_owned(),
        _ => format!("{dir}/{}", name.trim_end_matches(".rs")),
    }
}

/// The `#[cfg(test)]` modules of a file: names declared `mod name;` and line ranges of
/// inline `mod name { ... }` blocks (attribute line to closing brace).
fn cfg_test_modules(code: &[String]) -> (Vec<String>, Vec<std::ops::Range<usize>>) {
    let (mut declared, mut blocks) = (Vec::new(), Vec::new());
    for (idx, _) in code.iter().enumerate().filter(|(_, line)| line.trim() == "#[cfg(test)]") {
        let Some(item) =
            (idx + 1..code.len()).find(|&k| !code[k].trim().is_empty() && !code[k].trim().starts_with("#["))
        else {
            continue;
        };
        let line = code[item].trim();
        let line = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .fold(line, |line, vis| line.strip_prefix(vis).unwrap_or(line));
        let Some(rest) = line.strip_prefix("mod ") else { continue };
        let name: String = rest.chars().take_while(|&c| is_ident_char(c)).collect();
        match rest[name.len()..].trim_start().chars().next() {
            Some(';') => declared.push(name),
            Some('{') => {
                let mut depth = 0i32;
                for (k, line) in code.iter().enumerate().skip(item) {
                    depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                    if depth <= 0 {
                        blocks.push(idx..k + 1);
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    (declared, blocks)
}
