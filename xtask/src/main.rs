//! Project automation: `cargo xtask ci`, `update-pins`, `bench`.

fn main() -> anyhow::Result<()> {
    Ok(())
}
