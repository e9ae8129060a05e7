//! Live views (`dev.ues.lens`) through running nodes, as apps use them: a view declared over
//! XRPC, followed over `/ws` while other accounts write, rebuilt from the differences alone
//! and compared with `query`; the view surviving a restart and resuming; REST mirrors; a view
//! backing a feed; and hostile definitions refused at creation with the reason, and a view that
//! outgrows the node's bound stopping without harm to anything else.

#[path = "support/node.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, agent, create_account, start_with, xrpc_post};

const CONFIG: &str = "[xrpc.rate_limits]\nenabled = false\n";

fn get(node: &Running, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = agent().get(format!("{}{path}", node.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut res = req.call().unwrap();
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

fn likes_per_post() -> Value {
    json!({"name": "likesPerPost", "from": {"collection": "app.bsky.feed.like", "as": "l"},
        "join": [{"collection": "app.bsky.feed.post", "as": "p", "on": ["l.subject.uri", "p.uri"], "kind": "inner"}],
        "where": {"and": [{"eq": ["p.langs.0", "en"]}, {"contains": ["p.text", "rust"]}]},
        "groupBy": ["l.subject.uri"],
        "select": {"post": "l.subject.uri", "likes": {"count": "*"}, "firstLike": {"min": "l.createdAt"}},
        "orderBy": [{"field": "likes", "desc": true}], "limit": 100})
}

fn xpost(base: &str, method: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = agent().post(format!("{base}/xrpc/{method}"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut res = req.send_json(body).unwrap();
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
}

/// The record key a test names a post or a like by: a TID made from the name.
fn key_for(collection: &str, name: &str) -> String {
    if !matches!(collection, "app.bsky.feed.post" | "app.bsky.feed.like") {
        return name.to_string();
    }
    const B32: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let mut out = String::from("3");
    for i in 0..12 {
        out.push(B32[((h >> (i * 5)) & 31) as usize] as char);
    }
    out
}

fn put(base: &str, token: &str, did: &str, collection: &str, rkey: &str, record: Value) -> (String, String) {
    let rkey = key_for(collection, rkey);
    let (s, v) = xpost(
        base,
        "com.atproto.repo.putRecord",
        Some(token),
        json!({"repo": did, "collection": collection, "rkey": rkey, "record": record}),
    );
    assert_eq!(s, 200, "{v}");
    (v["uri"].as_str().unwrap().to_string(), v["cid"].as_str().unwrap().to_string())
}

fn delete(base: &str, token: &str, did: &str, collection: &str, rkey: &str) {
    let rkey = key_for(collection, rkey);
    let (s, v) = xpost(
        base,
        "com.atproto.repo.deleteRecord",
        Some(token),
        json!({"repo": did, "collection": collection, "rkey": rkey}),
    );
    assert_eq!(s, 200, "{v}");
}

fn post(text: &str, lang: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "langs": [lang], "createdAt": "2026-12-01T00:00:00.000Z"})
}

fn like(uri: &str, cid: &str, at: &str) -> Value {
    json!({"$type": "app.bsky.feed.like", "subject": {"uri": uri, "cid": cid}, "createdAt": at})
}

fn rows(node: &Running, uri: &str) -> Vec<Value> {
    let (s, v) = get(node, &format!("/xrpc/dev.ues.lens.query?view={}&limit=1000", enc(uri)), None);
    assert_eq!(s, 200, "{v}");
    v["rows"].as_array().unwrap().clone()
}

/// Waits (bounded) until the view's rows are `expected`.
fn settles(node: &Running, uri: &str, expected: &[Value]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = rows(node, uri);
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the view never became {expected:?}; it is {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn read(ws: &mut Ws, within: Duration) -> Option<Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(within, ws.next()).await.ok()?;
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

fn key(v: &Value) -> String {
    v.to_string()
}

#[test]
fn a_subscriber_rebuilds_the_view_from_its_differences_and_it_equals_query() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), CONFIG);
    let (app_did, app_token) = create_account(&n.base, "app.test");
    let (bob, bob_t) = create_account(&n.base, "bob.test");
    let (carol, carol_t) = create_account(&n.base, "carol.test");
    // Records before the view: it is built from them.
    let (p1, c1) = put(&n.base, &bob_t, &bob, "app.bsky.feed.post", "p1", post("I like Rust", "en"));
    let (p2, c2) = put(&n.base, &carol_t, &carol, "app.bsky.feed.post", "p2", post("rusty nails", "en"));
    let (p3, c3) = put(&n.base, &carol_t, &carol, "app.bsky.feed.post", "p3", post("Rust en français", "fr"));
    put(&n.base, &carol_t, &carol, "app.bsky.feed.like", "l1", like(&p1, &c1, "2026-12-01T00:00:05.000Z"));

    let (s, created) =
        xrpc_post(&n, "dev.ues.lens.createView", Some(&app_token), json!({"definition": likes_per_post()}));
    assert_eq!(s, 200, "{created}");
    let uri = created["uri"].as_str().unwrap().to_string();
    assert_eq!(uri, format!("at://{app_did}/dev.ues.lens.view/likesPerPost"));
    // Queryable at once, built from the records already there.
    assert_eq!(rows(&n, &uri), vec![json!({"post": p1, "likes": 1, "firstLike": "2026-12-01T00:00:05.000Z"})]);
    // The definition is the account's record.
    let (s, rec) = get(
        &n,
        &format!("/xrpc/com.atproto.repo.getRecord?repo={app_did}&collection=dev.ues.lens.view&rkey=likesPerPost"),
        None,
    );
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["value"]["definition"], likes_per_post());
    // The same name again is refused.
    let (s, again) =
        xrpc_post(&n, "dev.ues.lens.createView", Some(&app_token), json!({"definition": likes_per_post()}));
    assert_eq!((s, again["error"].as_str()), (400, Some("ViewExists")), "{again}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let port = n.port;
    let (final_rows, told) = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await.unwrap();
        assert_eq!(read(&mut ws, Duration::from_secs(20)).await.unwrap()["type"], "welcome");
        // An unknown view is refused; the socket stays usable.
        ws.send(Message::text(json!({"type": "subscribe", "id": "x", "topic": "lens", "view": "at://did:plc:nobody/dev.ues.lens.view/none"}).to_string())).await.unwrap();
        let refused = read(&mut ws, Duration::from_secs(20)).await.unwrap();
        assert_eq!((refused["type"].as_str(), refused["error"].as_str()), (Some("error"), Some("ViewNotFound")), "{refused}");
        // Not a string, or a name without a session: refused the same way.
        for bad in [json!(42), json!("likesPerPost")] {
            ws.send(Message::text(json!({"type": "subscribe", "id": "y", "topic": "lens", "view": bad}).to_string()))
                .await
                .unwrap();
            let refused = read(&mut ws, Duration::from_secs(20)).await.unwrap();
            assert_eq!(refused["type"], "error", "{refused}");
        }
        ws.send(Message::text(json!({"type": "subscribe", "id": "v", "topic": "lens", "view": uri}).to_string()))
            .await
            .unwrap();
        assert_eq!(read(&mut ws, Duration::from_secs(20)).await.unwrap()["type"], "subscribed");
        let first = read(&mut ws, Duration::from_secs(20)).await.unwrap();
        assert_eq!(first["type"], "app", "{first}");
        let mut state: HashMap<String, i64> = HashMap::new();
        for r in first["event"]["rows"].as_array().unwrap() {
            *state.entry(key(r)).or_default() += 1;
        }
        let mut last_seq = first["event"]["seq"].as_i64().unwrap();
        let mut told = 0;
        // Other accounts write: likes come and go, a post is edited out of the filter and back.
        let writes = {
            let (base, bob, bob_t, carol, carol_t) = (n.base.clone(), bob.clone(), bob_t.clone(), carol.clone(), carol_t.clone());
            let (p1, c1, p2, c2, p3, c3) = (p1.clone(), c1.clone(), p2.clone(), c2.clone(), p3.clone(), c3.clone());
            tokio::task::spawn_blocking(move || {
                put(&base, &bob_t, &bob, "app.bsky.feed.like", "l1", like(&p1, &c1, "2026-12-01T00:00:01.000Z"));
                put(&base, &bob_t, &bob, "app.bsky.feed.like", "l2", like(&p2, &c2, "2026-12-01T00:00:02.000Z"));
                put(&base, &carol_t, &carol, "app.bsky.feed.like", "l2", like(&p2, &c2, "2026-12-01T00:00:03.000Z"));
                put(&base, &bob_t, &bob, "app.bsky.feed.like", "l3", like(&p3, &c3, "2026-12-01T00:00:04.000Z"));
                delete(&base, &carol_t, &carol, "app.bsky.feed.like", "l1");
                put(&base, &carol_t, &carol, "app.bsky.feed.post", "p2", post("no longer about that", "en"));
                put(&base, &carol_t, &carol, "app.bsky.feed.post", "p2", post("RUST again", "en"));
                put(&base, &carol_t, &carol, "app.bsky.feed.like", "l4", like(&p2, &c2, "2026-12-01T00:00:00.500Z"));
                delete(&base, &bob_t, &bob, "app.bsky.feed.like", "l1");
                put(&base, &bob_t, &bob, "app.bsky.feed.like", "l5", like(&p1, &c1, "2026-12-01T00:00:09.000Z"));
            })
        };
        // Every difference, in commit order, applied to what the subscriber holds.
        let expected = vec![
            json!({"post": p2, "likes": 3, "firstLike": "2026-12-01T00:00:00.500Z"}),
            json!({"post": p1, "likes": 1, "firstLike": "2026-12-01T00:00:09.000Z"}),
        ];
        let mut expected_state: HashMap<String, i64> = HashMap::new();
        for r in &expected {
            *expected_state.entry(key(r)).or_default() += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while state != expected_state || !writes.is_finished() {
            assert!(Instant::now() < deadline, "the differences never added up to {expected:?}: {state:?}");
            let Some(m) = read(&mut ws, Duration::from_millis(500)).await else { continue };
            assert_eq!(m["type"], "app", "{m}");
            let e = &m["event"];
            assert_eq!(e["view"], uri.as_str());
            let seq = e["seq"].as_i64().unwrap();
            assert!(seq > last_seq, "differences out of commit order: {seq} after {last_seq}");
            last_seq = seq;
            for r in e["removed"].as_array().unwrap() {
                let c = state.entry(key(r)).or_default();
                assert!(*c > 0, "a removed row the subscriber never had: {r}");
                *c -= 1;
            }
            for r in e["added"].as_array().unwrap() {
                *state.entry(key(r)).or_default() += 1;
            }
            state.retain(|_, c| *c != 0);
            told += 1;
        }
        writes.await.unwrap();
        // Nothing more arrives: no difference was told twice.
        assert!(read(&mut ws, Duration::from_millis(800)).await.is_none(), "an extra difference");
        (expected, told)
    });
    assert!(told >= 6, "only {told} differences");
    // What the subscriber rebuilt is what query answers, in the view's order.
    assert_eq!(rows(&n, &uri), final_rows);

    // REST mirrors.
    let (s, v) = get(&n, &format!("/api/v1/lenses/views/{}/rows", enc(&uri)), None);
    assert_eq!((s, v["rows"].clone()), (200, json!(final_rows)), "{v}");
    let (s, v) = get(&n, "/api/v1/lenses/views", Some(&app_token));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["views"][0]["rows"], 2, "{v}");
    // Pages: one row at a time, in order.
    let (_, page1) = get(&n, &format!("/xrpc/dev.ues.lens.query?view={}&limit=1", enc(&uri)), None);
    let cursor = page1["cursor"].as_str().unwrap();
    let (_, page2) = get(&n, &format!("/xrpc/dev.ues.lens.query?view={}&limit=1&cursor={cursor}", enc(&uri)), None);
    assert_eq!([page1["rows"][0].clone(), page2["rows"][0].clone()].to_vec(), final_rows);

    // A restart: the view is still there and resumes from its cursor.
    drop(n);
    let n = start_with(dir.path(), CONFIG);
    assert_eq!(rows(&n, &uri), final_rows);

    // The views' state is in a database of its own, beside the node's, with larger pages.
    // Marked as another layout's, it is made again at the next start, and every view is built
    // again from the records.
    drop(n);
    {
        use ues_repo::ipld::storage::rusqlite::Connection;
        let node_db = Connection::open(dir.path().join("index.sqlite")).unwrap();
        let in_node: i64 =
            node_db.query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'lens%'", [], |r| r.get(0)).unwrap();
        assert_eq!(in_node, 0, "the node's database holds no view state");
        let db = Connection::open(dir.path().join("lens.sqlite")).unwrap();
        let page: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 4096);
        let held: i64 = db.query_row("SELECT count(*) FROM lens_out", [], |r| r.get(0)).unwrap();
        assert!(held > 0);
        // Rows another layout would read wrongly: they must not survive.
        db.execute("UPDATE lens_out SET row = '{\"wrong\": true}'", []).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
    }
    let n = start_with(dir.path(), CONFIG);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = get(&n, &format!("/xrpc/dev.ues.lens.query?view={}&limit=1000", enc(&uri)), None);
        if s == 200 && v["rows"] == json!(final_rows) {
            break;
        }
        assert!(Instant::now() < deadline, "the view was not built again: {s} {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // (New sessions: the restarted node has another address, so another service DID.)
    let login = |handle: &str| {
        let (s, v) = xpost(
            &n.base,
            "com.atproto.server.createSession",
            None,
            json!({"identifier": handle, "password": "a long password"}),
        );
        assert_eq!(s, 200, "{v}");
        v["accessJwt"].as_str().unwrap().to_string()
    };
    let (app_token, bob_t, carol_t) = (login("app.test"), login("bob.test"), login("carol.test"));
    put(&n.base, &carol_t, &carol, "app.bsky.feed.like", "l9", like(&p1, &c1, "2026-12-01T00:00:00.100Z"));
    settles(
        &n,
        &uri,
        &[
            json!({"post": p2, "likes": 3, "firstLike": "2026-12-01T00:00:00.500Z"}),
            json!({"post": p1, "likes": 2, "firstLike": "2026-12-01T00:00:00.100Z"}),
        ],
    );

    // A view backs a feed: its uri column is the posts.
    let feed = json!({"name": "rustFeed", "from": {"collection": "app.bsky.feed.post", "as": "p"},
        "where": {"contains": ["p.text", "rust"]},
        "select": {"uri": "p.uri", "text": "p.text"}, "orderBy": [{"field": "uri"}], "limit": 50});
    let (s, v) = xrpc_post(&n, "dev.ues.lens.createView", Some(&app_token), json!({"definition": feed}));
    assert_eq!(s, 200, "{v}");
    let (s, skel) = get(
        &n,
        &format!(
            "/xrpc/app.bsky.feed.getFeedSkeleton?feed={}",
            enc(&format!("at://{app_did}/app.bsky.feed.generator/rustFeed"))
        ),
        None,
    );
    assert_eq!(s, 200, "{skel}");
    let mut posts: Vec<&str> = skel["feed"].as_array().unwrap().iter().map(|f| f["post"].as_str().unwrap()).collect();
    posts.sort();
    let mut want = vec![p1.as_str(), p2.as_str(), p3.as_str()];
    want.sort();
    assert_eq!(posts, want);

    // And through the node's own AppView: a feed generator record naming the view, read with
    // app.bsky.feed.getFeed as Bluesky's apps do (the posts hydrated).
    let (_, desc) = get(&n, "/xrpc/com.atproto.server.describeServer", None);
    let service = desc["did"].as_str().unwrap().to_string();
    put(
        &n.base,
        &app_token,
        &app_did,
        "app.bsky.feed.generator",
        "mine",
        json!({"$type": "app.bsky.feed.generator",
        "did": service, "displayName": "Rust", "createdAt": "2026-12-01T00:00:00.000Z",
        "dev.ues.feed.algorithm": {"kind": "view", "view": "rustFeed"}}),
    );
    let generator = enc(&format!("at://{app_did}/app.bsky.feed.generator/mine"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = get(&n, &format!("/xrpc/app.bsky.feed.getFeed?feed={generator}"), Some(&app_token));
        if s == 200 {
            let mut got: Vec<&str> =
                v["feed"].as_array().unwrap().iter().map(|f| f["post"]["uri"].as_str().unwrap()).collect();
            got.sort();
            assert_eq!(got, want, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "getFeed never answered: {s} {v}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Deleted: its subscribers are told and their subscription ends; it is gone from the
    // catalog and the repository.
    let closed = rt.block_on(async {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", n.port)).await.unwrap();
        read(&mut ws, Duration::from_secs(20)).await.unwrap();
        ws.send(Message::text(json!({"type": "subscribe", "id": "v", "topic": "lens", "view": uri}).to_string()))
            .await
            .unwrap();
        assert_eq!(read(&mut ws, Duration::from_secs(20)).await.unwrap()["type"], "subscribed");
        assert!(read(&mut ws, Duration::from_secs(20)).await.unwrap()["event"]["rows"].is_array());
        let (base, token) = (n.base.clone(), app_token.clone());
        let deleted = tokio::task::spawn_blocking(move || {
            xpost(&base, "dev.ues.lens.deleteView", Some(&token), json!({"view": "likesPerPost"}))
        })
        .await
        .unwrap();
        assert_eq!(deleted.0, 200, "{}", deleted.1);
        read(&mut ws, Duration::from_secs(20)).await.unwrap()
    });
    assert_eq!(closed["event"]["closed"], "deleted", "{closed}");
    let (s, v) = get(&n, &format!("/xrpc/dev.ues.lens.query?view={}", enc(&uri)), None);
    assert_eq!((s, v["error"].as_str()), (400, Some("ViewNotFound")), "{v}");
    // Someone else cannot delete a view.
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.deleteView",
        Some(&bob_t),
        json!({"view": format!("at://{app_did}/dev.ues.lens.view/rustFeed")}),
    );
    assert_eq!((s, v["error"].as_str()), (403, Some("NotAuthorized")), "{v}");
}

#[test]
fn hostile_definitions_are_refused_at_creation_and_an_outgrown_view_stops() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), &format!("{CONFIG}[lens]\nmax_view_rows = 12\nmax_views_per_account = 3\n"));
    let (did, t) = create_account(&n.base, "owner.test");
    let refused = |definition: Value, error: &str, why: &str| {
        let (s, v) = xrpc_post(&n, "dev.ues.lens.createView", Some(&t), json!({"definition": definition}));
        assert_eq!((s, v["error"].as_str()), (400, Some(error)), "{v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{v} should say {why:?}");
    };
    let mut d = likes_per_post();
    d["join"][0]["on"] = json!(["q.subject.uri", "p.uri"]);
    refused(d, "InvalidDefinition", "no alias \"q\"");
    let mut d = likes_per_post();
    d["select"]["x"] = json!({"max": "l.subject.nowhere"});
    refused(d, "InvalidDefinition", "no field \"nowhere\"");
    let mut d = likes_per_post();
    d.as_object_mut().unwrap().remove("limit");
    refused(d, "InvalidDefinition", "limit");
    let nest = |depth: usize| {
        let mut deep = json!({"exists": "p.text"});
        for _ in 0..depth {
            deep = json!({"not": deep});
        }
        let mut d = likes_per_post();
        d["where"] = deep;
        d
    };
    refused(nest(40), "InvalidDefinition", "deeper");
    // Deeper still: the body's parser refuses it before it is read.
    let (s, v) = xrpc_post(&n, "dev.ues.lens.createView", Some(&t), json!({"definition": nest(300)}));
    assert_eq!(s, 400, "{v}");
    refused(json!("likes"), "InvalidRequest", "must be an object");
    refused(json!({"name": "../x", "limit": 1}), "InvalidDefinition", "name");
    // Not signed in.
    let (s, _) = xrpc_post(&n, "dev.ues.lens.createView", None, json!({"definition": likes_per_post()}));
    assert_eq!(s, 401);

    // Past the bound at creation: 13 posts held already.
    for i in 0..13 {
        put(&n.base, &t, &did, "app.bsky.feed.post", &format!("a{i}"), post(&format!("post {i}"), "en"));
    }
    let all = json!({"name": "allPosts", "from": {"collection": "app.bsky.feed.post", "as": "p"},
        "select": {"uri": "p.uri"}, "limit": 10});
    refused(all, "ViewTooLarge", "max_view_rows");
    // Within it at creation (the likes), then grows past it: it stops, with the reason, and
    // the node goes on.
    let likes = json!({"name": "likes", "from": {"collection": "app.bsky.feed.like", "as": "l"},
        "select": {"uri": "l.uri"}, "limit": 10});
    let (s, v) = xrpc_post(&n, "dev.ues.lens.createView", Some(&t), json!({"definition": likes}));
    assert_eq!(s, 200, "{v}");
    let uri = v["uri"].as_str().unwrap().to_string();
    for i in 0..8 {
        put(
            &n.base,
            &t,
            &did,
            "app.bsky.feed.like",
            &format!("k{i}"),
            like(
                &format!("at://{did}/app.bsky.feed.post/a{i}"),
                "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                "2026-12-01T00:00:00.000Z",
            ),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let stopped = loop {
        let (s, v) = get(&n, &format!("/xrpc/dev.ues.lens.query?view={}", enc(&uri)), None);
        if s == 400 && v["error"] == "ViewStopped" {
            break v;
        }
        assert!(Instant::now() < deadline, "the view never stopped: {s} {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(stopped["message"].as_str().unwrap().contains("bound"), "{stopped}");
    let (s, v) = get(&n, &format!("/api/v1/lenses/views/{}/rows", enc(&uri)), None);
    assert_eq!((s, v["error"].as_str()), (409, Some("ViewStopped")), "{v}");
    let (s, v) = get(&n, "/xrpc/dev.ues.lens.listViews", Some(&t));
    assert_eq!(s, 200);
    assert!(v["views"][0]["stopped"].as_str().unwrap().contains("bound"), "{v}");
    // Hostile reads and writes of the other methods: typed refusals, nothing changed.
    for (path, error) in [
        (format!("/xrpc/dev.ues.lens.query?view={}&cursor=zz-not-hex", enc(&uri)), "InvalidRequest"),
        (format!("/xrpc/dev.ues.lens.query?view={}&limit=100000", enc(&uri)), "InvalidRequest"),
        ("/xrpc/dev.ues.lens.query?view=likes".to_string(), "AuthenticationRequired"),
        ("/xrpc/app.bsky.feed.getFeedSkeleton?feed=not-a-uri".to_string(), "UnknownFeed"),
        (
            format!(
                "/xrpc/app.bsky.feed.getFeedSkeleton?feed={}",
                enc(&format!("at://{did}/app.bsky.feed.generator/none"))
            ),
            "UnknownFeed",
        ),
        (
            format!(
                "/xrpc/dev.ues.lens.getRecord?repo={did}&rkey=x&schema={}",
                enc("at://did:plc:x/app.bsky.feed.post/y")
            ),
            "InvalidRequest",
        ),
        (
            format!(
                "/xrpc/dev.ues.lens.getRecord?repo={did}&rkey=x&schema={}",
                enc(&format!("at://{did}/dev.ues.lens.schema/com.example.none"))
            ),
            "SchemaLensNotFound",
        ),
    ] {
        let (s, v) = get(&n, &path, None);
        assert_eq!(
            (s, v["error"].as_str()),
            (if error == "AuthenticationRequired" { 401 } else { 400 }, Some(error)),
            "{path}: {v}"
        );
    }
    let doc = |id: &str| {
        json!({"lexicon": 1, "id": id, "defs": {"main": {"type": "record", "key": "any",
        "record": {"type": "object", "properties": {"a": {"type": "string"}}}}}})
    };
    let many: Vec<Value> =
        (0..300).map(|i| json!({"op": "rename", "from": format!("f{i}"), "to": format!("g{i}")})).collect();
    for (body, why) in [
        (json!({"source": doc("com.example.a"), "target": doc("com.example.b"), "ops": many}), ""),
        (json!({"source": doc("com.example.a"), "target": doc("com.example.a"), "ops": []}), "same"),
        (json!({"source": {"id": "not an nsid"}, "target": doc("com.example.b"), "ops": []}), "NSID"),
        (
            json!({"source": doc("com.example.a"), "target": doc("com.example.b"), "ops": [{"op": "explode", "name": "a"}]}),
            "",
        ),
    ] {
        let (s, v) = xrpc_post(&n, "dev.ues.lens.createSchemaLens", Some(&t), body);
        assert_eq!(s, 400, "{v}");
        assert!(v["message"].as_str().unwrap_or_default().contains(why), "{v}");
    }
    let (s, v) = xrpc_post(&n, "dev.ues.lens.deleteView", Some(&t), json!({"view": "x".repeat(600)}));
    assert_eq!(s, 400, "{v}");
    let (s, v) = xrpc_post(&n, "dev.ues.lens.deleteView", Some(&t), json!({"view": "nosuchview"}));
    assert_eq!((s, v["error"].as_str()), (400, Some("ViewNotFound")), "{v}");
    let (s, _) = get(
        &n,
        &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=dev.ues.lens.schema&rkey=com.example.b"),
        None,
    );
    assert_eq!(s, 400, "no schema lens was stored");

    // The same bounds hold for definitions written as records directly: past the account's
    // view count, the view is recorded as stopped with the reason, not built.
    for name in ["direct1", "direct2", "direct3"] {
        let definition = json!({"name": name, "from": {"collection": "app.bsky.feed.post", "as": "p"},
            "select": {"uri": "p.uri"}, "limit": 1});
        put(
            &n.base,
            &t,
            &did,
            "dev.ues.lens.view",
            name,
            json!({"$type": "dev.ues.lens.view", "definition": definition, "createdAt": "2026-12-06T00:00:00.000Z"}),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = get(&n, "/xrpc/dev.ues.lens.listViews", Some(&t));
        let third = v["views"].as_array().unwrap().iter().find(|x| x["name"] == "direct3").cloned();
        if let Some(third) = third {
            assert!(third["stopped"].as_str().unwrap_or_default().contains("max_views_per_account"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the direct definitions never appeared: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The node still answers and writes.
    put(&n.base, &t, &did, "app.bsky.feed.post", "after", post("still here", "en"));
    let (s, _) = get(&n, "/xrpc/_health", None);
    assert_eq!(s, 200);
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(log.contains("a view stopped"), "the stop is logged");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn records_read_and_write_through_a_schema_lens() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), CONFIG);
    let (app_did, app_t) = create_account(&n.base, "lensapp.test");
    let (bob, bob_t) = create_account(&n.base, "bob.test");
    let source = json!({"lexicon": 1, "id": "com.example.note", "defs": {"main": {"type": "record", "key": "any",
        "record": {"type": "object", "required": ["title", "status"], "properties": {
            "title": {"type": "string", "maxLength": 100}, "body": {"type": "string", "maxLength": 1000},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}},
            "status": {"type": "string", "enum": ["draft", "published"]}}}}}});
    let target = json!({"lexicon": 1, "id": "com.example.noteV2", "defs": {"main": {"type": "record", "key": "any",
        "record": {"type": "object", "required": ["name", "state", "lang"], "properties": {
            "name": {"type": "string", "maxLength": 100}, "text": {"type": "string", "maxLength": 1000},
            "tag": {"type": "string", "maxLength": 20},
            "state": {"type": "string", "enum": ["unpublished", "live"]},
            "lang": {"type": "string", "const": "en"}}}}}});
    let ops = json!([
        {"op": "rename", "from": "title", "to": "name"},
        {"op": "rename", "from": "body", "to": "text"},
        {"op": "head", "name": "tags"},
        {"op": "rename", "from": "tags", "to": "tag"},
        {"op": "convert", "name": "status", "mapping": [{"draft": "unpublished", "published": "live"}, {"unpublished": "draft", "live": "published"}]},
        {"op": "rename", "from": "status", "to": "state"},
        {"op": "add", "name": "lang", "default": "en"}
    ]);
    // Checked against both documents when declared.
    let mut bad = ops.clone();
    bad[0]["from"] = json!("titel");
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.createSchemaLens",
        Some(&app_t),
        json!({"source": source, "target": target, "ops": bad}),
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("InvalidSchemaLens")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("titel"), "{v}");
    let mut short = ops.clone();
    short.as_array_mut().unwrap().pop();
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.createSchemaLens",
        Some(&app_t),
        json!({"source": source, "target": target, "ops": short}),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("InvalidSchemaLens")),
        "a required target field nothing provides: {v}"
    );
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.createSchemaLens",
        Some(&app_t),
        json!({"source": source, "target": target, "ops": ops}),
    );
    assert_eq!(s, 200, "{v}");
    let lens = v["uri"].as_str().unwrap().to_string();
    assert_eq!(lens, format!("at://{app_did}/dev.ues.lens.schema/com.example.noteV2"));

    put(
        &n.base,
        &bob_t,
        &bob,
        "com.example.note",
        "n1",
        json!({"$type": "com.example.note", "title": "Lenses", "body": "both ways", "tags": ["a", "b"], "status": "draft"}),
    );
    let (s, v) = get(&n, &format!("/xrpc/dev.ues.lens.getRecord?repo={bob}&rkey=n1&schema={}", enc(&lens)), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["value"],
        json!({"$type": "com.example.noteV2", "name": "Lenses", "text": "both ways", "tag": "a", "state": "unpublished", "lang": "en"})
    );
    // Written in the target's shape: stored in the source's, keeping what the target cannot say.
    let written = json!({"$type": "com.example.noteV2", "name": "Lenses 2", "text": "edited", "tag": "z", "state": "live", "lang": "en"});
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.putRecord",
        Some(&bob_t),
        json!({"repo": bob, "rkey": "n1", "schema": lens, "record": written}),
    );
    assert_eq!(s, 200, "{v}");
    let (_, raw) =
        get(&n, &format!("/xrpc/com.atproto.repo.getRecord?repo={bob}&collection=com.example.note&rkey=n1"), None);
    assert_eq!(
        raw["value"],
        json!({"$type": "com.example.note", "title": "Lenses 2", "body": "edited", "tags": ["z", "b"], "status": "published"})
    );
    let (_, v) = get(&n, &format!("/xrpc/dev.ues.lens.getRecord?repo={bob}&rkey=n1&schema={}", enc(&lens)), None);
    assert_eq!(v["value"], written, "what was written reads back");
    // A new record through the lens, and the list.
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.putRecord",
        Some(&bob_t),
        json!({"repo": bob, "rkey": "n2", "schema": lens,
        "record": {"name": "fresh", "state": "unpublished", "lang": "en"}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = get(&n, &format!("/api/v1/lenses/records?repo={bob}&schema={}", enc(&lens)), None);
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> =
        v["records"].as_array().unwrap().iter().map(|r| r["value"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fresh", "Lenses 2"]);
    // A target record the lens cannot take back is refused, nothing written.
    let (s, v) = xrpc_post(
        &n,
        "dev.ues.lens.putRecord",
        Some(&bob_t),
        json!({"repo": bob, "rkey": "n1", "schema": lens,
        "record": {"name": "x", "state": "archived", "lang": "en"}}),
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("LensFailed")), "{v}");
    let (_, after) =
        get(&n, &format!("/xrpc/com.atproto.repo.getRecord?repo={bob}&collection=com.example.note&rkey=n1"), None);
    assert_eq!(after["value"], raw["value"]);
    // Another account's repository cannot be written through a lens.
    let (s, _) = xrpc_post(
        &n,
        "dev.ues.lens.putRecord",
        Some(&app_t),
        json!({"repo": bob, "rkey": "n1", "schema": lens, "record": written}),
    );
    assert!(s == 400 || s == 403, "{s}");
}
