//! COPY through the command, on every pinned release: psql's `\copy` both ways with the same
//! output as native PostgreSQL of the same major, a client that dies in the middle of a COPY,
//! a large COPY, and a database moved to native PostgreSQL with `pg_dump -Fc` and `pg_restore`
//! and back (the README's "Moving to a PostgreSQL server").

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;

use crate::native::{has_native, native, oracle_major};
use crate::support::{RELEASES, Server, client, text};

fn major(release: &str) -> u32 {
    pglite_host::pg_major(release).expect("a pinned release")
}

/// psql on `dsn`, running `script` with errors shown with their SQLSTATE, stopping at none.
fn psql_on(dsn: &str, script: &str) -> Output {
    client("psql", &["-X", "-d", dsn, "-v", "VERBOSITY=verbose", "-f", "-"], script)
}

fn runtime_dsn(dir: &Path) -> String {
    format!("host={} dbname=nself user=postgres sslmode=disable", dir.display())
}

/// A database of its own on the native PostgreSQL runtime results on `major` are compared with
/// (its own major; 18 for 19, which has no native server here), made empty.
fn native_database(major: u32, name: &str) -> String {
    let server = native(oracle_major(major).expect("a native server to compare with"));
    let admin = format!("host={} dbname=postgres user=postgres sslmode=disable", server.socket_dir.display());
    let out = psql_on(&admin, &format!("DROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};\n"));
    assert!(out.status.success(), "{:?}", text(&out));
    format!("host={} dbname={name} user=postgres sslmode=disable", server.socket_dir.display())
}

const SCHEMA: &str = r"
CREATE TABLE kinds (id int PRIMARY KEY, name text, data bytea, doc jsonb, at timestamptz, tags text[], n numeric);
CREATE SEQUENCE tickets START 40;
CREATE TABLE child (id serial PRIMARY KEY, kind int REFERENCES kinds (id), note text DEFAULT 'none');
CREATE INDEX child_kind ON child (kind);
CREATE VIEW kind_names AS SELECT id, upper(name) AS name FROM kinds;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.note := NEW.note || '!'; RETURN NEW; END$$;
CREATE TRIGGER child_touch BEFORE INSERT ON child FOR EACH ROW EXECUTE FUNCTION touch();
COMMENT ON TABLE kinds IS 'kinds of things';
INSERT INTO kinds SELECT i, 'kind ' || i, decode(md5(i::text), 'hex'), jsonb_build_object('i', i, 'q', 'a\tb'),
    '2024-01-01 00:00+00'::timestamptz + i * interval '1 hour', ARRAY['x', 'y,z', NULL], i / 7.0
    FROM generate_series(1, 500) AS i;
INSERT INTO kinds VALUES (0, E'tab\there\nnewline \\ backslash', '\x00', 'null', NULL, '{}', NULL);
INSERT INTO child (kind, note) SELECT i % 50, 'note ' || i FROM generate_series(1, 300) AS i;
SELECT setval('tickets', 77);
";

#[test]
fn psql_copy_both_ways_prints_what_native_prints() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,name\n1,one\n2,\"two, quoted\"\n3,\"multi\nline\"\n").unwrap();
        let out_file = |name: &str| dir.path().join(format!("{name}.txt"));
        let script = |name: &str| {
            format!(
                "CREATE TABLE c (id int, name text);\n\
                 \\copy c FROM '{csv}' WITH (FORMAT csv, HEADER)\n\
                 \\copy c TO stdout\n\
                 \\copy (SELECT id * 2, name FROM c ORDER BY id) TO '{out}' WITH (FORMAT csv)\n\
                 BEGIN;\n\
                 \\copy c (id) FROM stdin\n4\n5\n\\.\n\
                 SELECT count(*) FROM c;\n\
                 ROLLBACK;\n\
                 \\copy c (id) FROM stdin\nnot a number\n\\.\n\
                 COPY c TO STDOUT (FORMAT csv, HEADER);\n\
                 SELECT 'still here' AS alive, count(*) FROM c;\n",
                csv = csv.display(),
                out = out_file(name).display(),
            )
        };
        let ours = psql_on(&runtime_dsn(dir.path()), &script("ours"));
        let theirs = psql_on(&native_database(major(release), "copy_psql"), &script("theirs"));
        // Source line numbers (LOCATION) differ between minor versions (18.7 here, 18.6 there).
        let compared = |out: &Output| {
            let (stdout, stderr) = text(out);
            (stdout, stderr.lines().filter(|line| !line.starts_with("LOCATION:")).collect::<Vec<_>>().join("\n"))
        };
        assert_eq!(compared(&ours), compared(&theirs), "{release}: runtime (left) and native (right) differ");
        let (stdout, stderr) = text(&ours);
        assert!(stdout.contains("still here |     3"), "{release}:\n{stdout}\n{stderr}");
        assert!(stderr.contains("22P02"), "{release}: the bad row must fail the COPY\n{stderr}");
        assert_eq!(
            std::fs::read_to_string(out_file("ours")).unwrap(),
            std::fs::read_to_string(out_file("theirs")).unwrap(),
            "{release}: \\copy TO a file"
        );
        drop(server);
    }
}

