//! Tidy's checkers on synthetic input: each catches a planted offender and passes clean input,
//! so a broken invariant in the real tree fails `cargo test -p xtask`.

use super::code::code_lines;
use super::manifest::manifest_dependencies;
use super::*;

fn file(path: &str, lines: &[&str]) -> SourceFile {
    SourceFile { path: path.to_owned(), text: lines.join("\n") + "\n" }
}

/// Compares where the violations are (`path:line`), in order.
#[track_caller]
fn check(violations: Vec<Violation>, expect: &[&str]) {
    let got: Vec<String> = violations.iter().map(Violation::location).collect();
    assert_eq!(got, expect, "{violations:#?}");
}

#[test]
fn code_lines_blank_comments_and_literals_but_keep_lines() {
    let text = [
        r#"let a = "unsafe \" sleep("; // unsafe"#,
        r##"let b = r#"a "quoted" std::net"#; /* one /* nested */"##,
        r#"still comment */ let c = '"'; let d: &'static str = "x";"#,
        r#"let e = '\''; let f = b"x"; let g = br"\"; unsafe {}"#,
    ]
    .join("\n");
    let blank = |n: usize| " ".repeat(n);
    let expect = [
        format!("let a = \"{}\";{}", blank(16), blank(10)),
        format!("let b = r#\"{}\"#;{}", blank(19), blank(20)),
        format!("{}let c = ' '; let d: &'static str = \" \";", blank(17)),
        "let e = '  '; let f = b\" \"; let g = br\" \"; unsafe {}".to_owned(),
    ];
    for (line, code) in text.lines().zip(&expect) {
        assert_eq!(line.chars().count(), code.chars().count(), "columns are kept: {code}");
    }
    assert_eq!(code_lines(&text), expect);
}

#[test]
fn a_module_must_open_with_a_doc_comment() {
    check(check_module_doc(&file("a.rs", &["//! Owns a.", "fn a() {}"])), &[]);
    check(check_module_doc(&file("b.rs", &["", "//! Owns b."])), &["b.rs:1"]);
    check(check_module_doc(&file("c.rs", &["#![no_main]", "//! Owns c."])), &["c.rs:1"]);
    check(check_module_doc(&file("d.rs", &["/// Not a module doc.", "fn d() {}"])), &["d.rs:1"]);
    check(check_module_doc(&file("e.rs", &[])), &["e.rs:1"]);
}

#[test]
fn pglite_host_may_not_name_sockets() {
    let host = file(
        "crates/pglite-host/src/x.rs",
        &[
            "//! Never opens a socket: no std::net::TcpStream here.",
            "use std::os::unix::net::UnixStream;",
            "let s = \"tokio::net\";",
            "let l = tokio::net::UnixListener::bind(path);",
            "struct MyTcpStreamish;",
        ],
    );
    let found: Vec<String> = check_no_sockets(&host).iter().map(|violation| violation.message.clone()).collect();
    assert_eq!(
        found,
        ["names `std::os::unix::net`", "names `UnixStream`", "names `tokio::net`", "names `UnixListener`"]
    );
}

#[test]
fn ignored_and_should_panic_tests_are_reported() {
    let text = [
        "//! Tests.",
        "#[test]",
        "#[ignore]",
        "fn slow() {}",
        "#[should_panic(expected = \"boom\")]",
        "fn boom() {}",
        "#[cfg_attr(miri, ignore = \"slow\")]",
        "fn also_slow() {}",
        "// #[ignore] in a comment is fine, and so is \"#[should_panic]\" in a string:",
        "let s = \"#[should_panic]\";",
        "let ignore = 1;",
        "#[ignore_me_not]",
    ];
    check(check_test_attributes(&file("t.rs", &text)), &["t.rs:3", "t.rs:5", "t.rs:7"]);
}

