//! Methods of the Bluesky app (`app.bsky.*`, `chat.bsky.*`) that this node does not serve itself
//! go to the AppView configured in `[xrpc] appview_url`, authenticated as the caller with a
//! service-auth token signed by the caller's repository key (`aud` the AppView's DID, `lxm` the
//! method), as the reference PDS does. Without an AppView they get a clear 501. Any other
//! unknown method is 501 `MethodNotImplemented`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ues_sync::repo::syntax::Did;

use crate::node::{Node, NodeError, blocking};

/// Largest AppView response relayed (a timeline page is tens of KiB).
const MAX_RESPONSE: u64 = 16 << 20;

pub(crate) async fn fallback(
    State(st): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    let nsid = uri.path().strip_prefix("/xrpc/").unwrap_or_default().to_string();
    if !(nsid.starts_with("app.bsky.") || nsid.starts_with("chat.bsky.")) {
        return Err(NodeError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "Method Not Implemented"));
    }
    let Some(appview) = st.cfg.appview.clone() else {
        return Err(NodeError::new(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            format!("{nsid} is served by an AppView and this node has none configured ([xrpc] appview_url)"),
        ));
    };
    if let Some(target) = headers.get("atproto-proxy").and_then(|v| v.to_str().ok())
        && target.split('#').next() != Some(appview.did.as_str())
    {
        return Err(NodeError::invalid(format!("cannot proxy to {target}: this node knows only {}", appview.did)));
    }
    let token = if headers.contains_key(header::AUTHORIZATION) {
        let claims = st.access(&headers)?;
        // Chat reaches another service in the account's name: a full session or a privileged
        // app password only.
        if crate::node::auth::is_privileged_method(&nsid) {
            crate::node::auth::require_privileged(&claims)?;
        }
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        Some(crate::node::auth::service_token(
            &st,
            &did,
            &appview.did,
            Some(&nsid),
            crate::node::auth::now_secs() + 60,
        )?)
    } else {
        None
    };
    let url = format!("{}{}", appview.url.trim_end_matches('/'), uri.path_and_query().map_or("", |p| p.as_str()));
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let accept_language = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let agent = st.proxy_agent.clone();
    blocking(move || {
        let unreachable = |e: ureq::Error| {
            tracing::warn!(%url, error = %e, "AppView unreachable");
            NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", "The AppView could not be reached")
        };
        let mut resp = if method == Method::POST {
            let mut req = agent.post(&url);
            if let Some(t) = &token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            if let Some(ct) = &content_type {
                req = req.header("content-type", ct);
            }
            req.send(&body[..]).map_err(unreachable)?
        } else {
            let mut req = agent.get(&url);
            if let Some(t) = &token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            if let Some(l) = &accept_language {
                req = req.header("accept-language", l);
            }
            req.call().map_err(unreachable)?
        };
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let ct = resp.headers().get("content-type").cloned();
        let bytes = resp.body_mut().with_config().limit(MAX_RESPONSE).read_to_vec().map_err(unreachable)?;
        let mut out = (status, bytes).into_response();
        if let Some(ct) = ct.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            out.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Ok(out)
    })
    .await
}
