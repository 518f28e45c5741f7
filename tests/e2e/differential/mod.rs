//! Differential tests: the same scripted sessions against native PostgreSQL of the same major
//! as each pinned PGlite line and against the runtime (the real command), compared message by
//! message. PostgreSQL 19 (PGlite 0.6.1) has no native server here: native 18 stands in
//! (`native::oracle_major`), the version numbers are not compared, and the steps PostgreSQL
//! 19 answers otherwise are listed with the change ([`Script::changed_in`]).
//!
//! A [`Script`] is startup parameters and steps; a step is frontend messages sent in one write.
//! Both sessions run in lockstep, native first. After a step holding `Query`, `Sync` or
//! `FunctionCall` the harness reads until as many `ReadyForQuery` have come as such messages
//! were sent; after a step without one (a batch ended by `Flush`) it reads on native exactly
//! the answers of the step's messages, and then as many messages on the runtime. A last
//! `SELECT 'end of script'` catches any message still owed or sent in excess.
//!
//! Transcripts are normalized ([`wire::normalize`]: backend key masked, source-code fields of
//! errors dropped, table OIDs in row descriptions masked) and the startup `ParameterStatus`
//! block is compared as a sorted set. Where native PostgreSQL is another release (18.6 for
//! PGlite 0.5.17's 18.7, or the stand-in), `server_version` and `server_version_num` values are
//! masked on both sides ([`mask_release`]), to the major when that is the same. Everything else
//! must be equal, except the differences a
//! script lists with their reason: a rewrite applied to both sides ([`Script::allow`]), or a
//! step the README documents the runtime answering otherwise, whose runtime answer is then
//! checked exactly ([`Script::documented`]).

mod conn;
mod scripts;
mod scripts_extended;
mod wire;

use crate::support::{RELEASES, Server};
use conn::{Expect, Side};
use wire::{Fe, Msg, q};

/// A difference a script allows, with the reason it is not a bug.
struct Rewrite {
    what: &'static str,
    reason: &'static str,
    apply: fn(&mut Msg),
}

/// A step the runtime answers differently by design, as the README documents.
struct Documented {
    what: &'static str,
    reason: &'static str,
    /// The runtime's exact answer, one rendered [`Msg`] a line.
    runtime: Vec<String>,
}

/// Frontend messages sent in one write.
struct Step {
    messages: Vec<Fe>,
    documented: Option<Documented>,
    /// From this major on, PostgreSQL answers otherwise than the older native server that
    /// stands in for it: the runtime's answer there.
    changed_in: Option<(u32, Documented)>,
}

