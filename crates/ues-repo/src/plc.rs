//! did:plc: operations built and signed locally, the DID derived from the genesis operation,
//! and validation of a DID's audit log (signatures by the right rotation keys, strict signature
//! encoding, nullification within the 72-hour recovery window, nothing after a tombstone).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cid::Cid;
use serde_json::{Map, Value, json};
use ues_ipld::{DAG_CBOR, cid_sha256, dagcbor, json as atjson};

use crate::crypto::{Keypair, PublicKey};
use crate::syntax::Datetime;

/// Why a PLC operation or log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlcError {
    /// The operation is not a well-formed PLC operation.
    #[error("malformed operation {index}: {reason}")]
    Malformed {
        /// Position in the log.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No allowed rotation key produced the signature.
    #[error("operation {0}: signature does not verify with any allowed rotation key")]
    BadSignature(usize),
    /// The log's claimed CID or DID does not match the operation.
    #[error("operation {index}: {what} mismatch")]
    Mismatch {
        /// Position in the log.
        index: usize,
        /// "cid" or "did".
        what: &'static str,
    },
    /// The chain of active operations or a nullification breaks the rules.
    #[error("operation {index}: {reason}")]
    Chain {
        /// Position in the log.
        index: usize,
        /// Which rule.
        reason: String,
    },
}

/// The CID of an operation (signed, as JSON).
pub fn operation_cid(op: &Value) -> Result<Cid, String> {
    let ipld = atjson::from_json(op).map_err(|e| e.to_string())?;
    Ok(cid_sha256(DAG_CBOR, &dagcbor::encode(&ipld)))
}

