//! Who calls an application's method, and calls to other nodes: an account's session here, or
//! a service-auth token an account elsewhere signed (ES256K/ES256, checked against its DID
//! document) for an account held here; and the same kind of token made here to call the node
//! that holds another account (found from its DID document's `#atproto_pds`).

use std::io::Read;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use ues_protocol::node::{Node, NodeError};
use ues_protocol::sync::repo::identity::{AtprotoIdentity, parse_did_document};
use ues_protocol::sync::repo::syntax::Did;

/// Largest answer read from another node.
pub(crate) const MAX_ANSWER: u64 = 1 << 20;

/// A failure of another node (502 `UpstreamFailure`).
pub(crate) fn upstream(message: String) -> NodeError {
    NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", message)
}

/// The signed-in caller of a method: the account password's session, a privileged app
/// password, or an OAuth grant that names the method.
pub(crate) fn caller(node: &Node, headers: &HeaderMap, nsid: &str) -> Result<String, NodeError> {
    let claims = node.access(headers)?;
    ues_protocol::node::auth::require_privileged(&claims)?;
    claims.check_rpc(nsid, &node.cfg.service_did)?;
    Ok(claims.sub)
}

/// The caller of a method other nodes call too: an account's session here, or a service-auth
/// token an account elsewhere signed for an audience `audience_ok` accepts (returned too).
/// Checking the token may resolve the issuer's DID: call it off the async workers.
pub(crate) fn caller_or_service(
    node: &Node,
    headers: &HeaderMap,
    nsid: &str,
    audience_ok: impl Fn(&str) -> bool,
) -> Result<(String, Option<String>), NodeError> {
    let session = match caller(node, headers, nsid) {
        Ok(did) => return Ok((did, None)),
        Err(e) => e,
    };
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(session);
    };
    // This node's own session tokens are HS256: their refusal stands.
    let alg = token
        .split('.')
        .next()
        .and_then(|h| data_encoding::BASE64URL_NOPAD.decode(h.as_bytes()).ok())
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h["alg"].as_str().map(str::to_string));
    if !matches!(alg.as_deref(), Some("ES256K" | "ES256")) {
        return Err(session);
    }
    let (iss, aud) = node.verify_service_auth(token, nsid, audience_ok)?;
    Ok((iss.to_string(), Some(aud)))
}

/// Whether `did` is an account held here (and not deleted).
pub(crate) fn hosted(node: &Node, did: &str) -> Result<bool, NodeError> {
    let Ok(did) = Did::new(did) else { return Ok(false) };
    Ok(node.accounts.get(&did).map_err(NodeError::internal)?.is_some_and(|a| a.status != "deleted"))
}

/// `did`'s identity: its DID document resolved (did:plc through the node's directory) and read.
pub(crate) fn identity(node: &Node, did: &str) -> Result<(Did, AtprotoIdentity), NodeError> {
    let parsed = Did::new(did).map_err(|_| NodeError::invalid(format!("{did:?} is not a DID")))?;
    let doc = node
        .dids
        .resolve(&parsed)
        .map_err(|e| NodeError::bad("AccountNotFound", format!("{did} does not resolve: {e}")))?;
    let id = parse_did_document(&doc, &parsed)
        .map_err(|e| NodeError::bad("AccountNotFound", format!("{did}'s DID document: {e}")))?;
    Ok((parsed, id))
}

/// The node holding `did`'s account (its DID document's `#atproto_pds`), without a trailing `/`.
pub(crate) fn pds_of(node: &Node, did: &str) -> Result<String, NodeError> {
    let (_, id) = identity(node, did)?;
    let pds = id
        .pds_endpoint
        .ok_or_else(|| NodeError::bad("AccountNotFound", format!("{did}'s DID document names no PDS")))?;
    if !node.development() && !pds.starts_with("https://") {
        return Err(NodeError::bad("AccountNotFound", format!("{did}'s PDS is not an https: URL")));
    }
    Ok(pds.trim_end_matches('/').to_string())
}

/// Calls `lxm` on `did`'s node as `sender` (a service-auth token for `did`, or none when
/// `sender` is `None`: a public query): the status and the JSON answered (`null` when it is not
/// JSON), read up to [`MAX_ANSWER`] bytes.
pub(crate) fn call(
    node: &Node,
    sender: Option<&str>,
    did: &str,
    lxm: &str,
    query: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), NodeError> {
    let pds = pds_of(node, did)?;
    let url = format!("{pds}/xrpc/{lxm}{query}");
    let auth = match sender {
        Some(s) => {
            let s = Did::new(s).map_err(|_| NodeError::invalid(format!("{s:?} is not a DID")))?;
            let token =
                node.service_auth(&s, did, lxm).map_err(|e| upstream(format!("no service token: {}", e.message)))?;
            Some(format!("Bearer {token}"))
        }
        None => None,
    };
    let agent = node.service_agent();
    let res = match (body, &auth) {
        (Some(b), Some(a)) => agent.post(&url).header("Authorization", a).send_json(b),
        (Some(b), None) => agent.post(&url).send_json(b),
        (None, Some(a)) => agent.get(&url).header("Authorization", a).call(),
        (None, None) => agent.get(&url).call(),
    }
    .map_err(|e| upstream(format!("{lxm} at {pds}: {e}")))?;
    let status = res.status().as_u16();
    let mut bytes = Vec::new();
    res.into_body()
        .as_reader()
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| upstream(format!("{lxm} at {pds}: {e}")))?;
    if bytes.len() as u64 > MAX_ANSWER {
        return Err(upstream(format!("{lxm} at {pds} answered more than {MAX_ANSWER} bytes")));
    }
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}