/// One frontend message.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut res = vec![tag];
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(body);
    res
}

/// A client speaking the protocol by hand on the runtime's socket, logged in.
fn raw_client(dir: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(dir.join(".s.PGSQL.5432")).unwrap();
    // An answer that never comes fails the test instead of hanging it.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0nself\0\0");
    let mut packet = (body.len() as u32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream.write_all(&packet).unwrap();
    read_until(&mut stream, b'Z');
    stream
}

/// Reads messages up to one of type `tag`; returns their types.
fn read_until(stream: &mut UnixStream, tag: u8) -> String {
    tags(&read_messages_until(stream, tag))
}

/// The messages' types, in order.
fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(ty, _)| char::from(*ty)).collect()
}

/// Reads messages up to one of type `tag`; returns their types and bodies.
fn read_messages_until(stream: &mut UnixStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if let Err(error) = stream.read_exact(&mut head) {
            panic!("{error} after {:?}", tags(&messages));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).unwrap();
        messages.push((head[0], body));
        if head[0] == tag {
            return messages;
        }
    }
}

#[test]
fn a_client_that_dies_during_copy_from_stdin_leaves_nothing_behind() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let dsn = runtime_dsn(dir.path());
        assert!(psql_on(&dsn, "CREATE TABLE d (x int);").status.success());
        for in_transaction in [false, true] {
            let mut dying = raw_client(dir.path());
            if in_transaction {
                dying.write_all(&message(b'Q', b"BEGIN\0")).unwrap();
                read_until(&mut dying, b'Z');
            }
            dying.write_all(&message(b'Q', b"COPY d FROM STDIN\0")).unwrap();
            assert_eq!(read_until(&mut dying, b'G'), "G", "{release}");
            dying.write_all(&message(b'd', b"1\n2\n")).unwrap();
            drop(dying);
            // The next client waits for the backend the dead one held, then sees nothing of
            // its rows, and can COPY itself.
            let out = psql_on(&dsn, "SELECT count(*) AS rows FROM d;\nCOPY d FROM STDIN;\n7\n\\.\nDELETE FROM d;\n");
            let (stdout, stderr) = text(&out);
            assert!(out.status.success() && stdout.contains("    0"), "{release}:\n{stdout}\n{stderr}");
            assert!(stdout.contains("DELETE 1"), "{release}:\n{stdout}\n{stderr}");
        }
        drop(server);
    }
}

