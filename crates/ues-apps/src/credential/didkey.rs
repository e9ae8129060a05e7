//! Ed25519 `did:key` identifiers (W3C CCG did:key method) and their Multikey form.
//!
//! `did:key:z6Mk…`: multibase base58btc (`z`) of the multicodec `ed25519-pub` (varint 0xed 0x01)
//! followed by the 32-byte public key. The same `z6Mk…` string is the key's
//! `publicKeyMultibase` in a Multikey verification method, and the fragment of its verification
//! method id, `did:key:z6Mk…#z6Mk…`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{PUBLIC_KEY_LENGTH, VerifyingKey};
use serde_json::{Value, json};

/// The multicodec prefix of an Ed25519 public key (`ed25519-pub`, 0xed as an unsigned varint).
const ED25519_PUB: [u8; 2] = [0xed, 0x01];
/// The `did:key` method prefix.
const PREFIX: &str = "did:key:";
/// An Ed25519 key is 48 characters; other curves' keys are longer but below this, so they are
/// told apart (`UnsupportedKeyType`). Longer strings are refused before decoding, which is
/// quadratic in base58.
const MAX_MULTIBASE: usize = 128;

/// Why a string is not an Ed25519 `did:key` (or its Multikey or verification method).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DidKeyError {
    /// It does not start with `did:key:`.
    #[error("not a did:key")]
    NotDidKey,
    /// The multibase value does not start with `z` (base58btc).
    #[error("not multibase base58btc (must start with 'z')")]
    NotBase58btc,
    /// Not valid base58, or not in its one canonical spelling.
    #[error("invalid base58")]
    InvalidBase58,
    /// A key of another type than Ed25519 (the multicodec varint found).
    #[error("unsupported key type (multicodec {0:#x})")]
    UnsupportedKeyType(u64),
    /// Far longer than any Ed25519 multibase key (its length; refused before decoding).
    #[error("{0} characters is too long for an Ed25519 key")]
    TooLong(usize),
    /// The wrong number of key bytes.
    #[error("wrong key length {0} (Ed25519 keys are 32 bytes)")]
    WrongLength(usize),
    /// 32 bytes that are not a usable Ed25519 public key (not a curve point, or of small order).
    #[error("invalid Ed25519 public key")]
    InvalidKey,
    /// A verification method without a fragment, or whose fragment is not its key.
    #[error("the verification method's fragment must be its key")]
    FragmentMismatch,
}

/// An Ed25519 public key named as a `did:key`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DidKey(VerifyingKey);

impl DidKey {
    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The Multikey `publicKeyMultibase`: `z6Mk…`.
    pub fn multibase(&self) -> String {
        let mut bytes = [0u8; 2 + PUBLIC_KEY_LENGTH];
        bytes[..2].copy_from_slice(&ED25519_PUB);
        bytes[2..].copy_from_slice(self.0.as_bytes());
        format!("z{}", bs58::encode(bytes).into_string())
    }

    /// The DID: `did:key:z6Mk…`.
    pub fn did(&self) -> String {
        format!("{PREFIX}{}", self.multibase())
    }

    /// The id of its verification method: `did:key:z6Mk…#z6Mk…`.
    pub fn verification_method(&self) -> String {
        let multibase = self.multibase();
        format!("{PREFIX}{multibase}#{multibase}")
    }

    /// Its verification method as a Multikey (as its DID document lists it).
    pub fn multikey(&self) -> Value {
        json!({
            "id": self.verification_method(),
            "type": "Multikey",
            "controller": self.did(),
            "publicKeyMultibase": self.multibase(),
        })
    }

    /// Parses a Multikey `publicKeyMultibase` (`z6Mk…`).
    pub fn from_multibase(s: &str) -> Result<Self, DidKeyError> {
        if s.len() > MAX_MULTIBASE {
            return Err(DidKeyError::TooLong(s.len()));
        }
        let encoded = s.strip_prefix('z').ok_or(DidKeyError::NotBase58btc)?;
        // One spelling per key: base58 keeps leading zero bytes as '1's, which then fail the
        // prefix check below.
        let bytes = bs58::decode(encoded).into_vec().map_err(|_| DidKeyError::InvalidBase58)?;
        let key = match bytes.strip_prefix(&ED25519_PUB[..]) {
            Some(key) => key,
            None => return Err(DidKeyError::UnsupportedKeyType(multicodec(&bytes))),
        };
        let key: &[u8; PUBLIC_KEY_LENGTH] = key.try_into().map_err(|_| DidKeyError::WrongLength(key.len()))?;
        let key = VerifyingKey::from_bytes(key).map_err(|_| DidKeyError::InvalidKey)?;
        if key.is_weak() {
            return Err(DidKeyError::InvalidKey);
        }
        Ok(Self(key))
    }

    /// Parses a `did:key:z6Mk…` DID (no fragment).
    pub fn parse(did: &str) -> Result<Self, DidKeyError> {
        Self::from_multibase(did.strip_prefix(PREFIX).ok_or(DidKeyError::NotDidKey)?)
    }

    /// Parses a verification method id, `did:key:z6Mk…#z6Mk…`, whose fragment must be the key.
    pub fn parse_verification_method(id: &str) -> Result<Self, DidKeyError> {
        let (did, fragment) = id.split_once('#').ok_or(DidKeyError::FragmentMismatch)?;
        let key = Self::parse(did)?;
        if did.strip_prefix(PREFIX) != Some(fragment) {
            return Err(DidKeyError::FragmentMismatch);
        }
        Ok(key)
    }
}