fn sleepy_tree() -> Vec<SourceFile> {
    vec![
        file("c/tests/it/main.rs", &["//! Integration test.", "fn t() { std::thread::sleep(D); }"]),
        file(
            "c/src/lib.rs",
            &[
                "//! Library.",
                "async fn idle() { tokio::time::sleep(limit).await; }",
                "#[cfg(test)]",
                "mod robustness;",
                "#[cfg(test)]",
                "mod tests {",
                "    fn t() {",
                "        let _ = \"}\";",
                "        thread::sleep(D);",
                "    }",
                "}",
                "fn after() { sleep(D); }",
            ],
        ),
        file("c/src/robustness.rs", &["//! Declared as a test module.", "fn t() { sleep_until(deadline); }"]),
        file("c/src/robustness/deep.rs", &["//! A test module's submodule.", "fn t() { time::sleep(D); }"]),
        file("c/src/tests.rs", &["//! Tests.", "fn t() { sleep(D); }"]),
        file(
            "c/src/marked/tests.rs",
            &[
                "//! Marked sleeps.",
                "// tidy: allow sleep (measures that a 10 ms delay is reported)",
                "std::thread::sleep(D);",
                "std::thread::sleep(D); // tidy: allow sleep (same, on the line)",
                "// tidy: allow sleep ()",
                "std::thread::sleep(D);",
                "let allowed = 1;",
                "    tokio::time::sleep(D).await;",
            ],
        ),
    ]
}

#[test]
fn sleeps_in_test_code_are_reported() {
    let expect = [
        "c/tests/it/main.rs:2",
        "c/src/lib.rs:9",
        "c/src/robustness.rs:2",
        "c/src/robustness/deep.rs:2",
        "c/src/tests.rs:2",
        "c/src/marked/tests.rs:6",
        "c/src/marked/tests.rs:8",
    ];
    check(check_sleeps(&sleepy_tree(), &[]), &expect);
}

#[test]
fn allow_listed_sleeps_pass_and_stale_or_unexplained_entries_are_reported() {
    let allowed = [
        AllowedSleep { path: "c/src/marked/tests.rs", code: "tokio::time::sleep(D).await;", reason: "polls" },
        AllowedSleep { path: "c/src/tests.rs", code: "sleep(D);", reason: "not on its own line: stale" },
        AllowedSleep { path: "c/tests/it/main.rs", code: "fn t() { std::thread::sleep(D); }", reason: " " },
    ];
    let expect = [
        "c/src/lib.rs:9",
        "c/src/robustness.rs:2",
        "c/src/robustness/deep.rs:2",
        "c/src/tests.rs:2",
        "c/src/marked/tests.rs:6",
        "c/src/tests.rs",
        "c/tests/it/main.rs",
    ];
    check(check_sleeps(&sleepy_tree(), &allowed), &expect);
}

#[test]
fn unsafe_needs_a_safety_comment_of_its_own() {
    let text = [
        "//! Unsafe things.",
        "#[allow(unsafe_code, reason = \"why\")]",
        "// SAFETY: explained right above.",
        "unsafe { a() };",
        "let s = \"unsafe in a string\"; // unsafe in a comment",
        "unsafe { b() };",
        "// SAFETY: a long paragraph",
        "// that goes on",
        "// and on",
        "// and on.",
        "#[expect(unsafe_code, reason = \"why\")]",
        "let c = unsafe { c() };",
        "// SAFETY: too far above, with code in between.",
        "let x = 1;",
        "let y = 2;",
        "let z = 3;",
        "unsafe { d() };",
        "let e = unsafe { e() }; // SAFETY: on the line.",
        "/// # Safety",
        "/// The caller keeps `p` alive.",
        "unsafe fn f(p: *const u8) {}",
    ];
    check(check_unsafe_comments(&file("u.rs", &text)), &["u.rs:6", "u.rs:17"]);
}

#[test]
fn long_files_are_reported_unless_generated() {
    let mut long = vec!["//! Long."; MAX_LINES];
    check(check_length(&file("ok.rs", &long)), &[]);
    long.push("fn one_too_many() {}");
    check(check_length(&file("long.rs", &long)), &["long.rs"]);
    long[2] = "//! generated by cargo xtask update-pins; do not edit";
    check(check_length(&file("pins.rs", &long)), &[]);
}

