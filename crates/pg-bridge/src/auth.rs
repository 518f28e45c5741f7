//! Password authentication of TCP clients ([`TcpAuth::Password`]), as PostgreSQL's `md5`
//! method in `pg_hba.conf` does it: the role's login facts are read from `pg_authid` at every
//! login (under the lease, which is let go before the client is asked for anything), then the
//! client proves it knows the password: SCRAM-SHA-256 against a stored SCRAM secret, MD5
//! against a stored md5 hash. A role that does not exist, has no password or an expired one
//! gets a mock SCRAM exchange that fails, so a client cannot tell these apart. A failure is
//! `FATAL 28P01 password authentication failed for user "x"`, whatever its cause (which is
//! logged, as PostgreSQL logs its `DETAIL`); messages that are not the protocol's are `08P01`.
//!
//! [`TcpAuth::Password`]: crate::TcpAuth::Password

use std::sync::Arc;

use bytes::BytesMut;
use md5::{Digest, Md5};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::backend::Replies;
use crate::protocol::frame;
use crate::scram::{Failure, ServerExchange, Verifier};
use crate::session::RoleLogin;
use crate::shared::Shared;
use crate::{Backend, Error};

/// How a password authentication ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The client proved it knows the role's password; whether the role may log in is
    /// checked after `AuthenticationOk`, as PostgreSQL does.
    Authenticated {
        /// `rolcanlogin`.
        can_login: bool,
    },
    /// The connection ends with this FATAL error.
    Refused {
        /// Its SQLSTATE.
        sqlstate: &'static str,
        /// Its message.
        message: String,
    },
    /// The client went away (or sent an empty MD5 response, on which PostgreSQL closes the
    /// connection without a word).
    Closed,
}

/// How a client is asked for its password.
enum Method {
    Scram(Verifier),
    Md5(String),
}

impl Outcome {
    fn failed(user: &str) -> Outcome {
        Outcome::Refused { sqlstate: "28P01", message: format!("password authentication failed for user \"{user}\"") }
    }

    fn protocol(message: String) -> Outcome {
        Outcome::Refused { sqlstate: "08P01", message }
    }
}

/// Authenticates `user` on `stream` with the password `pg_authid` holds for it now. On
/// success, the SASL final message (if any) is in `replies`, for the caller to send with
/// `AuthenticationOk`.
pub(crate) async fn authenticate<B: Backend, S>(
    shared: &Arc<Shared<B>>,
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    replies: &mut Replies,
) -> Result<Outcome, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let login = {
        let mut session = shared.lease.lock().await;
        match session.role_login(&shared.backend, &shared.baseline, user).await {
            Ok(Ok(login)) => login,
            Ok(Err((code, message))) => {
                tracing::warn!(code, message, "reading a role's password from pg_authid failed");
                return Ok(Outcome::Refused {
                    sqlstate: "28000",
                    message: format!("could not read the password of role \"{user}\": {message}"),
                });
            }
            Err(Error::BackendGone) => {
                return Ok(Outcome::Refused {
                    sqlstate: "57P03",
                    message: "the database system is not available".to_owned(),
                });
            }
            Err(error) => return Err(error),
        }
    };
    let can_login = login.as_ref().is_some_and(|login| login.can_login);
    let (method, cause) = match method(user, login, &shared.mock_secret) {
        Ok(method) => (method, None),
        Err((verifier, cause)) => (Method::Scram(verifier), Some(cause)),
    };
    let outcome = match method {
        Method::Scram(verifier) => scram(stream, buf, &verifier, user, replies).await?,
        Method::Md5(hash) => md5(stream, buf, &hash, user).await?,
    };
    Ok(match outcome {
        Outcome::Authenticated { .. } => Outcome::Authenticated { can_login },
        Outcome::Refused { sqlstate: "28P01", message } => {
            // What PostgreSQL logs as the failure's DETAIL; the client is told none of it.
            let detail = cause.unwrap_or_else(|| format!("Password does not match for user \"{user}\"."));
            tracing::info!(user, detail, "password authentication failed");
            Outcome::Refused { sqlstate: "28P01", message }
        }
        other => other,
    })
}

