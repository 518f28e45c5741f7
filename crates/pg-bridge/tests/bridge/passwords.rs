//! TCP clients and `TcpAuth`: with `Password`, each role logs in with the password stored for
//! it in native PostgreSQL's `pg_authid` (SCRAM-SHA-256 and md5 secrets), read at every login;
//! `Trust` only on a loopback address. Roles are named per test run: the cluster is shared.

use std::net::SocketAddr;

use pg_bridge::{Bridge, Config, Error, TcpAuth};

use crate::harness::{TestBridge, bridge_with, connect, upstream};

/// How a login ended: the role the session runs as, or the SQLSTATE and message it was
/// refused with.
type Login = Result<String, (String, String)>;

async fn login(addr: SocketAddr, user: &str, password: &str) -> Login {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(addr.port()).user(user).dbname("postgres").password(password);
    match crate::harness::connect_with(&config).await {
        Ok(client) => Ok(client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0)),
        Err(err) => {
            let db = err.as_db_error().unwrap_or_else(|| panic!("{user}: not a server error: {err}"));
            Err((db.code().code().to_owned(), db.message().to_owned()))
        }
    }
}

fn failed(user: &str) -> Login {
    Err(("28P01".to_owned(), format!("password authentication failed for user \"{user}\"")))
}

async fn password_bridge() -> (TestBridge, SocketAddr) {
    let bridge = bridge_with(|c| {
        c.tcp = Some("127.0.0.1:0".parse().unwrap());
        c.tcp_auth = TcpAuth::Password;
    })
    .await;
    let addr = bridge.bridge.as_ref().unwrap().tcp_addr().unwrap();
    (bridge, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_logins_check_each_roles_stored_password() {
    let (bridge, addr) = password_bridge().await;
    let admin = connect(&bridge).await;
    let role = |kind: &str| format!("pw{}_{kind}", std::process::id());
    let (scram, md5, none, nologin, expired) =
        (role("scram"), role("md5"), role("none"), role("nologin"), role("expired"));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {scram} LOGIN PASSWORD 'pencil'; CREATE ROLE {none} LOGIN; \
             SET password_encryption = 'md5'; CREATE ROLE {md5} LOGIN PASSWORD 'pencil'; \
             CREATE ROLE {nologin} NOLOGIN PASSWORD 'pencil'; \
             CREATE ROLE {expired} LOGIN PASSWORD 'pencil' VALID UNTIL '2000-01-01'; \
             RESET password_encryption"
        ))
        .await
        .unwrap();
    // A client whose identity and settings are on the backend when others log in.
    let kept = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(&scram)
        .dbname("postgres")
        .password("pencil")
        .to_owned();
    let kept = crate::harness::connect_with(&kept).await.unwrap();
    kept.batch_execute("SET search_path = nowhere; SET application_name = 'kept'").await.unwrap();

    for (user, password, expected) in [
        (&scram, "pencil", Ok(scram.clone())),
        (&scram, "Pencil", failed(&scram)),
        (&md5, "pencil", Ok(md5.clone())),
        (&md5, "wrong", failed(&md5)),
        (&none, "", failed(&none)),
        (&none, "anything", failed(&none)),
        (&expired, "pencil", failed(&expired)),
        (&nologin, "pencil", Err(("28000".to_owned(), format!("role \"{nologin}\" is not permitted to log in")))),
        (&nologin, "wrong", failed(&nologin)),
        (&role("nosuch"), "pencil", failed(&role("nosuch"))),
    ] {
        assert_eq!(login(addr, user, password).await, expected, "{user} with {password:?}");
    }
    let row = kept.query_one("SELECT current_user::text, current_setting('application_name')", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (scram.clone(), "kept".to_owned()));

    // A password changed by a client applies at the next login.
    kept.batch_execute("RESET search_path; ALTER ROLE CURRENT_USER PASSWORD 'changed'").await.unwrap();
    assert_eq!(login(addr, &scram, "pencil").await, failed(&scram));
    assert_eq!(login(addr, &scram, "changed").await, Ok(scram.clone()));
    admin.batch_execute(&format!("ALTER ROLE {md5} NOLOGIN")).await.unwrap();
    assert_eq!(login(addr, &md5, "pencil").await.map_err(|e| e.0), Err("28000".to_owned()));

    // The Unix socket still trusts: a role without a password logs in there.
    let mut socket = crate::harness::client_config(&bridge);
    let on_socket = crate::harness::connect_with(socket.user(&none)).await.unwrap();
    let me: String = on_socket.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(me, none);
    drop((kept, on_socket));
    admin.batch_execute(&format!("DROP ROLE {scram}, {md5}, {none}, {nologin}, {expired}")).await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_tcp_address_needs_password_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.tcp = Some("0.0.0.0:0".parse().unwrap());
    match Bridge::listen(upstream().await, config.clone()).await {
        Err(Error::Config { reason }) => assert!(reason.contains("password authentication"), "{reason}"),
        other => panic!("trust on a non-loopback address: {:?}", other.map(|_| ())),
    }
    config.tcp_auth = TcpAuth::Password;
    let bridge = Bridge::listen(upstream().await, config).await.unwrap();
    let addr = bridge.tcp_addr().unwrap();
    assert_eq!(login(addr, "postgres", "none set").await, failed("postgres"));
    bridge.close().await.unwrap();
}

