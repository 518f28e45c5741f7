//! Roles and passwords, on every pinned release: on the Unix socket any role with LOGIN logs
//! in without a password; on the TCP listener of `start --password`, each role logs in with the
//! password stored for it (a SCRAM-SHA-256 secret or an md5 hash, as `ALTER ROLE ... PASSWORD`
//! stored it), read at every login. Each outcome over TCP is the one native PostgreSQL of the
//! same major gives with the `md5` method of `pg_hba.conf` (roles named `pw_*`, `native.rs`).

use std::path::Path;

use tokio_postgres::NoTls;

use crate::native::native;
use crate::support::{RELEASES, Server, connect, text};

/// The same roles on both sides, their passwords stored as PostgreSQL stores them.
const SETUP: &str = "CREATE ROLE pw_scram LOGIN PASSWORD 'pencil'; CREATE ROLE pw_none LOGIN; \
                     SET password_encryption = 'md5'; CREATE ROLE pw_md5 LOGIN PASSWORD 'pencil'; \
                     CREATE ROLE pw_nologin NOLOGIN PASSWORD 'pencil'; \
                     CREATE ROLE pw_expired LOGIN PASSWORD 'pencil' VALID UNTIL '2000-01-01'; \
                     RESET password_encryption";

/// Logins tried on both sides: a role and the password the client gives (`None`: none).
const MATRIX: &[(&str, Option<&str>)] = &[
    ("pw_scram", Some("pencil")),
    ("pw_scram", Some("Pencil")),
    ("pw_scram", None),
    ("pw_md5", Some("pencil")),
    ("pw_md5", Some("wrong")),
    ("pw_md5", None),
    ("pw_none", Some("pencil")),
    ("pw_none", None),
    ("pw_expired", Some("pencil")),
    ("pw_nologin", Some("pencil")),
    ("pw_nologin", Some("wrong")),
    ("pw_nosuch", Some("pencil")),
];

/// How a login ended: the role the session runs as, or the SQLSTATE (`None` for an error of
/// the client's own, such as a password it does not have) and message.
type Login = Result<String, (Option<String>, String)>;

async fn login(mut config: tokio_postgres::Config, user: &str, password: Option<&str>) -> Login {
    config.user(user);
    if let Some(password) = password {
        config.password(password);
    }
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Ok(client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0))
        }
        Err(err) => Err(match err.as_db_error() {
            Some(db) => (Some(db.code().code().to_owned()), db.message().to_owned()),
            None => (None, err.to_string()),
        }),
    }
}

fn failed(user: &str) -> Login {
    Err((Some("28P01".to_owned()), format!("password authentication failed for user \"{user}\"")))
}

fn refused(user: &str, why: &str) -> Login {
    Err((Some("28000".to_owned()), format!("role \"{user}\" {why}")))
}

/// What one side came to: each login of the matrix, then the logins after a password change,
/// then the kind of secret each role has.
struct Seen {
    matrix: Vec<Login>,
    changed: Vec<Login>,
    secrets: Vec<String>,
}

/// Makes the roles (as `admin`), runs the matrix on one side (logins through `config`), then
/// has a client change its own password.
async fn run_matrix(admin: &tokio_postgres::Client, config: &tokio_postgres::Config) -> Seen {
    admin.batch_execute(SETUP).await.unwrap();
    let mut matrix = Vec::new();
    for (user, password) in MATRIX {
        matrix.push(login(config.clone(), user, *password).await);
    }
    // A password changed by a client (here by the role itself) applies at the next login.
    let mut own = config.clone();
    let (client, connection) = own.user("pw_scram").password("pencil").connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("ALTER ROLE CURRENT_USER PASSWORD 'changed'").await.unwrap();
    let mut changed = Vec::new();
    for password in ["pencil", "changed"] {
        changed.push(login(config.clone(), "pw_scram", Some(password)).await);
    }
    let secrets = admin
        .query(
            "SELECT rolname::text || ' ' || coalesce(left(rolpassword, 14), 'NULL') FROM pg_authid \
             WHERE rolname LIKE 'pw\\_%' ORDER BY rolname",
            &[],
        )
        .await
        .unwrap();
    Seen { matrix, changed, secrets: secrets.iter().map(|row| row.get(0)).collect() }
}

/// The port of the TCP listener the command printed.
fn tcp_port(server: &Server) -> u16 {
    let line = server.stdout().iter().find_map(|line| line.strip_prefix("tcp: postgres://postgres@127.0.0.1:"));
    line.and_then(|rest| rest.split('/').next()?.parse().ok()).expect("a tcp line with the bound port")
}

fn tcp_config(port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).dbname("nself");
    config
}