/// The method for a role's stored password; for one that cannot authenticate, the mock SCRAM
/// verifier and why (PostgreSQL's log `DETAIL`).
fn method(user: &str, login: Option<RoleLogin>, mock_secret: &[u8; 32]) -> Result<Method, (Verifier, String)> {
    let mock = |cause: String| (Verifier::mock(user, mock_secret), cause);
    let Some(login) = login else {
        return Err(mock(format!("Role \"{user}\" does not exist.")));
    };
    let Some(secret) = login.secret else {
        return Err(mock(format!("User \"{user}\" has no password assigned.")));
    };
    if login.expired {
        return Err(mock(format!("User \"{user}\" has an expired password.")));
    }
    if is_md5_hash(&secret) {
        return Ok(Method::Md5(secret));
    }
    Verifier::parse(&secret).map(Method::Scram).ok_or_else(|| mock(format!("User \"{user}\" has an invalid password.")))
}

/// `md5` and 32 lowercase hex digits: what PostgreSQL stores for an MD5 password.
fn is_md5_hash(secret: &str) -> bool {
    secret.len() == 35
        && secret.starts_with("md5")
        && secret[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A client's answer to an MD5 challenge with `salt`, checked against the stored `hash`
/// (`md5` + hex MD5 of password and user name): it must be `md5` + hex MD5 of the stored hex
/// digits and the salt.
fn md5_response_matches(hash: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let mut digest = Md5::new();
    digest.update(&hash.as_bytes()[3..]);
    digest.update(salt);
    let expected: String =
        std::iter::once("md5".to_owned()).chain(digest.finalize().iter().map(|b| format!("{b:02x}"))).collect();
    // Compared in constant time, as PostgreSQL does.
    expected.len() == response.len() && expected.bytes().zip(response).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Reads one typed frame during authentication (small limit); `None` when the connection
/// closed or sent something that is not a frame.
async fn read_auth_frame<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Option<frame::Frame> {
    loop {
        match frame::split_frame(buf, frame::MAX_STARTUP_LEN) {
            Ok(Some(frame)) => return Some(frame),
            Ok(None) => {}
            Err(_) => return None,
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The MD5 challenge.
async fn md5<S>(stream: &mut S, buf: &mut BytesMut, hash: &str, user: &str) -> Result<Outcome, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let salt: [u8; 4] = rand::rng().random();
    let mut out = Replies::new();
    out.auth_md5(salt)?;
    stream.write_all(&out.into_bytes()).await?;
    let Some(response) = read_auth_frame(stream, buf).await else {
        return Ok(Outcome::Closed);
    };
    if response.tag() != b'p' {
        return Ok(Outcome::protocol(format!("expected password response, got message type {}", response.tag())));
    }
    // A NUL-terminated string, as PostgreSQL reads it.
    let password = match response.body().split_last() {
        Some((0, password)) if !password.contains(&0) => password,
        _ => return Ok(Outcome::protocol("invalid password packet size".to_owned())),
    };
    if password.is_empty() {
        tracing::info!(user, "empty password returned by client");
        return Ok(Outcome::Closed);
    }
    if md5_response_matches(hash, salt, password) {
        Ok(Outcome::Authenticated { can_login: true })
    } else {
        Ok(Outcome::failed(user))
    }
}

/// The SCRAM-SHA-256 exchange; on success the server-final message is in `replies`.
async fn scram<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    verifier: &Verifier,
    user: &str,
    replies: &mut Replies,
) -> Result<Outcome, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = Replies::new();
    out.auth_sasl()?;
    stream.write_all(&out.into_bytes()).await?;
    let Some(first) = read_auth_frame(stream, buf).await else {
        return Ok(Outcome::Closed);
    };
    if first.tag() != b'p' {
        return Ok(Outcome::protocol(format!("expected SASL response, got message type {}", first.tag())));
    }
    let Some((mechanism, data)) = sasl_initial_response(first.body()) else {
        return Ok(Outcome::protocol("malformed SASL message".to_owned()));
    };
    if mechanism != b"SCRAM-SHA-256" {
        return Ok(Outcome::protocol("client selected an invalid SASL authentication mechanism".to_owned()));
    }
    let failed = |failure: Failure| match failure {
        Failure::Protocol(message) => Outcome::protocol(message),
        Failure::Rejected => Outcome::failed(user),
    };
    let (exchange, server_first) = match ServerExchange::start(verifier, data) {
        Ok(started) => started,
        Err(failure) => return Ok(failed(failure)),
    };
    let mut out = Replies::new();
    out.auth_sasl_continue(server_first.as_bytes())?;
    stream.write_all(&out.into_bytes()).await?;
    let Some(last) = read_auth_frame(stream, buf).await else {
        return Ok(Outcome::Closed);
    };
    if last.tag() != b'p' {
        return Ok(Outcome::protocol(format!("expected SASL response, got message type {}", last.tag())));
    }
    match exchange.finish(last.body()) {
        Ok(server_final) => {
            replies.auth_sasl_final(server_final.as_bytes())?;
            Ok(Outcome::Authenticated { can_login: true })
        }
        Err(failure) => Ok(failed(failure)),
    }
}

/// A `SASLInitialResponse` body: the mechanism's name and the client's first message.
fn sasl_initial_response(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let (mechanism, rest) = (&body[..nul], &body[nul + 1..]);
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    (usize::try_from(len).ok() == Some(data.len())).then_some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::{Method, is_md5_hash, md5_response_matches, method, sasl_initial_response};
    use crate::session::RoleLogin;

    /// What `CREATE ROLE pw_md5 LOGIN PASSWORD 'pencil'` stored in native PostgreSQL 17.5 with
    /// `password_encryption = md5`.
    const PENCIL: &str = "md54f91401e76a3846b8e5a92714c0d2dc1";

    #[test]
    fn an_md5_response_is_checked_against_the_stored_hash() {
        let salt = [1, 2, 3, 4];
        // What libpq's (and rust-postgres') client sends for the password.
        let right = postgres_protocol::authentication::md5_hash(b"pw_md5", b"pencil", salt);
        assert!(md5_response_matches(PENCIL, salt, right.as_bytes()));
        let wrong = postgres_protocol::authentication::md5_hash(b"pw_md5", b"Pencil", salt);
        assert!(!md5_response_matches(PENCIL, salt, wrong.as_bytes()));
        assert!(!md5_response_matches(PENCIL, [4, 3, 2, 1], right.as_bytes()));
        assert!(!md5_response_matches(PENCIL, salt, &right.as_bytes()[..34]));
    }

    #[test]
    fn the_stored_password_decides_the_method() {
        let login = |secret: Option<&str>, expired: bool| {
            Some(RoleLogin { can_login: true, secret: secret.map(str::to_owned), expired })
        };
        let scram = postgres_protocol::password::scram_sha_256(b"pencil");
        let secret = [0; 32];
        assert!(matches!(method("pw", login(Some(PENCIL), false), &secret), Ok(Method::Md5(_))));
        assert!(matches!(method("pw", login(Some(&scram), false), &secret), Ok(Method::Scram(_))));
        for (login, cause) in [
            (None, "Role \"pw\" does not exist."),
            (login(None, false), "User \"pw\" has no password assigned."),
            (login(Some(&scram), true), "User \"pw\" has an expired password."),
            (login(Some("pencil"), false), "User \"pw\" has an invalid password."),
        ] {
            match method("pw", login, &secret) {
                Err((_, found)) => assert_eq!(found, cause),
                Ok(_) => panic!("{cause}: a method that can succeed"),
            }
        }
        assert!(is_md5_hash(PENCIL) && !is_md5_hash("md5") && !is_md5_hash(&PENCIL.to_uppercase()));
    }

    #[test]
    fn a_sasl_initial_response_is_read_whole_or_not_at_all() {
        let message = crate::protocol::frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(sasl_initial_response(&message[5..]), Some((&b"SCRAM-SHA-256"[..], &b"n,,n=,r=abc"[..])));
        for body in
            [&b"SCRAM-SHA-256"[..], b"SCRAM-SHA-256\0\0\0", b"SCRAM-SHA-256\0\0\0\0\x05abc", b"X\0\xff\xff\xff\xff"]
        {
            assert_eq!(sasl_initial_response(body), None, "{body:?}");
        }
    }
}
