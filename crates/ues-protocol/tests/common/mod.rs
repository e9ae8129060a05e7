//! Shared by the XRPC tests: a node's router over in-memory stores, and a JSON caller.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../../tests/support/shared.rs"]
pub mod shared;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use ues_protocol::xrpc::{XrpcConfig, XrpcState, router};
use ues_sync::repo::accounts::Accounts;
use ues_sync::repo::ipld::storage::{Blockstore, MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
use ues_sync::repo::lexicon::Lexicons;

pub struct Node {
    pub app: axum::Router,
    pub state: Arc<XrpcState>,
    _dir: tempfile::TempDir,
}

pub fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let blocks: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
    let accounts = Accounts::open(blocks, db, 3).unwrap();
    let mut lexicons = Lexicons::new();
    if let Some(dir) = shared::shared("reference/atproto-lexicons") {
        lexicons.load_dir(&dir).unwrap();
    }
    let cfg = XrpcConfig {
        public_url: "http://127.0.0.1:2583".into(),
        service_did: "did:web:localhost".into(),
        user_domains: vec![".test".into()],
        jwt_secret: b"test secret".to_vec(),
        plc_url: None,
        max_body_bytes: 64 * 1024,
        max_blob_bytes: 1024 * 1024,
    };
    let state = Arc::new(XrpcState::new(accounts, lexicons, Arc::new(MemoryKv::new()), cfg).unwrap());
    Node { app: router(state.clone()), state, _dir: dir }
}

pub async fn call(n: &Node, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = n.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn account(n: &Node, handle: &str) -> Value {
    let (s, v) = call(
        n,
        "POST",
        "/xrpc/com.atproto.server.createAccount",
        None,
        Some(json!({"handle": handle, "password": "correct horse", "email": format!("{handle}@mail.test")})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}
