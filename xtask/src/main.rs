//! Project automation: `cargo xtask ci`, `cargo xtask update-pins [--version V]... [--check]`,
//! `cargo xtask bench [all|host|bridge|e2e] [--quick]`, `cargo xtask tools`.
//!
//! Each subcommand lives in its own module with a `run`; flags are in `flags.rs`. xtask is a
//! leaf: nothing depends on it. `tidy` is tests only: the workspace's invariants, checked by
//! `cargo test -p xtask`.

mod bench;
mod ci;
mod flags;
#[cfg(test)]
mod tidy;
mod tools;
mod update_pins;

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let flags = flags::Xtask::from_env_or_exit();
    match flags.subcommand {
        flags::XtaskCmd::UpdatePins(cmd) => update_pins::run(&cmd.version, cmd.check),
        flags::XtaskCmd::Ci(_) => ci::run(),
        flags::XtaskCmd::Bench(cmd) => bench::run(&cmd),
        flags::XtaskCmd::Tools(_) => tools::run(),
    }
}

/// The workspace root (xtask sits one level below it).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_owned()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root when relative),
/// else `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| if dir.is_absolute() { dir } else { project_root().join(dir) })
        .unwrap_or_else(|| project_root().join("target"))
}
