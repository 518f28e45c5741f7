//! LISTEN/NOTIFY between clients: the same session against native PostgreSQL of the same
//! major and against the runtime gives every client the same notifications, in the same order,
//! from the same senders. Waiting is for the notification itself (a later one serves as a fence
//! that an earlier one did not come), never for time.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::native::{native, oracle_major};
use crate::support::{RELEASES, Server, seed_dsn};

/// A client and the notifications it receives: (channel, payload, sender's process id).
struct Listener {
    client: Client,
    pid: i32,
    received: mpsc::UnboundedReceiver<(String, String, i32)>,
}

async fn listener(dsn: &str) -> Listener {
    let config: tokio_postgres::Config = dsn.parse().unwrap();
    let (client, mut connection) = config.connect(NoTls).await.unwrap();
    let (tx, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned(), n.process_id()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Listener { client, pid: 0, received }
}

impl Listener {
    /// The process id the server reports for this client in notifications it sends (its
    /// `BackendKeyData` pid), learnt from one it sends itself.
    async fn learn_pid(&mut self, name: &str) {
        let channel = format!("whoami_{name}");
        self.client.batch_execute(&format!("LISTEN {channel}; NOTIFY {channel}")).await.unwrap();
        let (got, _, pid) = self.next().await;
        assert_eq!(got, channel);
        self.client.batch_execute(&format!("UNLISTEN {channel}")).await.unwrap();
        self.pid = pid;
    }

    /// The next notification (a missing one fails the test rather than hang it).
    async fn next(&mut self) -> (String, String, i32) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), self.received.recv()).await;
        next.expect("a notification within 30 s").expect("the connection is open")
    }
}

/// The session: returns what each of `a` and `b` received, senders named.
async fn session(dsn: &str) -> Vec<(&'static str, String, String, String)> {
    let mut a = listener(dsn).await;
    let mut b = listener(dsn).await;
    let mut c = listener(dsn).await;
    a.learn_pid("a").await;
    b.learn_pid("b").await;
    c.learn_pid("c").await;
    let names: HashMap<i32, &str> = [(a.pid, "a"), (b.pid, "b"), (c.pid, "c")].into_iter().collect();
    let mut seen = Vec::new();
    let mut note = |who: &'static str, (channel, payload, pid): (String, String, i32)| {
        seen.push((who, channel, payload, names.get(&pid).copied().unwrap_or("?").to_owned()));
    };

    a.client.batch_execute("LISTEN chan").await.unwrap();
    // By a route around any SQL reading: a DO block.
    b.client.batch_execute("DO $$BEGIN LISTEN chan; END$$; LISTEN other").await.unwrap();
    c.client.batch_execute("NOTIFY chan, 'one'").await.unwrap();
    note("a", a.next().await);
    note("b", b.next().await);

    // Rolled back: never delivered. Committed: once per distinct payload, in order.
    c.client.batch_execute("BEGIN; NOTIFY chan, 'rolled back'; ROLLBACK").await.unwrap();
    c.client
        .batch_execute("BEGIN; NOTIFY chan, 'two'; NOTIFY chan, 'two'; SELECT pg_notify('chan', 'three'); COMMIT")
        .await
        .unwrap();
    for _ in 0..2 {
        note("a", a.next().await);
        note("b", b.next().await);
    }
    // A notification reaches a client that sits idle, sending nothing.
    c.client.batch_execute("NOTIFY other, 'to b alone'").await.unwrap();
    note("b", b.next().await);

    // b's UNLISTEN * is b's alone; a still hears chan, and a hears itself.
    b.client.batch_execute("UNLISTEN *").await.unwrap();
    a.client.batch_execute("NOTIFY chan, 'from a'").await.unwrap();
    note("a", a.next().await);
    c.client.batch_execute("NOTIFY chan, 'four'; NOTIFY other, 'unheard'").await.unwrap();
    note("a", a.next().await);
    // Fence: b's next notification is this one, so it got neither 'from a' nor 'four'.
    b.client.batch_execute("LISTEN fence").await.unwrap();
    c.client.batch_execute("NOTIFY fence, 'fence'").await.unwrap();
    note("b", b.next().await);

    // A client with state of its own (a prepared statement) that listened on the same channel
    // leaves: the others still hear it. (Its channels are gone once the backend, or native's
    // backend process, has cleaned up after it: waited for by asking, not by time.)
    let d = listener(dsn).await;
    d.client.prepare("SELECT 1").await.unwrap();
    d.client.batch_execute("LISTEN chan; LISTEN only_d").await.unwrap();
    drop(d);
    let gone = "SELECT NOT ('only_d' = ANY (ARRAY(SELECT pg_listening_channels())))";
    let mut polls = 0;
    while !c.client.query_one(gone, &[]).await.unwrap().get::<_, bool>(0) {
        polls += 1;
        assert!(polls < 100_000, "the channels of a client that left are never dropped");
        tokio::task::yield_now().await;
    }
    c.client.batch_execute("NOTIFY chan, 'after d left'").await.unwrap();
    note("a", a.next().await);

    // A client that leaves stops listening; the others go on.
    drop(a);
    c.client.batch_execute("NOTIFY chan, 'after a left'; NOTIFY fence, 'fence 2'").await.unwrap();
    note("b", b.next().await);
    seen
}

#[tokio::test]
async fn notifications_reach_every_listening_client_as_from_postgres() {
    // The releases that deliver notifications (0.2.17's backend garbles them: refused there).
    for release in RELEASES.into_iter().filter(|release| *release != "0.2.17") {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let major = oracle_major(pglite_host::pg_major(release).unwrap()).expect("a native server");
        let native_dsn =
            format!("host={} user=postgres dbname=nself sslmode=disable", native(major).socket_dir.display());
        let ours = session(&seed_dsn(dir.path())).await;
        let theirs = session(&native_dsn).await;
        assert_eq!(ours, theirs, "{release}: runtime (left) and native PostgreSQL {major} (right) differ");
        drop(server);
    }
}

#[tokio::test]
async fn listen_and_notify_are_refused_where_they_cannot_work_or_when_asked() {
    for (release, extra) in [("0.2.17", &[][..]), ("0.3.16", &["--refuse", "listen,notify"][..])] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--pglite-version", release];
        args.extend_from_slice(extra);
        let server = Server::start_with(dir.path(), &args);
        let client = crate::support::connect(dir.path()).await;
        for sql in ["LISTEN chan", "NOTIFY chan"] {
            let err = client.batch_execute(sql).await.unwrap_err();
            let code = err.as_db_error().map(|db| db.code().code().to_owned());
            assert_eq!(code.as_deref(), Some("0A000"), "{release} {sql}: {err}");
        }
        // UNLISTEN is harmless and succeeds (pools reset with it).
        client.batch_execute("UNLISTEN *").await.unwrap();
        drop(server);
    }
}