const MANIFEST: &str = r#"[package]
name = "demo"

[dependencies]
anyhow.workspace = true
fs-err.workspace = true  # used nowhere
tokio = { workspace = true, features = ["rt"] }
serde = "1"

[target.'cfg(unix)'.dependencies]
rustix.workspace = true

[dependencies.tar]
version = "0.4"

[dev-dependencies]
tempfile.workspace = true
tokio-postgres.workspace = true

[lints]
workspace = true
"#;

#[test]
fn unused_dependencies_are_reported() {
    let lib = file("demo/src/lib.rs", &["//! Demo.", "use anyhow::Context;", "extern crate serde;", "// fs_err::read"]);
    let tests = file("demo/tests/t.rs", &["//! Tests.", "#[tokio::test]", "async fn t() { let d = \"tempfile::x\"; }"]);
    let dependencies = manifest_dependencies(MANIFEST);
    let names: Vec<(usize, &str)> =
        dependencies.iter().map(|dependency| (dependency.line, dependency.name.as_str())).collect();
    let expect = [(5, "anyhow"), (6, "fs-err"), (7, "tokio"), (8, "serde"), (11, "rustix"), (13, "tar")];
    assert_eq!(names, [&expect[..], &[(17, "tempfile"), (18, "tokio-postgres")]].concat());
    let expect =
        ["demo/Cargo.toml:6", "demo/Cargo.toml:11", "demo/Cargo.toml:13", "demo/Cargo.toml:17", "demo/Cargo.toml:18"];
    check(check_unused_dependencies("demo/Cargo.toml", MANIFEST, &[&lib, &tests]), &expect);
}

#[test]
fn a_member_reads_its_targets_outside_its_directory() {
    let files = [
        file("tests/e2e/main.rs", &["//! e2e"]),
        file("crates/app/src/main.rs", &["//! main"]),
        file("crates/app/src/lib.rs", &["//! lib"]),
    ];
    let manifest = "[[bin]]\nname = \"app-e2e\"\npath = \"../crates/app/src/main.rs\"\n";
    let paths: Vec<&str> = member_sources("tests", manifest, &files).iter().map(|file| file.path.as_str()).collect();
    assert_eq!(paths, ["tests/e2e/main.rs", "crates/app/src/main.rs"]);
}

#[test]
fn members_must_opt_into_the_workspace_lints() {
    check(check_lints_opt_in("a/Cargo.toml", MANIFEST), &[]);
    check(check_lints_opt_in("b/Cargo.toml", "[package]\nname = \"b\"\n"), &["b/Cargo.toml"]);
    check(check_lints_opt_in("c/Cargo.toml", "[lints]\nworkspace = false\n"), &["c/Cargo.toml"]);
    check(check_lints_opt_in("d/Cargo.toml", "[lints.rust]\nworkspace = true\n"), &["d/Cargo.toml"]);
}

/// A workspace shaped as ARCHITECTURE.md says, in `cargo tree --prefix depth` form, plus `extra`
/// lines appended as further roots.
fn tree(extra: &str) -> DepGraph {
    let text = "0nself-embedded v0.0.0 (/w/crates/nself-embedded)\n\
                1pglite-fetch v0.0.0 (/w/crates/pglite-fetch)\n\
                2sha2 v0.10.9\n\
                1pglite-host v0.0.0 (/w/crates/pglite-host)\n\
                2wasmtime v48.0.0\n\
                3wasmtime-environ v48.0.0\n\
                2sha2 v0.10.9\n\
                1pg-bridge v0.0.0 (/w/crates/pg-bridge)\n\
                2sha2 v0.10.9\n\
                \n\
                0pg-bridge v0.0.0 (/w/crates/pg-bridge) (*)\n\
                0pglite-fetch v0.0.0 (/w/crates/pglite-fetch) (*)\n\
                0pglite-host v0.0.0 (/w/crates/pglite-host) (*)\n\
                0xtask v0.0.0 (/w/xtask)\n\
                1anyhow v1.0.0\n";
    parse_cargo_tree(&format!("{text}{extra}"), "/w")
}

