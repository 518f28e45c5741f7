//! A raw protocol client for the cases real client libraries cannot produce.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub(crate) struct Raw {
    pub(crate) stream: UnixStream,
    buf: Vec<u8>,
}

pub(crate) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut res = vec![tag];
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(body);
    res
}

fn cstr(res: &mut Vec<u8>, s: &str) {
    res.extend_from_slice(s.as_bytes());
    res.push(0);
}

pub(crate) fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    msg(b'Q', &body)
}

pub(crate) fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&[0, 0]);
    msg(b'P', &body)
}

/// Bind with text parameters and text results.
pub(crate) fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as u32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&[0, 0]);
    msg(b'B', &body)
}

pub(crate) fn execute(portal: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&[0, 0, 0, 0]);
    msg(b'E', &body)
}

pub(crate) fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    msg(b'D', &body)
}

pub(crate) fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub(crate) fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub(crate) fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut res = (body.len() as u32 + 4).to_be_bytes().to_vec();
    res.extend_from_slice(&body);
    res
}

/// A backend message: type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) tag: u8,
    pub(crate) body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    pub(crate) fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    pub(crate) fn field(&self, code: u8) -> Option<String> {
        (self.tag == b'E' || self.tag == b'N').then_some(())?;
        self.body
            .split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }

    /// Text columns of a DataRow.
    pub(crate) fn columns(&self) -> Vec<Option<String>> {
        let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut at = 2;
        let mut res = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                res.push(None);
            } else {
                res.push(Some(String::from_utf8_lossy(&self.body[at..at + len as usize]).into_owned()));
                at += len as usize;
            }
        }
        res
    }
}

impl Raw {
    pub(crate) async fn connect(socket: &Path) -> Raw {
        Raw { stream: UnixStream::connect(socket).await.unwrap(), buf: Vec::new() }
    }

    /// Connects and completes a protocol 3.0 startup with `params` (user/database added).
    pub(crate) async fn startup(socket: &Path, params: &[(&str, &str)]) -> Raw {
        let mut raw = Raw::connect(socket).await;
        let mut all = vec![("user", "postgres"), ("database", "postgres")];
        all.extend_from_slice(params);
        raw.send(&startup_packet(196_608, &all)).await;
        let msgs = raw.until_ready().await;
        assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'), "startup failed: {msgs:?}");
        raw
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one message, or `None` at end of stream (or after 10 s, which fails the test).
    pub(crate) async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let frame: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return Some(Msg { tag: frame[0], body: frame[5..].to_vec() });
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("no message from the bridge within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads raw bytes until end of stream.
    pub(crate) async fn rest(&mut self) -> Vec<u8> {
        let mut res = std::mem::take(&mut self.buf);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut res))
            .await
            .expect("the bridge did not close the connection within 10 s");
        res
    }

    /// Reads messages up to and including ReadyForQuery (or end of stream).
    pub(crate) async fn until_ready(&mut self) -> Vec<Msg> {
        let mut res = Vec::new();
        while let Some(msg) = self.recv().await {
            let done = msg.tag == b'Z';
            res.push(msg);
            if done {
                break;
            }
        }
        res
    }

    /// Expects AuthenticationOk, then a FATAL with `sqlstate`, then the close: how PostgreSQL
    /// refuses what it checks after authenticating (the database, the role, settings).
    pub(crate) async fn expect_fatal_after_auth(&mut self, sqlstate: &str) {
        let msg = self.recv().await.expect("expected AuthenticationOk, got end of stream");
        assert_eq!((msg.tag, msg.body.as_slice()), (b'R', &[0, 0, 0, 0][..]), "{msg:?}");
        self.expect_fatal(sqlstate).await;
    }

    /// Expects a FATAL with `sqlstate`, then the close.
    pub(crate) async fn expect_fatal(&mut self, sqlstate: &str) {
        let msg = self.recv().await.expect("expected an ErrorResponse, got end of stream");
        assert_eq!(msg.tag, b'E', "{msg:?}");
        assert_eq!(msg.field(b'S').as_deref(), Some("FATAL"), "{msg:?}");
        assert_eq!(msg.sqlstate().as_deref(), Some(sqlstate), "{msg:?}");
        assert!(self.recv().await.is_none(), "the connection must close after FATAL");
    }
}

pub(crate) fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

pub(crate) fn rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter().filter(|m| m.tag == b'D').map(Msg::columns).collect()
}

pub(crate) fn error(msgs: &[Msg]) -> Option<String> {
    msgs.iter().find(|m| m.tag == b'E').and_then(Msg::sqlstate)
}
