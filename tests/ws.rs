//! The WebSocket event server (`/ws`) of a real `ues run` process, driven by a real client
//! library (tokio-tungstenite): welcome, snapshot then live events, the private account topic,
//! resume after a reconnect with no gap and no duplicate, ping, and every limit (client count,
//! message size, malformed and binary frames, floods, slow consumers).

#[path = "support/node.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::agent;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const COLLECTION: &str = "app.bsky.feed.post";

struct Node {
    /// Kept for its lifetime: the node stops when this is dropped.
    _node: support::Running,
    base: String,
    ws: String,
}

fn start(dir: &std::path::Path) -> Node {
    let node =
        // Thousands of records from one account: past the XRPC write budgets, which are off here.
        support::start_with(
            dir,
            "[ws]\nmax_clients = 4\nmax_message_kib = 1\nqueue = 64\nmax_messages_per_sec = 20\n\
             [xrpc.rate_limits]\nenabled = false\n",
        );
    let (base, ws) = (node.base.clone(), format!("ws://127.0.0.1:{}/ws", node.port));
    Node { _node: node, base, ws }
}

fn post(base: &str, method: &str, token: Option<&str>, body: Value) -> Value {
    let mut req = agent().post(format!("{base}/xrpc/{method}"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut res = req.send_json(body).unwrap();
    assert_eq!(res.status(), 200, "{method}");
    res.body_mut().read_json().unwrap()
}

fn create(base: &str, token: &str, did: &str, text: &str) {
    post(
        base,
        "com.atproto.repo.createRecord",
        Some(token),
        json!({"repo": did, "collection": COLLECTION,
            "record": {"$type": COLLECTION, "text": text, "createdAt": "2026-11-25T00:00:00.000Z"}}),
    );
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.expect("websocket connects").0
}

/// The next JSON message (pings and pongs skipped).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message in time");
        match m.expect("open").expect("no error") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the server closes; returns its close code and reason.
async fn closed(ws: &mut Ws) -> (CloseCode, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the server never closed");
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (CloseCode::Status, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("closed without a close frame: {e}"),
            None => panic!("closed without a close frame"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// A node (in `dir`/node) with one account: (node, did, access token).
fn node_with_account(dir: &std::path::Path, handle: &str, email: Option<&str>) -> (Node, String, String) {
    let node = start(&dir.join("node"));
    let mut body = json!({"handle": handle, "password": "pass-word-123"});
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    let acct = post(&node.base, "com.atproto.server.createAccount", None, body);
    let (did, token) = (acct["did"].as_str().unwrap().to_string(), acct["accessJwt"].as_str().unwrap().to_string());
    (node, did, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscriptions_resume_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (node, did, token) = node_with_account(dir.path(), "wsuser.test", Some("ws@example.com"));
    let base = node.base.clone();
    for i in 0..3 {
        create(&base, &token, &did, &format!("before {i}"));
    }

    // Welcome, then a live query: the current records, then changes.
    let mut a = connect(&format!("{}?access_token={token}", node.ws)).await;
    let welcome = next(&mut a).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["did"], did.as_str());
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["limits"]["maxMessageBytes"], 1024);
    send(&mut a, json!({"type": "subscribe", "id": "posts", "topic": "repo", "did": did, "collection": COLLECTION, "snapshot": true})).await;
    assert_eq!(next(&mut a).await["type"], "subscribed");
    let mut texts = Vec::new();
    loop {
        let m = next(&mut a).await;
        if m["type"] == "snapshot_end" {
            assert_eq!(m["records"], 3);
            break;
        }
        assert_eq!(m["type"], "record", "{m}");
        texts.push(m["record"]["text"].as_str().unwrap().to_string());
    }
    assert_eq!(texts.len(), 3);
    create(&base, &token, &did, "live 1");
    let ev = next(&mut a).await;
    assert_eq!(ev["type"], "event");
    assert_eq!(ev["action"], "create");
    assert_eq!(ev["collection"], COLLECTION);
    assert_eq!(ev["record"]["text"], "live 1");

    // No echo: a write this session makes (it says so with X-Ues-Ws-Session) is not sent
    // back; the next write from elsewhere is.
    let session = welcome["session"].as_str().unwrap().to_string();
    let mut res = agent()
        .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
        .header("authorization", &format!("Bearer {token}"))
        .header("x-ues-ws-session", &session)
        .send_json(json!({"repo": did, "collection": COLLECTION,
            "record": {"$type": COLLECTION, "text": "my own", "createdAt": "2026-11-25T00:00:00.000Z"}}))
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
    create(&base, &token, &did, "live 2");
    let ev = next(&mut a).await;
    assert_eq!(ev["record"]["text"], "live 2", "the session's own write was not echoed: {ev}");
    let last_seen = ev["seq"].as_i64().unwrap();

    // Ping, and the private account topic: allowed with a session, refused without.
    send(&mut a, json!({"type": "ping", "id": "p1"})).await;
    let pong = next(&mut a).await;
    assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("p1")));
    send(&mut a, json!({"type": "subscribe", "id": "me", "topic": "account"})).await;
    assert_eq!(next(&mut a).await["type"], "subscribed");
    let mut anon = connect(&node.ws).await;
    assert!(next(&mut anon).await["did"].is_null());
    send(&mut anon, json!({"type": "subscribe", "id": "me", "topic": "account"})).await;
    let refused = next(&mut anon).await;
    assert_eq!((refused["type"].as_str(), refused["error"].as_str()), (Some("error"), Some("AuthRequired")));
    // Presence: A (signed in) and the anonymous socket join a topic; each join is heard by
    // every member with the member list; when the anonymous socket goes, A hears it leave.
    send(&mut a, json!({"type": "join", "topic": "room:1"})).await;
    let joined = next(&mut a).await;
    assert_eq!((joined["type"].as_str(), joined["event"].as_str()), (Some("presence"), Some("join")));
    assert_eq!(joined["who"], did.as_str());
    send(&mut anon, json!({"type": "join", "topic": "room:1"})).await;
    let seen_by_anon = next(&mut anon).await;
    assert_eq!(seen_by_anon["members"].as_array().unwrap().len(), 2, "{seen_by_anon}");
    let anon_who = seen_by_anon["who"].as_str().unwrap().to_string();
    assert!(anon_who.starts_with("anon:"));
    let seen_by_a = next(&mut a).await;
    assert_eq!((seen_by_a["event"].as_str(), seen_by_a["who"].as_str()), (Some("join"), Some(anon_who.as_str())));
    anon.close(None).await.unwrap();
    drop(anon);
    let left = next(&mut a).await;
    assert_eq!((left["event"].as_str(), left["who"].as_str()), (Some("leave"), Some(anon_who.as_str())), "{left}");
    assert_eq!(left["members"], json!([did]));
    let mut anon = connect(&node.ws).await;
    next(&mut anon).await;
    // A bad token is refused before the upgrade.
    let bad = tokio_tungstenite::connect_async(format!("{}?access_token=nope", node.ws)).await;
    assert!(bad.is_err(), "a bad token is refused");

    // Resume: A goes away after `last_seen`; three writes happen; a new socket resuming from
    // `last_seen` gets exactly those three, in order, then live ones.
    a.close(None).await.unwrap();
    drop(a);
    for i in 0..3 {
        create(&base, &token, &did, &format!("while away {i}"));
    }
    let mut b = connect(&node.ws).await;
    next(&mut b).await;
    send(&mut b, json!({"type": "subscribe", "id": "posts", "topic": "repo", "did": did, "collection": COLLECTION, "since": last_seen})).await;
    assert_eq!(next(&mut b).await["type"], "subscribed");
    let mut seqs = Vec::new();
    for i in 0..3 {
        let ev = next(&mut b).await;
        assert_eq!(ev["record"]["text"], format!("while away {i}"), "{ev}");
        seqs.push(ev["seq"].as_i64().unwrap());
    }
    create(&base, &token, &did, "after resume");
    let ev = next(&mut b).await;
    assert_eq!(ev["record"]["text"], "after resume", "no duplicate before the live event");
    seqs.push(ev["seq"].as_i64().unwrap());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > last_seen, "{seqs:?}");

    // Limits. An oversize message: 1009.
    send(&mut b, json!({"type": "ping", "id": "x".repeat(1500)})).await;
    assert_eq!(closed(&mut b).await.0, CloseCode::Size);
    // A malformed one: 1007, in JSON or in CBOR.
    let mut c = connect(&node.ws).await;
    next(&mut c).await;
    c.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(closed(&mut c).await.0, CloseCode::Invalid);
    let mut c = connect(&node.ws).await;
    next(&mut c).await;
    c.send(Message::Binary(vec![0xff, 0x00].into())).await.unwrap();
    assert_eq!(closed(&mut c).await.0, CloseCode::Invalid);
    // CBOR both ways: `?encoding=cbor` gets DAG-CBOR binary frames; a CBOR ping is answered.
    let mut c = connect(&format!("{}?encoding=cbor", node.ws)).await;
    let welcome = tokio::time::timeout(Duration::from_secs(20), c.next()).await.unwrap().unwrap().unwrap();
    let Message::Binary(bytes) = welcome else { panic!("a binary welcome: {welcome:?}") };
    let v = ues_repo::ipld::json::to_json(&ues_repo::ipld::dagcbor::decode_atproto(&bytes).unwrap());
    assert_eq!(v["type"], "welcome");
    // {"type": "ping", "id": "c"} in DAG-CBOR.
    let ping = ues_repo::ipld::json::from_json(&json!({"type": "ping", "id": "c"})).unwrap();
    c.send(Message::Binary(ues_repo::ipld::dagcbor::encode(&ping).into())).await.unwrap();
    let pong = loop {
        match tokio::time::timeout(Duration::from_secs(20), c.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => {
                break ues_repo::ipld::json::to_json(&ues_repo::ipld::dagcbor::decode_atproto(&b).unwrap());
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("c")));
    c.close(None).await.unwrap();
    while let Some(Ok(_)) = c.next().await {}
    // A flood: 1008.
    let mut c = connect(&node.ws).await;
    next(&mut c).await;
    for i in 0..40 {
        if c.send(Message::Text(json!({"type": "ping", "id": i.to_string()}).to_string().into())).await.is_err() {
            break;
        }
    }
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");

    // The client limit (4): three more sockets fill it, the next is refused with the reason.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&node.ws).await;
        assert_eq!(next(&mut s).await["type"], "welcome");
        held.push(s);
    }
    let mut over = connect(&node.ws).await;
    let (code, reason) = closed(&mut over).await;
    assert_eq!(code, CloseCode::Again);
    assert!(reason.contains("server full"), "{reason}");
    drop(held);
    drop(anon);

    // A slow consumer: subscribed, never reading, while 4,000 large records are written. It
    // is closed with 4008 and told where to resume.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slow = connect(&node.ws).await;
    next(&mut slow).await;
    send(&mut slow, json!({"type": "subscribe", "id": "posts", "topic": "repo", "did": did})).await;
    // 115 family emoji: 115 graphemes (within a post's 300) but 2.9 KB each; 4,000 records
    // are ~12 MB of events, more than the socket buffers hold.
    let text = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466}".repeat(115);
    for _ in 0..20 {
        let writes: Vec<Value> = (0..200)
            .map(|_| {
                json!({"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
                "value": {"$type": COLLECTION, "text": text, "createdAt": "2026-11-25T00:00:00.000Z"}})
            })
            .collect();
        post(&base, "com.atproto.repo.applyWrites", Some(&token), json!({"repo": did, "writes": writes}));
    }
    let (code, reason) = closed(&mut slow).await;
    assert_eq!(u16::from(code), 4008, "{reason}");
    assert!(reason.contains("resume with since="), "{reason}");
    // /stats and /metrics count what happened.
    assert_eq!(agent().get(format!("{base}/stats")).call().unwrap().status(), 401, "stats are the operator's");
    let operator = node._node.operator_auth();
    let mut res = agent().get(format!("{base}/stats")).header("authorization", &operator).call().unwrap();
    let stats: Value = res.body_mut().read_json().unwrap();
    assert!(stats["wsSlowClosed"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["wsRefused"].as_u64().unwrap() >= 5, "{stats}");
    assert!(stats["wsEventsSent"].as_u64().unwrap() >= 5, "{stats}");
    let mut res = agent().get(format!("{base}/metrics")).header("authorization", &operator).call().unwrap();
    let metrics = res.body_mut().read_to_string().unwrap();
    assert!(metrics.contains("ues_ws_slow_closed_total"), "{metrics}");
}

/// Events of a batch subscription, in order, from `events` messages until `n` arrived; also
/// the largest number one message carried.
async fn batched(ws: &mut Ws, n: usize) -> (Vec<Value>, usize) {
    let (mut events, mut most) = (Vec::new(), 0);
    while events.len() < n {
        let m = next(ws).await;
        assert_eq!((m["type"].as_str(), m["sub"].as_str()), (Some("events"), Some("b")), "{m}");
        let list = m["events"].as_array().unwrap();
        most = most.max(list.len());
        events.extend(list.iter().cloned());
    }
    (events, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_subscriptions_carry_several_events_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let (node, did, token) = node_with_account(dir.path(), "batch.test", None);
    let base = node.base.clone();
    let mut ws = connect(&node.ws).await;
    let start_seq = next(&mut ws).await["seq"].as_i64().unwrap();
    send(&mut ws, json!({"type": "subscribe", "id": "b", "topic": "repo", "did": did, "batch": true})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    // One commit with five records (five events ready together), then three more commits.
    let writes: Vec<Value> = (0..5)
        .map(|i| {
            json!({"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
            "value": {"$type": COLLECTION, "text": format!("a{i}"), "createdAt": "2026-11-25T00:00:00.000Z"}})
        })
        .collect();
    post(&base, "com.atproto.repo.applyWrites", Some(&token), json!({"repo": did, "writes": writes}));
    for i in 0..3 {
        create(&base, &token, &did, &format!("c{i}"));
    }
    let (events, most) = batched(&mut ws, 8).await;
    let texts: Vec<&str> = events.iter().map(|e| e["record"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["a0", "a1", "a2", "a3", "a4", "c0", "c1", "c2"]);
    assert!(most >= 5, "the five events of one commit came in one message (at most {most} did)");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "in order: {seqs:?}");
    assert!(events.iter().all(|e| e["did"] == did.as_str() && e["action"] == "create" && e.get("type").is_none()));

    // Resuming in batch mode replays what was missed in `events` messages too, nothing twice.
    let mut again = connect(&node.ws).await;
    next(&mut again).await;
    send(
        &mut again,
        json!({"type": "subscribe", "id": "b", "topic": "repo", "did": did, "batch": true, "since": start_seq}),
    )
    .await;
    assert_eq!(next(&mut again).await["type"], "subscribed");
    let (replayed, _) = batched(&mut again, 8).await;
    assert_eq!(replayed, events, "the replay equals what the live socket got");
    create(&base, &token, &did, "after");
    let (live, _) = batched(&mut again, 1).await;
    assert_eq!(live[0]["record"]["text"], "after");
}

/// Batch sockets standing at the same place are sent the same messages (built by the first,
/// shared with the others): each gets every event once, in order; a socket whose session wrote
/// some of the records is not sent those (its messages are its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sockets_share_messages_and_keep_their_own_writes_out() {
    let dir = tempfile::tempdir().unwrap();
    let (node, did, token) = node_with_account(dir.path(), "share.test", None);
    let base = node.base.clone();
    let subscribe = json!({"type": "subscribe", "id": "b", "topic": "repo", "did": did, "batch": true});
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&node.ws).await;
        next(&mut ws).await;
        send(&mut ws, subscribe.clone()).await;
        assert_eq!(next(&mut ws).await["type"], "subscribed");
        readers.push(ws);
    }
    let mut writer = connect(&node.ws).await;
    let session = next(&mut writer).await["session"].as_str().unwrap().to_string();
    send(&mut writer, subscribe).await;
    assert_eq!(next(&mut writer).await["type"], "subscribed");
    let mut all = Vec::new();
    for i in 0..16 {
        let text = if i % 4 == 3 { format!("mine {i}") } else { format!("other {i}") };
        if i % 4 == 3 {
            let mut res = agent()
                .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
                .header("authorization", &format!("Bearer {token}"))
                .header("x-ues-ws-session", &session)
                .send_json(json!({"repo": did, "collection": COLLECTION,
                    "record": {"$type": COLLECTION, "text": text, "createdAt": "2026-11-25T00:00:00.000Z"}}))
                .unwrap();
            assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
        } else {
            create(&base, &token, &did, &text);
        }
        all.push(text);
    }
    let texts = |events: &[Value]| -> Vec<String> {
        events.iter().map(|e| e["record"]["text"].as_str().unwrap().to_string()).collect()
    };
    let mut lists = Vec::new();
    for ws in &mut readers {
        let (events, _) = batched(ws, 16).await;
        assert_eq!(texts(&events), all, "every event once, in order");
        lists.push(events);
    }
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "the readers were sent the same events");
    let others: Vec<String> = all.iter().filter(|t| t.starts_with("other")).cloned().collect();
    let (events, _) = batched(&mut writer, others.len()).await;
    assert_eq!(texts(&events), others, "the writing socket was not sent its own writes");
    create(&base, &token, &did, "last");
    let (events, _) = batched(&mut writer, 1).await;
    assert_eq!(texts(&events), ["last"]);
    for ws in &mut readers {
        let (events, _) = batched(ws, 1).await;
        assert_eq!(texts(&events), ["last"]);
    }
}

