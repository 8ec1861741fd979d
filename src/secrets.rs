//! Encryption at rest for env var values and other secrets.
//!
//! Values are sealed with XChaCha20-Poly1305 under a 256-bit master key.
//! The stored form is `v1:<key id>:<base64(nonce || ciphertext)>`, so keys can
//! be rotated: the current key seals, any configured key opens.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }
    /// The plaintext. Call sites are few and deliberate.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString(s)
    }
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The set of master keys: the first seals, all open.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

/// Parses a 32-byte key given as 64 hex digits or as base64.
fn decode_key(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| Error::bad_request("master key: invalid hex"))?
    } else {
        B64.decode(text)
            .map_err(|_| Error::bad_request("master key: expected 64 hex digits or base64"))?
    };
    bytes
        .try_into()
        .map_err(|_| Error::bad_request("master key: must be exactly 32 bytes"))
}

impl Keyring {
    /// Builds a keyring from the current key and older keys kept for reading.
    pub fn from_keys(current: &SecretString, previous: &[SecretString]) -> Result<Self> {
        let mut keys = Vec::new();
        for text in std::iter::once(current).chain(previous) {
            let raw = decode_key(text.expose())?;
            let id = hex::encode(&Sha256::digest(raw)[..4]);
            keys.push(Key {
                id,
                cipher: XChaCha20Poly1305::new(&raw.into()),
            });
        }
        Ok(Keyring { keys })
    }

    /// Uses `configured` if given, otherwise the key file in the data dir,
    /// generating it (mode 0600) on first start.
    pub fn load(
        configured: Option<&SecretString>,
        previous: &[SecretString],
        data_dir: &Path,
    ) -> Result<Self> {
        let current = match configured {
            Some(k) => k.clone(),
            None => {
                let path = data_dir.join("master.key");
                SecretString::new(crate::settings::read_or_create_secret_file(&path, || {
                    let mut raw = [0u8; 32];
                    rand::rng().fill_bytes(&mut raw);
                    hex::encode(raw)
                })?)
            }
        };
        Self::from_keys(&current, previous)
    }

    /// The id of the key that seals new values.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Encrypts `plaintext` under the current key.
    pub fn seal(&self, plaintext: &str) -> Result<String> {
        let key = &self.keys[0];
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| Error::internal("encryption failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("v1:{}:{}", key.id, B64.encode(blob)))
    }

    /// Decrypts a value produced by [`Keyring::seal`] with any known key.
    pub fn open(&self, sealed: &str) -> Result<SecretString> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::internal("sealed value has an unknown format"));
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| Error::internal(format!("no master key with id {kid}")))?;
        let blob = B64
            .decode(body)
            .map_err(|_| Error::internal("sealed value is not base64"))?;
        if blob.len() < 24 {
            return Err(Error::internal("sealed value too short"));
        }
        let (nonce, ct) = blob.split_at(24);
        let pt = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| Error::internal("sealed value failed authentication"))?;
        String::from_utf8(pt)
            .map(SecretString)
            .map_err(|_| Error::internal("sealed value is not UTF-8"))
    }
}

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::new(hex::encode([byte; 32]))
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = Keyring::from_keys(&key(1), &[]).unwrap();
        let sealed = old.seal("hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(old.open(&sealed).unwrap().expose(), "hunter2");

        // After rotation the new key seals, the old one still opens.
        let rotated = Keyring::from_keys(&key(2), &[key(1)]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap().expose(), "hunter2");
        let resealed = rotated.seal("hunter2").unwrap();
        assert!(resealed.contains(rotated.current_key_id()));
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        // A keyring without the new key cannot open the new value.
        assert!(old.open(&resealed).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::from_keys(&key(3), &[]).unwrap();
        let sealed = ring.seal("value").unwrap();
        let mut chars: Vec<char> = sealed.chars().collect();
        let last = chars.len() - 2;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert!(ring.open(&tampered).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let s = SecretString::new("topsecret");
        assert!(!format!("{s:?}").contains("topsecret"));
        let ring = Keyring::from_keys(&key(4), &[]).unwrap();
        assert!(!format!("{ring:?}").contains(&hex::encode([4u8; 32])));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(Keyring::from_keys(&SecretString::new("short"), &[]).is_err());
    }
}
