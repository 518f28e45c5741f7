//! The network edge: one HTTPS GET, streamed into a writer, with limits and redirects.
//!
//! hyper 1 + hyper-util's legacy client + hyper-rustls with the platform's root
//! certificates (so a TLS-intercepting proxy whose CA is installed system-wide works).
//! Plain http is allowed only for loopback hosts, which is what the tests serve from.
//! This module does not know about pins or the cache: callers verify what it writes.

use std::{io::Write, net::IpAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{Error, error::Reason};

const MAX_REDIRECTS: usize = 8;

/// A configured client; build one per fill so a warm cache never touches TLS or DNS.
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Http {
    pub(crate) fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<Http, Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(Error::Tls)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Http { client, connect_timeout, read_timeout })
    }

    /// GETs `url` (following redirects) into `sink`; returns the byte count. Fails with
    /// `TooLarge` as soon as more than `limit` bytes are announced or received.
    pub(crate) async fn download(
        &self,
        url: &str,
        limit: u64,
        sink: &mut (dyn Write + Send),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<u64, Reason> {
        let mut uri: Uri = url.parse().map_err(|_| Reason::BadUrl(url.to_owned()))?;
        for _ in 0..=MAX_REDIRECTS {
            check_url(&uri)?;
            let request = Request::get(uri.clone())
                .header(header::USER_AGENT, concat!("nself-embedded/pglite-fetch ", env!("CARGO_PKG_VERSION")))
                .body(Empty::new())
                .map_err(|err| Reason::BadUrl(err.to_string()))?;
            let headers_limit = self.connect_timeout + self.read_timeout;
            let response = tokio::time::timeout(headers_limit, self.client.request(request))
                .await
                .map_err(|_| Reason::Timeout { phase: "waiting for the response", after: headers_limit })?
                .map_err(|err| {
                    if err.is_connect() && is_timeout(&err) {
                        Reason::Timeout { phase: "connecting", after: self.connect_timeout }
                    } else {
                        Reason::Transport(err)
                    }
                })?;
            let status = response.status();
            if status.is_redirection() {
                uri = redirect_target(&uri, response.headers().get(header::LOCATION))?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(Reason::Status(status.as_u16()));
            }
            let total = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            if total.is_some_and(|total| total > limit) {
                return Err(Reason::TooLarge { limit });
            }
            return self.read_body(response.into_body(), total, limit, sink, progress).await;
        }
        Err(Reason::BadUrl(format!("more than {MAX_REDIRECTS} redirects from {url}")))
    }

    async fn read_body(
        &self,
        mut body: hyper::body::Incoming,
        total: Option<u64>,
        limit: u64,
        sink: &mut (dyn Write + Send),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<u64, Reason> {
        let mut done = 0u64;
        progress(done, total);
        loop {
            let frame = tokio::time::timeout(self.read_timeout, body.frame())
                .await
                .map_err(|_| Reason::Timeout { phase: "reading the body", after: self.read_timeout })?;
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    return Err(match total {
                        Some(expected) if done < expected => Reason::Truncated { expected, received: done },
                        _ => Reason::Body(err),
                    });
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            done += data.len() as u64;
            if done > limit {
                return Err(Reason::TooLarge { limit });
            }
            sink.write_all(&data).map_err(Reason::Io)?;
            progress(done, total);
        }
        match total {
            Some(expected) if done < expected => Err(Reason::Truncated { expected, received: done }),
            _ => Ok(done),
        }
    }
}

/// https anywhere; http only to loopback (`localhost`, 127.0.0.0/8, `::1`).
pub(crate) fn check_url(uri: &Uri) -> Result<(), Reason> {
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if uri.host().is_some_and(is_loopback_host) => Ok(()),
        _ => Err(Reason::Insecure),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn redirect_target(base: &Uri, location: Option<&header::HeaderValue>) -> Result<Uri, Reason> {
    let location = location
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| Reason::BadUrl(format!("redirect from {base} without a Location")))?;
    let bad = || Reason::BadUrl(format!("redirect from {base} to {location:?}"));
    if location.contains("://") {
        return location.parse().map_err(|_| bad());
    }
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let base_path = base.path();
        format!("{}{location}", &base_path[..=base_path.rfind('/').unwrap_or(0)])
    };
    let scheme = base.scheme_str().ok_or_else(bad)?;
    let authority = base.authority().ok_or_else(bad)?;
    format!("{scheme}://{authority}{path}").parse().map_err(|_| bad())
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.to_string().contains("timed out")
            || cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}
