//! Service proxying, as the reference PDS does it. A call this node does not serve goes to
//! another service in the caller's name, with a service-auth token signed by the caller's
//! repository key (`aud` the service's DID, `lxm` the method):
//!
//! - with `atproto-proxy: <did>#<service>`, to the endpoint of that service in the DID's
//!   document (any method: chat's `#bsky_chat`, a labeler's `#atproto_labeler`, another
//!   AppView's `#bsky_appview`), resolved through the node's DID cache, over connections to
//!   public addresses only (unless this is a development node);
//! - without it, `createReport` to `[xrpc] report_service_url`, and any other method not
//!   served here (`app.bsky.*`, `chat.bsky.*`, labels, ...) to the AppView of
//!   `[xrpc] appview_url`, as the reference sends them to its default service;
//! - with no AppView configured, and in the node's own `dev.ues.*` namespace, a method not
//!   served here answers 501 `MethodNotImplemented`.
//!
//! `chat.bsky.*` needs a full session or a privileged app password. The request's
//! `accept-language` and `atproto-accept-labelers` go along; the response's `content-type`,
//! `content-language`, `atproto-repo-rev`, `atproto-content-labelers` and `retry-after` come
//! back. Responses are bounded ([`MAX_RESPONSE`], 30 s).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ues_sync::repo::syntax::Did;

use crate::node::{AppView, Node, NodeError, blocking};

/// Largest response relayed (a timeline page is tens of KiB).
const MAX_RESPONSE: u64 = 16 << 20;

/// Request headers that go to the service.
const REQUEST_HEADERS: &[&str] = &["accept-language", "atproto-accept-labelers", "content-type"];

/// Response headers that come back.
const RESPONSE_HEADERS: &[&str] =
    &["content-type", "content-language", "atproto-repo-rev", "atproto-content-labelers", "retry-after"];

/// Where a call goes: the service's base URL and DID (the token's audience).
pub(crate) struct Target {
    url: String,
    did: String,
    /// Found in a DID document (anyone's), not configured by the operator.
    resolved: bool,
}

impl Target {
    /// The service as an OAuth `rpc:` permission names it (`did#service`): the `atproto-proxy`
    /// header's, else the configured service's kind by the method's namespace.
    fn service_ref(&self, nsid: &str, headers: &HeaderMap) -> String {
        if let Some(p) = headers.get("atproto-proxy").and_then(|v| v.to_str().ok()) {
            return p.to_string();
        }
        let kind = if nsid.starts_with("chat.bsky.") {
            "bsky_chat"
        } else if nsid == "com.atproto.moderation.createReport" {
            "atproto_labeler"
        } else {
            "bsky_appview"
        };
        format!("{}#{kind}", self.did)
    }

    fn configured(service: &AppView) -> Self {
        Self { url: service.url.clone(), did: service.did.clone(), resolved: false }
    }
}

/// `<did>#<service>`, checked as the reference checks it.
fn parse_proxy_header(value: &str) -> Result<(Did, String), NodeError> {
    let Some((did, service)) = value.split_once('#') else {
        return Err(NodeError::invalid("no service id specified in proxy header"));
    };
    if did.is_empty() {
        return Err(NodeError::invalid("no did specified in proxy header"));
    }
    if service.is_empty() {
        return Err(NodeError::invalid("no service id specified in proxy header"));
    }
    if service.contains('#') {
        return Err(NodeError::invalid("invalid proxy header format"));
    }
    if value.contains(' ') {
        return Err(NodeError::invalid("proxy header cannot contain spaces"));
    }
    let did = Did::new(did).map_err(|e| NodeError::invalid(format!("invalid proxy header DID: {e}")))?;
    Ok((did, service.to_string()))
}

/// The endpoint of `#service` in the DID's document.
fn resolve_service(st: &Node, did: &Did, service: &str) -> Result<String, NodeError> {
    let doc = st.dids.resolve(did).map_err(|e| {
        tracing::info!(%did, error = %e, "proxy DID not resolved");
        NodeError::invalid("could not resolve proxy did")
    })?;
    let id = format!("#{service}");
    let full = format!("{did}#{service}");
    doc.get("service")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .find(|s| matches!(s.get("id").and_then(serde_json::Value::as_str), Some(i) if i == id || i == full))
        .and_then(|s| s.get("serviceEndpoint").and_then(serde_json::Value::as_str))
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(|u| u.trim_end_matches('/').to_string())
        .ok_or_else(|| NodeError::invalid("could not resolve proxy did service url"))
}

/// Where `nsid` goes for this request, or `None` when nothing serves it.
pub(crate) fn target(st: &Node, nsid: &str, headers: &HeaderMap) -> Result<Option<Target>, NodeError> {
    if let Some(value) = headers.get("atproto-proxy") {
        let value = value.to_str().map_err(|_| NodeError::invalid("invalid proxy header format"))?;
        if let Some(appview) = &st.cfg.appview
            && value == format!("{}#bsky_appview", appview.did)
        {
            return Ok(Some(Target::configured(appview)));
        }
        let (did, service) = parse_proxy_header(value)?;
        let url = resolve_service(st, &did, &service)?;
        return Ok(Some(Target { url, did: did.to_string(), resolved: true }));
    }
    if nsid == "com.atproto.moderation.createReport" {
        return Ok(st.cfg.report_service.as_ref().map(Target::configured));
    }
    // The node's own namespace is all here; everything else not served here is the
    // AppView's to answer (as the reference sends it there by default).
    if nsid.starts_with("dev.ues.") {
        return Ok(None);
    }
    match &st.cfg.appview {
        Some(appview) => Ok(Some(Target::configured(appview))),
        None => Err(NodeError::new(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            format!("{nsid} is not served here and this node has no AppView configured ([xrpc] appview_url)"),
        )),
    }
}

