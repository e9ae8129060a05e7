//! DID documents as a did:web host or a PLC directory serves them (anyone's, up to the
//! resolver's size bound): reading the AT Protocol parts of any JSON never panics, refuses a
//! document for another DID, and a signing key it reads re-encodes to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::repo::crypto::PublicKey;
use ues_sync::repo::dids::MAX_DOCUMENT_BYTES;
use ues_sync::repo::identity::parse_did_document;
use ues_sync::repo::syntax::Did;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_DOCUMENT_BYTES {
        return;
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let other = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").expect("a valid DID");
    if doc.get("id").and_then(|v| v.as_str()) != Some(other.as_str()) {
        assert!(parse_did_document(&doc, &other).is_err(), "another DID's document is refused");
    }
    let Some(id) = doc.get("id").and_then(|v| v.as_str()).and_then(|s| Did::new(s).ok()) else { return };
    if let Ok(found) = parse_did_document(&doc, &id) {
        assert_eq!(found.did, id);
        if let Some(key) = found.signing_key {
            assert_eq!(PublicKey::from_multikey(&key.multikey()).expect("re-encoded"), key);
        }
    }
});
