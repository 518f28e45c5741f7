//! The `nself-embedded` command. Everything but this entry point lives in
//! `nself_embedded::cli`, so the end-to-end tests can build the very same command.

fn main() -> std::process::ExitCode {
    nself_embedded::cli::main()
}
