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

/// Why a handle did not resolve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// Nothing answered, or the answer was not a DID.
    #[error("handle {handle} did not resolve: {reason}")]
    Unresolved {
        /// The handle.
        handle: String,
        /// Why.
        reason: String,
    },
    /// The handle resolves to another DID than the one claiming it.
    #[error("handle {handle} resolves to {found}, not {expected}")]
    Mismatch {
        /// The handle.
        handle: String,
        /// The DID it resolved to.
        found: String,
        /// The DID that claimed it.
        expected: String,
    },
}

/// Resolves handles through `https://<handle>/.well-known/atproto-did`.
///
/// DNS TXT (`_atproto.<handle>`) is not consulted yet: the node has no DNS resolver dependency.
#[derive(Debug, Clone)]
pub struct HandleResolver {
    agent: ureq::Agent,
    /// `https://{handle}` unless overridden (tests point it at a local server).
    base_for: fn(&str) -> String,
}

fn https_base(handle: &str) -> String {
    format!("https://{handle}")
}

impl Default for HandleResolver {
    fn default() -> Self {
        Self::with_base(https_base)
    }
}

impl HandleResolver {
    /// A resolver that fetches from `base_for(handle)` + `/.well-known/atproto-did`.
    pub fn with_base(base_for: fn(&str) -> String) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build();
        Self { agent: config.into(), base_for }
    }

    /// The DID a handle names.
    pub fn resolve(&self, handle: &Handle) -> Result<Did, HandleError> {
        let unresolved = |reason: String| HandleError::Unresolved { handle: handle.to_string(), reason };
        let url = format!("{}/.well-known/atproto-did", (self.base_for)(handle.as_str()));
        let mut resp = self.agent.get(&url).call().map_err(|e| unresolved(e.to_string()))?;
        if resp.status().as_u16() != 200 {
            return Err(unresolved(format!("HTTP {}", resp.status().as_u16())));
        }
        // A DID is at most 2 KiB; anything longer is not an answer.
        let body = resp.body_mut().with_config().limit(4096).read_to_string().map_err(|e| unresolved(e.to_string()))?;
        Did::new(body.trim()).map_err(|e| unresolved(e.to_string()))
    }

    /// Checks that `handle` resolves to `did` (bidirectional verification's second half).
    pub fn verify(&self, handle: &Handle, did: &Did) -> Result<(), HandleError> {
        let found = self.resolve(handle)?;
        if &found != did {
            return Err(HandleError::Mismatch {
                handle: handle.to_string(),
                found: found.to_string(),
                expected: did.to_string(),
            });
        }
        Ok(())
    }
}
