//! W3C Bitstring Status List v1.0: revocation as one bit per credential in a published list.
//!
//! Bit `i` is bit `7 - i % 8` of byte `i / 8` (index 0 is the most significant bit of the first
//! byte). The list is published as `encodedList`: multibase base64url without padding (`u…`) of
//! the GZIP-compressed bits.

use std::io::{Read, Write};

use data_encoding::BASE64URL_NOPAD;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use rand::Rng;
use serde_json::{Value, json};

use super::{CredentialError, VC_V2_CONTEXT, check_date_time};

/// Entries in a list made here: the specification's minimum (16 KiB), which is also what keeps
/// a credential's index from telling much about when it was issued.
pub const STATUS_LIST_BITS: usize = 131_072;
/// Bytes of a list made here.
pub const STATUS_LIST_BYTES: usize = STATUS_LIST_BITS / 8;
/// The only status purpose made here.
pub const STATUS_PURPOSE: &str = "revocation";

/// Random picks tried before [`StatusList::random_free_index`] counts the free entries.
const RANDOM_TRIES: usize = 64;

/// A bitstring status list.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusList {
    bits: Vec<u8>,
}

impl Default for StatusList {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StatusList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: usize = self.bits.iter().map(|b| b.count_ones() as usize).sum();
        write!(f, "StatusList({} entries, {set} set)", self.len())
    }
}

impl StatusList {
    /// A list of [`STATUS_LIST_BITS`] entries, all clear.
    pub fn new() -> Self {
        Self { bits: vec![0; STATUS_LIST_BYTES] }
    }

    /// Its entries (bits).
    pub fn len(&self) -> usize {
        self.bits.len() * 8
    }

    /// Never: a list has at least [`STATUS_LIST_BITS`] entries.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// A list from its stored bits (`None` unless exactly [`STATUS_LIST_BYTES`] long).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == STATUS_LIST_BYTES).then(|| Self { bits: bytes.to_vec() })
    }

    /// The bits, index 0 the first byte's top bit.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Entry `index`.
    pub fn get(&self, index: usize) -> Result<bool, CredentialError> {
        let byte = self.bits.get(index / 8).ok_or(CredentialError::StatusIndexOutOfRange { index, len: self.len() })?;
        Ok(byte & (0x80 >> (index % 8)) != 0)
    }

    /// Sets entry `index` (to revoke: `true`).
    pub fn set(&mut self, index: usize, value: bool) -> Result<(), CredentialError> {
        let len = self.len();
        let byte = self.bits.get_mut(index / 8).ok_or(CredentialError::StatusIndexOutOfRange { index, len })?;
        let mask = 0x80 >> (index % 8);
        if value {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
        Ok(())
    }

    /// A uniformly random entry that is clear here and not `taken` (an index already handed to
    /// a credential), or `None` when there is none. Tries random entries first, then counts.
    pub fn random_free_index<R: Rng + ?Sized>(&self, rng: &mut R, taken: impl Fn(usize) -> bool) -> Option<usize> {
        let free = |i: usize| self.bits[i / 8] & (0x80 >> (i % 8)) == 0 && !taken(i);
        for _ in 0..RANDOM_TRIES {
            let i = rng.gen_range(0..self.len());
            if free(i) {
                return Some(i);
            }
        }
        // Nearly full: choose among the free ones, so the pick stays uniform.
        let count = (0..self.len()).filter(|&i| free(i)).count();
        if count == 0 {
            return None;
        }
        (0..self.len()).filter(|&i| free(i)).nth(rng.gen_range(0..count))
    }

    /// The `encodedList`: `u` + base64url (no padding) of the GZIP-compressed bits.
    pub fn encode(&self) -> String {
        let mut gzip = GzEncoder::new(Vec::with_capacity(256), Compression::default());
        gzip.write_all(&self.bits).expect("writing to a Vec");
        let compressed = gzip.finish().expect("writing to a Vec");
        format!("u{}", BASE64URL_NOPAD.encode(&compressed))
    }

    /// Decodes an `encodedList`, inflating at most `max_inflated` bytes (a small GZIP stream can
    /// inflate to gigabytes). Lists shorter than 16 KiB are refused, as the specification asks.
    pub fn decode(encoded: &str, max_inflated: usize) -> Result<Self, CredentialError> {
        // Base64 of GZIP of `max_inflated` bytes, even incompressible ones, is well below this.
        let max_encoded = max_inflated.saturating_mul(2).saturating_add(1024);
        if encoded.len() > max_encoded {
            return Err(CredentialError::StatusListTooLarge { max: max_inflated });
        }
        let body = encoded.strip_prefix('u').ok_or_else(|| {
            CredentialError::InvalidStatusList("encodedList must be multibase base64url ('u')".into())
        })?;
        let compressed = BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| CredentialError::InvalidStatusList(format!("encodedList is not base64url: {e}")))?;
        let mut bits = Vec::with_capacity(STATUS_LIST_BYTES.min(max_inflated));
        MultiGzDecoder::new(compressed.as_slice())
            .take(max_inflated as u64 + 1)
            .read_to_end(&mut bits)
            .map_err(|e| CredentialError::InvalidStatusList(format!("encodedList is not GZIP: {e}")))?;
        if bits.len() > max_inflated {
            return Err(CredentialError::StatusListTooLarge { max: max_inflated });
        }
        if bits.len() < STATUS_LIST_BYTES {
            return Err(CredentialError::InvalidStatusList(format!(
                "the list is {} bytes, less than the {STATUS_LIST_BYTES} required",
                bits.len()
            )));
        }
        Ok(Self { bits })
    }
}

