//! Host benchmark, run by `cargo xtask bench host`: compile, cached-module load, first boot
//! (initdb), new database from the template, warm restart, and `SELECT 1` round trips through
//! `exec_protocol`. Prints one `name<TAB>value<TAB>unit` line per measurement.
//!
//! Usage: bench [VERSION] (default 0.2.17). The artifact comes from the shared cache
//! (`NSELF_CACHE_DIR`, as the command uses it).

use std::time::{Duration, Instant};

use pglite_host::{Artifact, Config, Pglite};

fn report(name: &str, value: f64, unit: &str) {
    println!("{name}\t{value:.3}\t{unit}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn select1() -> Vec<u8> {
    let sql = b"SELECT 1\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(sql);
    msg
}

fn main() {
    let version = std::env::args().nth(1).unwrap_or_else(|| "0.2.17".to_owned());
    let mut opts = pglite_fetch::FetchOptions::from_env().expect("fetch options");
    opts.version = version.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fetched = rt.block_on(pglite_fetch::ensure(&opts)).expect("fetch PGlite");
    let artifact = Artifact {
        version: fetched.version,
        wasm: fetched.wasm.into(),
        wasm_sha256: fetched.wasm_sha256,
        package_root: fetched.root.into(),
        initdb: fetched.initdb.map(|(path, sha256)| (path.into(), sha256)),
    };
    let scratch = tempfile::tempdir().unwrap();
    let config = |data: &str| {
        let mut config = Config::new(scratch.path().join(data));
        config.module_cache_dir = Some(scratch.path().join("modules"));
        config.template_dir = Some(scratch.path().join("template"));
        config
    };

    // Empty caches: compile + initdb (+ template copy).
    let t = Instant::now();
    let pg = Pglite::start(artifact.clone(), config("first")).unwrap();
    let first = t.elapsed();
    report("compile", ms(pg.boot_info().module_load), "ms");
    report("first_boot_total", ms(first), "ms");
    pg.stop().unwrap();
    drop(pg);

    let t = Instant::now();
    let pg = Pglite::start(artifact.clone(), config("second")).unwrap();
    report("new_database_from_template", ms(t.elapsed()), "ms");
    report("cached_module_load", ms(pg.boot_info().module_load), "ms");
    pg.stop().unwrap();
    drop(pg);

    let mut restarts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let pg = Pglite::start(artifact.clone(), config("second")).unwrap();
        pg.exec_protocol(select1()).unwrap();
        restarts.push(t.elapsed());
        pg.stop().unwrap();
    }
    restarts.sort();
    report("warm_restart_to_first_answer_median", ms(restarts[restarts.len() / 2]), "ms");

    let pg = Pglite::start(artifact, config("second")).unwrap();
    for _ in 0..1000 {
        pg.exec_protocol(select1()).unwrap();
    }
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        pg.exec_protocol(select1()).unwrap();
    }
    let elapsed = t.elapsed();
    report("select1_round_trip", elapsed.as_secs_f64() * 1e6 / n as f64, "us");
    report("select1_per_second", n as f64 / elapsed.as_secs_f64(), "qps");
    // From a task on a multi-threaded tokio runtime, as the bridge calls it.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let elapsed = runtime.block_on(async {
        let pg = &pg;
        let t = Instant::now();
        for _ in 0..n {
            pg.exec_protocol_async(select1(), Default::default()).await.unwrap();
        }
        t.elapsed()
    });
    report("select1_round_trip_async", elapsed.as_secs_f64() * 1e6 / n as f64, "us");
    // The same queries 100 to an exchange: the backend's own cost, without the per-exchange one.
    let batch: Vec<u8> = (0..100).flat_map(|_| select1()).collect();
    let t = Instant::now();
    for _ in 0..n / 100 {
        pg.exec_protocol(batch.clone()).unwrap();
    }
    report("select1_batched_100", t.elapsed().as_secs_f64() * 1e6 / n as f64, "us");
    pg.stop().unwrap();
}
