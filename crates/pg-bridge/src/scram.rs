//! SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding: the server side for the
//! bridge's TCP listener and the client side for `UpstreamBackend`.
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

/// Client side of one SCRAM exchange.
pub(crate) struct Client {
    password: String,
    nonce: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl Client {
    /// Starts an exchange for `password`.
    pub(crate) fn new(password: &str) -> Client {
        Client { password: password.to_owned(), nonce: nonce(), expected_server_signature: None }
    }

    /// The client-first message.
    pub(crate) fn first_message(&self) -> String {
        format!("n,,n=,r={}", self.nonce)
    }

    /// Takes the server-first message and returns the client-final message.
    pub(crate) fn final_message(&mut self, server_first: &[u8]) -> Result<String, String> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| "invalid encoding")?;
        let nonce = attribute(server_first, 'r').ok_or("malformed SCRAM message")?;
        if !nonce.starts_with(&self.nonce) {
            return Err("SCRAM nonce mismatch".to_owned());
        }
        let salt = BASE64
            .decode(attribute(server_first, 's').ok_or("malformed SCRAM message")?)
            .map_err(|_| "malformed SCRAM salt")?;
        let iterations: u32 =
            attribute(server_first, 'i').and_then(|i| i.parse().ok()).ok_or("malformed SCRAM iteration count")?;
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=,r={},{server_first},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        self.expected_server_signature = Some(hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Checks the server-final message.
    pub(crate) fn verify_server(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final = std::str::from_utf8(server_final).map_err(|_| "invalid encoding")?;
        let signature = attribute(server_final, 'v').ok_or("malformed SCRAM message")?;
        let signature = BASE64.decode(signature).map_err(|_| "malformed SCRAM signature")?;
        match self.expected_server_signature {
            Some(expected) if expected.as_slice() == signature.as_slice() => Ok(()),
            _ => Err("server signature mismatch".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Client, ServerExchange, Verifier};

    #[test]
    fn client_and_server_agree() {
        let verifier = Verifier::new("sekrit");
        let mut client = Client::new("sekrit");
        let (exchange, server_first) = ServerExchange::start(&verifier, client.first_message().as_bytes()).unwrap();
        let client_final = client.final_message(server_first.as_bytes()).unwrap();
        let server_final = exchange.finish(client_final.as_bytes()).unwrap();
        client.verify_server(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        let verifier = Verifier::new("sekrit");
        let mut client = Client::new("guess");
        let (exchange, server_first) = ServerExchange::start(&verifier, client.first_message().as_bytes()).unwrap();
        let client_final = client.final_message(server_first.as_bytes()).unwrap();
        assert!(exchange.finish(client_final.as_bytes()).is_err());
    }
}
