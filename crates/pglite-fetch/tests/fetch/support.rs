//! Test support: a synthetic PGlite release, a misbehaving-on-demand HTTP server on
//! 127.0.0.1, and helpers to build npm tarballs and options.
//!
//! The server is a few lines of raw HTTP/1.1 over tokio rather than a hyper server so that
//! tests can make it lie (short bodies) or stall (no response) at will.

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use camino::{Utf8Path, Utf8PathBuf};
use pglite_fetch::{FetchOptions, FilePin, PinnedRelease, Source, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const VERSION: &str = "9.0.0-test";

/// The guest files inside the synthetic data bundle.
pub(crate) const GUEST_FILES: &[(&str, &[u8])] = &[
    ("/home/web_user/.pgpass", b"localhost:5432:postgres:postgres:postgres\n"),
    ("/tmp/pglite/bin/initdb", b"initdb stub"),
    ("/tmp/pglite/bin/postgres", b"postgres stub"),
    ("/tmp/pglite/lib/postgresql/plpgsql.so", b"\0asm plpgsql side module"),
    ("/tmp/pglite/share/postgresql/empty", b""),
];

/// A synthetic release: file contents and pins computed from them.
pub(crate) struct Release {
    pub(crate) files: HashMap<&'static str, Vec<u8>>,
    pub(crate) pins: PinnedRelease,
}

pub(crate) fn release() -> Release {
    let mut data = Vec::new();
    let mut entries = Vec::new();
    for (name, content) in GUEST_FILES {
        let start = data.len();
        data.extend_from_slice(content);
        entries.push(format!("{{filename:\"{name}\",start:{start},end:{}}}", data.len()));
    }
    let js = format!(
        "var Module=1;loadPackage({{files:[{}],remote_package_size:{}}})}})();\n",
        entries.join(","),
        data.len()
    )
    .into_bytes();
    let wasm = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>();
    let pgcrypto = tarball(&[
        ("share/postgresql/extension/pgcrypto.control", b"default_version = '1.3'\n"),
        ("lib/postgresql/pgcrypto.so", b"\0asm pretend side module"),
    ]);
    let files: HashMap<&'static str, Vec<u8>> =
        [("postgres.wasm", wasm), ("postgres.data", data), ("postgres.js", js), ("pgcrypto.tar.gz", pgcrypto)]
            .into_iter()
            .collect();
    let pin = |name: &str| {
        let (sha256, size) = sha256_hex(&files[name][..]).unwrap();
        FilePin::new(name, size, &sha256)
    };
    let pins = PinnedRelease {
        version: VERSION.to_owned(),
        wasm: pin("postgres.wasm"),
        data: pin("postgres.data"),
        js: pin("postgres.js"),
        initdb: None,
        extensions: vec![pin("pgcrypto.tar.gz")],
    };
    Release { files, pins }
}

/// What the server does for one path.
#[derive(Clone)]
pub(crate) enum Route {
    Ok(Vec<u8>),
    Status(u16),
    /// Announces `declared` bytes, sends `body`, closes.
    Truncated {
        declared: usize,
        body: Vec<u8>,
    },
    /// Accepts the request and never answers.
    Hang,
    /// Sends headers announcing `declared` bytes, then nothing.
    HangBody {
        declared: usize,
    },
    Redirect(String),
}

/// A loopback HTTP server on its own thread and runtime, so that tests running several
/// runtimes (threads, processes) can share it. Stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<Vec<String>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub(crate) fn start() -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (routes2, hits2) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        let (routes, hits) = (routes2.clone(), hits2.clone());
                        tokio::spawn(serve(stream, routes, hits));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = shutdown_rx => {}
                }
            });
        });
        Server { addr, routes, hits, _shutdown: shutdown }
    }

    pub(crate) fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    /// Serves every file of `release` under `prefix` (`<prefix>/<file>`).
    pub(crate) fn serve_release(&self, prefix: &str, release: &Release) {
        for (name, content) in &release.files {
            self.route(&format!("{prefix}/{name}"), Route::Ok(content.clone()));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL template source for files served under `prefix`.
    pub(crate) fn source(&self, prefix: &str) -> Source {
        Source::Url(self.url(&format!("{prefix}/{{file}}")))
    }

    pub(crate) fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    pub(crate) fn n_hits(&self, path: &str) -> usize {
        self.hits().iter().filter(|hit| *hit == path).count()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<Vec<String>>>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
    hits.lock().unwrap().push(path.clone());
    let route = routes.lock().unwrap().get(&path).cloned().unwrap_or(Route::Status(404));
    let head = |status: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n").into_bytes()
    };
    let response = match route {
        Route::Ok(body) => [head("200 OK", body.len()), body].concat(),
        Route::Status(code) => head(&format!("{code} Nope"), 0),
        Route::Truncated { declared, body } => [head("200 OK", declared), body].concat(),
        Route::Redirect(location) => {
            format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .into_bytes()
        }
        Route::Hang => return std::future::pending().await,
        Route::HangBody { declared } => {
            let _ = stream.write_all(&head("200 OK", declared)).await;
            return std::future::pending().await;
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// A `.tgz` with `entries` (path, content) in order, written with raw headers so that
/// unsafe paths can be expressed.
pub(crate) fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    let mut encoder = builder.into_inner().unwrap();
    encoder.flush().unwrap();
    encoder.finish().unwrap()
}

/// The npm layout of `release`: `package/dist/<file>` plus some noise.
pub(crate) fn npm_tarball(release: &Release) -> Vec<u8> {
    let mut entries: Vec<(String, &[u8])> = vec![("package/package.json".to_owned(), b"{}")];
    let mut names: Vec<&&str> = release.files.keys().collect();
    names.sort();
    for name in names {
        entries.push((format!("package/dist/{name}"), &release.files[*name]));
    }
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(path, content)| (path.as_str(), *content)).collect();
    tarball(&entries)
}

pub(crate) fn tarball_path() -> String {
    format!("/@electric-sql/pglite/-/pglite-{VERSION}.tgz")
}

pub(crate) struct TestCache {
    pub(crate) dir: tempfile::TempDir,
}

impl TestCache {
    pub(crate) fn new() -> TestCache {
        TestCache { dir: tempfile::tempdir().unwrap() }
    }

    pub(crate) fn path(&self) -> &Utf8Path {
        Utf8Path::from_path(self.dir.path()).unwrap()
    }

    pub(crate) fn version_dir(&self) -> Utf8PathBuf {
        self.path().join(VERSION)
    }

    pub(crate) fn opts(&self, sources: Vec<Source>) -> FetchOptions {
        let mut opts = FetchOptions::new(VERSION);
        opts.cache_dir = self.path().to_owned();
        opts.sources = sources;
        opts.connect_timeout = Duration::from_secs(5);
        opts.read_timeout = Duration::from_secs(5);
        opts
    }

    /// Names in the version directory other than the lock, receipts and verified files.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.version_dir()) else {
            return Vec::new();
        };
        entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".") && name != ".lock" && !name.ends_with(".receipt"))
            .collect()
    }
}

/// Asserts the artifact's files and root tree match `release`.
#[track_caller]
pub(crate) fn assert_good(artifact: &pglite_fetch::Artifact, release: &Release) {
    for (path, name) in
        [(&artifact.wasm, "postgres.wasm"), (&artifact.data, "postgres.data"), (&artifact.js, "postgres.js")]
    {
        assert_eq!(std::fs::read(path).unwrap(), release.files[name], "{path}");
    }
    assert_eq!(artifact.wasm_sha256, release.pins.wasm.sha256);
    assert_eq!(artifact.files.len(), GUEST_FILES.len());
    for (guest_path, content) in GUEST_FILES {
        let path = artifact.root.join(guest_path.trim_start_matches('/'));
        assert_eq!(std::fs::read(&path).unwrap(), *content, "{path}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{path}");
        }
    }
}
