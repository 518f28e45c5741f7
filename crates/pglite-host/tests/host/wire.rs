//! What the host passes through for whoever speaks to it on behalf of clients: the version
//! each release runs, COPY in both directions and notifications, which PGlite 0.5+ carry
//! over the wire natively (the bridge decides whether clients may use them).

use crate::support::{messages, on_each_release, query, scalar};

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether PGlite `version` runs its backend one message at a time (0.5 on).
fn single_user_line(version: &str) -> bool {
    pglite_host::pg_major(version).is_some_and(|major| major >= 18)
}

#[test]
fn each_release_runs_its_postgresql_version() {
    on_each_release(|version, pg| {
        let expected = match version {
            "0.2.17" => "PostgreSQL 16.4",
            "0.3.16" => "PostgreSQL 17.5",
            "0.5.17" => "PostgreSQL 18.7",
            "0.6.1" => "PostgreSQL 19.0",
            other => panic!("no expectation for {other}"),
        };
        let text = scalar(pg, "SELECT version()");
        assert!(text.starts_with(&format!("{expected} ")), "{version}: {text}");
        assert_eq!(scalar(pg, "SHOW server_version_num")[..2], expected[11..13]);
    });
}

#[test]
fn copy_in_and_out_and_notifications_pass_through_on_single_user_lines() {
    on_each_release(|version, pg| {
        if !single_user_line(version) {
            return;
        }
        scalar(pg, "CREATE TABLE copied(x int, t text); SELECT 1");
        // COPY FROM STDIN with its data and end in the same request.
        let mut req = frame(b'Q', b"COPY copied FROM STDIN\0");
        req.extend(frame(b'd', b"1\tone\n2\ttwo\n"));
        req.extend(frame(b'd', b"3\tthree\n"));
        req.extend(frame(b'c', b""));
        let reply = pg.exec_protocol(req).unwrap();
        let types: Vec<u8> = messages(&reply).iter().map(|m| m.0).collect();
        assert_eq!(types, b"GCZ", "{version}");
        assert_eq!(messages(&reply)[1].1, b"COPY 3\0");
        assert_eq!(scalar(pg, "SELECT string_agg(t, ',' ORDER BY x) FROM copied"), "one,two,three");

        // A CopyFail ends it with an error and the session goes on.
        let mut req = frame(b'Q', b"COPY copied FROM STDIN\0");
        req.extend(frame(b'd', b"4\tfour\n"));
        req.extend(frame(b'f', b"client gave up\0"));
        let reply = pg.exec_protocol(req).unwrap();
        let types: Vec<u8> = messages(&reply).iter().map(|m| m.0).collect();
        assert_eq!(types, b"GEZ", "{version}");
        assert_eq!(scalar(pg, "SELECT count(*) FROM copied"), "3");

        let reply = pg.exec_protocol(query("COPY (SELECT x FROM copied ORDER BY x) TO STDOUT")).unwrap();
        let msgs = messages(&reply);
        let types: Vec<u8> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(types, b"HdddcCZ", "{version}");
        let data: Vec<u8> = msgs.iter().filter(|m| m.0 == b'd').flat_map(|m| m.1.clone()).collect();
        assert_eq!(data, b"1\n2\n3\n");

        // Delivered when the transaction that sent it commits, to a listener.
        let reply = pg.exec_protocol(query("LISTEN ch; NOTIFY ch, 'hello'")).unwrap();
        let msgs = messages(&reply);
        let notification = msgs.iter().find(|m| m.0 == b'A').expect("a notification");
        assert!(notification.1.ends_with(b"ch\0hello\0"), "{:?}", notification.1);
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
        let reply = pg.exec_protocol(query("UNLISTEN ch; NOTIFY ch, 'unheard'")).unwrap();
        assert!(messages(&reply).iter().all(|m| m.0 != b'A'), "{version}");
    });
}

/// Parse, Bind and Execute of `sql` in the unnamed statement and portal.
fn extended(sql: &str) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut req = frame(b'P', &parse);
    req.extend(frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    req.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    req
}

