//! Project automation: `cargo xtask ci`, `cargo xtask update-pins [--version V]... [--check]`,
//! `cargo xtask bench [all|host|bridge|e2e] [--quick]`.
//!
//! Each subcommand lives in its own module with a `run`; flags are in `flags.rs`. xtask is a
//! leaf: nothing depends on it.

mod bench;
mod ci;
mod flags;
mod update_pins;

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let flags = flags::Xtask::from_env_or_exit();
    match flags.subcommand {
        flags::XtaskCmd::UpdatePins(cmd) => update_pins::run(&cmd.version, cmd.check),
        flags::XtaskCmd::Ci(_) => ci::run(),
        flags::XtaskCmd::Bench(cmd) => bench::run(&cmd),
    }
}

/// The workspace root (xtask sits one level below it).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_owned()
}
