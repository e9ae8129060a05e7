//! The node's HTTP server: today its operational endpoints; XRPC and REST mount here.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the operational endpoints report.
#[derive(Debug)]
pub struct NodeInfo {
    /// The node's software version.
    pub version: &'static str,
    /// When the node started.
    pub started: Instant,
}

impl NodeInfo {
    /// Info for a node starting now with this crate's version.
    pub fn now() -> Self {
        Self { version: env!("CARGO_PKG_VERSION"), started: Instant::now() }
    }
}

/// The HTTP router with `GET /xrpc/_health` (as the reference PDS answers it: `{"version"}`)
/// and `GET /health` (status, version, uptime).
pub fn router(info: Arc<NodeInfo>) -> Router {
    Router::new().route("/xrpc/_health", get(xrpc_health)).route("/health", get(health)).with_state(info)
}

async fn xrpc_health(State(info): State<Arc<NodeInfo>>) -> Json<Value> {
    Json(json!({ "version": info.version }))
}

async fn health(State(info): State<Arc<NodeInfo>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": info.version,
        "uptime_seconds": info.started.elapsed().as_secs(),
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(path: &str) -> (StatusCode, Value) {
        let app = router(Arc::new(NodeInfo::now()));
        let resp = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn health_endpoints_answer() {
        let (status, body) = get_json("/xrpc/_health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let (status, body) = get_json("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        let (status, _) = get_json("/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
