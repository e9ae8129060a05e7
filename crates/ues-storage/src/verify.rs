use cid::Cid;
use multihash::Multihash;
use sha2::Digest;

use crate::{Error, Result};

/// Multihash code of sha2-256 (what AT Protocol uses).
pub const SHA2_256: u64 = 0x12;
/// Multihash code of BLAKE3 (UES-native content).
pub const BLAKE3: u64 = 0x1e;
/// Multihash code of the identity "hash" (the digest is the data).
pub const IDENTITY: u64 = 0x00;
/// Multicodec of raw bytes.
pub const RAW: u64 = 0x55;

/// Computes the CIDv1 of `data` with the given codec and hash (`SHA2_256` or `BLAKE3`).
pub fn cid_for(codec: u64, hash: u64, data: &[u8]) -> Result<Cid> {
    let mh = match hash {
        SHA2_256 => Multihash::<64>::wrap(SHA2_256, &sha2::Sha256::digest(data)),
        BLAKE3 => Multihash::<64>::wrap(BLAKE3, blake3::hash(data).as_bytes()),
        code => return Err(Error::UnsupportedHash { code }),
    }
    .expect("32-byte digests fit a 64-byte multihash");
    Ok(Cid::new_v1(codec, mh))
}

/// Checks that `data` hashes to the digest `cid` names. Returns [`Error::Corrupt`] when it does
/// not and [`Error::UnsupportedHash`] for hash functions this store does not know.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<()> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.digest() == sha2::Sha256::digest(data).as_slice(),
        BLAKE3 => mh.digest() == blake3::hash(data).as_bytes(),
        IDENTITY => mh.digest() == data,
        code => return Err(Error::UnsupportedHash { code }),
    };
    if ok { Ok(()) } else { Err(Error::Corrupt { cid: *cid }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_both_hashes_and_detects_a_flipped_bit() {
        for hash in [SHA2_256, BLAKE3] {
            let cid = cid_for(RAW, hash, b"hello").unwrap();
            verify_block(&cid, b"hello").unwrap();
            assert!(matches!(verify_block(&cid, b"hellp"), Err(Error::Corrupt { .. })));
        }
    }

    #[test]
    fn known_sha256_cid() {
        // The CID of the empty byte string, raw codec, sha2-256: a widely published constant.
        let cid = cid_for(RAW, SHA2_256, b"").unwrap();
        assert_eq!(cid.to_string(), "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
    }

    #[test]
    fn unknown_hash_is_refused() {
        let cid = Cid::new_v1(RAW, Multihash::<64>::wrap(0x13, &[0u8; 64]).unwrap());
        assert!(matches!(verify_block(&cid, b"x"), Err(Error::UnsupportedHash { code: 0x13 })));
    }
}