/// Opens a TCP connection as `user`, answers the bridge's first authentication request with
/// `answer`, and reads until the connection ends: the authentication request's code and the
/// SQLSTATE and message of the FATAL error that ended it, if any.
async fn answered(addr: SocketAddr, user: &str, answer: &[u8]) -> (Option<i32>, Option<(String, String)>) {
    use pg_bridge::protocol::backend::field;
    use pg_bridge::protocol::frame::frames;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&crate::raw::startup_packet(196_608, &[("user", user), ("database", "postgres")])).await.unwrap();
    let mut reply = vec![0u8; 5];
    stream.read_exact(&mut reply).await.unwrap();
    let len = u32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(reply[0], b'R', "an authentication request");
    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
    stream.write_all(answer).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
    read.expect("the bridge ends the connection").unwrap();
    let fatal = frames(&rest)
        .flatten()
        .find(|(tag, _)| *tag == b'E')
        .map(|(_, frame)| (field(frame, b'C').unwrap_or_default(), field(frame, b'M').unwrap_or_default()));
    (Some(code), fatal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_an_authentication_message_ends_the_connection_with_08p01() {
    use pg_bridge::protocol::frontend;

    let (bridge, addr) = password_bridge().await;
    let admin = connect(&bridge).await;
    let (scram, md5) = (format!("pw{}_raw_scram", std::process::id()), format!("pw{}_raw_md5", std::process::id()));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {scram} LOGIN PASSWORD 'pencil'; SET password_encryption = 'md5'; \
             CREATE ROLE {md5} LOGIN PASSWORD 'pencil'; RESET password_encryption"
        ))
        .await
        .unwrap();
    let protocol = |message: &str| Some(("08P01".to_owned(), message.to_owned()));
    let sasl = |data: &[u8]| frontend::sasl_initial_response("SCRAM-SHA-256", data).to_vec();
    let mut bad_length = sasl(b"n,,n=,r=abc");
    bad_length[5 + "SCRAM-SHA-256".len() + 4] = 9;
    for (user, answer, expected) in [
        (&scram, crate::raw::query("SELECT 1"), protocol("expected SASL response, got message type 81")),
        (
            &scram,
            frontend::sasl_initial_response("SCRAM-SHA-1", b"n,,n=,r=abc").to_vec(),
            protocol("client selected an invalid SASL authentication mechanism"),
        ),
        (&scram, bad_length, protocol("malformed SASL message")),
        (&scram, sasl(b"garbage"), protocol("malformed SCRAM message: unexpected channel-binding flag")),
        (
            &scram,
            sasl(b"p=tls-unique,,n=,r=abc"),
            protocol("malformed SCRAM message: channel binding is not supported without TLS"),
        ),
        (&md5, crate::raw::msg(b'p', b"md5 without its terminator"), protocol("invalid password packet size")),
        (&md5, crate::raw::query("SELECT 1"), protocol("expected password response, got message type 81")),
        // PostgreSQL closes the connection without a word on an empty MD5 answer.
        (&md5, crate::raw::msg(b'p', b"\0"), None),
    ] {
        let (code, fatal) = answered(addr, user, &answer).await;
        let asked = if *user == md5 { 5 } else { 10 };
        assert_eq!((code, fatal), (Some(asked), expected), "{user}: {answer:?}");
    }
    // The bridge goes on.
    assert_eq!(login(addr, &scram, "pencil").await, Ok(scram.clone()));
    admin.batch_execute(&format!("DROP ROLE {scram}, {md5}")).await.unwrap();
    bridge.close().await;
}
