//! DID documents: the ones this node publishes for its accounts, and reading the parts AT
//! Protocol needs (signing key, PDS endpoint, handle) out of any document.

use serde_json::{Value, json};

use crate::crypto::{CryptoError, PublicKey};
use crate::syntax::{Did, Handle};

/// What AT Protocol reads from a DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtprotoIdentity {
    /// The DID.
    pub did: Did,
    /// The handle the document claims (to be confirmed by resolving the handle).
    pub handle: Option<Handle>,
    /// The repository signing key (`#atproto`).
    pub signing_key: Option<PublicKey>,
    /// The PDS endpoint (`#atproto_pds`).
    pub pds_endpoint: Option<String>,
}

/// Builds the DID document of an account hosted here.
pub fn did_document(did: &Did, handle: &Handle, signing_key: &PublicKey, pds_endpoint: &str) -> Value {
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did.as_str(),
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did.as_str(),
            "publicKeyMultibase": signing_key.multikey(),
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds_endpoint,
        }]
    })
}

fn matches_fragment(id: Option<&str>, did: &str, fragment: &str) -> bool {
    id.is_some_and(|id| id == fragment || id.strip_prefix(did) == Some(fragment))
}

/// Reads the AT Protocol parts of a DID document. Unknown or malformed entries are ignored;
/// a document for another DID is refused.
pub fn parse_did_document(doc: &Value, expected: &Did) -> Result<AtprotoIdentity, CryptoError> {
    if doc.get("id").and_then(Value::as_str) != Some(expected.as_str()) {
        return Err(CryptoError::BadKey(format!("document is not for {expected}")));
    }
    let handle = doc
        .get("alsoKnownAs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|aka| aka.strip_prefix("at://").and_then(|h| Handle::new(h).ok()));
    let signing_key = doc
        .get("verificationMethod")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|vm| matches_fragment(vm.get("id").and_then(Value::as_str), expected.as_str(), "#atproto"))
        .and_then(|vm| {
            let mb = vm.get("publicKeyMultibase")?.as_str()?;
            match vm.get("type").and_then(Value::as_str) {
                Some("Multikey") => PublicKey::from_multikey(mb).ok(),
                Some("EcdsaSecp256k1VerificationKey2019") => {
                    PublicKey::from_legacy_multibase(crate::crypto::KeyType::K256, mb).ok()
                }
                Some("EcdsaSecp256r1VerificationKey2019") => {
                    PublicKey::from_legacy_multibase(crate::crypto::KeyType::P256, mb).ok()
                }
                _ => None,
            }
        });
    let pds_endpoint = doc
        .get("service")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|s| {
            matches_fragment(s.get("id").and_then(Value::as_str), expected.as_str(), "#atproto_pds")
                && s.get("type").and_then(Value::as_str) == Some("AtprotoPersonalDataServer")
        })
        .and_then(|s| s.get("serviceEndpoint")?.as_str().map(str::to_string));
    Ok(AtprotoIdentity { did: expected.clone(), handle, signing_key, pds_endpoint })
}

/// The `did:web` DID of a hostname (a port is percent-encoded, as the method requires).
pub fn did_web(host: &str) -> Result<Did, crate::syntax::SyntaxError> {
    Did::new(format!("did:web:{}", host.replace(':', "%3A")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyType, Keypair};

    #[test]
    fn build_then_parse() {
        let key = Keypair::generate(KeyType::K256).public();
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let handle = Handle::new("alice.test").unwrap();
        let doc = did_document(&did, &handle, &key, "http://127.0.0.1:2583");
        let id = parse_did_document(&doc, &did).unwrap();
        assert_eq!(id.handle, Some(handle));
        assert_eq!(id.signing_key, Some(key));
        assert_eq!(id.pds_endpoint.as_deref(), Some("http://127.0.0.1:2583"));
        assert!(parse_did_document(&doc, &Did::new("did:plc:other").unwrap()).is_err());
        assert_eq!(did_web("localhost:2583").unwrap().as_str(), "did:web:localhost%3A2583");
    }
}
