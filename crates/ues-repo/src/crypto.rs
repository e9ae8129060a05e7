//! Repository signing keys: secp256k1 (the default) and NIST P-256, as AT Protocol allows.
//!
//! Signatures are ECDSA over SHA-256 of the message, 64 bytes compact (r ++ s), always low-S.
//! Verification refuses high-S and DER-encoded signatures. Public keys travel as `did:key`
//! multikeys: multicodec prefix (secp256k1 `0xe7 0x01`, P-256 `0x80 0x24`) plus the compressed
//! point, base58btc with the `z` multibase prefix.

use k256::ecdsa::signature::{Signer, Verifier};
use rand::rngs::OsRng;

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A `did:key` or multibase string that does not decode to a supported key.
    #[error("bad key encoding: {0}")]
    BadKey(String),
    /// A signature that is not 64 bytes (DER, truncated).
    #[error("signature must be 64 bytes (r ++ s), got {0}")]
    BadSignatureLength(usize),
    /// A signature in the high-S form, which AT Protocol forbids (malleability).
    #[error("signature is not in low-S form")]
    HighS,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
}

/// The curves AT Protocol allows for repository signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// secp256k1 (`ES256K`), the default.
    K256,
    /// NIST P-256 (`ES256`).
    P256,
}

impl KeyType {
    fn multicodec(self) -> [u8; 2] {
        match self {
            KeyType::K256 => [0xe7, 0x01],
            KeyType::P256 => [0x80, 0x24],
        }
    }

    /// The JWT `alg` name.
    pub fn jwt_alg(self) -> &'static str {
        match self {
            KeyType::K256 => "ES256K",
            KeyType::P256 => "ES256",
        }
    }
}

/// A private signing key.
#[derive(Clone)]
pub enum Keypair {
    /// secp256k1.
    K256(k256::ecdsa::SigningKey),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public().did_key())
    }
}

impl Keypair {
    /// A fresh random key.
    pub fn generate(kind: KeyType) -> Self {
        match kind {
            KeyType::K256 => Keypair::K256(k256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::P256 => Keypair::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
        }
    }

    /// Imports a 32-byte secret scalar.
    pub fn from_bytes(kind: KeyType, secret: &[u8]) -> Result<Self, CryptoError> {
        let bad = |e: ecdsa_err::Error| CryptoError::BadKey(e.to_string());
        Ok(match kind {
            KeyType::K256 => Keypair::K256(k256::ecdsa::SigningKey::from_slice(secret).map_err(bad)?),
            KeyType::P256 => Keypair::P256(p256::ecdsa::SigningKey::from_slice(secret).map_err(bad)?),
        })
    }

    /// Exports the 32-byte secret scalar.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Keypair::K256(k) => k.to_bytes().to_vec(),
            Keypair::P256(k) => k.to_bytes().to_vec(),
        }
    }

    /// The curve.
    pub fn key_type(&self) -> KeyType {
        match self {
            Keypair::K256(_) => KeyType::K256,
            Keypair::P256(_) => KeyType::P256,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        match self {
            Keypair::K256(k) => PublicKey::K256(*k.verifying_key()),
            Keypair::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    /// Signs SHA-256(`msg`): 64 bytes, low-S.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let bytes = match self {
            Keypair::K256(k) => {
                let sig: k256::ecdsa::Signature = k.sign(msg);
                sig.normalize_s().unwrap_or(sig).to_bytes()
            }
            Keypair::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.normalize_s().unwrap_or(sig).to_bytes()
            }
        };
        bytes.into()
    }
}

/// `ecdsa`'s error type, reached through k256 so that both curves share one version.
mod ecdsa_err {
    pub(crate) use k256::ecdsa::Error;
}

