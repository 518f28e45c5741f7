//! Sockets, shutdown and psql (scenarios 1, 20); TCP is in `passwords.rs`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pg_bridge::{Bridge, Config};

use crate::harness::{TestBridge, bridge, connect, table, upstream};
use crate::raw::{Raw, query};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_private_and_a_stale_socket_is_replaced() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("made-by-bridge");
    std::fs::create_dir(&dir).unwrap();
    // A stale socket file, as left by a crashed run.
    drop(std::os::unix::net::UnixListener::bind(dir.join(".s.PGSQL.5432")).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let fresh = Bridge::listen(upstream().await, Config::new(&dir)).await.unwrap();
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let sock_mode = std::fs::metadata(fresh.socket_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(sock_mode, 0o600);
    fresh.close().await.unwrap();

    drop(std::os::unix::net::UnixListener::bind(dir.join(".s.PGSQL.5432")).unwrap());
    assert!(dir.join(".s.PGSQL.5432").exists(), "stale socket left behind");
    let bridge = TestBridge {
        bridge: Some(Bridge::listen(upstream().await, Config::new(&dir)).await.unwrap()),
        dir: tempfile::tempdir().unwrap(),
    };
    let mut raw = Raw::startup(&dir.join(".s.PGSQL.5432"), &[]).await;
    raw.send(&query("SELECT 1")).await;
    raw.until_ready().await;
    drop(raw);
    bridge.close().await;
    assert!(!dir.join(".s.PGSQL.5432").exists(), "close removes the socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_connected_clients_and_rolls_back() {
    let bridge = bridge().await;
    let t = table("closetx");
    let setup = connect(&bridge).await;
    setup.batch_execute(&format!("CREATE TABLE {t}(a int)")).await.unwrap();
    let mut in_tx = Raw::startup(&bridge.socket_path(), &[]).await;
    in_tx.send(&query(&format!("BEGIN; INSERT INTO {t} VALUES (1)"))).await;
    in_tx.until_ready().await;
    let mut idle = Raw::startup(&bridge.socket_path(), &[]).await;
    let started = Instant::now();
    let socket_dir = bridge.socket_dir().to_owned();
    bridge.close().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    in_tx.expect_fatal("57P01").await;
    idle.expect_fatal("57P01").await;
    drop(setup);

    let again = TestBridge {
        bridge: Some(Bridge::listen(upstream().await, Config::new(&socket_dir)).await.unwrap()),
        dir: tempfile::tempdir().unwrap(),
    };
    let mut raw = Raw::startup(&socket_dir.join(".s.PGSQL.5432"), &[]).await;
    raw.send(&query(&format!("SELECT count(*) FROM {t}"))).await;
    assert_eq!(crate::raw::rows(&raw.until_ready().await), [[Some("0".to_owned())]]);
    drop(raw);
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_through_the_socket_directory() {
    let bridge = bridge().await;
    let t = table("psql");
    let dir = bridge.socket_dir().to_owned();
    let csv = dir.join("data.csv");
    std::fs::write(&csv, "1\n2\n").unwrap();
    let script = format!(
        "CREATE TABLE {t}(a int);\n\\conninfo\n\\d {t}\n\\d+ {t}\n\\dt\n\\df\nSHOW server_version;\n\
         \\copy {t} from '{}'\nSELECT 'still connected', count(*) AS copied FROM {t};\n",
        csv.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args(["-X", "-h"])
            .arg(&dir)
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=0", "-c"])
            .arg("SELECT 1")
            .output()
            .map(|first| {
                let rest = Command::new("psql")
                    .args(["-X", "-h"])
                    .arg(&dir)
                    .args(["-U", "postgres", "-d", "postgres", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut child| {
                        use std::io::Write;
                        child.stdin.take().unwrap().write_all(script.as_bytes())?;
                        child.wait_with_output()
                    });
                (first, rest)
            })
    })
    .await
    .unwrap()
    .expect("psql must be on PATH (cargo xtask ci puts the one from cargo xtask tools there)");
    let (first, rest) = out;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let rest = rest.unwrap();
    let stdout = String::from_utf8_lossy(&rest.stdout);
    let stderr = String::from_utf8_lossy(&rest.stderr);
    // \conninfo: a sentence before psql 18, a table since.
    let connected = stdout.contains("You are connected to database \"postgres\"")
        || stdout.lines().any(|l| l.trim_start().starts_with("Database") && l.trim_end().ends_with("| postgres"));
    assert!(connected, "{stdout}\n{stderr}");
    assert!(stdout.contains("Column") && stdout.contains("integer"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("relhasoids"), "{stderr}");
    assert!(stdout.contains("17."), "server_version: {stdout}");
    assert!(stdout.contains("COPY 2"), "{stdout}\n{stderr}");
    assert!(stdout.contains("still connected |      2"), "{stdout}\n{stderr}");
    bridge.close().await;
}
