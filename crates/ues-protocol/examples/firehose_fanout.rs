//! Firehose fan-out: N subscribers on real WebSockets while one account writes records through
//! XRPC over HTTP; reports delivery latency (write acknowledged -> frame received) and losses.
//!
//! Run: `cargo run --release -p ues-protocol --example firehose_fanout -- 100 1000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use ues_protocol::node::{Node, NodeConfig};
use ues_protocol::xrpc::router;
use ues_sync::repo::accounts::Accounts;
use ues_sync::repo::ipld::storage::{Blockstore, MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
use ues_sync::repo::lexicon::Lexicons;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (subscribers, writes) = (args.first().copied().unwrap_or(100), args.get(1).copied().unwrap_or(1000));
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let blocks: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
    let cfg = NodeConfig {
        public_url: "http://127.0.0.1".into(),
        service_did: "did:web:localhost".into(),
        user_domains: vec![".test".into()],
        jwt_secret: b"bench".to_vec(),
        plc_url: None,
        max_body_bytes: 1 << 20,
        max_blob_bytes: 1 << 20,
        blob_quota_bytes: 1 << 30,
        blob_grace: std::time::Duration::from_secs(3600),
        handle_resolver: ues_sync::repo::identity::HandleResolver::with_base(|_| "http://127.0.0.1:9".into()),
        admin_password: None,
        appview: None,
        report_service: None,
        relays: vec![],
        firehose_backfill: std::time::Duration::from_secs(72 * 3600),
        public_metrics: false,
        oauth_private_clients: false,
    };
    let state = Arc::new(
        Node::new(Accounts::open(blocks, db, 1).unwrap(), Lexicons::new(), Arc::new(MemoryKv::new()), cfg).unwrap(),
    );
    state.migrate(ues_protocol::xrpc::MIGRATIONS).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    ues_protocol::node::start_tasks(&state).detach();
    tokio::spawn(axum::serve(listener, router(state.clone())).into_future());

    // Subscribers, live from now on; each records when it saw each sequence number.
    let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos"))
            .await
            .unwrap();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let (_, mut rx) = ws.split();
            let mut n = 0usize;
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                let data = msg.into_data();
                // The body's "seq" follows the 2-entry header map; find it by decoding.
                let mut r = ues_sync::repo::ipld::dagcbor::Reader::new(&data);
                let opts = ues_sync::repo::ipld::dagcbor::DecodeOptions::default();
                r.skip(&opts).unwrap();
                let body = r.value(&opts, 0).unwrap();
                if let Some(ues_sync::repo::ipld::Ipld::Integer(seq)) = body.get("seq") {
                    seen.lock().push((*seq as i64, Instant::now()));
                    n += 1;
                }
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = reqwest_like(addr);
    let acct = client
        .post(
            "/xrpc/com.atproto.server.createAccount",
            None,
            json!({"handle": "fan.test", "password": "correct horse"}),
        )
        .await;
    let (did, token) = (acct["did"].as_str().unwrap().to_string(), acct["accessJwt"].as_str().unwrap().to_string());
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for i in 0..writes {
        let r = client
            .post(
                "/xrpc/com.atproto.repo.createRecord",
                Some(&token),
                json!({"repo": did, "collection": "com.example.note", "record": {"text": i.to_string()}}),
            )
            .await;
        acked.lock().push((r["commit"]["rev"].as_str().unwrap_or("").to_string(), Instant::now()));
    }
    let write_secs = started.elapsed().as_secs_f64();
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await.unwrap();
    }
    // Latency: for each seq, first write-ack time is the k-th ack (commits are sequenced in order;
    // account creation added 4 events first).
    let acks = acked.lock();
    let mut lat: Vec<f64> = seen
        .lock()
        .iter()
        .filter_map(|(seq, at)| {
            let k = (*seq - 5) as usize;
            acks.get(k).map(|(_, acked)| at.saturating_duration_since(*acked).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    let expected = subscribers * (writes + 4);
    println!(
        "{{\"subscribers\": {subscribers}, \"writes\": {writes}, \"writes_per_sec\": {:.0}, \"frames_delivered\": {delivered}, \"frames_expected\": {expected}, \"lost\": {}, \"latency_ms_p50\": {:.2}, \"latency_ms_p99\": {:.2}}}",
        writes as f64 / write_secs,
        expected.saturating_sub(delivered),
        q(0.5),
        q(0.99)
    );
}

/// A tiny JSON-over-HTTP/1.1 client (hyper) for the example.
fn reqwest_like(addr: std::net::SocketAddr) -> Client {
    Client { addr }
}

struct Client {
    addr: std::net::SocketAddr,
}

impl Client {
    async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> serde_json::Value {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut req = axum::http::Request::post(format!("http://{}{path}", self.addr))
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender.send_request(req.body(axum::body::Body::from(body.to_string())).unwrap()).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }
}