fn socket_config(dir: &Path) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host_path(dir).dbname("nself");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_logins_check_each_roles_password_as_native_postgres_does() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let args = ["--pglite-version", release, "--tcp", "127.0.0.1:0", "--password", "s3cret"];
        let server = tokio::task::block_in_place(|| Server::start_with(dir.path(), &args));
        let port = tcp_port(&server);
        let major = pglite_host::pg_major(release).expect("a pinned release");
        let admin = connect(dir.path()).await;
        // A client whose identity is on the backend when others log in keeps it.
        admin.batch_execute("CREATE ROLE watcher; GRANT watcher TO CURRENT_USER").await.unwrap();
        let watcher = connect(dir.path()).await;
        watcher.batch_execute("SET ROLE watcher; SET search_path = nowhere").await.unwrap();
        let runtime = run_matrix(&admin, &tcp_config(port)).await;

        // Compared with native PostgreSQL of the same major (for 19, native 18: see
        // `native::oracle_major`); the outcomes are checked below too.
        if let Some(major) = crate::native::oracle_major(major) {
            let native_admin = login_admin(&native(major).socket_dir).await;
            let native = run_matrix(&native_admin, &socket_config(&native(major).socket_dir)).await;
            native_admin.batch_execute("DROP ROLE pw_scram, pw_none, pw_md5, pw_nologin, pw_expired").await.unwrap();
            for (idx, (user, password)) in MATRIX.iter().enumerate() {
                assert_eq!(
                    runtime.matrix[idx], native.matrix[idx],
                    "{release}: {user} with {password:?}: runtime over TCP (left), native PostgreSQL {major} (right)"
                );
            }
            assert_eq!(runtime.changed, native.changed, "{release}: after a password change");
            assert_eq!(runtime.secrets, native.secrets, "{release}: the secrets stored");
        }

        let row = watcher.query_one("SELECT current_user::text, current_setting('search_path')", &[]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("watcher".to_owned(), "nowhere".to_owned()));
        // The outcomes themselves, lest both sides be wrong alike.
        let expected = |idx: usize| match idx {
            0 | 3 => Ok(MATRIX[idx].0.to_owned()),
            // The client's own error: it has no password to give.
            2 | 5 | 7 => Err((None, "invalid configuration".to_owned())),
            9 => refused("pw_nologin", "is not permitted to log in"),
            _ => failed(MATRIX[idx].0),
        };
        for (idx, login) in runtime.matrix.iter().enumerate() {
            assert_eq!(*login, expected(idx), "{release}: {:?}", MATRIX[idx]);
        }
        assert_eq!(runtime.changed, [failed("pw_scram"), Ok("pw_scram".to_owned())], "{release}");

        // The bootstrap superuser's password is --password's.
        let tcp = tcp_config(port);
        assert_eq!(login(tcp.clone(), "postgres", Some("s3cret")).await, Ok("postgres".to_owned()));
        assert_eq!(login(tcp, "postgres", Some("s3cr3t")).await, failed("postgres"));
        // The socket trusts any role that can log in, and refuses the others as PostgreSQL
        // refuses them.
        let socket = socket_config(dir.path());
        assert_eq!(login(socket.clone(), "pw_none", None).await, Ok("pw_none".to_owned()));
        assert_eq!(
            login(socket.clone(), "pw_nologin", None).await,
            refused("pw_nologin", "is not permitted to log in")
        );
        assert_eq!(login(socket, "pw_nosuch", None).await, refused("pw_nosuch", "does not exist"));

        // psql, with the password from the environment.
        let psql = |user: &str, password: &str| {
            let out = std::process::Command::new("psql")
                .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "nself", "-tAc"])
                .arg("SELECT current_user")
                .env("PGPASSWORD", password)
                .output()
                .expect("psql must be on PATH (cargo xtask ci puts the one from cargo xtask tools there)");
            (out.status.code(), text(&out))
        };
        let (code, (stdout, stderr)) = tokio::task::block_in_place(|| psql("pw_md5", "pencil"));
        assert_eq!((code, stdout.trim()), (Some(0), "pw_md5"), "{stderr}");
        let (code, (_, stderr)) = tokio::task::block_in_place(|| psql("pw_md5", "wrong"));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("FATAL:  password authentication failed for user \"pw_md5\""), "{stderr}");
        drop(server);
    }
}

/// `postgres` on native PostgreSQL's socket (trusted).
async fn login_admin(socket_dir: &Path) -> tokio_postgres::Client {
    let (client, connection) = socket_config(socket_dir).user("postgres").connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_changed_after_its_first_login_is_checked_again_on_the_socket() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_release(dir.path(), release);
        let admin = login_admin(dir.path()).await;
        admin.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE gone LOGIN").await.unwrap();
        // First logins succeed (and are remembered for the next ones).
        assert_eq!(login(socket_config(dir.path()), "app", None).await, Ok("app".to_owned()), "{release}");
        let (gone, connection) = socket_config(dir.path()).user("gone").connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        let me: String = gone.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(me, "gone");

        admin.batch_execute("ALTER ROLE app NOLOGIN").await.unwrap();
        assert_eq!(
            login(socket_config(dir.path()), "app", None).await,
            refused("app", "is not permitted to log in"),
            "{release}"
        );
        admin.batch_execute("DROP ROLE gone").await.unwrap();
        assert_eq!(
            login(socket_config(dir.path()), "gone", None).await,
            refused("gone", "does not exist"),
            "{release}"
        );
        // The session of a dropped role never goes on as anyone else.
        let after = gone.simple_query("SELECT current_user").await;
        assert!(
            after.as_ref().is_err_and(|err| err.as_db_error().is_some_and(|db| db.code().code() == "28000")),
            "{release}: {after:?}"
        );
        drop(server);
    }
}
