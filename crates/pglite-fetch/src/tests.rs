//! Unit tests for the sans-IO parts: glue parser, pins, archive paths, sources, URL policy,
//! manifests and damage reports.

use std::time::Duration;

use crate::{
    Attempt, Error, GlueError, PackageFile, Reason, Source, check_ranges, dist_file_name, expand_template,
    npm_tarball_url, parse_package_files, parse_sources, pinned_release, registry_from_npmrc, sha256_hex,
    validate_entry_path,
};

mod glue {
    use super::*;

    #[track_caller]
    fn check(js: &str, expected: Result<Vec<(&str, u64, u64)>, GlueError>) {
        let actual = parse_package_files(js);
        let expected = expected.map(|files| {
            files
                .into_iter()
                .map(|(filename, start, end)| PackageFile { filename: filename.to_owned(), start, end })
                .collect::<Vec<_>>()
        });
        assert_eq!(actual, expected);
    }

    #[test]
    fn parses_emscripten_list() {
        check(
            r#"x;loadPackage({files:[{filename:"/home/web_user/.pgpass",start:0,end:204},{filename:"/tmp/pglite/bin/initdb",start:204,end:216}],remote_package_size:216})})();"#,
            Ok(vec![("/home/web_user/.pgpass", 0, 204), ("/tmp/pglite/bin/initdb", 204, 216)]),
        );
    }

    #[test]
    fn parses_the_file_packager_call_of_later_releases() {
        check(
            r#"Module["preRun"].push(runWithFS)}})({files:[{filename:"/home/postgres/.pgpass",start:0,end:204},{filename:"/pglite/bin/initdb",start:204,end:223}],remote_package_size:223});"#,
            Ok(vec![("/home/postgres/.pgpass", 0, 204), ("/pglite/bin/initdb", 204, 223)]),
        );
    }

    #[test]
    fn tolerates_whitespace_quoted_keys_and_escapes() {
        check(
            r#"loadPackage({files:[ { "filename" : "\/a\/b c", "end": 9, "start": 1 } ,{filename:"/x",start:9,end:9}]})"#,
            Ok(vec![("/a/b c", 1, 9), ("/x", 9, 9)]),
        );
    }

