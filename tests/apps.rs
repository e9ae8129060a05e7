//! The application host through a real node: the built-in `dev.ues.stats` keeps per-account
//! record counts from the event log, over XRPC, REST and `/ws`, and survives the node being
//! killed mid-stream without losing or double counting an event.

#[path = "support/node.rs"]
mod node;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CONFIG: &str = "[xrpc.rate_limits]\nenabled = false\n";
const COLLECTIONS: [&str; 2] = ["dev.ues.test.alpha", "dev.ues.test.beta"];

fn call(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let agent = node::agent();
    let url = format!("{base}{path}");
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(&url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send_json(body.unwrap_or(json!({})))
        }
    };
    match resp {
        Ok(mut r) => {
            let status = r.status().as_u16();
            (status, r.body_mut().read_json().unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The records each collection really holds, listed page by page.
fn listed(base: &str, did: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in COLLECTIONS {
        let mut cursor = String::new();
        let mut n = 0;
        for _ in 0..1000 {
            let (s, v) = call(
                base,
                "GET",
                &format!("/xrpc/com.atproto.repo.listRecords?repo={did}&collection={c}&limit=100&cursor={cursor}"),
                None,
                None,
            );
            assert_eq!(s, 200, "{v}");
            n += v["records"].as_array().unwrap().len() as u64;
            match v["cursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        if n > 0 {
            out.insert(c.to_string(), n);
        }
    }
    out
}

/// What `dev.ues.stats.getCounts` says.
fn counted(base: &str, did: &str) -> (BTreeMap<String, u64>, u64) {
    let (s, v) = call(base, "GET", &format!("/xrpc/dev.ues.stats.getCounts?repo={did}"), None, None);
    assert_eq!(s, 200, "{v}");
    let map = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["collection"].as_str().unwrap().to_string(), c["count"].as_u64().unwrap()))
        .collect();
    (map, v["total"].as_u64().unwrap())
}

/// Waits (at most 30 s) until the counts are the listed truth, then checks they stay so.
fn counts_settle_on_the_truth(base: &str, did: &str) -> BTreeMap<String, u64> {
    let truth = listed(base, did);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, total) = counted(base, did);
        if got == truth {
            assert_eq!(total, truth.values().sum::<u64>());
            break;
        }
        assert!(Instant::now() < deadline, "counts {got:?} never reached the records listed {truth:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing is applied twice: a second later they still agree.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(counted(base, did).0, truth, "counts moved past the records listed");
    truth
}

/// A new account's DID and access token.
fn account(base: &str, handle: &str) -> (String, String) {
    let body = json!({"handle": handle, "password": "a long password"});
    let (s, v) = call(base, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(body));
    assert_eq!(s, 200, "{v}");
    (v["did"].as_str().unwrap().to_string(), v["accessJwt"].as_str().unwrap().to_string())
}

/// Creates (and every fifth time deletes) records until told to stop or the node goes away.
fn write(base: &str, did: &str, token: &str, from: usize, n: usize) -> usize {
    let mut made = 0;
    for i in from..from + n {
        let c = COLLECTIONS[i % 2];
        let (s, v) = call(
            base,
            "POST",
            "/xrpc/com.atproto.repo.createRecord",
            Some(token),
            Some(json!({"repo": did, "collection": c, "record": {"n": i}})),
        );
        if s != 200 {
            return made;
        }
        made += 1;
        if i % 5 == 0 {
            let rkey = v["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
            let (s, _) = call(
                base,
                "POST",
                "/xrpc/com.atproto.repo.deleteRecord",
                Some(token),
                Some(json!({"repo": did, "collection": c, "rkey": rkey})),
            );
            if s != 200 {
                return made;
            }
        }
    }
    made
}

#[test]
fn record_counts_survive_a_killed_node_without_double_counting() {
    let dir = tempfile::tempdir().unwrap();
    let n = node::start_with(dir.path(), CONFIG);
    let (did, token) = account(&n.base, "counted.test");
    assert_eq!(write(&n.base, &did, &token, 0, 60), 60);
    let before = counts_settle_on_the_truth(&n.base, &did);
    assert_eq!(before.values().sum::<u64>(), 60 - 12);

    // The same counts over REST.
    let (s, v) = call(&n.base, "GET", &format!("/api/v1/apps/dev.ues.stats/counts/{did}"), None, None);
    assert_eq!((s, v["total"].as_u64()), (200, Some(48)), "{v}");
    let (s, v) = call(&n.base, "GET", "/api/v1/apps/dev.ues.stats/counts/did:plc:nobodyhere2345678901234", None, None);
    assert_eq!((s, v["error"].as_str()), (404, Some("RepoNotFound")), "{v}");

    // Killed (SIGKILL) while a client writes: whatever the node kept, it counts once.
    let (base, did2, token2) = (n.base.clone(), did.clone(), token.clone());
    let writer = std::thread::spawn(move || write(&base, &did2, &token2, 1000, 100_000));
    std::thread::sleep(Duration::from_millis(700));
    let mut n = n;
    n.child.kill().unwrap();
    n.child.wait().unwrap();
    let made = writer.join().unwrap();
    assert!(made > 0 && made < 100_000, "the writer made {made} records before the kill");

    let port = n.port;
    drop(n);
    let child = node::spawn(dir.path(), port, "/ip4/127.0.0.1/tcp/0", &dir.path().join("node.log"));
    node::wait_healthy(port);
    let n = node::Running { child, port, base: format!("http://127.0.0.1:{port}"), dir: dir.path().to_path_buf() };
    let after_kill = counts_settle_on_the_truth(&n.base, &did);
    assert!(after_kill.values().sum::<u64>() >= 48);

    // And it keeps counting after the restart.
    assert_eq!(write(&n.base, &did, &token, 5000, 20), 20);
    let last = counts_settle_on_the_truth(&n.base, &did);
    assert_eq!(last.values().sum::<u64>(), after_kill.values().sum::<u64>() + 20 - 4);
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(!log.contains("applying events failed"), "the consumer failed:\n{log}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message, as JSON (at most 20 s away).
async fn read(ws: &mut Ws) -> Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message within 20 s");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

#[test]
fn the_stats_topic_tells_a_subscriber_each_changed_count() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let n = node::start_with(dir.path(), CONFIG);
    let (did, token) = account(&n.base, "watched.test");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", n.port)).await.unwrap();
        assert_eq!(read(&mut ws).await["type"], "welcome");
        // The topic needs a repository.
        ws.send(Message::text(json!({"type": "subscribe", "id": "x", "topic": "stats"}).to_string())).await.unwrap();
        let refused = read(&mut ws).await;
        assert_eq!(refused["type"], "error", "{refused}");
        ws.send(Message::text(json!({"type": "subscribe", "id": "s", "topic": "stats", "repo": did}).to_string()))
            .await
            .unwrap();
        assert_eq!(read(&mut ws).await["type"], "subscribed");
        for i in 1..=3u64 {
            let body = json!({"repo": did, "collection": COLLECTIONS[0], "record": {"n": i}});
            let (base, token) = (n.base.clone(), token.clone());
            let (s, _) = tokio::task::spawn_blocking(move || {
                call(&base, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(body))
            })
            .await
            .unwrap();
            assert_eq!(s, 200);
            let m = read(&mut ws).await;
            assert_eq!(m["type"], "app", "{m}");
            assert_eq!(m["event"], json!({"did": did, "collection": COLLECTIONS[0], "count": i}), "{m}");
        }
    });
}