/// A public verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKey {
    /// secp256k1.
    K256(k256::ecdsa::VerifyingKey),
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// The curve.
    pub fn key_type(&self) -> KeyType {
        match self {
            PublicKey::K256(_) => KeyType::K256,
            PublicKey::P256(_) => KeyType::P256,
        }
    }

    /// The 33-byte compressed SEC1 point.
    pub fn compressed(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(k) => k.to_encoded_point(true).as_bytes().to_vec(),
            PublicKey::P256(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        }
    }

    /// Parses a SEC1 point (compressed or not) on the given curve.
    pub fn from_sec1(kind: KeyType, bytes: &[u8]) -> Result<Self, CryptoError> {
        let bad = |e: ecdsa_err::Error| CryptoError::BadKey(e.to_string());
        Ok(match kind {
            KeyType::K256 => PublicKey::K256(k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(bad)?),
            KeyType::P256 => PublicKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(bad)?),
        })
    }

    /// The multibase multikey (`z` + base58btc(multicodec ++ compressed point)), as DID
    /// documents carry it in `publicKeyMultibase`.
    pub fn multikey(&self) -> String {
        let mut raw = self.key_type().multicodec().to_vec();
        raw.extend_from_slice(&self.compressed());
        format!("z{}", bs58::encode(raw).into_string())
    }

    /// `did:key:` + [`PublicKey::multikey`].
    pub fn did_key(&self) -> String {
        format!("did:key:{}", self.multikey())
    }

    /// Parses a multikey (`z...` with a multicodec prefix).
    pub fn from_multikey(s: &str) -> Result<Self, CryptoError> {
        let b58 = s.strip_prefix('z').ok_or_else(|| CryptoError::BadKey("multibase must be base58btc ('z')".into()))?;
        let raw = bs58::decode(b58).into_vec().map_err(|e| CryptoError::BadKey(e.to_string()))?;
        match raw.get(..2) {
            Some([0xe7, 0x01]) => Self::from_sec1(KeyType::K256, &raw[2..]),
            Some([0x80, 0x24]) => Self::from_sec1(KeyType::P256, &raw[2..]),
            _ => Err(CryptoError::BadKey("unsupported multicodec (not secp256k1 or P-256)".into())),
        }
    }

    /// Parses `did:key:z...`.
    pub fn from_did_key(s: &str) -> Result<Self, CryptoError> {
        Self::from_multikey(s.strip_prefix("did:key:").ok_or_else(|| CryptoError::BadKey("not a did:key".into()))?)
    }

    /// Parses a legacy `publicKeyMultibase` (no multicodec prefix; the curve comes from the
    /// verification method's type).
    pub fn from_legacy_multibase(kind: KeyType, s: &str) -> Result<Self, CryptoError> {
        let b58 = s.strip_prefix('z').ok_or_else(|| CryptoError::BadKey("multibase must be base58btc ('z')".into()))?;
        let raw = bs58::decode(b58).into_vec().map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_sec1(kind, &raw)
    }

    /// Verifies a 64-byte low-S signature over SHA-256(`msg`). DER and high-S are refused.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if sig.len() != 64 {
            return Err(CryptoError::BadSignatureLength(sig.len()));
        }
        match self {
            PublicKey::K256(k) => {
                let s = k256::ecdsa::Signature::from_slice(sig).map_err(|_| CryptoError::Invalid)?;
                if s.normalize_s().is_some() {
                    return Err(CryptoError::HighS);
                }
                k.verify(msg, &s).map_err(|_| CryptoError::Invalid)
            }
            PublicKey::P256(k) => {
                let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| CryptoError::Invalid)?;
                if s.normalize_s().is_some() {
                    return Err(CryptoError::HighS);
                }
                k.verify(msg, &s).map_err(|_| CryptoError::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_on_both_curves_and_did_key_prefixes() {
        for (kind, prefix) in [(KeyType::K256, "did:key:zQ3sh"), (KeyType::P256, "did:key:zDnae")] {
            let key = Keypair::generate(kind);
            let sig = key.sign(b"hello");
            let public = key.public();
            public.verify(b"hello", &sig).unwrap();
            assert_eq!(public.verify(b"hellp", &sig), Err(CryptoError::Invalid));
            assert!(public.did_key().starts_with(prefix), "{}", public.did_key());
            assert_eq!(PublicKey::from_did_key(&public.did_key()).unwrap(), public);
            let again = Keypair::from_bytes(kind, &key.to_bytes()).unwrap();
            assert_eq!(again.public(), public);
        }
    }
}