#[test]
fn the_architecture_s_layering_passes() {
    let graph = tree("");
    assert_eq!(graph.members["pg-bridge"], "crates/pg-bridge");
    check(check_layering(&graph, &[]), &[]);
}

#[test]
fn forbidden_arrows_are_reported_with_the_chain() {
    // pg-bridge reaches wasmtime through a helper, pglite-host depends on pg-bridge, xtask on
    // pglite-host, the facade reaches pg-bridge only through pglite-host and lost pglite-fetch,
    // and a test package depends on xtask.
    let text = "0e2e v0.0.0 (/w/tests)\n1xtask v0.0.0 (/w/xtask)\n\
                0nself-embedded v0.0.0 (/w/crates/nself-embedded)\n1pglite-host v0.0.0 (/w/crates/pglite-host)\n\
                2wasmtime v48.0.0\n2pg-bridge v0.0.0 (/w/crates/pg-bridge)\n3helper v1.0.0\n4wasmtime v48.0.0\n\
                0pg-bridge v0.0.0 (/w/crates/pg-bridge) (*)\n0pglite-fetch v0.0.0 (/w/crates/pglite-fetch)\n\
                0pglite-host v0.0.0 (/w/crates/pglite-host) (*)\n0xtask v0.0.0 (/w/xtask)\n1pglite-host v0.0.0 (/w/crates/pglite-host) (*)\n";
    let violations = check_layering(&parse_cargo_tree(text, "/w"), &[]);
    let found: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(found[0].starts_with("crates/pg-bridge/Cargo.toml: pg-bridge -> helper -> wasmtime: "), "{found:#?}");
    assert!(found[1].starts_with("crates/pglite-host/Cargo.toml: pglite-host -> pg-bridge: "), "{found:#?}");
    assert!(found[2].starts_with("xtask/Cargo.toml: xtask -> pglite-host: "), "{found:#?}");
    assert!(found[3].starts_with("xtask/Cargo.toml: xtask -> pglite-host -> pg-bridge: "), "{found:#?}");
    assert!(found[4].starts_with("tests/Cargo.toml: e2e -> xtask: "), "{found:#?}");
    assert!(found[5].starts_with("crates/nself-embedded/Cargo.toml: nself-embedded does not depend on pglite-fetch"));
    assert!(found[6].starts_with("crates/nself-embedded/Cargo.toml: nself-embedded does not depend on pg-bridge"));
    assert_eq!(found.len(), 7, "{found:#?}");
}

#[test]
fn layering_exceptions_must_be_used_and_explained() {
    let xtask_uses_fetch = tree("1pglite-fetch v0.0.0 (/w/crates/pglite-fetch)\n");
    let exceptions = [LayeringException { from: "xtask", to: "pglite-fetch", reason: "update-pins" }];
    check(check_layering(&xtask_uses_fetch, &exceptions), &[]);
    check(check_layering(&xtask_uses_fetch, &[]), &["xtask/Cargo.toml"]);
    check(check_layering(&tree(""), &exceptions), &["xtask/Cargo.toml"]);
    let unexplained = [LayeringException { from: "xtask", to: "pglite-fetch", reason: "" }];
    check(check_layering(&xtask_uses_fetch, &unexplained), &["xtask/Cargo.toml"]);
}

#[test]
fn a_broken_invariant_fails_the_test_with_every_location() {
    let violations = check_module_doc(&file("x.rs", &["fn x() {}"]))
        .into_iter()
        .chain(check_length(&file("y.rs", &vec!["//! Long."; MAX_LINES + 1])))
        .collect();
    let panic = std::panic::catch_unwind(|| assert_clean("what", "what to do", violations)).expect_err("fails");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("tidy: what (2 found)"), "{message}");
    assert!(message.contains("    x.rs:1: starts with `fn x() {}`, not a `//!` module doc comment\n"), "{message}");
    assert!(message.contains("    y.rs: 601 lines (limit 600)\n"), "{message}");
    assert!(message.ends_with("what to do\n"), "{message}");
    assert_clean("nothing", "nothing to do", Vec::new());
}
