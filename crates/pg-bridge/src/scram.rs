//! SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding: the server side for the
//! bridge's TCP listener, checking a client against the secret PostgreSQL stores for its role.
//! (`UpstreamBackend`'s client side is rust-postgres' own.)
//!
//! Sans-IO: these types only turn messages into messages. The server never sees a password:
//! a stored secret holds the salt, the iteration count, `StoredKey` and `ServerKey`, which is
//! all the server side of SCRAM needs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// PostgreSQL's default `scram_iterations`, which a mock exchange shows.
const MOCK_ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn nonce() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    BASE64.encode(bytes)
}

fn attribute(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// What the server checks a client's proof against: a role's stored SCRAM secret, or a mock
/// one that no proof satisfies.
#[derive(Clone)]
pub(crate) struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
    /// Set for a mock verifier: the exchange runs to its end and then fails.
    doomed: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Reads a secret as PostgreSQL stores it in `pg_authid.rolpassword`:
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 throughout.
    /// `None` when `secret` is not one.
    pub(crate) fn parse(secret: &str) -> Option<Verifier> {
        let rest = secret.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&n| n > 0)?;
        let salt = BASE64.decode(salt).ok().filter(|salt| !salt.is_empty())?;
        let key = |text: &str| -> Option<[u8; 32]> { BASE64.decode(text).ok()?.try_into().ok() };
        Some(Verifier { iterations, salt, stored_key: key(stored_key)?, server_key: key(server_key)?, doomed: false })
    }

    /// A verifier for a role that cannot authenticate (no such role, no password, an expired
    /// one), so that the exchange looks like any other and does not tell the client why it
    /// fails, as PostgreSQL's mock authentication does: the salt is the same at every attempt
    /// for the same name (derived from `user` and `secret`, which is random per bridge), and no
    /// proof is accepted.
    pub(crate) fn mock(user: &str, secret: &[u8; 32]) -> Verifier {
        let mut digest = Sha256::new();
        digest.update(secret);
        digest.update(user.as_bytes());
        let salt = digest.finalize()[..16].to_vec();
        Verifier { iterations: MOCK_ITERATIONS, salt, stored_key: [0; 32], server_key: [0; 32], doomed: true }
    }
}

/// Server side of one SCRAM exchange.
pub(crate) struct ServerExchange<'v> {
    verifier: &'v Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Why an exchange failed: the client's messages were not SCRAM (PostgreSQL answers those
/// with `08P01`), or the proof was not accepted (`28P01`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A malformed or unsupported message; the text says what was wrong.
    Protocol(String),
    /// The proof does not match the secret (or the verifier is a mock).
    Rejected,
}

fn malformed(detail: &str) -> Failure {
    Failure::Protocol(format!("malformed SCRAM message: {detail}"))
}

impl<'v> ServerExchange<'v> {
    /// Takes the client-first message; returns the exchange and the server-first message.
    pub(crate) fn start(verifier: &'v Verifier, client_first: &[u8]) -> Result<(Self, String), Failure> {
        let client_first = std::str::from_utf8(client_first).map_err(|_| malformed("invalid encoding"))?;
        let mut parts = client_first.splitn(3, ',');
        let cbind = parts.next().unwrap_or_default();
        match cbind.chars().next() {
            Some('p') => return Err(malformed("channel binding is not supported without TLS")),
            Some('n' | 'y') => {}
            _ => return Err(malformed("unexpected channel-binding flag")),
        }
        let _authzid = parts.next().ok_or_else(|| malformed("no authorization identity"))?;
        let bare = parts.next().ok_or_else(|| malformed("no client-first-message-bare"))?;
        let client_nonce = attribute(bare, 'r').filter(|n| !n.is_empty()).ok_or_else(|| malformed("no nonce"))?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!("r={nonce},s={},i={}", BASE64.encode(&verifier.salt), verifier.iterations);
        let exchange =
            ServerExchange { verifier, client_first_bare: bare.to_owned(), server_first: server_first.clone(), nonce };
        Ok((exchange, server_first))
    }

