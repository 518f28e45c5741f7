//! Command-line flags for `cargo xtask`, declared with xflags.
//!
//! Add a subcommand by adding a `cmd` block here and a module with its `run`.

xflags::xflags! {
    cmd xtask {
        /// Recompute SHA-256 pins from the npm registry tarballs and regenerate
        /// crates/pglite-fetch/src/pins.rs (older versions' pins are kept).
        cmd update-pins {
            /// A version to (re)pin; repeatable. Defaults to every pinned line: 0.2.17, 0.3.16, 0.5.17, 0.6.1.
            repeated --version version: String
            /// Recompute and fail if the committed file differs.
            optional --check
        }
        /// Run what CI runs: fmt, clippy, tests, cargo-deny, update-pins --check.
        cmd ci {}
        /// Measure nself-embedded against native PostgreSQL, PgBouncer and PGlite in Node;
        /// print a table and write target/bench/report.md and target/bench/chart.svg.
        cmd bench {
            /// Which part to run: all (default), host, bridge or e2e.
            optional section: String
            /// Shorter runs and smaller data: a smoke test of the harness, not a result.
            optional --quick
        }
        /// Install the native PostgreSQL servers, client tools and drivers the tests use into
        /// target/tools (without root; a no-op when they are there) and print the variables
        /// that point the tests at them, as NAME=value lines.
        cmd tools {}
    }
}