pub(crate) async fn fallback(
    State(st): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    let nsid = uri.path().strip_prefix("/xrpc/").unwrap_or_default().to_string();
    if ues_sync::repo::syntax::Nsid::new(&nsid).is_err() {
        return Err(NodeError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "Method Not Implemented"));
    }
    let found = {
        let (st, nsid, headers) = (st.clone(), nsid.clone(), headers.clone());
        blocking(move || target(&st, &nsid, &headers)).await?
    };
    let Some(target) = found else {
        return Err(NodeError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "Method Not Implemented"));
    };
    forward(st, target, &nsid, method, &uri, &headers, body).await
}

/// Sends the call to `target` in the caller's name (anonymously without `Authorization`) and
/// relays the answer.
pub(crate) async fn forward(
    st: Arc<Node>,
    target: Target,
    nsid: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    let (token, caller) = if headers.contains_key(header::AUTHORIZATION) {
        let claims = st.access(headers)?;
        // Chat reaches another service in the account's name: a full session or a privileged
        // app password only; account management is never done through another service.
        if crate::node::auth::is_privileged_method(nsid) {
            crate::node::auth::require_privileged(&claims)?;
        }
        if crate::node::auth::PROTECTED_METHODS.contains(&nsid) {
            return Err(NodeError::invalid(format!("cannot proxy the protected method {nsid}")));
        }
        claims.check_rpc(nsid, &target.service_ref(nsid, headers))?;
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        let token =
            crate::node::auth::service_token(&st, &did, &target.did, Some(nsid), crate::node::auth::now_secs() + 60)?;
        (Some(token), Some(did))
    } else {
        (None, None)
    };
    let query = uri.query().unwrap_or("").to_string();
    let nsid_owned = nsid.to_string();
    let url = format!("{}{}", target.url.trim_end_matches('/'), uri.path_and_query().map_or("", |p| p.as_str()));
    let forwarded: Vec<(&'static str, String)> = REQUEST_HEADERS
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(|v| (*h, v.to_string())))
        .collect();
    let agent = if target.resolved { st.service_agent.clone() } else { st.proxy_agent.clone() };
    let upstream = target.did.clone();
    blocking(move || {
        let unreachable = |e: ureq::Error| {
            tracing::warn!(%url, service = %upstream, error = %e, "proxied service unreachable");
            NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", format!("{upstream} could not be reached"))
        };
        let mut resp = if method == Method::POST {
            let mut req = agent.post(&url).header("accept-encoding", "identity");
            if let Some(t) = &token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            for (name, value) in &forwarded {
                req = req.header(*name, value);
            }
            req.send(&body[..]).map_err(unreachable)?
        } else {
            let mut req = agent.get(&url).header("accept-encoding", "identity");
            if let Some(t) = &token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            for (name, value) in forwarded.iter().filter(|(n, _)| *n != "content-type") {
                req = req.header(*name, value);
            }
            req.call().map_err(unreachable)?
        };
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let back: Vec<(HeaderName, HeaderValue)> = RESPONSE_HEADERS
            .iter()
            .filter_map(|h| {
                let v = resp.headers().get(*h)?;
                Some((HeaderName::from_static(h), HeaderValue::from_bytes(v.as_bytes()).ok()?))
            })
            .collect();
        let bytes = resp.body_mut().with_config().limit(MAX_RESPONSE).read_to_vec().map_err(|e| {
            tracing::warn!(%url, error = %e, "proxied response refused");
            NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", "The service's answer was too large or broken")
        })?;
        let rev = resp.headers().get("atproto-repo-rev").and_then(|v| v.to_str().ok()).map(str::to_string);
        let (bytes, lag) = match (&caller, rev) {
            (Some(caller), Some(rev))
                if status == StatusCode::OK && super::munge::MUNGED.contains(&nsid_owned.as_str()) =>
            {
                read_after_write(&st, caller, &nsid_owned, &query, &rev, bytes)
            }
            _ => (bytes, None),
        };
        let mut out = (status, bytes).into_response();
        for (name, value) in back {
            out.headers_mut().insert(name, value);
        }
        if let Some(lag) = lag {
            out.headers_mut().insert(HeaderName::from_static("atproto-upstream-lag"), HeaderValue::from(lag));
        }
        Ok(out)
    })
    .await
}

/// The AppView's JSON answer with the caller's newer records laid over it (see
/// [`super::munge`]), and the lag to report; the answer as it came when it is not JSON, when
/// nothing is newer, or when laying over fails (logged).
fn read_after_write(
    st: &Node,
    caller: &Did,
    nsid: &str,
    query: &str,
    rev: &str,
    bytes: Vec<u8>,
) -> (Vec<u8>, Option<u64>) {
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return (bytes, None) };
    match super::munge::apply(st, caller, nsid, query, rev, &mut body) {
        Ok(Some(lag)) => match serde_json::to_vec(&body) {
            Ok(munged) => (munged, Some(lag)),
            Err(_) => (bytes, None),
        },
        Ok(None) => (bytes, None),
        Err(e) => {
            tracing::warn!(%caller, nsid, error = %e.message, "read-after-write failed; the AppView's answer as it came");
            (bytes, None)
        }
    }
}
