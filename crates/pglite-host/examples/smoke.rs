//! Boots PGlite from an extracted package and runs a few queries (a development aid).
//! Usage: smoke <postgres.wasm> <package-root> <data-dir> [sql...]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let wasm = std::fs::read(&args[1]).expect("read wasm");
    let artifact = pglite_host::Artifact {
        version: "0.2.17".into(),
        wasm: args[1].clone().into(),
        wasm_sha256: String::new(),
        package_root: args[2].clone().into(),
    };
    drop(wasm);
    let mut config = pglite_host::Config::new(&args[3]);
    config.module_cache_dir = Some(std::env::temp_dir().join("pglite-smoke-cache"));
    config.template_dir = Some(std::env::temp_dir().join("pglite-smoke-template"));
    let t = std::time::Instant::now();
    let pg = pglite_host::Pglite::start(artifact, config).expect("start");
    eprintln!("started in {:?}: {:?}", t.elapsed(), pg.boot_info());
    for sql in &args[4..] {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        let reply = pg.exec_protocol(msg).expect("exec");
        eprintln!("{sql:?} -> {:?}", String::from_utf8_lossy(&reply));
    }
    let t = std::time::Instant::now();
    for _ in 0..1000 {
        pg.exec_protocol(b"Q\0\0\0\x0eSELECT 1;\0".to_vec())
            .expect("exec");
    }
    eprintln!("1000 x SELECT 1: {:?}", t.elapsed());
    pg.stop().expect("stop");
}