    #[test]
    fn minified_numbers() {
        check(
            r#"loadPackage({files:[{filename:"/a",start:5036405,end:5037e3},{filename:"/b",start:0,end:1.5e3},{filename:"/c",start:0,end:0}]})"#,
            Ok(vec![("/a", 5036405, 5037000), ("/b", 0, 1500), ("/c", 0, 0)]),
        );
        for bad in ["1.5", "1e-3", "e3", "99999999999999999999"] {
            let js = format!(r#"loadPackage({{files:[{{filename:"/a",start:0,end:{bad}}}]}})"#);
            assert!(matches!(parse_package_files(&js), Err(GlueError::Syntax { .. })), "{bad}");
        }
    }

    #[test]
    fn empty_list() {
        check("loadPackage({files:[]})", Ok(vec![]));
    }

    #[test]
    fn missing_call() {
        check("loadPackage(metadata)", Err(GlueError::NoFileList));
    }

    #[test]
    fn relative_and_dotdot_paths_are_refused() {
        for path in ["tmp/x", "/srv/../etc/passwd", "/srv//x", "/srv/./x", "/..", "/a\\b"] {
            let js = format!(r#"loadPackage({{files:[{{filename:"{path}",start:0,end:1}}]}})"#);
            let js = js.replace('\\', "\\\\");
            let expected_path = path.to_owned();
            assert_eq!(parse_package_files(&js), Err(GlueError::UnsafePath { path: expected_path }), "{path}");
        }
    }

    #[test]
    fn missing_field() {
        check(
            r#"loadPackage({files:[{filename:"/a",start:0}]})"#,
            Err(GlueError::MissingField { index: 0, field: "end" }),
        );
    }

    #[test]
    fn unknown_escape_is_refused() {
        let res = parse_package_files(r#"loadPackage({files:[{filename:"/a\u0041",start:0,end:1}]})"#);
        assert!(matches!(res, Err(GlueError::Syntax { .. })), "{res:?}");
    }

    #[test]
    fn unterminated_list() {
        let res = parse_package_files(r#"loadPackage({files:[{filename:"/a",start:0,end:1}"#);
        assert!(matches!(res, Err(GlueError::Syntax { .. })), "{res:?}");
    }

    #[test]
    fn ranges_must_fit_the_bundle() {
        let file = |start, end| PackageFile { filename: "/a".to_owned(), start, end };
        assert_eq!(check_ranges(&[file(0, 10)], 10), Ok(()));
        assert!(check_ranges(&[file(0, 11)], 10).is_err());
        assert!(check_ranges(&[file(5, 4)], 10).is_err());
    }
}

mod pins {
    use super::*;

    #[test]
    fn the_0_2_line_is_pinned_with_the_known_digests() {
        let release = pinned_release("0.2.17").unwrap();
        assert_eq!(release.wasm.name, "postgres.wasm");
        assert_eq!(release.wasm.sha256, "545a6e035b7cef40b0feaf912477616ceb43d0334efb0251a3dd8a652e8a58a3");
        assert_eq!(release.data.sha256, "b6eede253ff8c6221e38be9f753be679c031948b898ccef97ea942767a8a87ae");
        assert_eq!(release.js.sha256, "82fc7a04c2accb8f35d95e002c9e820791b75c7b4c251cb6bf2d92b965d7e500");
        assert!(release.extension("pgcrypto").is_some());
    }

    #[test]
    fn the_0_3_line_uses_pglite_names() {
        assert!(pinned_release(crate::DEFAULT_PGLITE_VERSION).is_ok(), "the default release is pinned");
        let release = pinned_release("0.3.16").unwrap();
        let names: Vec<&str> = release.core_files().into_iter().map(|pin| pin.name.as_str()).collect();
        assert_eq!(names, ["pglite.wasm", "pglite.data", "pglite.js"]);
        assert_eq!(release.wasm.sha256, "3c5934b6931b36c3581a2e1cf1ac091e23d5fbdc5cf57e4011e4a19dda64bfa8");
        assert_eq!(release.data.sha256, "b73704a186adbdf29c4ce9acae7bd9379b5a17efbe94e96f66ccb20b5e8b0bc9");
    }

    #[test]
    fn the_0_5_and_0_6_lines_pin_initdb_and_0_5_its_separately_packaged_extensions() {
        for (version, initdb) in [
            ("0.5.17", "0aac6ef715908003eb53fb354f603e7a5e8aa72ab48018633565f889f42335c1"),
            ("0.6.1", "c2c2d7405169331202a2cdeb8cf7a5fe617c5f5b012e1f35186ae0d08b026584"),
        ] {
            let release = pinned_release(version).unwrap();
            let names: Vec<&str> = release.core_files().into_iter().map(|pin| pin.name.as_str()).collect();
            assert_eq!(names, ["pglite.wasm", "pglite.data", "pglite.js", "initdb.wasm"]);
            assert_eq!(release.initdb.as_ref().unwrap().sha256, initdb);
            assert!(release.extension("pgcrypto").is_some_and(|pin| pin.package.is_none()));
        }
        let vector = pinned_release("0.5.17").unwrap().extension("vector").cloned().unwrap();
        let package = vector.package.expect("pgvector is packaged separately");
        assert_eq!(package.name, "@electric-sql/pglite-pgvector");
        assert!(pinned_release("0.6.1").unwrap().extension("vector").is_none());
        assert_eq!(
            crate::npm_package_tarball_url("https://r.example/", &package.name, "0.0.16"),
            "https://r.example/@electric-sql/pglite-pgvector/-/pglite-pgvector-0.0.16.tgz"
        );
    }

    #[test]
    fn every_pin_is_well_formed() {
        for release in crate::pinned_releases() {
            let all = release.core_files().into_iter().chain(&release.extensions);
            for pin in all {
                assert_eq!(pin.sha256.len(), 64, "{}", pin.name);
                assert!(pin.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert!(pin.size > 0, "{}", pin.name);
            }
            let names = release.extension_names();
            assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "sorted, unique");
        }
    }

    #[test]
    fn unpinned_version_names_the_pinned_ones() {
        let err = pinned_release("9.9.9").unwrap_err();
        let Error::UnpinnedVersion { version, pinned } = &err else { panic!("{err:?}") };
        assert_eq!(version, "9.9.9");
        assert!(pinned.iter().any(|pinned| pinned == "0.2.17"));
        assert!(err.to_string().contains("0.2.17"), "{err}");
    }
}

mod archive {
    use super::*;

    #[test]
    fn entry_paths() {
        let ok = |path: &str| validate_entry_path(path.as_bytes()).is_ok();
        assert!(ok("package/dist/postgres.wasm"));
        assert!(ok("package/dist/a..b"));
        assert!(!ok("/etc/passwd"));
        assert!(!ok("../evil"));
        assert!(!ok("package/../../evil"));
        assert!(!ok("package/dist/.."));
        assert!(!ok("package\\..\\evil"));
    }

    #[test]
    fn dist_names() {
        assert_eq!(dist_file_name("package/dist/postgres.wasm"), Some("postgres.wasm"));
        assert_eq!(dist_file_name("./package/dist/pgcrypto.tar.gz"), Some("pgcrypto.tar.gz"));
        assert_eq!(dist_file_name("other/dist/x"), Some("x"));
        assert_eq!(dist_file_name("package/dist/contrib/x.js"), None);
        assert_eq!(dist_file_name("package/postgres.wasm"), None);
        assert_eq!(dist_file_name("package/dist/"), None);
    }
}

mod sources {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let res = parse_sources(
            " https://mirror.example/pglite/{version}/{file}, /srv/pglite ,file:///opt/pglite,npm,npm:https://r.example/,",
        )
        .unwrap();
        assert_eq!(
            res,
            vec![
                Source::Url("https://mirror.example/pglite/{version}/{file}".to_owned()),
                Source::Dir("/srv/pglite".into()),
                Source::Dir("/opt/pglite".into()),
                Source::Npm(None),
                Source::Npm(Some("https://r.example/".to_owned())),
            ]
        );
    }

    #[test]
    fn rejects_bad_entries() {
        for list in ["", " , ", "https://mirror.example/no-placeholder", "npm:ftp://x", "ftp://x/{file}"] {
            assert!(matches!(parse_sources(list), Err(Error::InvalidSource { .. })), "{list:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        let list = "https://m.example/{version}/{file},file:///srv/p,npm,npm:https://r.example";
        let sources = parse_sources(list).unwrap();
        let shown: Vec<String> = sources.iter().map(ToString::to_string).collect();
        assert_eq!(shown.join(","), list);
    }

    #[test]
    fn templates_and_tarball_urls() {
        assert_eq!(
            expand_template(crate::UNPKG, "0.2.17", "postgres.js"),
            crate::UNPKG.replace("{version}", "0.2.17").replace("{file}", "postgres.js")
        );
        assert_eq!(
            npm_tarball_url("https://r.example/", "0.2.17"),
            "https://r.example/@electric-sql/pglite/-/pglite-0.2.17.tgz"
        );
        assert_eq!(
            npm_tarball_url("https://r.example/npm", "0.3.16"),
            "https://r.example/npm/@electric-sql/pglite/-/pglite-0.3.16.tgz"
        );
    }

    #[test]
    fn npmrc_scoped_registry_wins() {
        let npmrc = "fund=false\nregistry=https://a.example/\n@electric-sql:registry = \"https://b.example/\"\n";
        assert_eq!(registry_from_npmrc(npmrc).as_deref(), Some("https://b.example/"));
        assert_eq!(registry_from_npmrc("registry=https://a.example/").as_deref(), Some("https://a.example/"));
        assert_eq!(registry_from_npmrc("fund=false\naudit=false"), None);
    }
}

mod policy {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        let allowed = |url: &str| crate::http::check_url(&url.parse().unwrap()).is_ok();
        assert!(allowed("https://cdn.example/x"));
        assert!(allowed("http://127.0.0.1:8080/x"));
        assert!(allowed("http://127.3.2.1/x"));
        assert!(allowed("http://localhost/x"));
        assert!(allowed("http://[::1]:9/x"));
        assert!(!allowed("http://cdn.example/x"));
        assert!(!allowed("http://10.0.0.1/x"));
        assert!(!allowed("ftp://cdn.example/x"));
    }

    #[test]
    fn sha256_of_abc() {
        let (hex, n) = sha256_hex(&b"abc"[..]).unwrap();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
    }

    #[test]
    fn all_sources_failed_lists_every_attempt() {
        let err = Error::AllSourcesFailed {
            version: "0.2.17".to_owned(),
            file: Some("postgres.wasm".to_owned()),
            attempts: vec![
                Attempt {
                    file: "postgres.wasm".to_owned(),
                    url: "https://a/x".to_owned(),
                    reason: Reason::Status(404),
                },
                Attempt {
                    file: "postgres.wasm".to_owned(),
                    url: "https://b/x".to_owned(),
                    reason: Reason::Timeout { phase: "reading the body", after: Duration::from_secs(1) },
                },
                Attempt {
                    file: "postgres.wasm".to_owned(),
                    url: "https://c/x.tgz".to_owned(),
                    reason: Reason::HashMismatch { expected: "aa".to_owned(), actual: "bb".to_owned() },
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "no source had a verified postgres.wasm for PGlite 0.2.17\n  \
             - https://a/x (postgres.wasm): HTTP status 404\n  \
             - https://b/x (postgres.wasm): timed out after 1s while reading the body\n  \
             - https://c/x.tgz (postgres.wasm): SHA-256 mismatch: expected aa, got bb"
        );
    }
}

mod tree {
    use crate::tree::{parse_manifest, render_manifest, summary};
    use crate::{Damage, Problem};

    const DIGEST: &str = "445e02e5b497bbd9579ebdac87e580c1d2bbdc7adf0687fb71d391eb52c04700";

    #[test]
    fn manifests_round_trip_and_belong_to_one_bundle() {
        let entries = vec![("lib/postgresql/a b.so".to_owned(), 7), ("share/x.control".to_owned(), 0)];
        let text = render_manifest(DIGEST, &entries);
        assert_eq!(parse_manifest(&text, DIGEST), Some(entries));
        assert_eq!(parse_manifest(&text, &DIGEST.replace('4', "5")), None, "another bundle's");
        assert_eq!(parse_manifest("v1 x\n", DIGEST), None);
        assert_eq!(parse_manifest(&format!("v1 {DIGEST}\nseven lib/x.so\n"), DIGEST), None);
    }

    #[test]
    fn a_summary_names_a_few_files_and_counts_the_rest() {
        let damage = |n: usize| Damage { path: format!("/c/root/{n}").into(), problem: Problem::Missing };
        assert_eq!(summary(&[damage(1)]), "/c/root/1: missing");
        let many: Vec<Damage> = (0..8).map(damage).collect();
        assert!(summary(&many).ends_with("/c/root/4: missing; and 3 more"), "{}", summary(&many));
        let size = Damage { path: "/c/x".into(), problem: Problem::Size { expected: 9, actual: 4 } };
        assert_eq!(size.to_string(), "/c/x: 4 bytes, expected 9");
    }
}

#[test]
fn fetch_futures_can_run_on_any_runtime_thread() {
    fn assert_send<T: Send>(_: &T) {}
    let opts = crate::FetchOptions::new("0.2.17");
    assert_send(&crate::ensure(&opts));
    assert_send(&crate::ensure_extensions(&opts, &["hstore"]));
    assert_send(&crate::verify(&opts));
}
