//! SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding: the server side for the
//! bridge's TCP listener. (`UpstreamBackend`'s client side is rust-postgres' own.)
//!
//! Sans-IO: these types only turn messages into messages. Passwords are used as given (no
//! SASLprep), which matches PostgreSQL for ASCII passwords.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

fn nonce() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    BASE64.encode(bytes)
}

fn attribute(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// The stored verifier for the one configured password.
#[derive(Clone)]
pub(crate) struct Verifier {
    salt: [u8; 16],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Derives a verifier from a password with a fresh random salt.
    pub(crate) fn new(password: &str) -> Verifier {
        let salt: [u8; 16] = rand::rng().random();
        let salted = salted_password(password, &salt, ITERATIONS);
        let client_key = hmac(&salted, b"Client Key");
        Verifier { salt, stored_key: Sha256::digest(client_key).into(), server_key: hmac(&salted, b"Server Key") }
    }
}

/// Server side of one SCRAM exchange.
pub(crate) struct ServerExchange<'v> {
    verifier: &'v Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'v> ServerExchange<'v> {
    /// Takes the client-first message; returns the exchange and the server-first message.
    pub(crate) fn start(verifier: &'v Verifier, client_first: &[u8]) -> Result<(Self, String), String> {
        let client_first = std::str::from_utf8(client_first).map_err(|_| "invalid encoding")?;
        let mut parts = client_first.splitn(3, ',');
        let cbind = parts.next().unwrap_or_default();
        if cbind.starts_with('p') {
            return Err("channel binding is not supported".to_owned());
        }
        let _authzid = parts.next().ok_or("malformed SCRAM message")?;
        let bare = parts.next().ok_or("malformed SCRAM message")?;
        let client_nonce = attribute(bare, 'r').ok_or("malformed SCRAM message")?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", BASE64.encode(verifier.salt));
        let exchange =
            ServerExchange { verifier, client_first_bare: bare.to_owned(), server_first: server_first.clone(), nonce };
        Ok((exchange, server_first))
    }

    /// Checks the client-final message; returns the server-final message on success.
    pub(crate) fn finish(self, client_final: &[u8]) -> Result<String, String> {
        let client_final = std::str::from_utf8(client_final).map_err(|_| "invalid encoding")?;
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or("malformed SCRAM message")?;
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err("SCRAM nonce mismatch".to_owned());
        }
        let proof = BASE64.decode(proof).map_err(|_| "malformed SCRAM proof")?;
        if proof.len() != 32 {
            return Err("malformed SCRAM proof".to_owned());
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Constant time is not needed for a hash of attacker-unknown input, but cheap anyway.
        let diff = stored.iter().zip(self.verifier.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err("password authentication failed".to_owned());
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::{ServerExchange, Verifier};

    /// One exchange between rust-postgres' client and our server side.
    fn exchange(server_password: &str, client_password: &str) -> Result<(), String> {
        let verifier = Verifier::new(server_password);
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) = ServerExchange::start(&verifier, client.message())?;
        client.update(server_first.as_bytes()).map_err(|e| e.to_string())?;
        let server_final = exchange.finish(client.message())?;
        client.finish(server_final.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn client_and_server_agree() {
        exchange("sekrit", "sekrit").unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        assert!(exchange("sekrit", "guess").is_err());
    }
}