/// The DID a genesis operation creates: `did:plc:` + the first 24 characters of
/// base32(sha256(DAG-CBOR of the signed operation)).
pub fn did_for_genesis(op: &Value) -> Result<String, String> {
    let ipld = atjson::from_json(op).map_err(|e| e.to_string())?;
    let hash = sha2_256(&dagcbor::encode(&ipld));
    let b32 = data_encoding::BASE32_NOPAD.encode(&hash).to_ascii_lowercase();
    Ok(format!("did:plc:{}", &b32[..24]))
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn unsigned_bytes(op: &Value) -> Result<Vec<u8>, String> {
    let mut m = op.as_object().ok_or("operation is not an object")?.clone();
    m.remove("sig");
    let ipld = atjson::from_json(&Value::Object(m)).map_err(|e| e.to_string())?;
    Ok(dagcbor::encode(&ipld))
}

/// Signs an unsigned operation: adds `sig` (base64url, no padding, low-S).
pub fn sign_operation(mut op: Map<String, Value>, key: &Keypair) -> Result<Value, String> {
    op.remove("sig");
    let bytes = unsigned_bytes(&Value::Object(op.clone()))?;
    op.insert("sig".into(), Value::String(URL_SAFE_NO_PAD.encode(key.sign(&bytes))));
    Ok(Value::Object(op))
}

/// What a new account's genesis operation says.
#[derive(Debug, Clone)]
pub struct Genesis {
    /// Rotation keys (did:key), most authoritative first.
    pub rotation_keys: Vec<String>,
    /// The repository signing key (did:key), published as `verificationMethods.atproto`.
    pub signing_key: String,
    /// The handle (without `at://`).
    pub handle: String,
    /// The PDS endpoint URL.
    pub pds_endpoint: String,
}

impl Genesis {
    /// Builds and signs the genesis operation with `rotation_key` (which must be listed);
    /// returns the operation and the DID it creates.
    pub fn sign(&self, rotation_key: &Keypair) -> Result<(Value, String), String> {
        let signed = sign_operation(self.unsigned(None), rotation_key)?;
        let did = did_for_genesis(&signed)?;
        Ok((signed, did))
    }

    /// The unsigned operation stating this identity, after `prev` (`None`: a genesis).
    fn unsigned(&self, prev: Option<&str>) -> Map<String, Value> {
        let op = json!({
            "type": "plc_operation",
            "rotationKeys": self.rotation_keys,
            "verificationMethods": { "atproto": self.signing_key },
            "alsoKnownAs": [format!("at://{}", self.handle)],
            "services": { "atproto_pds": { "type": "AtprotoPersonalDataServer", "endpoint": self.pds_endpoint } },
            "prev": prev,
        });
        let Value::Object(m) = op else { unreachable!("a JSON object literal") };
        m
    }

    /// Builds and signs an update operation after `prev_cid` that states this identity.
    pub fn update(&self, prev_cid: &str, rotation_key: &Keypair) -> Result<Value, String> {
        sign_operation(self.unsigned(Some(prev_cid)), rotation_key)
    }
}

/// The keys allowed to sign the operation that follows `op`, most authoritative first.
fn rotation_keys_of(op: &Value) -> Vec<String> {
    match op.get("type").and_then(Value::as_str) {
        Some("plc_operation") => op
            .get("rotationKeys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        // Legacy genesis: the recovery key outranks the signing key.
        Some("create") => ["recoveryKey", "signingKey"]
            .iter()
            .filter_map(|f| op.get(*f).and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => vec![], // a tombstone allows nothing after it
    }
}

/// Decodes a signature strictly: base64url, no padding, no stray characters, zero trailing
/// bits, 64 bytes.
fn decode_sig(s: &str) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    // Re-encoding must give the same text (rejects non-zero trailing bits).
    (bytes.len() == 64 && URL_SAFE_NO_PAD.encode(&bytes) == s).then_some(bytes)
}

/// Index of the first key in `keys` that verifies `op`'s signature.
fn signer_index(op: &Value, keys: &[String], index: usize) -> Result<usize, PlcError> {
    let malformed = |reason: String| PlcError::Malformed { index, reason };
    let sig = op.get("sig").and_then(Value::as_str).ok_or_else(|| malformed("no sig".into()))?;
    let sig = decode_sig(sig).ok_or(PlcError::BadSignature(index))?;
    let bytes = unsigned_bytes(op).map_err(malformed)?;
    keys.iter()
        .position(|k| PublicKey::from_did_key(k).is_ok_and(|pk| pk.verify(&bytes, &sig).is_ok()))
        .ok_or(PlcError::BadSignature(index))
}

const RECOVERY_WINDOW_MS: i64 = 72 * 3600 * 1000;

fn millis(index: usize, entry: &Value) -> Result<i64, PlcError> {
    let s = entry.get("createdAt").and_then(Value::as_str).unwrap_or("");
    let dt = Datetime::new(s).map_err(|e| PlcError::Malformed { index, reason: e.to_string() })?;
    dt.unix_millis().ok_or_else(|| PlcError::Malformed { index, reason: format!("{s} is out of range") })
}

/// Checks that `next` follows `prev` directly: it names `prev`'s CID and one of `prev`'s
/// rotation keys signed it. Returns the `atproto` verification method `next` states.
pub fn verify_next(prev: &Value, next: &Value) -> Result<String, PlcError> {
    let malformed = |reason: String| PlcError::Malformed { index: 1, reason };
    let prev_cid = operation_cid(prev).map_err(malformed)?.to_string();
    if next.get("prev").and_then(Value::as_str) != Some(prev_cid.as_str()) {
        return Err(PlcError::Chain { index: 1, reason: "prev is not the last operation".into() });
    }
    signer_index(next, &rotation_keys_of(prev), 1)?;
    next.pointer("/verificationMethods/atproto")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| malformed("no atproto verification method".into()))
}

/// Validates a DID's full audit log (as `/:did/log/audit` returns it).
pub fn validate_audit_log(entries: &[Value]) -> Result<(), PlcError> {
    let mut by_cid: HashMap<String, usize> = HashMap::new();
    let mut signers = Vec::with_capacity(entries.len());
    let did = entries.first().and_then(|e| e.get("did")).and_then(Value::as_str).unwrap_or("");
    for (i, entry) in entries.iter().enumerate() {
        let malformed = |reason: String| PlcError::Malformed { index: i, reason };
        let op = entry.get("operation").ok_or_else(|| malformed("no operation".into()))?;
        let cid = operation_cid(op).map_err(malformed)?;
        if entry.get("cid").and_then(Value::as_str) != Some(cid.to_string().as_str()) {
            return Err(PlcError::Mismatch { index: i, what: "cid" });
        }
        if entry.get("did").and_then(Value::as_str) != Some(did) {
            return Err(PlcError::Mismatch { index: i, what: "did" });
        }
        let keys = match op.get("prev") {
            None | Some(Value::Null) => {
                if i != 0 {
                    return Err(PlcError::Chain { index: i, reason: "a second genesis operation".into() });
                }
                if did_for_genesis(op).map_err(malformed)? != did {
                    return Err(PlcError::Mismatch { index: i, what: "did" });
                }
                rotation_keys_of(op)
            }
            Some(Value::String(prev)) => {
                let &p = by_cid
                    .get(prev)
                    .ok_or_else(|| PlcError::Chain { index: i, reason: "prev is not an earlier operation".into() })?;
                rotation_keys_of(&entries[p]["operation"])
            }
            Some(_) => return Err(malformed("prev is not a CID string".into())),
        };
        signers.push(signer_index(op, &keys, i)?);
        by_cid.insert(cid.to_string(), i);
    }

    // The active (not nullified) operations form one chain from the genesis.
    let nullified = |i: usize| entries[i].get("nullified").and_then(Value::as_bool).unwrap_or(false);
    let prev_of = |i: usize| entries[i]["operation"].get("prev").and_then(Value::as_str).map(|p| by_cid[p]);
    let mut head: Option<usize> = None;
    for i in (0..entries.len()).filter(|&i| !nullified(i)) {
        if prev_of(i) != head {
            return Err(PlcError::Chain {
                index: i,
                reason: "active operation does not extend the active chain".into(),
            });
        }
        head = Some(i);
    }
    // Every nullified operation was overridden by a later, more authoritative operation on the
    // same prev within the recovery window (or descends from one that was).
    for x in (0..entries.len()).filter(|&i| nullified(i)) {
        let p = prev_of(x);
        if p.is_some_and(nullified) {
            continue; // nullified because its ancestor was
        }
        let winner = (x + 1..entries.len()).find(|&z| !nullified(z) && prev_of(z) == p);
        let Some(z) = winner else {
            return Err(PlcError::Chain { index: x, reason: "nullified without a recovery operation".into() });
        };
        if signers[z] >= signers[x] {
            return Err(PlcError::Chain {
                index: z,
                reason: "recovery signed by a key without higher authority".into(),
            });
        }
        if millis(z, &entries[z])? - millis(x, &entries[x])? > RECOVERY_WINDOW_MS {
            return Err(PlcError::Chain { index: z, reason: "recovery after the 72-hour window".into() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyType;

    #[test]
    fn genesis_signs_derives_a_did_and_validates_as_a_log() {
        let rotation = Keypair::generate(KeyType::K256);
        let signing = Keypair::generate(KeyType::K256);
        let g = Genesis {
            rotation_keys: vec![rotation.public().did_key()],
            signing_key: signing.public().did_key(),
            handle: "alice.test".into(),
            pds_endpoint: "https://pds.example".into(),
        };
        let (op, did) = g.sign(&rotation).unwrap();
        assert!(did.starts_with("did:plc:") && did.len() == 32, "{did}");
        let log = vec![json!({
            "did": did, "operation": op, "cid": operation_cid(&op).unwrap().to_string(),
            "nullified": false, "createdAt": "2026-11-24T00:00:00.000Z",
        })];
        validate_audit_log(&log).unwrap();
        let mut forged = log.clone();
        forged[0]["operation"]["alsoKnownAs"] = json!(["at://mallory.test"]);
        assert!(validate_audit_log(&forged).is_err());
    }
}

/// A did:plc directory over HTTP (`plc.directory`, or one configured for the node).
#[derive(Debug, Clone)]
pub struct PlcClient {
    base: String,
    agent: ureq::Agent,
}

/// Why a directory request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlcClientError {
    /// The directory answered with an error status (its message included).
    #[error("PLC directory refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The directory's message.
        message: String,
    },
    /// The directory could not be reached or answered nonsense.
    #[error("PLC directory unreachable: {0}")]
    Transport(String),
    /// The audit log the directory returned does not validate.
    #[error("PLC audit log invalid: {0}")]
    Invalid(#[from] PlcError),
}

impl PlcClient {
    /// A client for the directory at `base` (`https://plc.directory`), with a 10 s timeout.
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .http_status_as_error(false)
            .build();
        Self { base: base.trim_end_matches('/').to_string(), agent: config.into() }
    }

    /// The body of a successful response; the directory's message for an error status.
    fn text(mut resp: ureq::http::Response<ureq::Body>) -> Result<String, PlcClientError> {
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| PlcClientError::Transport(e.to_string()))?;
        if status >= 400 {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(PlcClientError::Refused { status, message });
        }
        Ok(text)
    }

    fn json(resp: ureq::http::Response<ureq::Body>) -> Result<Value, PlcClientError> {
        serde_json::from_str(&Self::text(resp)?).map_err(|e| PlcClientError::Transport(e.to_string()))
    }

    /// Submits a signed operation for `did`.
    pub fn submit(&self, did: &str, op: &Value) -> Result<(), PlcClientError> {
        let resp = self
            .agent
            .post(&format!("{}/{did}", self.base))
            .send_json(op)
            .map_err(|e| PlcClientError::Transport(e.to_string()))?;
        Self::text(resp).map(drop)
    }

    /// The DID document the directory serves.
    pub fn resolve(&self, did: &str) -> Result<Value, PlcClientError> {
        let resp = self
            .agent
            .get(&format!("{}/{did}", self.base))
            .call()
            .map_err(|e| PlcClientError::Transport(e.to_string()))?;
        Self::json(resp)
    }

    /// The DID's newest operation (what the next one must name as `prev`).
    pub fn last_operation(&self, did: &str) -> Result<Value, PlcClientError> {
        let resp = self
            .agent
            .get(&format!("{}/{did}/log/last", self.base))
            .call()
            .map_err(|e| PlcClientError::Transport(e.to_string()))?;
        Self::json(resp)
    }

    /// The full audit log, validated before it is returned.
    pub fn audit_log(&self, did: &str) -> Result<Vec<Value>, PlcClientError> {
        let resp = self
            .agent
            .get(&format!("{}/{did}/log/audit", self.base))
            .call()
            .map_err(|e| PlcClientError::Transport(e.to_string()))?;
        let log = Self::json(resp)?;
        let entries =
            log.as_array().cloned().ok_or_else(|| PlcClientError::Transport("audit log is not an array".into()))?;
        validate_audit_log(&entries)?;
        Ok(entries)
    }
}
