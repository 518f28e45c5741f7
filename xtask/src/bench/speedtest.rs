//! PGlite's benchmark suite: the port of SQLite's "speedtest" (tests 1–16), rebuilt from its
//! published description. As in that suite, each test is one script sent as one simple query
//! (`batch_execute`), so it measures the engine rather than round trips. The data is
//! pseudo-random with a fixed seed: every system gets byte-identical SQL.

use std::fmt::Write;
use std::time::Instant;

use super::Endpoint;

/// A test's name and its SQL.
pub(crate) struct Test {
    pub(crate) name: String,
    pub(crate) sql: String,
}

/// The 16 tests; `divisor` scales every count down (1 for the real thing).
pub(crate) fn tests(divisor: u32) -> Vec<Test> {
    let n = |count: u32| (count / divisor).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut res = Vec::new();
    let mut add = |name: String, sql: String| res.push(Test { name: format!("{:>2}. {name}", res.len() + 1), sql });

    let mut sql = String::from("CREATE TABLE t1(a INTEGER, b INTEGER, c VARCHAR(100));\n");
    for i in 1..=n(1000) {
        let b = rng.below(100_000);
        let _ = writeln!(sql, "INSERT INTO t1 VALUES({i},{b},'{}');", number_name(b));
    }
    add(format!("{} INSERTs", n(1000)), sql);

    for (table, indexed) in [("t2", false), ("t3", true)] {
        let mut sql = format!("BEGIN;\nCREATE TABLE {table}(a INTEGER, b INTEGER, c VARCHAR(100));\n");
        if indexed {
            sql += "CREATE INDEX i3 ON t3(c);\n";
        }
        for i in 1..=n(25_000) {
            let b = rng.below(500_000);
            let _ = writeln!(sql, "INSERT INTO {table} VALUES({i},{b},'{}');", number_name(b));
        }
        sql += "COMMIT;\n";
        let what = if indexed { "INSERTs into an indexed table" } else { "INSERTs in a transaction" };
        add(format!("{} {what}", n(25_000)), sql);
    }

    let mut sql = String::from("BEGIN;\n");
    for i in 0..n(100) {
        let _ = writeln!(sql, "SELECT count(*), avg(b) FROM t2 WHERE b>={} AND b<{};", i * 100, i * 100 + 1000);
    }
    add(format!("{} SELECTs without an index", n(100)), sql + "COMMIT;\n");

    let mut sql = String::from("BEGIN;\n");
    for i in 1..=n(100) {
        let _ = writeln!(sql, "SELECT count(*), avg(b) FROM t2 WHERE c LIKE '%{}%';", number_name(i));
    }
    add(format!("{} SELECTs on a string comparison", n(100)), sql + "COMMIT;\n");

    add("Creating an index".to_owned(), "CREATE INDEX i2a ON t2(a);\nCREATE INDEX i2b ON t2(b);\n".to_owned());

    let mut sql = String::new();
    for i in 0..n(5000) {
        let _ = writeln!(sql, "SELECT count(*), avg(b) FROM t2 WHERE b>={} AND b<{};", i * 100, i * 100 + 100);
    }
    add(format!("{} SELECTs with an index", n(5000)), sql);

    let mut sql = String::from("BEGIN;\n");
    for i in 0..n(1000) {
        let _ = writeln!(sql, "UPDATE t1 SET b=b*2 WHERE a>={} AND a<{};", i * 10, i * 10 + 10);
    }
    add(format!("{} UPDATEs without an index", n(1000)), sql + "COMMIT;\n");

    let mut sql = String::from("BEGIN;\n");
    for i in 1..=n(25_000) {
        let _ = writeln!(sql, "UPDATE t2 SET b={} WHERE a={i};", rng.below(500_000));
    }
    add(format!("{} UPDATEs with an index", n(25_000)), sql + "COMMIT;\n");

    let mut sql = String::from("BEGIN;\n");
    for i in 1..=n(25_000) {
        let _ = writeln!(sql, "UPDATE t2 SET c='{}' WHERE a={i};", number_name(rng.below(500_000)));
    }
    add(format!("{} text UPDATEs with an index", n(25_000)), sql + "COMMIT;\n");

    let sql = "BEGIN;\nINSERT INTO t1 SELECT b,a,c FROM t2;\nINSERT INTO t2 SELECT b,a,c FROM t1;\nCOMMIT;\n";
    add("INSERTs from a SELECT".to_owned(), sql.to_owned());
    add("DELETE without an index".to_owned(), "DELETE FROM t2 WHERE c LIKE '%fifty%';\n".to_owned());
    add("DELETE with an index".to_owned(), format!("DELETE FROM t2 WHERE a>10 AND a<{};\n", n(20_000)));
    add("A big INSERT after a big DELETE".to_owned(), "INSERT INTO t2 SELECT * FROM t1;\n".to_owned());

    let mut sql = String::from("BEGIN;\nDELETE FROM t1;\n");
    for i in 1..=n(12_000) {
        let b = rng.below(100_000);
        let _ = writeln!(sql, "INSERT INTO t1 VALUES({i},{b},'{}');", number_name(b));
    }
    add(format!("A big DELETE followed by {} small INSERTs", n(12_000)), sql + "COMMIT;\n");
    add("DROP TABLE".to_owned(), "DROP TABLE t1;\nDROP TABLE t2;\nDROP TABLE t3;\n".to_owned());
    res
}

/// Runs every test once, in order, on a fresh connection; returns milliseconds per test.
pub(crate) async fn run(endpoint: &Endpoint, tests: &[Test]) -> anyhow::Result<Vec<f64>> {
    let client = endpoint.connect().await?;
    client.batch_execute("DROP TABLE IF EXISTS t1, t2, t3").await?;
    let mut res = Vec::new();
    for test in tests {
        let started = Instant::now();
        client.batch_execute(&test.sql).await.map_err(|err| anyhow::anyhow!("test {}: {err:?}", test.name))?;
        res.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(res)
}

/// English words for `n`, as SQLite's speedtest writes them ("one hundred twenty three").
pub(crate) fn number_name(n: u32) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = ["", "ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    let mut words: Vec<String> = Vec::new();
    let mut rest = n;
    for (scale, name) in [(1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand")] {
        if rest >= scale {
            words.push(number_name(rest / scale));
            words.push(name.to_owned());
            rest %= scale;
        }
    }
    if rest >= 100 {
        words.extend([ONES[(rest / 100) as usize].to_owned(), "hundred".to_owned()]);
        rest %= 100;
    }
    if rest >= 20 {
        words.push(TENS[(rest / 10) as usize].to_owned());
        rest %= 10;
    }
    if rest > 0 || words.is_empty() {
        words.push(ONES[rest as usize].to_owned());
    }
    words.join(" ")
}

/// xorshift64*: small, seedable and the same everywhere.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32 % bound
    }
}
