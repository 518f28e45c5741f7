//! Extension bundles overlaid on the package: CREATE EXTENSION, real use, and a restart.

use pglite_host::Pglite;

use crate::support::{Outcome, artifact, config, extensions, releases, run, scalar};

const COMMON: [&str; 6] = ["uuid-ossp", "hstore", "citext", "ltree", "pg_trgm", "vector"];

fn start_with(version: &str, dir: &std::path::Path, names: &[&str]) -> Pglite {
    let mut cfg = config(version, dir);
    cfg.extensions = extensions(version, names);
    Pglite::start(artifact(version), cfg).expect("PGlite starts")
}

/// The text of a query's plan, all lines joined.
fn plan(pg: &Pglite, sql: &str) -> String {
    match run(pg, &format!("SET enable_seqscan = off; EXPLAIN (COSTS OFF) {sql}")) {
        Outcome::Rows(rows) => {
            scalar(pg, "SET enable_seqscan = on; SELECT 1");
            rows.into_iter().flatten().flatten().collect::<Vec<_>>().join("\n")
        }
        other => panic!("{sql}: {other:?}"),
    }
}

/// The common bundles `version` has: pgvector has no build for PostgreSQL 19 (0.6).
fn common(version: &str) -> Vec<&'static str> {
    COMMON.into_iter().filter(|name| pglite_host::extension_unavailable(version, name).is_none()).collect()
}

fn check_common(pg: &Pglite, names: &[&str]) {
    assert!(scalar(pg, "SELECT uuid_generate_v4()::text").chars().nth(14) == Some('4'));
    assert_eq!(scalar(pg, "SELECT ('a=>1, b=>2'::hstore -> 'b')"), "2");
    assert_eq!(scalar(pg, "SELECT 'AbC'::citext = 'abc'::citext"), "t");
    assert_eq!(scalar(pg, "SELECT 'top.science.astronomy'::ltree <@ 'top.science'::ltree"), "t");
    assert_eq!(scalar(pg, "SELECT similarity('postgres', 'postgrez') > 0.5"), "t");
    assert_eq!(
        scalar(pg, "SELECT word FROM words WHERE word % 'embeded' ORDER BY similarity(word, 'embeded') DESC LIMIT 1"),
        "embedded"
    );
    // The trigram index serves the query once scans are off the table.
    let trgm = plan(pg, "SELECT word FROM words WHERE word LIKE '%bedd%'");
    assert!(trgm.contains("Bitmap Index Scan on words_trgm"), "{trgm}");
    if !names.contains(&"vector") {
        return;
    }
    assert_eq!(scalar(pg, "SELECT id FROM items ORDER BY embedding <-> '[3,1,2]' LIMIT 1"), "2");
    let hnsw = plan(pg, "SELECT id FROM items ORDER BY embedding <-> '[3,1,2]' LIMIT 1");
    assert!(hnsw.contains("Index Scan using items_hnsw"), "{hnsw}");
}

fn create_common(pg: &Pglite, names: &[&str]) {
    for name in names {
        assert_eq!(run(pg, &format!("CREATE EXTENSION \"{name}\"")), Outcome::Rows(vec![]), "{name}");
    }
    scalar(
        pg,
        "CREATE TABLE words(word text); \
         INSERT INTO words VALUES ('embedded'), ('postgres'), ('wasm'), ('bridge'); \
         CREATE INDEX words_trgm ON words USING gin (word gin_trgm_ops); SELECT 1",
    );
    if !names.contains(&"vector") {
        return;
    }
    scalar(
        pg,
        "CREATE TABLE items(id int, embedding vector(3)); \
         INSERT INTO items VALUES (1, '[1,2,3]'), (2, '[3,1,2.5]'), (3, '[9,9,9]'); \
         CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_l2_ops); SELECT 1",
    );
}

#[test]
fn extensions_work_and_survive_a_restart_from_0_3_on() {
    for version in releases().into_iter().filter(|version| version != "0.2.17") {
        extensions_work_and_survive_a_restart(&version);
    }
}

fn extensions_work_and_survive_a_restart(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let common = common(version);
    let mut names = vec!["pgcrypto"];
    names.extend(&common);
    let pg = start_with(version, dir.path(), &names);
    create_common(&pg, &common);
    assert_eq!(run(&pg, "CREATE EXTENSION pgcrypto"), Outcome::Rows(vec![]));
    assert_eq!(
        scalar(&pg, "SELECT encode(digest('abc', 'sha256'), 'hex')"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(scalar(&pg, "SELECT length(gen_random_bytes(16))"), "16");
    assert_eq!(scalar(&pg, "SELECT crypt('secret', h) = h FROM (SELECT crypt('secret', gen_salt('bf')) AS h) s"), "t");
    check_common(&pg, &common);
    pg.stop().unwrap();
    drop(pg);

    let pg = start_with(version, dir.path(), &names);
    check_common(&pg, &common);
    assert_eq!(scalar(&pg, "SELECT encode(digest('abc', 'sha1'), 'hex')"), "a9993e364706816aba3e25717850c26c9cd0d89d");
}

#[test]
fn extensions_work_on_0_2_and_pgcrypto_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // 0.2's pgcrypto needs OpenSSL symbols its core lacks: refused up front, saying which
    // release has it.
    let mut cfg = config("0.2.17", dir.path());
    cfg.extensions = extensions("0.2.17", &["pgcrypto", "hstore"]);
    let err = Pglite::start(artifact("0.2.17"), cfg).err().expect("pgcrypto refused on 0.2");
    assert!(matches!(err, pglite_host::Error::ExtensionUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("0.3.16"), "{err}");

    let pg = start_with("0.2.17", dir.path(), &COMMON);
    create_common(&pg, &COMMON);
    check_common(&pg, &COMMON);
    // Without the bundle, CREATE EXTENSION pgcrypto fails cleanly and the session carries on.
    assert_eq!(run(&pg, "CREATE EXTENSION pgcrypto"), Outcome::Error("0A000".into()));
    assert_eq!(scalar(&pg, "SELECT 'still fine'"), "still fine");
    pg.stop().unwrap();
    drop(pg);
    let pg = start_with("0.2.17", dir.path(), &COMMON);
    check_common(&pg, &COMMON);
}

#[test]
fn pgvector_on_0_6_is_refused_naming_the_release_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("0.6.1", dir.path());
    // Its 0.5 bundle (PostgreSQL 18) is what a user might try.
    cfg.extensions = extensions("0.5.17", &["vector"]);
    let err = Pglite::start(artifact("0.6.1"), cfg).err().expect("vector refused on 0.6");
    assert!(matches!(err, pglite_host::Error::ExtensionUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("0.5.17"), "{err}");
}

#[test]
fn without_the_bundle_create_extension_fails_cleanly() {
    for version in releases() {
        let version = version.as_str();
        let dir = tempfile::tempdir().unwrap();
        let pg = start_with(version, dir.path(), &[]);
        assert_eq!(run(&pg, "CREATE EXTENSION hstore"), Outcome::Error("0A000".into()));
        assert_eq!(scalar(&pg, "SELECT 1"), "1");
    }
}
