//! Secrets sealed at rest: account signing keys and the node's PLC rotation key are stored
//! encrypted (ChaCha20-Poly1305) under a 32-byte node key that the database does not hold. A
//! copy of the index database alone (a backup, a file another local user could read) yields
//! no key.
//!
//! A sealed secret is `version (1) ++ nonce (12) ++ ciphertext ++ tag (16)`. Each is bound to
//! what it is the key of (the associated data names the account and the curve), so a sealed
//! key moved to another account's row does not open there.
//!
//! The node key is either random (a file the operator keeps in the data directory, or
//! elsewhere) or derived from a passphrase with Argon2id.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// Why a sealed secret could not be opened, or a node key not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Not a sealed secret of a version this node reads (too short, unknown version).
    #[error("sealed secret is malformed")]
    Malformed,
    /// The secret does not open under this node key: the wrong node key (or passphrase), or
    /// the stored bytes were altered or moved.
    #[error("sealed secret does not open with this node key (wrong node key or passphrase?)")]
    WrongKey,
    /// The passphrase could not be turned into a key (the message names the parameter, never
    /// the passphrase).
    #[error("cannot derive the node key from the passphrase: {0}")]
    Passphrase(String),
}

/// The sealed format's version byte.
const VERSION: u8 = 1;

/// Nonce length (random per seal: a node seals a handful of keys, far from the 2^32 seals at
/// which random 96-bit nonces begin to risk repeating).
const NONCE_LEN: usize = 12;

/// Authentication tag length.
const TAG_LEN: usize = 16;

/// The version byte of secrets sealed with [`SealKey::seal_many`].
const MANY_VERSION: u8 = 2;

/// Nonce length of [`SealKey::seal_many`] (random 192-bit nonces never risk repeating, however
/// many secrets are sealed under one key).
const MANY_NONCE_LEN: usize = 24;

/// Length of a passphrase's salt (stored beside the data, not secret).
pub const SALT_LEN: usize = 16;

/// Argon2id memory cost in KiB (64 MiB), iterations and lanes for a passphrase: derived once
/// per start, so it can afford to be slow for whoever guesses passphrases.
const ARGON2_PARAMS: (u32, u32, u32) = (64 * 1024, 3, 1);

/// How many bytes sealing `len` bytes gives.
pub const fn sealed_len(len: usize) -> usize {
    1 + NONCE_LEN + len + TAG_LEN
}

/// The node key that seals secrets at rest. Its bytes are wiped when it is dropped and never
/// printed.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
        Self(bytes)
    }

    /// A key from its 32 bytes (as a key file holds them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key's bytes, to write to a key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    /// A key derived from a passphrase and a salt with Argon2id (64 MiB, 3 passes).
    pub fn from_passphrase(passphrase: &[u8], salt: &[u8]) -> Result<Self, SealError> {
        use argon2::{Algorithm, Argon2, Params, Version};
        let (m, t, p) = ARGON2_PARAMS;
        let params = Params::new(m, t, p, Some(32)).map_err(|e| SealError::Passphrase(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| SealError::Passphrase(e.to_string()))?;
        Ok(Self(out))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    /// Seals `secret`, bound to `context` (what the secret is: it must be given again to open).
    pub fn seal(&self, context: &[u8], secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad: context })
            .expect("ChaCha20-Poly1305 seals any input shorter than 256 GiB");
        let mut out = Vec::with_capacity(sealed_len(secret.len()));
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// A key of its own for one use of this one (HKDF-SHA256 with `label` as its info): what
    /// it seals does not open under the node key or under a key derived for another label.
    pub fn derive(&self, label: &[u8]) -> SealKey {
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0[..])
            .expand(label, &mut out[..])
            .expect("32 bytes are within HKDF-SHA256's output bound");
        Self(out)
    }

    /// Seals `secret` bound to `context` with XChaCha20-Poly1305 and a random 192-bit nonce:
    /// for keys that seal without end (every message and ratchet step of a chat), where the
    /// 96-bit nonces of [`SealKey::seal`] would in time risk repeating. The sealed form is
    /// `2 ++ nonce (24) ++ ciphertext ++ tag (16)`.
    pub fn seal_many(&self, context: &[u8], secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; MANY_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = XChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: context })
            .expect("XChaCha20-Poly1305 seals any input shorter than 256 GiB");
        let mut out = Vec::with_capacity(1 + MANY_NONCE_LEN + ciphertext.len());
        out.push(MANY_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens what [`SealKey::seal_many`] sealed under the same `context`.
    pub fn open_many(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 1 + MANY_NONCE_LEN + TAG_LEN || sealed[0] != MANY_VERSION {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(MANY_NONCE_LEN);
        XChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: context })
            .map(Zeroizing::new)
            .map_err(|_| SealError::WrongKey)
    }

    /// Opens what [`SealKey::seal`] sealed under the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < sealed_len(0) || sealed[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context })
            .map(Zeroizing::new)
            .map_err(|_| SealError::WrongKey)
    }
}

