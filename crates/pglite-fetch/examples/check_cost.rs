//! What the per-start check of the extracted files costs, on every pinned release in the
//! cache (`NSELF_CACHE_DIR`, filled first if need be): a warm `ensure` (which includes the
//! check), the quick check of `root/` alone, and a warm `ensure_extensions` of the extensions
//! the command always loads (which checks their trees against their manifests). Medians of
//! many runs, in one process, so the numbers compare with each other.
//!
//! Usage: `cargo run --release -p pglite-fetch --example check_cost [RUNS]` (default 200).

use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("release\twarm ensure\tquick check of root/\tfiles\twarm ensure_extensions (3)");
    for release in pglite_fetch::pinned_releases() {
        let mut opts = pglite_fetch::FetchOptions::from_env().expect("fetch options");
        opts.version = release.version.clone();
        let artifact = runtime.block_on(pglite_fetch::ensure(&opts)).expect("fetch PGlite");
        let extensions = ["pgcrypto", "citext", "uuid-ossp"];
        runtime.block_on(pglite_fetch::ensure_extensions(&opts, &extensions)).expect("fetch extensions");

        let (mut ensure, mut check, mut ensure_extensions) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            runtime.block_on(pglite_fetch::ensure(&opts)).unwrap();
            ensure.push(started.elapsed());

            let started = Instant::now();
            assert!(pglite_fetch::extracted_is_whole(&artifact), "the cache is damaged");
            check.push(started.elapsed());

            let started = Instant::now();
            runtime.block_on(pglite_fetch::ensure_extensions(&opts, &extensions)).unwrap();
            ensure_extensions.push(started.elapsed());
        }
        println!(
            "{}\t{:.3} ms\t{:.3} ms\t{}\t{:.3} ms",
            release.version,
            median(ensure),
            median(check),
            artifact.files.len(),
            median(ensure_extensions)
        );
    }
}
