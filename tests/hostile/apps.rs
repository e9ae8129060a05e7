//! The hosted applications' endpoints against hostile callers: `dev.ues.stats` over XRPC, REST
//! and the `/ws` topic `stats`, with malformed, oversized and unknown repositories, and a flood
//! of subscriptions. Typed errors, the node still answering, memory bounded, counts untouched.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::support::*;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON (at most 20 s away; pings skipped).
async fn next(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message within 20 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

fn counts(node: &Running, did: &str) -> Value {
    let (s, v) = call(node, "GET", &format!("/xrpc/dev.ues.stats.getCounts?repo={did}"), None, None);
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn stats_endpoints_refuse_bad_repositories_and_bound_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "[xrpc.rate_limits]\nenabled = false\n");
    let (did, token) = account(&node, "counted.test");
    for i in 0..3 {
        let body = json!({"repo": did, "collection": "dev.ues.test.alpha", "record": {"n": i}});
        let (s, v) = call(&node, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(body));
        assert_eq!(s, 200, "{v}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counts(&node, &did)["total"] != 3 {
        assert!(std::time::Instant::now() < deadline, "the counts never reached 3");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = counts(&node, &did);

    // XRPC: malformed, unknown and oversized repositories are typed errors.
    let (s, v) = call(&node, "GET", "/xrpc/dev.ues.stats.getCounts?repo=not%20a%20did", None, None);
    assert_eq!((s, v["error"].as_str()), (400, Some("InvalidRequest")), "{v}");
    let (s, v) = call(&node, "GET", "/xrpc/dev.ues.stats.getCounts?repo=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None, None);
    assert_eq!((s, v["error"].as_str()), (400, Some("RepoNotFound")), "{v}");
    let (s, v) = call(&node, "GET", "/xrpc/dev.ues.stats.getCounts", None, None);
    assert_eq!((s, v["error"].as_str()), (400, Some("InvalidRequest")), "{v}");
    let long = format!("did:plc:{}", "a".repeat(6000));
    let (s, _) = call(&node, "GET", &format!("/xrpc/dev.ues.stats.getCounts?repo={long}"), None, None);
    assert_eq!(s, 400, "an oversized repository parameter");
    // REST: an unknown or malformed repository is 404, an oversized path is refused too.
    let (s, v) = call(&node, "GET", "/api/v1/apps/dev.ues.stats/counts/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None, None);
    assert_eq!((s, v["error"].as_str()), (404, Some("RepoNotFound")), "{v}");
    let (s, _) = call(&node, "GET", &format!("/api/v1/apps/dev.ues.stats/counts/{long}"), None, None);
    assert!(s == 400 || s == 404, "an oversized path answered {s}");

    // /ws: every refused subscription is a typed error; a flood of subscriptions to one
    // repository shares one channel, and unknown repositories are never watched.
    let pid = node.child.id();
    let rss_before = rss(pid);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("ws://127.0.0.1:{}/ws", node.port);
        let mut sockets = Vec::new();
        for s in 0..20 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            assert_eq!(next(&mut ws).await["type"], "welcome");
            for i in 0..8 {
                // Unknown repositories: refused by name, nothing kept for them.
                let fake = format!("did:plc:{:024}", s * 100 + i);
                let sub = json!({"type": "subscribe", "id": format!("u{i}"), "topic": "stats", "repo": fake});
                ws.send(Message::text(sub.to_string())).await.unwrap();
                let m = next(&mut ws).await;
                assert_eq!((m["type"].as_str(), m["error"].as_str()), (Some("error"), Some("RepoNotFound")), "{m}");
            }
            for bad in [json!(42), json!("not a did"), json!(format!("did:plc:{}", "b".repeat(20_000)))] {
                let sub = json!({"type": "subscribe", "id": "bad", "topic": "stats", "repo": bad});
                ws.send(Message::text(sub.to_string())).await.unwrap();
                let m = next(&mut ws).await;
                assert_eq!(m["type"], "error", "{m}");
            }
            for i in 0..8 {
                let sub = json!({"type": "subscribe", "id": format!("h{i}"), "topic": "stats", "repo": did});
                ws.send(Message::text(sub.to_string())).await.unwrap();
                assert_eq!(next(&mut ws).await["type"], "subscribed");
            }
            sockets.push(ws);
        }
        still_answers(&node, Duration::from_secs(5));
        // One write reaches every subscription of the hosted repository.
        let body = json!({"repo": did, "collection": "dev.ues.test.alpha", "record": {"n": 99}});
        let (base, token2) = (node.base.clone(), token.clone());
        let (s, _) = tokio::task::spawn_blocking(move || {
            let r = agent()
                .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
                .header("Authorization", &format!("Bearer {token2}"))
                .send_json(body)
                .unwrap();
            (r.status().as_u16(), ())
        })
        .await
        .unwrap();
        assert_eq!(s, 200);
        for ws in sockets.iter_mut().take(3) {
            let m = next(ws).await;
            assert_eq!((m["type"].as_str(), m["event"]["count"].as_u64()), (Some("app"), Some(4)), "{m}");
        }
    });
    let grown = rss(pid).saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    still_answers(&node, Duration::from_secs(5));
    // Nothing the attacks sent changed the counts (only the one honest write did).
    let after = counts(&node, &did);
    assert_eq!(after["total"], before["total"].as_u64().unwrap() + 1, "{after}");
}
