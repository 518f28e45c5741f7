//! Member manifests: the dependencies they declare and whether the crate's code uses them,
//! and whether they opt into the workspace lints. A hand parse of the few TOML shapes the
//! workspace writes (xtask has no TOML parser and takes none on for this).

use super::code::{code_lines, contains_word};
use super::{SourceFile, Violation};

/// A dependency declared in a manifest: its key, its table and the line (1-based).
pub(super) struct Dependency {
    pub(super) name: String,
    pub(super) table: String,
    pub(super) line: usize,
}

/// The entries of every `[dependencies]`, `[dev-dependencies]` and `[build-dependencies]`
/// table (also under `[target.'cfg(..)'.…]`, also written as `[dependencies.name]`).
pub(super) fn manifest_dependencies(manifest: &str) -> Vec<Dependency> {
    let is_dependency_table = |table: &str| table.ends_with("dependencies");
    let mut res = Vec::new();
    let mut table = String::new();
    for (idx, line) in manifest.lines().enumerate() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.starts_with('[') {
            table = line.trim_start_matches('[').trim_end_matches(']').trim().to_owned();
            if let Some((parent, name)) = table.rsplit_once('.').filter(|(parent, _)| is_dependency_table(parent)) {
                res.push(Dependency {
                    name: name.trim_matches('"').to_owned(),
                    table: parent.to_owned(),
                    line: idx + 1,
                });
            }
        } else if is_dependency_table(&table) && !line.starts_with('#') && line.contains('=') {
            let name = line.split(['=', '.']).next().unwrap_or("").trim().trim_matches('"');
            res.push(Dependency { name: name.to_owned(), table: table.clone(), line: idx + 1 });
        }
    }
    res
}

/// Check 7: every declared dependency is named in the crate's code as `name::`, `use name` or
/// `extern crate name` (`-` read as `_`).
pub(super) fn check_unused_dependencies(
    manifest_path: &str,
    manifest: &str,
    sources: &[&SourceFile],
) -> Vec<Violation> {
    let code: Vec<String> = sources.iter().flat_map(|file| code_lines(&file.text)).collect();
    let is_used = |name: &str| {
        let ident = name.replace('-', "_");
        let forms = [format!("{ident}::"), format!("use {ident}"), format!("extern crate {ident}")];
        code.iter().any(|line| forms.iter().any(|form| contains_word(line, form)))
    };
    manifest_dependencies(manifest)
        .into_iter()
        .filter(|dependency| !is_used(&dependency.name))
        .map(|dependency| {
            let message = format!("[{}] `{}` is used nowhere in the crate", dependency.table, dependency.name);
            Violation::new(manifest_path, dependency.line, message)
        })
        .collect()
}

/// The files a member's code is in: everything under its directory, plus target files
/// (`path = "..."`) outside it, such as the e2e package's `[[bin]]`.
pub(super) fn member_sources<'a>(dir: &str, manifest: &str, files: &'a [SourceFile]) -> Vec<&'a SourceFile> {
    let targets: Vec<String> = manifest
        .lines()
        .filter_map(|line| line.trim().strip_prefix("path")?.trim_start().strip_prefix('='))
        .map(|value| normalize(&format!("{dir}/{}", value.trim().trim_matches('"'))))
        .collect();
    files.iter().filter(|file| file.path.starts_with(&format!("{dir}/")) || targets.contains(&file.path)).collect()
}

/// `a/b/../c` -> `a/c`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" => {}
            ".." => _ = parts.pop(),
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// Check 8: the member opts into `[workspace.lints]`.
pub(super) fn check_lints_opt_in(manifest_path: &str, manifest: &str) -> Vec<Violation> {
    let mut table = "";
    for line in manifest.lines().map(|line| line.split('#').next().unwrap_or("").trim()) {
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if line.starts_with('[') {
            table = line;
        } else if (table == "[lints]" && compact == "workspace=true")
            || (table.is_empty() && compact == "lints.workspace=true")
        {
            return Vec::new();
        }
    }
    vec![Violation::new(manifest_path, 0, "does not have `[lints] workspace = true`")]
}