/// A COPY that fails on its first row while the client still streams megabytes of data: the
/// error and `ReadyForQuery` come once, the client is idle afterwards and another client gets
/// the backend at once, as with PostgreSQL.
#[test]
fn a_copy_that_fails_early_lets_the_backend_go_when_it_is_over() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let dsn = runtime_dsn(dir.path());
        assert!(psql_on(&dsn, "CREATE TABLE f (x int);").status.success());
        let mut copying = raw_client(dir.path());
        copying.write_all(&message(b'Q', b"COPY f FROM STDIN\0")).unwrap();
        assert_eq!(read_until(&mut copying, b'G'), "G", "{release}");
        let rows: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        let mut data = message(b'd', b"not a number\n");
        for _ in 0..128 {
            data.extend(message(b'd', rows.as_bytes()));
        }
        data.extend(message(b'c', b""));
        copying.write_all(&data).unwrap();
        assert_eq!(read_until(&mut copying, b'Z'), "EZ", "{release}");
        // The failed client stays connected and idle: the next one is not kept waiting.
        let mut next = raw_client(dir.path());
        next.write_all(&message(b'Q', b"SELECT count(*) FROM f\0")).unwrap();
        assert_eq!(read_until(&mut next, b'Z'), "TDCZ", "{release}");
        copying.write_all(&message(b'Q', b"SELECT 1\0")).unwrap();
        assert_eq!(read_until(&mut copying, b'Z'), "TDCZ", "{release}");
        drop(server);
    }
}

/// A client that leaves while its extended-protocol COPY TO STDOUT streams out (after a Flush,
/// as a driver reading a COPY's rows as they come sends), inside a transaction block and
/// before its Sync: its transaction is rolled back and the next client
/// finds the backend as it should, not skipping messages until a Sync.
#[test]
fn a_client_that_leaves_during_an_extended_copy_out_leaves_nothing_behind() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let mut leaving = raw_client(dir.path());
        leaving.write_all(&message(b'Q', b"BEGIN; CREATE TABLE left_behind (x int)\0")).unwrap();
        read_until(&mut leaving, b'Z');
        let mut batch = message(b'P', b"\0COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT\0\0\0");
        batch.extend(message(b'B', &[0; 8]));
        batch.extend(message(b'E', &[0; 5]));
        // Flush: PostgreSQL sends what it has, without ending the sequence.
        batch.extend(message(b'H', b""));
        leaving.write_all(&batch).unwrap();
        assert_eq!(read_until(&mut leaving, b'd'), "12Hd", "{release}");
        drop(leaving);
        let mut next = raw_client(dir.path());
        next.write_all(&message(b'Q', b"SELECT count(*) FROM pg_class WHERE relname = 'left_behind'\0")).unwrap();
        assert_eq!(read_until(&mut next, b'Z'), "TDCZ", "{release}");
        next.write_all(&message(b'Q', b"CREATE TABLE left_behind (x int)\0")).unwrap();
        assert_eq!(read_until(&mut next, b'Z'), "CZ", "{release}: the first client's table was rolled back");
        drop(server);
    }
}

/// A statement timeout that ends a COPY FROM STDIN while its data streams in says so, as
/// PostgreSQL's error does (not "user request", the cancel the host uses to deliver it).
#[test]
fn a_statement_timeout_during_copy_from_stdin_is_named_as_such() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let dsn = runtime_dsn(dir.path());
        let setup = "CREATE TABLE slow (x int); \
                     CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS \
                     $$BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END$$; \
                     CREATE TRIGGER slow_row BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow_row();";
        assert!(psql_on(&dsn, setup).status.success());
        let mut copying = raw_client(dir.path());
        copying.write_all(&message(b'Q', b"SET statement_timeout = '500ms'\0")).unwrap();
        read_until(&mut copying, b'Z');
        copying.write_all(&message(b'Q', b"COPY slow FROM STDIN\0")).unwrap();
        assert_eq!(read_until(&mut copying, b'G'), "G", "{release}");
        for row in 1..=10 {
            copying.write_all(&message(b'd', format!("{row}\n").as_bytes())).unwrap();
        }
        copying.write_all(&message(b'c', b"")).unwrap();
        let answer = read_messages_until(&mut copying, b'Z');
        assert_eq!(tags(&answer), "EZ", "{release}");
        let error = String::from_utf8_lossy(&answer[0].1);
        assert!(error.contains("Mcanceling statement due to statement timeout\0"), "{release}: {error}");
        drop(server);
    }
}