    /// Checks the client-final message; returns the server-final message on success.
    pub(crate) fn finish(self, client_final: &[u8]) -> Result<String, Failure> {
        let client_final = std::str::from_utf8(client_final).map_err(|_| malformed("invalid encoding"))?;
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(|| malformed("no proof"))?;
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(malformed("nonce mismatch"));
        }
        let proof = BASE64.decode(proof).map_err(|_| malformed("invalid proof"))?;
        if proof.len() != 32 {
            return Err(malformed("invalid proof"));
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Compared in constant time, as PostgreSQL does.
        let diff = stored.iter().zip(self.verifier.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 || self.verifier.doomed {
            return Err(Failure::Rejected);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::{Failure, ServerExchange, Verifier};

    /// One exchange between rust-postgres' client and our server side.
    fn exchange(verifier: &Verifier, client_password: &str) -> Result<(), Failure> {
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) = ServerExchange::start(verifier, client.message())?;
        client.update(server_first.as_bytes()).map_err(|e| Failure::Protocol(e.to_string()))?;
        let server_final = exchange.finish(client.message())?;
        client.finish(server_final.as_bytes()).map_err(|e| Failure::Protocol(e.to_string()))
    }

    /// A secret as PostgreSQL would store it for `password`.
    fn stored(password: &str) -> Verifier {
        Verifier::parse(&postgres_protocol::password::scram_sha_256(password.as_bytes())).expect("a valid secret")
    }

    #[test]
    fn client_and_server_agree() {
        exchange(&stored("sekrit"), "sekrit").unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        assert_eq!(exchange(&stored("sekrit"), "guess"), Err(Failure::Rejected));
    }

    #[test]
    fn a_secret_postgresql_stored_is_checked() {
        // What `CREATE ROLE pw_scram LOGIN PASSWORD 'pencil'` stored in native PostgreSQL 17.5.
        let secret = "SCRAM-SHA-256$4096:a0wEW9NLH/ca8DGKNJy/wQ==$5lMZLDhPhsDu+RIHJ57Vxmlj76nJ8jpempjGWBXdaco=:\
                      zvrssMD95kIoxLqBWCrIPv1YX6uh+RcanFUGjlwjzT0=";
        let verifier = Verifier::parse(secret).unwrap();
        assert_eq!((verifier.iterations, verifier.salt.len()), (4096, 16));
        exchange(&verifier, "pencil").unwrap();
        assert_eq!(exchange(&verifier, "Pencil"), Err(Failure::Rejected));
    }

    #[test]
    fn what_is_not_a_scram_secret_is_not_read() {
        for secret in [
            "md5a3556571e93b0d20722ba62be61e8c2d",
            "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk",
            "SCRAM-SHA-256$0:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SCRAM-SHA-256$4096:$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "plaintext",
        ] {
            assert!(Verifier::parse(secret).is_none(), "{secret}");
        }
    }

    #[test]
    fn a_mock_exchange_runs_to_its_end_and_fails_with_a_stable_salt() {
        let secret = [7u8; 32];
        let mock = Verifier::mock("nosuch", &secret);
        assert_eq!(exchange(&mock, "anything"), Err(Failure::Rejected));
        assert_eq!(mock.salt, Verifier::mock("nosuch", &secret).salt);
        assert_ne!(mock.salt, Verifier::mock("other", &secret).salt);
    }

    #[test]
    fn malformed_messages_are_protocol_failures() {
        let verifier = stored("sekrit");
        for first in [&b"p=tls-server-end-point,,n=,r=abc"[..], b"x,,n=,r=abc", b"n,,n=", b"n", b"\xff"] {
            assert!(matches!(ServerExchange::start(&verifier, first), Err(Failure::Protocol(_))), "{first:?}");
        }
        let (exchange, _) = ServerExchange::start(&verifier, b"n,,n=,r=abc").unwrap();
        assert!(matches!(exchange.finish(b"c=biws,r=other,p=AAAA"), Err(Failure::Protocol(_))));
    }
}