/// A credential's `credentialStatus`: entry `index` of the list published at `list_url`.
pub fn status_entry(list_url: &str, index: usize) -> Value {
    json!({
        "id": format!("{list_url}#{index}"),
        "type": "BitstringStatusListEntry",
        "statusPurpose": STATUS_PURPOSE,
        "statusListIndex": index.to_string(),
        "statusListCredential": list_url,
    })
}

/// The unsigned status list credential published at `list_url` (sign it with the same key as
/// the credentials it covers: verifiers check the issuers match).
pub fn status_list_credential(
    list_url: &str,
    issuer: &str,
    valid_from: &str,
    list: &StatusList,
) -> Result<Value, CredentialError> {
    check_date_time("validFrom", valid_from)?;
    Ok(json!({
        "@context": [VC_V2_CONTEXT],
        "id": list_url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer,
        "validFrom": valid_from,
        "credentialSubject": {
            "id": format!("{list_url}#list"),
            "type": "BitstringStatusList",
            "statusPurpose": STATUS_PURPOSE,
            "encodedList": list.encode(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn index_zero_is_the_first_bytes_top_bit() {
        let mut list = StatusList::new();
        list.set(0, true).unwrap();
        list.set(9, true).unwrap();
        list.set(STATUS_LIST_BITS - 1, true).unwrap();
        assert_eq!(list.as_bytes()[0], 0x80);
        assert_eq!(list.as_bytes()[1], 0x40);
        assert_eq!(list.as_bytes()[STATUS_LIST_BYTES - 1], 0x01);
        assert!(list.get(0).unwrap() && list.get(9).unwrap() && !list.get(1).unwrap());
        list.set(0, false).unwrap();
        assert_eq!(list.as_bytes()[0], 0);
        assert!(matches!(list.get(STATUS_LIST_BITS), Err(CredentialError::StatusIndexOutOfRange { .. })));
        assert!(list.set(STATUS_LIST_BITS, true).is_err());
        assert_eq!(format!("{list:?}"), "StatusList(131072 entries, 2 set)");
    }

    #[test]
    fn an_empty_list_encodes_small() {
        let encoded = StatusList::new().encode();
        assert!(encoded.starts_with("uH4sI"), "{encoded}"); // GZIP magic 1f 8b 08
        assert!(encoded.len() < 200, "{}", encoded.len());
        assert_eq!(StatusList::decode(&encoded, STATUS_LIST_BYTES).unwrap(), StatusList::new());
    }

    fn gzip(bytes: &[u8]) -> String {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::best());
        gzip.write_all(bytes).unwrap();
        format!("u{}", BASE64URL_NOPAD.encode(&gzip.finish().unwrap()))
    }

    #[test]
    fn refuses_gzip_bombs() {
        // 16 MiB of zeros: about 16 KiB compressed, refused after inflating 16 KiB + 1.
        let bomb = gzip(&vec![0; 16 << 20]);
        assert!(bomb.len() < 32 << 10, "{}", bomb.len());
        assert!(matches!(
            StatusList::decode(&bomb, STATUS_LIST_BYTES),
            Err(CredentialError::StatusListTooLarge { max: STATUS_LIST_BYTES })
        ));
        // The same list under a larger bound is fine.
        let big = gzip(&vec![0; 4 * STATUS_LIST_BYTES]);
        assert_eq!(StatusList::decode(&big, 4 * STATUS_LIST_BYTES).unwrap().len(), 4 * STATUS_LIST_BITS);
        assert!(StatusList::decode(&big, 4 * STATUS_LIST_BYTES - 1).is_err());
        // An encoded string too long to be a list of the bound at all, refused before decoding.
        let long = format!("u{}", "A".repeat(3 * STATUS_LIST_BYTES));
        assert!(matches!(
            StatusList::decode(&long, STATUS_LIST_BYTES),
            Err(CredentialError::StatusListTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_malformed_lists() {
        let short = gzip(&[0; STATUS_LIST_BYTES - 1]);
        let good = StatusList::new().encode();
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 4);
        let mut corrupt: Vec<u8> = BASE64URL_NOPAD.decode(&good.as_bytes()[1..]).unwrap();
        let n = corrupt.len();
        corrupt[n - 6] ^= 1; // the CRC
        let corrupt = format!("u{}", BASE64URL_NOPAD.encode(&corrupt));
        for bad in [
            short,
            format!("z{}", &good[1..]),
            good[1..].to_owned(),
            format!("{good}="),
            truncated,
            corrupt,
            "u".into(),
            "".into(),
        ] {
            assert!(matches!(StatusList::decode(&bad, 1 << 20), Err(CredentialError::InvalidStatusList(_))), "{bad}");
        }
    }

    #[test]
    fn random_free_index_finds_the_last_free_entries() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut list = StatusList::new();
        let first = list.random_free_index(&mut rng, |_| false).unwrap();
        assert!(first < STATUS_LIST_BITS);
        // All revoked but three; one of those is taken.
        for i in 0..STATUS_LIST_BITS {
            list.set(i, true).unwrap();
        }
        for i in [5, 77_777, STATUS_LIST_BITS - 1] {
            list.set(i, false).unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let i = list.random_free_index(&mut rng, |i| i == 5).unwrap();
            assert!(i == 77_777 || i == STATUS_LIST_BITS - 1, "{i}");
            seen.insert(i);
        }
        assert_eq!(seen.len(), 2, "both free entries are picked");
        assert_eq!(list.random_free_index(&mut rng, |i| [5, 77_777, STATUS_LIST_BITS - 1].contains(&i)), None);
    }

    #[test]
    fn builds_entries_and_list_credentials() {
        let url = "https://node.example/xrpc/dev.ues.credential.getStatusList?list=1";
        let entry = status_entry(url, 94_567);
        assert_eq!(entry["id"], format!("{url}#94567"));
        assert_eq!(entry["type"], "BitstringStatusListEntry");
        assert_eq!(entry["statusPurpose"], "revocation");
        assert_eq!(entry["statusListIndex"], "94567");
        assert_eq!(entry["statusListCredential"], url);

        let mut list = StatusList::new();
        list.set(94_567, true).unwrap();
        let credential = status_list_credential(url, "did:key:z6Mkx", "2025-01-01T00:00:00Z", &list).unwrap();
        assert_eq!(credential["@context"], json!([VC_V2_CONTEXT]));
        assert_eq!(credential["id"], url);
        assert_eq!(credential["type"], json!(["VerifiableCredential", "BitstringStatusListCredential"]));
        assert_eq!(credential["issuer"], "did:key:z6Mkx");
        assert_eq!(credential["credentialSubject"]["id"], format!("{url}#list"));
        assert_eq!(credential["credentialSubject"]["type"], "BitstringStatusList");
        let decoded =
            StatusList::decode(credential["credentialSubject"]["encodedList"].as_str().unwrap(), STATUS_LIST_BYTES);
        assert!(decoded.unwrap().get(94_567).unwrap());
        assert!(status_list_credential(url, "did:key:z6Mkx", "soon", &list).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn encode_decode_roundtrips(set in prop::collection::btree_set(0..STATUS_LIST_BITS, 0..300), noise in any::<bool>()) {
            let mut list = StatusList::new();
            for &i in &set {
                list.set(i, true).unwrap();
            }
            if noise {
                // Incompressible lists round-trip too, within the 16 KiB bound.
                let mut rng = StdRng::seed_from_u64(set.len() as u64);
                rng.fill(&mut list.bits[..]);
            }
            let decoded = StatusList::decode(&list.encode(), STATUS_LIST_BYTES).unwrap();
            prop_assert_eq!(&decoded, &list);
            if !noise {
                for i in (0..STATUS_LIST_BITS).step_by(997).chain(set.iter().copied()) {
                    prop_assert_eq!(decoded.get(i).unwrap(), set.contains(&i));
                }
            }
        }

        #[test]
        fn decode_never_panics(s in "u[A-Za-z0-9_-]{0,200}") {
            let _ = StatusList::decode(&s, STATUS_LIST_BYTES);
        }
    }
}

/// Arbitrary encoded lists (a status list fetched from anywhere): refused or read, never a panic.
#[cfg(test)]
mod hostile {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_encoded_lists_never_panic(s in "u?[A-Za-z0-9_-]{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StatusList::decode(&s, 1 << 20);
            let encoded = format!("u{}", data_encoding::BASE64URL_NOPAD.encode(&bytes));
            let _ = StatusList::decode(&encoded, 1 << 20);
        }
    }
}
