//! `cargo xtask ci`: the whole CI gate, runnable locally with the same result.
//!
//! fmt, clippy (warnings denied here, not in Cargo.toml), the test tools (`cargo xtask tools`,
//! passed to the tests as environment variables), tests (nextest when installed),
//! cargo-deny (when installed; advisories with XTASK_ADVISORIES=1) and the pin drift check.

use xshell::{Shell, cmd};

pub(crate) fn run() -> anyhow::Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?;
    // Native servers, client tools and drivers under <target>/tools; the tests find them
    // through these variables.
    for (name, value) in crate::tools::provision()? {
        if name == "NSELF_PG_CLIENT_BIN" {
            // psql and pgbench, which the tests run by name.
            let path = std::env::var("PATH").unwrap_or_default();
            sh.set_var("PATH", format!("{value}:{path}"));
        }
        sh.set_var(name, value);
    }
    if is_installed(&sh, "nextest") {
        cmd!(sh, "cargo nextest run --workspace --no-fail-fast").run()?;
    } else {
        cmd!(sh, "cargo test --workspace").run()?;
    }
    if is_installed(&sh, "deny") {
        // The advisory database is a git clone from GitHub, which not every machine that
        // runs CI can reach; the other checks need nothing but the lockfile.
        if std::env::var("XTASK_ADVISORIES").is_ok_and(|value| value == "1") {
            cmd!(sh, "cargo deny check").run()?;
        } else {
            cmd!(sh, "cargo deny check bans licenses sources").run()?;
            eprintln!("skipped `cargo deny check advisories` (set XTASK_ADVISORIES=1 to run it)");
        }
    } else {
        eprintln!("cargo-deny is not installed; skipping `cargo deny check` (cargo install cargo-deny --locked)");
    }
    crate::update_pins::run(&[], true)
}

fn is_installed(sh: &Shell, cargo_subcommand: &str) -> bool {
    cmd!(sh, "cargo {cargo_subcommand} --version").quiet().ignore_stdout().ignore_stderr().run().is_ok()
}