impl Step {
    fn label(&self) -> String {
        self.messages.iter().map(|m| m.label.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A scripted session.
pub(crate) struct Script {
    name: &'static str,
    user: String,
    database: String,
    startup: Vec<(String, String)>,
    steps: Vec<Step>,
    rewrites: Vec<Rewrite>,
    skip: Vec<(&'static str, &'static str)>,
}

impl Script {
    /// A session as `postgres` on database `nself`, with no steps yet.
    pub(crate) fn new(name: &'static str) -> Script {
        Script {
            name,
            user: "postgres".to_owned(),
            database: "nself".to_owned(),
            startup: Vec::new(),
            steps: Vec::new(),
            rewrites: Vec::new(),
            skip: Vec::new(),
        }
    }

    /// Another startup parameter (after `user` and `database`).
    pub(crate) fn startup(mut self, name: &str, value: &str) -> Script {
        self.startup.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Logs in as `user` instead of `postgres`.
    pub(crate) fn user(mut self, user: &str) -> Script {
        self.user = user.to_owned();
        self
    }

    /// Connects to `database` instead of `nself`.
    pub(crate) fn database(mut self, database: &str) -> Script {
        self.database = database.to_owned();
        self
    }

    /// A step: `messages` in one write.
    pub(crate) fn step(mut self, messages: impl IntoIterator<Item = Fe>) -> Script {
        self.steps.push(Step { messages: messages.into_iter().collect(), documented: None, changed_in: None });
        self
    }

    /// A step PostgreSQL `major` answers with `runtime` (rendered messages), unlike the older
    /// native server standing in for it; compared with native as usual on every other release.
    pub(crate) fn changed_in(
        mut self,
        major: u32,
        messages: impl IntoIterator<Item = Fe>,
        what: &'static str,
        runtime: &[&str],
    ) -> Script {
        let documented = Documented {
            what,
            reason: "a change in PostgreSQL itself",
            runtime: runtime.iter().map(|&s| s.to_owned()).collect(),
        };
        self.steps.push(Step {
            messages: messages.into_iter().collect(),
            documented: None,
            changed_in: Some((major, documented)),
        });
        self
    }

    /// A step of one simple `Query`.
    pub(crate) fn query(self, sql: &str) -> Script {
        self.step([q(sql)])
    }

    /// A step the runtime answers with `runtime` (rendered messages) instead of native's
    /// answer, by design. Fails when the runtime answers otherwise, and when it answers as
    /// native does (the difference is gone: remove the exception).
    pub(crate) fn documented(
        mut self,
        messages: impl IntoIterator<Item = Fe>,
        what: &'static str,
        reason: &'static str,
        runtime: &[&str],
    ) -> Script {
        let documented = Documented { what, reason, runtime: runtime.iter().map(|&s| s.to_owned()).collect() };
        self.steps.push(Step {
            messages: messages.into_iter().collect(),
            documented: Some(documented),
            changed_in: None,
        });
        self
    }

    /// Applies `apply` to every message of both transcripts before they are compared.
    pub(crate) fn allow(mut self, what: &'static str, reason: &'static str, apply: fn(&mut Msg)) -> Script {
        self.rewrites.push(Rewrite { what, reason, apply });
        self
    }

    /// Does not run on PGlite `release`, for `reason`.
    pub(crate) fn skip_on(mut self, release: &'static str, reason: &'static str) -> Script {
        self.skip.push((release, reason));
        self
    }

    /// Runs on PGlite `release` alone; the others skip it for `reason`.
    pub(crate) fn only_on(mut self, release: &'static str, reason: &'static str) -> Script {
        for other in RELEASES.into_iter().filter(|&other| other != release) {
            self = self.skip_on(other, reason);
        }
        self
    }

    fn startup_params(&self) -> Vec<(&str, &str)> {
        let mut params = vec![("user", self.user.as_str()), ("database", self.database.as_str())];
        params.extend(self.startup.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        params
    }
}

/// Runs `script` on every release, against the native server its major is compared with;
/// fails with a report of every difference.
pub(crate) fn check(script: Script) {
    let mut failures = Vec::new();
    for version in RELEASES {
        if let Some((_, reason)) = script.skip.iter().find(|(release, _)| *release == version) {
            eprintln!("`{}` skipped on PGlite {version}: {reason}", script.name);
            continue;
        }
        if let Some(report) = run_on(&script, version) {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// The transcripts of both sides: per step (startup first, `end of script` last) the
/// normalized messages.
struct Transcripts {
    labels: Vec<String>,
    native: Vec<Vec<Msg>>,
    runtime: Vec<Vec<Msg>>,
}

fn run_on(script: &Script, version: &str) -> Option<String> {
    let major = pglite_host::pg_major(version).unwrap_or_else(|| panic!("PGlite {version} is not pinned"));
    let native_major = crate::native::oracle_major(major)
        .unwrap_or_else(|| panic!("no native server to compare PostgreSQL {major} with"));
    let native_server = crate::native::native(native_major);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_release(dir.path(), version);
    let params = script.startup_params();
    let mut native = Side::connect("native", &native_server.socket_path());
    let mut runtime = Side::connect("runtime", &server.sock_path());
    let params_label: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    let mut t = Transcripts {
        labels: vec![format!("startup({})", params_label.join(", "))],
        native: vec![native.startup(&params)],
        runtime: vec![runtime.startup(&params)],
    };
    let end = Step { messages: vec![q("SELECT 'end of script'")], documented: None, changed_in: None };
    for step in script.steps.iter().chain([&end]) {
        let answer = native.step(&step.messages, Expect::Native);
        let count = answer.len();
        t.native.push(answer);
        t.runtime.push(runtime.step(&step.messages, Expect::Count(count)));
        t.labels.push(step.label());
    }
    native.terminate();
    runtime.terminate();
    drop(server);
    if std::env::var_os("NSELF_DIFF_VERBOSE").is_some() {
        eprintln!("{}", transcript(script, version, &t));
    }
    compare(script, version, (major, native_major), t)
}

/// Sorts each run of consecutive `ParameterStatus` messages: when one batch changes several
/// reported settings, PostgreSQL sends them in the reverse order of an internal list, which the
/// bridge does not reproduce (a documented difference).
fn sort_parameter_status_runs(messages: &mut [Msg]) {
    let mut start = 0;
    while start < messages.len() {
        let mut end = start;
        while end < messages.len() && messages[end].kind == "ParameterStatus" {
            end += 1;
        }
        messages[start..end].sort_by_key(Msg::to_string);
        start = end.max(start + 1);
    }
}

/// The `server_version` a startup reported.
fn reported_version(startup: &[Msg]) -> Option<String> {
    startup.iter().filter(|msg| msg.kind == "ParameterStatus").find_map(|msg| {
        let value = msg.parts.first()?.strip_prefix("server_version=")?;
        Some(value.trim_matches('"').to_owned())
    })
}

/// When the two sides run different releases, renders each side's `server_version` (as
/// reported and as a value) and `server_version_num` as `<major>.x` and `<major>xxxx`, so that
/// only the minor release is not compared; as `<version>` and `<version_num>` when the majors
/// differ too (a stand-in).
fn mask_release(t: &mut Transcripts) {
    let (Some(native), Some(runtime)) = (reported_version(&t.native[0]), reported_version(&t.runtime[0])) else {
        return;
    };
    if native == runtime {
        return;
    }
    let same_major = native.split('.').next() == runtime.split('.').next();
    for (side, version) in [(&mut t.native, native), (&mut t.runtime, runtime)] {
        let Some((major, minor)) = version.split_once('.') else { continue };
        let (Ok(major_num), Ok(minor_num)) = (major.parse::<u32>(), minor.parse::<u32>()) else { continue };
        let (shown, shown_num) = if same_major {
            (format!("{major}.x"), format!("{major}xxxx"))
        } else {
            ("<version>".to_owned(), "<version_num>".to_owned())
        };
        let replacements = [
            (format!("server_version={version:?}"), format!("server_version={shown:?}")),
            (format!("{version:?}"), format!("{shown:?}")),
            (format!("\"{}\"", major_num * 10000 + minor_num), format!("{shown_num:?}")),
        ];
        for part in side.iter_mut().flatten().flat_map(|msg| msg.parts.iter_mut()) {
            if let Some((_, to)) = replacements.iter().find(|(from, _)| from == part) {
                part.clone_from(to);
            }
        }
    }
}

fn compare(script: &Script, version: &str, (major, native_major): (u32, u32), mut t: Transcripts) -> Option<String> {
    mask_release(&mut t);
    for rewrite in &script.rewrites {
        t.native.iter_mut().chain(t.runtime.iter_mut()).flatten().for_each(rewrite.apply);
    }
    for messages in t.native.iter_mut().chain(t.runtime.iter_mut()) {
        sort_parameter_status_runs(messages);
    }
    let documented: Vec<Option<&Documented>> = std::iter::once(None)
        .chain(script.steps.iter().map(|step| match &step.changed_in {
            Some((since, doc)) if native_major < *since && major >= *since => Some(doc),
            _ => step.documented.as_ref(),
        }))
        .chain([None])
        .collect();
    let mut out = String::new();
    let mut differing = 0;
    for (idx, label) in t.labels.iter().enumerate() {
        let native: Vec<String> = t.native[idx].iter().map(Msg::to_string).collect();
        let runtime: Vec<String> = t.runtime[idx].iter().map(Msg::to_string).collect();
        let (expected, note, mark) = match documented[idx] {
            Some(doc) if native == runtime => {
                differing += 1;
                let note = format!("documented difference no longer occurs ({}): remove the exception", doc.what);
                out.push_str(&format!("\nstep {idx}: {label}\n  {note}\n"));
                continue;
            }
            Some(doc) => {
                let note =
                    format!("documented difference: {} ({}); D = the documented runtime answer", doc.what, doc.reason);
                (doc.runtime.clone(), note, "D  ")
            }
            None => (native, String::new(), "N  "),
        };
        if expected != runtime {
            differing += 1;
            out.push_str(&format!("\nstep {idx}: {label}\n"));
            if !note.is_empty() {
                out.push_str(&format!("  {note}\n"));
            }
            out.push_str(&diff(&expected, &runtime, mark));
        }
    }
    if differing == 0 {
        return None;
    }
    let mut head = format!(
        "differential `{}`: PGlite {version} (R) vs native PostgreSQL {native_major}{} (N): {differing} of {} steps differ\n\
         (lines: \"   \" both, \"N  \" native only, \"R  \" runtime only)\n",
        script.name,
        if native_major == major { String::new() } else { format!(", standing in for {major}") },
        t.labels.len()
    );
    for rewrite in &script.rewrites {
        head.push_str(&format!("allowed: {} ({})\n", rewrite.what, rewrite.reason));
    }
    Some(head + &out)
}

/// Both transcripts in full (with `NSELF_DIFF_VERBOSE` set), differing steps marked.
fn transcript(script: &Script, version: &str, t: &Transcripts) -> String {
    let mut out = format!("transcript of `{}` on PGlite {version}:\n", script.name);
    for (idx, label) in t.labels.iter().enumerate() {
        let same = t.native[idx] == t.runtime[idx];
        out.push_str(&format!("step {idx}{}: {label}\n", if same { "" } else { " (differs)" }));
        let sides =
            if same { vec![("   ", &t.native[idx])] } else { vec![("N  ", &t.native[idx]), ("R  ", &t.runtime[idx])] };
        for (mark, msgs) in sides {
            for msg in msgs {
                out.push_str(&format!("  {mark}{msg}\n"));
            }
        }
    }
    out
}

/// A line diff of `native` (lines marked `left` when only there) and `runtime` (longest common
/// subsequence), long runs of common lines elided.
fn diff(native: &[String], runtime: &[String], left: &'static str) -> String {
    let (n, m) = (native.len(), runtime.len());
    let mut lines: Vec<(&str, &str)> = Vec::new();
    if n.saturating_mul(m) > 4_000_000 {
        // Too long for the table: pair lines by position.
        for idx in 0..n.max(m) {
            match (native.get(idx), runtime.get(idx)) {
                (Some(a), Some(b)) if a == b => lines.push(("   ", a)),
                (a, b) => {
                    a.into_iter().for_each(|a| lines.push((left, a)));
                    b.into_iter().for_each(|b| lines.push(("R  ", b)));
                }
            }
        }
    } else {
        let mut lcs = vec![vec![0u32; m + 1]; n + 1];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i][j] =
                    if native[i] == runtime[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && native[i] == runtime[j] {
                lines.push(("   ", &native[i]));
                (i, j) = (i + 1, j + 1);
            } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
                lines.push((left, &native[i]));
                i += 1;
            } else {
                lines.push(("R  ", &runtime[j]));
                j += 1;
            }
        }
    }
    let mut out = String::new();
    let mut idx = 0;
    while idx < lines.len() {
        let run = lines[idx..].iter().take_while(|(mark, _)| *mark == "   ").count();
        if run > 16 {
            for (mark, line) in &lines[idx..idx + 4] {
                out.push_str(&format!("  {mark}{line}\n"));
            }
            out.push_str(&format!("       … {} equal lines …\n", run - 8));
            for (mark, line) in &lines[idx + run - 4..idx + run] {
                out.push_str(&format!("  {mark}{line}\n"));
            }
            idx += run;
        } else {
            let (mark, line) = lines[idx];
            out.push_str(&format!("  {mark}{line}\n"));
            idx += 1;
        }
    }
    out
}