/// The leading unsigned varint of a multicodec value (0 when there is none).
fn multicodec(bytes: &[u8]) -> u64 {
    let mut code = 0u64;
    for (i, b) in bytes.iter().take(9).enumerate() {
        code |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    code
}

impl From<VerifyingKey> for DidKey {
    fn from(key: VerifyingKey) -> Self {
        Self(key)
    }
}

impl FromStr for DidKey {
    type Err = DidKeyError;

    fn from_str(s: &str) -> Result<Self, DidKeyError> {
        Self::parse(s)
    }
}

impl fmt::Display for DidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did())
    }
}

impl fmt::Debug for DidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DidKey({})", self.did())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    /// RFC 8032 §7.1 test 1's secret key; its public key d75a9801…f707511a, multicodec-prefixed
    /// and base58btc-encoded (computed independently of this code), is the DID below.
    const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_DID: &str = "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw";

    fn rfc8032_key() -> DidKey {
        let secret: [u8; 32] = data_encoding::HEXLOWER.decode(RFC8032_SECRET.as_bytes()).unwrap().try_into().unwrap();
        DidKey::from(SigningKey::from_bytes(&secret).verifying_key())
    }

    #[test]
    fn encodes_a_known_key() {
        let key = rfc8032_key();
        assert_eq!(key.did(), RFC8032_DID);
        assert_eq!(key.to_string(), RFC8032_DID);
        assert_eq!(key.multibase(), &RFC8032_DID[8..]);
        assert_eq!(key.verification_method(), format!("{RFC8032_DID}#{}", &RFC8032_DID[8..]));
        assert_eq!(key.multikey()["publicKeyMultibase"], &RFC8032_DID[8..]);
        assert_eq!(key.multikey()["controller"], RFC8032_DID);
        assert_eq!(DidKey::parse(RFC8032_DID).unwrap(), key);
        assert_eq!(RFC8032_DID.parse::<DidKey>().unwrap(), key);
        assert_eq!(DidKey::parse_verification_method(&key.verification_method()).unwrap(), key);
    }

    #[test]
    fn refuses_what_is_not_an_ed25519_did_key() {
        let key = rfc8032_key();
        let z = key.multibase();
        let with_prefix =
            |prefix: &[u8], body: &[u8]| format!("did:key:z{}", bs58::encode([prefix, body].concat()).into_string());
        let secp256k1 = with_prefix(&[0xe7, 0x01], &[2; 33]);
        let p256 = with_prefix(&[0x80, 0x24], &[2; 33]);
        let short = with_prefix(&ED25519_PUB, &[1; 31]);
        let long = with_prefix(&ED25519_PUB, &[1; 33]);
        // The identity point: decompresses, but of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = with_prefix(&ED25519_PUB, &identity);
        let cases: Vec<(String, DidKeyError)> = vec![
            (format!("did:web:{z}"), DidKeyError::NotDidKey),
            (z.clone(), DidKeyError::NotDidKey),
            (format!("did:key:{}", &z[1..]), DidKeyError::NotBase58btc),
            (format!("did:key:u{}", &z[1..]), DidKeyError::NotBase58btc),
            (format!("did:key:z{}0", &z[1..z.len() - 1]), DidKeyError::InvalidBase58),
            (with_prefix(&[0, 0xed, 0x01], &[1; 31]), DidKeyError::UnsupportedKeyType(0)),
            (format!("did:key:z1{}", &z[1..]), DidKeyError::UnsupportedKeyType(0)),
            (secp256k1, DidKeyError::UnsupportedKeyType(0xe7)),
            (p256, DidKeyError::UnsupportedKeyType(0x1200)),
            (short, DidKeyError::WrongLength(31)),
            (long, DidKeyError::WrongLength(33)),
            (weak, DidKeyError::InvalidKey),
            (format!("did:key:z{}", "2".repeat(200)), DidKeyError::TooLong(201)),
            (format!("did:key:z{}", "2".repeat(127)), DidKeyError::UnsupportedKeyType(0x04)),
        ];
        for (input, want) in cases {
            assert_eq!(DidKey::parse(&input), Err(want.clone()), "{input}");
        }
        let did = key.did();
        let other = DidKey::from(SigningKey::from_bytes(&[1; 32]).verifying_key()).multibase();
        for vm in [did.clone(), format!("{did}#"), format!("{did}#key-1"), format!("{did}#{other}")] {
            assert_eq!(DidKey::parse_verification_method(&vm), Err(DidKeyError::FragmentMismatch), "{vm}");
        }
    }

    proptest! {
        #[test]
        fn roundtrips(secret in any::<[u8; 32]>()) {
            let key = DidKey::from(SigningKey::from_bytes(&secret).verifying_key());
            prop_assert!(key.did().starts_with("did:key:z6Mk"));
            prop_assert_eq!(DidKey::parse(&key.did()), Ok(key));
            prop_assert_eq!(DidKey::from_multibase(&key.multibase()), Ok(key));
            prop_assert_eq!(DidKey::parse_verification_method(&key.verification_method()), Ok(key));
        }

        #[test]
        fn never_panics(s in "did:key:z[1-9A-HJ-NP-Za-km-z]{0,60}") {
            let _ = DidKey::parse(&s);
        }
    }
}
