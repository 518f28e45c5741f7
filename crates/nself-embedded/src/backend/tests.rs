//! Tests of the backend's pure parts; exchanges with the real artifact are in the e2e tests.

use pg_bridge::protocol::frame::frames;

use super::{COPY_FAIL, parse_settings, reported_by, with_copy_fail};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut res = vec![tag];
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(body);
    res
}

fn tags(bytes: &[u8]) -> String {
    frames(bytes).map(|frame| frame.expect("whole messages").0 as char).collect()
}

#[test]
fn copy_fail_is_one_well_formed_message() {
    assert_eq!(frames(&COPY_FAIL).next().unwrap().unwrap().1.len(), COPY_FAIL.len());
    assert_eq!(tags(&COPY_FAIL), "f");
}

#[test]
fn copy_fail_goes_before_every_sync_and_nowhere_else() {
    let batch = [frame(b'P', b"\0SELECT 1\0\0\0"), frame(b'B', &[0; 8]), frame(b'E', &[0; 5]), frame(b'S', b"")];
    assert_eq!(tags(&with_copy_fail(&batch.concat())), "PBEfS");
    assert_eq!(tags(&with_copy_fail(&[batch.concat(), batch.concat()].concat())), "PBEfSPBEfS");
    let query = frame(b'Q', b"SELECT 1\0");
    assert_eq!(with_copy_fail(&query), query);
    let flush = [frame(b'P', b"\0SELECT 1\0\0\0"), frame(b'H', b"")].concat();
    assert_eq!(with_copy_fail(&flush), flush);
}

#[test]
fn a_torn_tail_passes_through_untouched() {
    let sync = frame(b'S', b"");
    let torn = [sync.clone(), sync[..3].to_vec()].concat();
    let res = with_copy_fail(&torn);
    assert!(res.ends_with(&sync[..3]));
    assert_eq!(res.len(), torn.len() + COPY_FAIL.len());
}

fn data_row(values: &[&str]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for value in values {
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    frame(b'D', &body)
}

#[test]
fn settings_are_read_in_order() {
    let reply = [
        frame(b'T', b"ignored"),
        data_row(&["server_version", "16.4"]),
        data_row(&["DateStyle", "ISO, MDY"]),
        frame(b'C', b"SELECT 2\0"),
        frame(b'Z', b"I"),
    ]
    .concat();
    let settings = parse_settings(&reply).unwrap();
    assert_eq!(settings, [("server_version".into(), "16.4".into()), ("DateStyle".into(), "ISO, MDY".into())]);
}

#[test]
fn a_settings_error_is_reported() {
    let reply = [frame(b'E', b"SERROR\0C42883\0Mno such function\0\0"), frame(b'Z', b"I")].concat();
    let err = parse_settings(&reply).unwrap_err().to_string();
    assert!(err.contains("42883 no such function"), "{err}");
}

#[test]
fn search_path_is_reported_from_postgresql_18_on() {
    let settings = |version: &str| {
        vec![
            ("scram_iterations".to_owned(), "4096".to_owned()),
            ("search_path".to_owned(), "\"$user\", public".to_owned()),
            ("server_version".to_owned(), version.to_owned()),
        ]
    };
    let names = |version: &str| reported_by(settings(version)).into_iter().map(|(name, _)| name).collect::<Vec<_>>();
    assert_eq!(names("17.5"), ["scram_iterations", "server_version"]);
    assert_eq!(names("18.7"), ["scram_iterations", "search_path", "server_version"]);
    assert_eq!(names("19.0"), ["scram_iterations", "search_path", "server_version"]);
}