#[test]
fn a_large_copy_runs_or_is_refused_whole_with_a_clear_error() {
    // 40 MiB: more than PGlite 0.2.17 takes in one request (15 MiB), well within 0.3.16's.
    let rows = 400_000usize;
    let mut data = String::with_capacity(rows * 104);
    for i in 0..rows {
        data.push_str(&format!("{i}\t{}\n", "x".repeat(96)));
    }
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let file = dir.path().join("big.tsv");
        std::fs::write(&file, &data).unwrap();
        let out_file = dir.path().join("out.tsv");
        // The second COPY TO runs in a transaction block: the bridge's probe then runs in a
        // savepoint, whose answer is in the first piece of COPY data to reach the client.
        let in_block = dir.path().join("in-block.tsv");
        let script = format!(
            "CREATE TABLE big (i int, pad text);\n\\copy big FROM '{}'\nSELECT 'rows=' || count(*) AS rows FROM big;\n\
             \\copy (SELECT * FROM big ORDER BY i) TO '{}'\nBEGIN;\n\\copy (SELECT * FROM big ORDER BY i) TO '{}'\n\
             SELECT 'in block' AS alive;\nCOMMIT;\nSELECT 'after' AS alive;\n",
            file.display(),
            out_file.display(),
            in_block.display()
        );
        let out = psql_on(&runtime_dsn(dir.path()), &script);
        let (stdout, stderr) = text(&out);
        assert!(stdout.contains("after"), "{release}: the session goes on\n{stdout}\n{stderr}");
        if major(release) == 16 {
            assert!(
                stderr.contains("57014") && stderr.contains("more than this server takes in one COPY"),
                "{release}:\n{stderr}"
            );
            assert!(stdout.contains("rows=0"), "{release}: nothing loaded\n{stdout}");
        } else {
            assert!(stdout.contains(&format!("rows={rows}")), "{release}:\n{stdout}\n{stderr}");
            assert!(std::fs::read_to_string(&out_file).unwrap() == data, "{release}: COPY TO gives back the data");
            assert!(std::fs::read_to_string(&in_block).unwrap() == data, "{release}: in a transaction block too");
            assert!(stdout.contains("in block") && !stderr.contains("ERROR"), "{release}:\n{stdout}\n{stderr}");
        }
        drop(server);
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How far the resident memory of `pid` rose above where it was while `run` ran (its peak
/// is reset first), in MiB.
fn memory_rise_mib(pid: u32, run: impl FnOnce()) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting the peak resident size");
    let before = status_kib(pid, "VmRSS");
    run();
    status_kib(pid, "VmHWM").saturating_sub(before) / 1024
}

#[test]
fn a_copy_of_hundreds_of_megabytes_streams_both_ways_in_bounded_memory() {
    // 256 MiB of rows. Held whole, it would take the command's memory up by twice that
    // (the bridge's copy and the backend's).
    let rows = 2_600_000usize;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.tsv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..rows {
            writeln!(out, "{i}\t{}", "y".repeat(96)).unwrap();
        }
    }
    let size = std::fs::metadata(&file).unwrap().len();
    for release in RELEASES {
        if major(release) == 16 {
            // 0.2.17's transport takes a request whole: its limit is tested above.
            continue;
        }
        let runtime = tempfile::tempdir().unwrap();
        let server = Server::start_release(runtime.path(), release);
        let dsn = runtime_dsn(runtime.path());
        assert!(psql_on(&dsn, "CREATE TABLE big (i int, pad text);").status.success());
        let copy_in = memory_rise_mib(server.pid(), || {
            let out = psql_on(&dsn, &format!("\\copy big FROM '{}'\n", file.display()));
            assert!(text(&out).0.contains(&format!("COPY {rows}")), "{release}: {:?}", text(&out));
        });
        let out_file = runtime.path().join("out.tsv");
        let copy_out = memory_rise_mib(server.pid(), || {
            let out = psql_on(&dsn, &format!("\\copy big TO '{}'\n", out_file.display()));
            assert!(text(&out).0.contains(&format!("COPY {rows}")), "{release}: {:?}", text(&out));
        });
        assert_eq!(std::fs::metadata(&out_file).unwrap().len(), size, "{release}: all of it came back");
        eprintln!("{release}: {} MiB, memory rose {copy_in} MiB in, {copy_out} MiB out", size >> 20);
        assert!(copy_in < 64 && copy_out < 64, "{release}: rose {copy_in} MiB in, {copy_out} MiB out");
        drop(server);
    }
}

