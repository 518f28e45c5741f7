//! Startup packets and malformed frames, over raw sockets (scenarios 2, 3, 4, 5).

use crate::harness::{bridge, connect};
use crate::raw::{Raw, msg, query, rows, startup_packet, tags};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_refused_then_startup_works() {
    let bridge = bridge().await;
    for code in [80_877_103u32, 80_877_104] {
        let mut raw = Raw::connect(&bridge.socket_path()).await;
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&code.to_be_bytes());
        raw.send(&request).await;
        let mut answer = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        raw.send(&startup_packet(196_608, &[("user", "postgres")])).await;
        let msgs = raw.until_ready().await;
        assert!(tags(&msgs).starts_with('R') && tags(&msgs).ends_with("KZ"), "{}", tags(&msgs));
        raw.send(&query("SELECT 7")).await;
        assert_eq!(rows(&raw.until_ready().await), [[Some("7".to_owned())]]);
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reports_real_parameters_and_a_backend_key() {
    let bridge = bridge().await;
    let mut raw = Raw::connect(&bridge.socket_path()).await;
    raw.send(&startup_packet(196_608, &[("user", "postgres"), ("application_name", "raw-test")])).await;
    let msgs = raw.until_ready().await;
    let params: Vec<(String, String)> = msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|&b| b == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
            (name, String::from_utf8_lossy(parts.next().unwrap()).into_owned())
        })
        .collect();
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let version = get("server_version").expect("server_version is reported");
    assert!(version.split('.').next().unwrap().parse::<u32>().is_ok(), "numeric server_version: {version}");
    assert_eq!(get("application_name").as_deref(), Some("raw-test"));
    assert_eq!(get("standard_conforming_strings").as_deref(), Some("on"));
    assert!(get("client_encoding").is_some() && get("DateStyle").is_some() && get("integer_datetimes").is_some());
    assert_eq!(msgs.iter().filter(|m| m.tag == b'K').count(), 1);
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_versions_are_negotiated_down() {
    let bridge = bridge().await;
    for (version, grease) in [(0x0003_0002u32, false), (0x0003_270fu32, true)] {
        let mut raw = Raw::connect(&bridge.socket_path()).await;
        let mut params = vec![("user", "postgres")];
        if grease {
            params.push(("_pq_.grease", "x"));
        }
        raw.send(&startup_packet(version, &params)).await;
        let msgs = raw.until_ready().await;
        let negotiate = msgs.iter().find(|m| m.tag == b'v').expect("NegotiateProtocolVersion");
        assert_eq!(&negotiate.body[..4], &196_608u32.to_be_bytes());
        let n_options = u32::from_be_bytes(negotiate.body[4..8].try_into().unwrap());
        if grease {
            assert_eq!(n_options, 1);
            assert_eq!(&negotiate.body[8..], b"_pq_.grease\0");
        } else {
            assert_eq!(n_options, 0);
        }
        raw.send(&query("SELECT 1")).await;
        assert_eq!(rows(&raw.until_ready().await).len(), 1);
    }
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startups_get_fatal_errors() {
    let bridge = bridge().await;
    let socket = bridge.socket_path();

    let mut raw = Raw::connect(&socket).await;
    raw.send(&startup_packet(0x0002_0000, &[("user", "postgres")])).await;
    raw.expect_fatal("0A000").await;

    let mut raw = Raw::connect(&socket).await;
    raw.send(&startup_packet(196_608, &[("user", "postgres"), ("database", "nonexistent")])).await;
    raw.expect_fatal_after_auth("3D000").await;

    let mut raw = Raw::connect(&socket).await;
    raw.send(&startup_packet(196_608, &[("user", "nobody_here")])).await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.last().map(|m| m.field(b'S')), Some(Some("FATAL".to_owned())), "{msgs:?}");

    let mut raw = Raw::connect(&socket).await;
    raw.send(&startup_packet(196_608, &[("database", "postgres")])).await;
    raw.expect_fatal("28000").await;

    // A startup packet over 10 000 bytes.
    let mut raw = Raw::connect(&socket).await;
    let long = "x".repeat(10_001);
    raw.send(&startup_packet(196_608, &[("user", "postgres"), ("application_name", &long)])).await;
    raw.expect_fatal("08P01").await;

    // Direct TLS: a ClientHello is closed at once.
    let mut raw = Raw::connect(&socket).await;
    raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
    raw.expect_fatal("08P01").await;

    // A cancel request with a random key: closed without a byte.
    let mut raw = Raw::connect(&socket).await;
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102u32.to_be_bytes());
    cancel.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    raw.send(&cancel).await;
    assert!(raw.rest().await.is_empty());

    // And the bridge still serves.
    let client = connect(&bridge).await;
    client.simple_query("SELECT 1").await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_with_08p01() {
    let bridge = bridge().await;
    let socket = bridge.socket_path();
    let cases: Vec<Vec<u8>> = vec![
        b"Q\0\0\0\0".to_vec(),
        b"Q\0\0\0\x03".to_vec(),
        b"Q\x7f\xff\xff\xff".to_vec(),
        b"Q\xff\xff\xff\xff".to_vec(),
        // One byte over the limit.
        {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&(pg_bridge::MAX_MESSAGE_LEN as u32).to_be_bytes());
            m
        },
        msg(b'z', b""),
        msg(b'Q', b"SELECT 1"),
        msg(b'Q', b"A\0JUNK"),
        msg(b'P', b""),
        msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0"),
    ];
    for case in cases {
        let mut raw = Raw::startup(&socket, &[]).await;
        raw.send(&case).await;
        raw.expect_fatal("08P01").await;
    }
    let client = connect(&bridge).await;
    client.simple_query("SELECT 1").await.unwrap();
    bridge.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_query_written_in_tiny_pieces_works() {
    let bridge = bridge().await;
    let mut raw = Raw::startup(&bridge.socket_path(), &[]).await;
    let payload = "y".repeat(1 << 20);
    let sql = format!("SELECT length('{payload}')");
    let frame = query(&sql);
    // Small writes, then the rest: fragmentation must not matter.
    for byte in &frame[..4096] {
        raw.send(std::slice::from_ref(byte)).await;
    }
    for chunk in frame[4096..].chunks(777) {
        raw.send(chunk).await;
    }
    assert_eq!(rows(&raw.until_ready().await), [[Some((1 << 20).to_string())]]);
    bridge.close().await;
}