/// What a streamed exchange gave back: the COPY data pieces that left early, what PostgreSQL
/// had said at each wait for input, and what was returned.
struct Streamed {
    left: Vec<Vec<u8>>,
    said: Vec<Vec<u8>>,
    reply: Vec<u8>,
}

impl Streamed {
    /// Every message of the exchange, in order, but the COPY data that left early.
    fn types(&self) -> Vec<u8> {
        messages(&[self.said.concat(), self.reply.clone()].concat()).iter().map(|m| m.0).collect()
    }
}

/// A streamed exchange of `request` then `pieces` on a runtime of its own.
fn streamed(pg: &pglite_host::Pglite, request: Vec<u8>, pieces: Vec<Vec<u8>>) -> Streamed {
    use std::sync::{Arc, Mutex};
    let left = Arc::new(Mutex::new(Vec::new()));
    let said = Arc::new(Mutex::new(Vec::new()));
    let mut pieces = pieces.into_iter();
    let stream = pglite_host::Stream {
        input: Box::new({
            let said = said.clone();
            move |so_far| {
                said.lock().unwrap().push(so_far);
                pieces.next()
            }
        }),
        output: Box::new({
            let left = left.clone();
            move |piece| {
                left.lock().unwrap().push(piece);
                true
            }
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply =
        runtime.block_on(pg.exec_streamed_async(request, stream, Default::default())).expect("a streamed exchange");
    let left = std::mem::take(&mut *left.lock().unwrap());
    let said = std::mem::take(&mut *said.lock().unwrap());
    Streamed { left, said, reply }
}

#[test]
fn a_streamed_copy_takes_its_data_as_it_comes_and_hands_its_output_on_in_whole_messages() {
    on_each_release(|version, pg| {
        if !pg.streams() {
            // 0.2's transport takes a request whole: refused, and the session goes on.
            let stream = pglite_host::Stream { input: Box::new(|_| None), output: Box::new(|_| true) };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let refused = runtime.block_on(pg.exec_streamed_async(query("SELECT 1"), stream, Default::default()));
            assert!(matches!(refused, Err(pglite_host::Error::NoStreaming)), "{version}: {refused:?}");
            assert_eq!(scalar(pg, "SELECT 2"), "2");
            return;
        }
        scalar(pg, "CREATE TABLE streamed(i int, pad text); SELECT 1");
        // 2,000 pieces of 50 rows each, in CopyData frames of one row as psql sends them; the
        // request's end (CopyDone, Sync) comes as the last piece.
        let row = |i: usize| format!("{i}\t{}\n", "p".repeat(90));
        let mut pieces: Vec<Vec<u8>> =
            (0..2000).map(|p| (0..50).flat_map(|r| frame(b'd', row(p * 50 + r).as_bytes())).collect()).collect();
        // CopyDone and Sync in one piece, as a client may send them.
        pieces.push([frame(b'c', b""), frame(b'S', b"")].concat());
        let run = streamed(pg, extended("COPY streamed FROM STDIN"), pieces);
        assert!(run.left.is_empty(), "{version}: nothing but COPY data leaves early");
        assert_eq!(run.types(), b"12GCZ", "{version}");
        // What the client must see before it sends its data comes before the first wait.
        assert_eq!(messages(&run.said[0]).iter().map(|m| m.0).collect::<Vec<_>>(), b"12G", "{version}");
        let all = messages(&[run.said.concat(), run.reply.clone()].concat());
        assert_eq!(all[3].1, b"COPY 100000\0");
        assert_eq!(run.said.len(), 2002, "{version}: every piece, then the end, each asked for once");
        assert_eq!(scalar(pg, "SELECT count(*) || ' ' || sum(i) FROM streamed"), "100000 4999950000");

        // A CopyFail in a later piece rolls the COPY back; the session goes on.
        let pieces = vec![frame(b'd', row(1).as_bytes()), [frame(b'f', b"gave up\0"), frame(b'S', b"")].concat()];
        let run = streamed(pg, extended("COPY streamed FROM STDIN"), pieces);
        assert_eq!(run.types(), b"12GEZ", "{version}");
        assert_eq!(scalar(pg, "SELECT count(*) FROM streamed"), "100000");

        // An input that ends inside the COPY fails it, as a CopyFail would, and the instance
        // goes on (PostgreSQL itself would take it for a lost connection).
        let run = streamed(pg, extended("COPY streamed FROM STDIN"), vec![frame(b'd', row(1).as_bytes())]);
        assert_eq!(run.types(), b"12GEZ", "{version}");
        assert!(pg.healthy(), "{version}");
        assert_eq!(scalar(pg, "SELECT count(*) FROM streamed"), "100000");

        // COPY TO STDOUT: its data leaves in pieces of whole messages ending in CopyData; put
        // together with what is returned, they are the reply of the same exchange unstreamed.
        // A query before it answers first, in the first piece.
        let mut out = query("SELECT 42");
        out.extend(extended("COPY (SELECT * FROM streamed ORDER BY i) TO STDOUT"));
        out.extend(frame(b'S', b""));
        let whole = pg.exec_protocol(out.clone()).unwrap();
        let Streamed { left, said, reply } = streamed(pg, out, Vec::new());
        let reply = [said.concat(), reply].concat();
        assert!(left.len() >= 30, "{version}: {} pieces of {} bytes", left.len(), whole.len());
        for piece in &left {
            assert!(piece.len() >= pglite_host::PIECE, "{version}");
            assert_eq!(messages(piece).last().map(|m| m.0), Some(b'd'), "{version}");
            assert_eq!(messages(piece).iter().map(|m| m.1.len() + 5).sum::<usize>(), piece.len());
        }
        assert_eq!([left.concat(), reply.clone()].concat(), whole, "{version}");
        let head: Vec<u8> = messages(&left[0]).iter().map(|m| m.0).take(7).collect();
        assert_eq!(head, b"TDCZ12H", "{version}");
        let tail: Vec<u8> = messages(&reply).iter().map(|m| m.0).filter(|&t| t != b'd').collect();
        assert_eq!(tail, b"cCZ", "{version}");
    });
}

#[test]
fn a_streamed_exchange_says_what_postgresql_said_before_each_wait_so_copy_from_stdin_runs_as_sent() {
    on_each_release(|version, pg| {
        if !pg.streams() {
            return;
        }
        let types = |bytes: &[u8]| messages(bytes).iter().map(|m| m.0).collect::<Vec<u8>>();
        scalar(pg, "CREATE TABLE waits(i int); SELECT 1");
        let data = |rows: &str| [frame(b'd', rows.as_bytes()), frame(b'c', b"")].concat();
        // A simple query with two COPYs: each CopyInResponse is said before the data that the
        // client sends only once it has seen it.
        let run =
            streamed(pg, query("COPY waits FROM STDIN; COPY waits FROM STDIN"), vec![data("1\n2\n"), data("3\n")]);
        assert_eq!(run.types(), b"GCGCZ", "{version}");
        assert_eq!(types(&run.said[0]), b"G", "{version}");
        assert_eq!(types(&run.said[1]), b"CG", "{version}");
        assert_eq!(run.said.len(), 3, "{version}: the data of each COPY, then the end");
        assert_eq!(scalar(pg, "SELECT sum(i) FROM waits"), "6");

        // Extended: the COPY's Execute, its data once the client saw it begin, then the Sync in
        // an exchange of its own, as the bridge sends them.
        let run = streamed(pg, extended("COPY waits FROM STDIN"), vec![data("4\n")]);
        assert_eq!(types(&run.said[0]), b"12G", "{version}");
        assert_eq!(run.types(), b"12GC", "{version}: nothing ends the sequence yet");
        let reply = pg.exec_protocol(frame(b'S', b"")).unwrap();
        assert_eq!(types(&reply), b"Z", "{version}");
        assert_eq!(scalar(pg, "SELECT sum(i) FROM waits"), "10");

        // A bad row ends the COPY with its error; what the client still sends is ignored.
        let run = streamed(pg, query("COPY waits FROM STDIN"), vec![data("x\n"), data("5\n")]);
        assert_eq!(types(&run.said[0]), b"G", "{version}");
        assert_eq!(run.types(), b"GEZ", "{version}");
        assert_eq!(scalar(pg, "SELECT sum(i) FROM waits"), "10");
        assert!(pg.healthy(), "{version}");
    });
}