/// `pg_dump` in plain format of `dsn`, without the lines that differ between any two dumps.
fn plain_dump(dsn: &str) -> String {
    let out = client("pg_dump", &["--no-owner", "-d", dsn], "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "pg_dump {dsn}: {stderr}");
    stdout
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict") && !line.starts_with("--"))
        // PGlite 0.5+ gives every column an option of its own, which native servers refuse.
        .filter(|line| !line.contains(" SET (pg_attver="))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `pg_dump -Fc` of `from` restored into `to`: with `pg_restore -d`, or, for a dump of PGlite
/// 0.5+ (`attver`), through `pg_restore -f -` without the lines that set its column option
/// `pg_attver`, which native servers refuse (README, "Moving to a PostgreSQL server").
fn dump_and_restore(from: &str, to: &str, archive: &Path, attver: bool) {
    let out = client("pg_dump", &["-Fc", "--no-owner", "-f", archive.to_str().unwrap(), "-d", from], "");
    assert!(out.status.success(), "pg_dump -Fc {from}: {:?}", text(&out));
    let stderr = if attver {
        let script = client("pg_restore", &["--no-owner", "-f", "-", archive.to_str().unwrap()], "");
        assert!(script.status.success(), "pg_restore -f -: {:?}", text(&script));
        let script: String =
            text(&script).0.lines().filter(|l| !l.contains(" SET (pg_attver=")).map(|l| l.to_owned() + "\n").collect();
        text(&psql_on(to, &script)).1
    } else {
        let out = client("pg_restore", &["--no-owner", "-d", to, archive.to_str().unwrap()], "");
        let (_, stderr) = text(&out);
        assert!(out.status.success() || stderr.contains("errors ignored on restore"), "pg_restore into {to}: {stderr}");
        stderr
    };
    // pg_restore 18 sets transaction_timeout, which PostgreSQL 16 does not have, whatever the
    // server (native to native fails the same way): the one error allowed.
    let errors: Vec<&str> = stderr.lines().filter(|line| line.contains("ERROR:")).collect();
    assert!(errors.iter().all(|line| line.contains("\"transaction_timeout\"")), "restoring into {to}: {stderr}");
}

#[test]
fn pg_dump_and_pg_restore_move_a_database_to_native_postgres_and_back() {
    // Onto a server of the same major: there is none of 19 here, and pg_dump 18 refuses to dump
    // a newer server (README, "Moving to a PostgreSQL server").
    for release in RELEASES.into_iter().filter(|release| has_native(major(release))) {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let ours = runtime_dsn(dir.path());
        let out = psql_on(&ours, &format!("\\set ON_ERROR_STOP 1\n{SCHEMA}"));
        assert!(out.status.success(), "{release}: {:?}", text(&out));
        // Out: the runtime's database onto native PostgreSQL of the same major.
        let theirs = native_database(major(release), "moved_here");
        let attver = major(release) >= 18;
        dump_and_restore(&ours, &theirs, &dir.path().join("out.dump"), attver);
        let original = plain_dump(&ours);
        assert!(original.contains("COPY public.kinds"), "{release}: pg_dump's default mode uses COPY");
        assert_eq!(original, plain_dump(&theirs), "{release}: the runtime (left) and the restored native (right)");
        drop(server);
        // Back: from native PostgreSQL into a new runtime.
        let back_dir = tempfile::tempdir().unwrap();
        let back = Server::start_release(back_dir.path(), release);
        let back_dsn = runtime_dsn(back_dir.path());
        dump_and_restore(&theirs, &back_dsn, &back_dir.path().join("back.dump"), false);
        assert_eq!(plain_dump(&back_dsn), original, "{release}: restored into a new runtime");
        let out = psql_on(&back_dsn, "INSERT INTO child (kind, note) VALUES (1, 'new') RETURNING id, note;\n");
        assert!(text(&out).0.contains("301 | new!"), "{release}: sequences and triggers came along: {:?}", text(&out));
        drop(back);
    }
}