/// Whether `bytes` are in the sealed format (by version and length; a 32-byte plaintext key
/// is not).
pub fn is_sealed(bytes: &[u8], secret_len: usize) -> bool {
    bytes.len() == sealed_len(secret_len) && bytes[0] == VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_way_of_failing_is_typed() {
        let key = SealKey::generate();
        let secret = [7u8; 32];
        let sealed = key.seal(b"account a", &secret);
        assert_eq!(sealed.len(), sealed_len(32));
        assert!(is_sealed(&sealed, 32));
        assert!(!is_sealed(&secret, 32));
        assert!(!sealed.windows(32).any(|w| w == secret), "no plaintext in the sealed bytes");
        assert_eq!(key.open(b"account a", &sealed).unwrap().as_slice(), &secret);
        // Two seals of the same secret differ (fresh nonces).
        assert_ne!(key.seal(b"account a", &secret), sealed);

        assert_eq!(SealKey::generate().open(b"account a", &sealed), Err(SealError::WrongKey));
        assert_eq!(key.open(b"account b", &sealed), Err(SealError::WrongKey), "bound to its context");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(b"account a", &flipped), Err(SealError::WrongKey));
        assert_eq!(key.open(b"account a", &sealed[..10]), Err(SealError::Malformed));
        let mut version = sealed.clone();
        version[0] = 9;
        assert_eq!(key.open(b"account a", &version), Err(SealError::Malformed));
        assert_eq!(format!("{key:?}"), "SealKey(..)");
    }

    #[test]
    fn derived_keys_seal_many_and_open_only_under_their_label_and_context() {
        let node = SealKey::generate();
        let chat = node.derive(b"chat");
        assert_eq!(node.derive(b"chat").to_bytes(), chat.to_bytes(), "derivation is deterministic");
        assert_ne!(node.derive(b"other").to_bytes(), chat.to_bytes());
        assert_ne!(chat.to_bytes(), node.to_bytes());
        let secret = b"a ratchet's state".to_vec();
        let sealed = chat.seal_many(b"row 1", &secret);
        assert_eq!(sealed.len(), 1 + 24 + secret.len() + 16);
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()));
        assert_eq!(chat.open_many(b"row 1", &sealed).unwrap().as_slice(), secret.as_slice());
        assert_ne!(chat.seal_many(b"row 1", &secret), sealed, "fresh nonces");
        assert_eq!(chat.open_many(b"row 2", &sealed), Err(SealError::WrongKey), "bound to its context");
        assert_eq!(node.open_many(b"row 1", &sealed), Err(SealError::WrongKey), "not the node key");
        assert_eq!(node.derive(b"other").open_many(b"row 1", &sealed), Err(SealError::WrongKey));
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert_eq!(chat.open_many(b"row 1", &flipped), Err(SealError::WrongKey));
        assert_eq!(chat.open_many(b"row 1", &sealed[..20]), Err(SealError::Malformed));
        assert_eq!(chat.open(b"row 1", &sealed), Err(SealError::Malformed), "the formats do not mix");
        assert_eq!(chat.open_many(b"c", &chat.seal(b"c", b"x")), Err(SealError::Malformed));
    }

    #[test]
    fn passphrase_keys_depend_on_passphrase_and_salt() {
        let salt = [1u8; SALT_LEN];
        let a = SealKey::from_passphrase(b"correct horse", &salt).unwrap();
        let sealed = a.seal(b"c", b"secret");
        let again = SealKey::from_passphrase(b"correct horse", &salt).unwrap();
        assert_eq!(again.open(b"c", &sealed).unwrap().as_slice(), b"secret");
        let wrong = SealKey::from_passphrase(b"correct horsf", &salt).unwrap();
        assert_eq!(wrong.open(b"c", &sealed), Err(SealError::WrongKey));
        let other_salt = SealKey::from_passphrase(b"correct horse", &[2u8; SALT_LEN]).unwrap();
        assert_eq!(other_salt.open(b"c", &sealed), Err(SealError::WrongKey));
        assert!(matches!(SealKey::from_passphrase(b"x", b"short"), Err(SealError::Passphrase(_))));
    }
}
