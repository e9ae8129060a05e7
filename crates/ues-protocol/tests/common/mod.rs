//! Shared by the XRPC tests: a node's router over in-memory stores, and a JSON caller.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../../tests/support/shared.rs"]
pub mod shared;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use ues_protocol::node::{Node as NodeState, NodeConfig};
use ues_protocol::xrpc::router;
use ues_sync::repo::accounts::Accounts;
use ues_sync::repo::identity::HandleResolver;
use ues_sync::repo::ipld::storage::{Blockstore, MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
use ues_sync::repo::lexicon::Lexicons;

pub struct Node {
    pub app: axum::Router,
    pub state: Arc<NodeState>,
    /// Where the node listens: every request goes over a real socket on 127.0.0.1.
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Sends a request over HTTP/1.1 to the node's socket.
    pub async fn send(&self, req: Request<Body>) -> axum::http::Response<hyper::body::Incoming> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key("host") {
            parts.headers.insert("host", self.addr.to_string().parse().unwrap());
        }
        if parts.uri.scheme().is_none() {
            parts.uri = format!("http://{}{}", self.addr, parts.uri).parse().unwrap();
        }
        sender.send_request(Request::from_parts(parts, body)).await.unwrap()
    }
}

/// The admin password of test nodes.
pub const ADMIN_PASSWORD: &str = "admin secret";

pub fn node() -> Node {
    node_with(None, None)
}

/// A node whose handle resolver asks `dns` for `_atproto` TXT records.
pub fn node_with_dns(dns: Option<std::net::SocketAddr>) -> Node {
    node_with(dns, None)
}

/// A node with a DNS server for handles and an AppView for app.bsky.* calls.
pub fn node_with(dns: Option<std::net::SocketAddr>, appview: Option<ues_protocol::node::AppView>) -> Node {
    node_full(dns, appview, vec![])
}

/// A node with a DNS server, an AppView and relays to ask for crawls.
pub fn node_full(
    dns: Option<std::net::SocketAddr>,
    appview: Option<ues_protocol::node::AppView>,
    relays: Vec<String>,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let blocks: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
    let accounts = Accounts::open(blocks, db, 3).unwrap();
    // The lexicons `ues run` embeds (the repository's `lexicons/` folder).
    let mut lexicons = Lexicons::new();
    lexicons.load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lexicons")).unwrap();
    let cfg = NodeConfig {
        public_url: "http://127.0.0.1:2583".into(),
        service_did: "did:web:localhost".into(),
        user_domains: vec![".test".into()],
        jwt_secret: b"test secret".to_vec(),
        plc_url: None,
        max_body_bytes: 64 * 1024,
        max_blob_bytes: 1024 * 1024,
        blob_quota_bytes: 1 << 30,
        blob_grace: std::time::Duration::from_secs(3600),
        // Nothing listens on port 9 of 127.0.0.1: HTTPS lookups are refused at once.
        handle_resolver: HandleResolver::with_base(|_| "http://127.0.0.1:9".into()).with_dns(dns),
        admin_password: Some(ADMIN_PASSWORD.into()),
        appview,
        report_service: None,
        relays,
        firehose_backfill: std::time::Duration::from_secs(72 * 3600),
        public_metrics: false,
        oauth_private_clients: false,
    };
    let state = Arc::new(NodeState::new(accounts, lexicons, Arc::new(MemoryKv::new()), cfg).unwrap());
    state.migrate(ues_protocol::xrpc::MIGRATIONS).unwrap();
    ues_protocol::node::start_tasks(&state).detach();
    let app = router(state.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    tokio::spawn(async move {
        axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), served).await.unwrap();
    });
    Node { app, state, addr, _dir: dir }
}

pub async fn call(n: &Node, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    // A token is sent as `Bearer`, unless it is already a full `Basic ...` header value.
    if let Some(t) = token {
        let value = if t.starts_with("Basic ") { t.to_string() } else { format!("Bearer {t}") };
        req = req.header("authorization", value);
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = n.send(req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The `Authorization` value of the admin user.
pub fn admin_auth(password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}")))
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