/// The next message of a `?compress=deflate` socket: a binary frame of raw DEFLATE, inflated.
async fn next_deflated(ws: &mut Ws) -> Value {
    use std::io::Read;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message in time");
        match m.expect("open").expect("no error") {
            Message::Binary(b) => {
                let mut json = String::new();
                flate2::read::DeflateDecoder::new(&b[..]).read_to_string(&mut json).expect("raw DEFLATE");
                return serde_json::from_str(&json).unwrap();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Compression is negotiated in the URL: with `?compress=deflate` every message is compressed
/// and carries what an uncompressed socket gets; an unknown method is refused before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_negotiated_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let (node, did, token) = node_with_account(dir.path(), "zip.test", None);
    let refused = tokio_tungstenite::connect_async(format!("{}?compress=gzip", node.ws)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("an unknown compression was not refused: {other:?}"),
    }
    let mut zipped = connect(&format!("{}?compress=deflate", node.ws)).await;
    let mut plain = connect(&node.ws).await;
    // A second compressed socket: the shared message is compressed once for both.
    let mut zipped2 = connect(&format!("{}?compress=deflate", node.ws)).await;
    let welcome = next_deflated(&mut zipped).await;
    assert_eq!((welcome["type"].as_str(), welcome["compression"].as_str()), (Some("welcome"), Some("deflate")));
    assert_eq!(next(&mut plain).await["compression"], "none");
    assert_eq!(next_deflated(&mut zipped2).await["type"], "welcome");
    for ws in [&mut zipped, &mut plain, &mut zipped2] {
        send(ws, json!({"type": "subscribe", "id": "b", "topic": "repo", "did": did, "batch": true})).await;
    }
    assert_eq!(next_deflated(&mut zipped).await["type"], "subscribed");
    assert_eq!(next_deflated(&mut zipped2).await["type"], "subscribed");
    assert_eq!(next(&mut plain).await["type"], "subscribed");
    // A batch long enough to compress well, the same events on both sockets.
    let writes: Vec<Value> = (0..20)
        .map(|i| {
            json!({"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
            "value": {"$type": COLLECTION, "text": format!("compressed {i}"), "createdAt": "2026-11-25T00:00:00.000Z"}})
        })
        .collect();
    post(&node.base, "com.atproto.repo.applyWrites", Some(&token), json!({"repo": did, "writes": writes}));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() < 20 {
        let m = next_deflated(&mut zipped).await;
        assert_eq!(m["type"], "events", "{m}");
        a.extend(m["events"].as_array().unwrap().iter().cloned());
    }
    while b.len() < 20 {
        let m = next(&mut plain).await;
        b.extend(m["events"].as_array().unwrap().iter().cloned());
    }
    let mut c = Vec::new();
    while c.len() < 20 {
        c.extend(next_deflated(&mut zipped2).await["events"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(a, b);
    assert_eq!(c, b);
    assert_eq!(a[19]["record"]["text"], "compressed 19");
}
