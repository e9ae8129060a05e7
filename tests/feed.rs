//! The node as its own Bluesky AppView (`dev.ues.feed`), driven by Bluesky's official client:
//! `tests/js/feed_scenario.mjs` makes four accounts follow, post, reply, quote, like, repost and
//! block through `com.atproto.repo.*`, then checks every `app.bsky.*` read the app answers
//! (timeline, author feeds, threads, posts, likes, profiles, graph, notifications) against what
//! Bluesky's AppView would answer, and each answer against the lexicons (those bundled in
//! `@atproto/api` and those of `../shared/reference/atproto-lexicons`).

#[path = "support/http.rs"]
mod http;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "[xrpc.rate_limits]\nenabled = false\n\n[apps]\nenabled = [\"dev.ues.stats\", \"dev.ues.feed\"]\n";

/// How long the whole scenario may take (it needs a few seconds; each wait for the index to
/// catch up is bounded at 10 s inside the script).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// Starts `ues run` with `CONFIG` on 127.0.0.1 and waits (at most 60 s) until it answers; a node
/// that exits first (a configuration it refuses, such as an unknown app) fails with its log.
fn start(dir: &std::path::Path) -> support::Running {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node.toml"), CONFIG).unwrap();
    support::start_watched(dir, support::free_port())
}

/// Runs `tests/js/<script> <node base> [lexicons]` (bounded by [`SCENARIO_TIMEOUT`]): its exit
/// status (`None`: killed at the bound), stdout, stderr, last JSON line, and the node's log tail.
fn run_script(
    js: &std::path::Path,
    script: &str,
    node_version: &str,
    node: &support::Running,
    lexicons: Option<&std::path::Path>,
    tmp: &std::path::Path,
) -> (Option<std::process::ExitStatus>, String, String, serde_json::Value, String) {
    let stdout_path = tmp.join(format!("{script}.stdout"));
    let stderr_path = tmp.join(format!("{script}.stderr"));
    let mut cmd = Command::new("node");
    cmd.arg("--experimental-websocket").arg(js.join(script)).arg(&node.base);
    if let Some(dir) = lexicons {
        cmd.arg(dir);
    }
    let mut child = cmd
        .current_dir(js)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // SKIPPED notices and progress from the script are shown with the test's output.
    if !stderr.is_empty() {
        eprintln!("{script} (node {node_version}) stderr:\n{stderr}");
    }
    let report: serde_json::Value =
        stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null);
    let node_log = support::tail(&node.dir.join("node.log"), 6000);
    (status, stdout, stderr, report, node_log)
}

/// Lists and custom feeds through the official client: `getLists` (with `purposes`),
/// `getList` (paged), `getFeedGenerator(s)` (online only for feeds this node computes), and
/// `getFeed` on the node's two algorithms (full-text over the accounts followed, most liked by
/// them), `UnknownFeed` for a generator served elsewhere; post and actor search
/// (`tests/js/feed_lists.mjs`).
#[test]
fn lists_and_custom_feeds_through_the_official_client() {
    let Some(js) = shared::node_tests() else { return };
    let Some(node_version) = shared::node_js("the feed scenario") else { return };
    let lexicons = shared::shared("reference/atproto-lexicons");
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("data"));
    let (status, stdout, stderr, report, node_log) =
        run_script(&js, "feed_lists.mjs", &node_version, &node, lexicons.as_deref(), tmp.path());
    drop(node);
    assert!(
        status.is_some_and(|s| s.success()) && report["error"].is_null() && report["checks"].as_u64() == Some(21),
        "feed_lists.mjs failed ({status:?}): {report}\nstdout:\n{stdout}\nstderr:\n{stderr}\nnode log (tail):\n{node_log}"
    );
    if lexicons.is_some() {
        assert_eq!(report["lexcheck"], "checked", "{report}");
    }
}

#[test]
fn the_official_client_reads_the_nodes_own_appview() {
    let Some(js) = shared::node_tests() else { return };
    let Some(node_version) = shared::node_js("the feed scenario") else { return };
    // The reference lexicons every answer is also checked against (loud skip when absent).
    let lexicons = shared::shared("reference/atproto-lexicons");

    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("data"));

    let (status, stdout, stderr, report, node_log) =
        run_script(&js, "feed_scenario.mjs", &node_version, &node, lexicons.as_deref(), tmp.path());
    drop(node);

    let Some(status) = status else {
        panic!(
            "feed_scenario.mjs did not finish within {SCENARIO_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nnode log (tail):\n{node_log}"
        );
    };
    assert!(
        status.success() && report["ok"] == true,
        "feed_scenario.mjs failed ({status}): {}\n\nstdout:\n{stdout}\nstderr:\n{stderr}\nnode log (tail):\n{node_log}",
        report["error"].as_str().unwrap_or("(no report)")
    );
    assert_eq!(report["clientValidatesResponses"], true, "{report}");
    if lexicons.is_some() {
        assert!(report["lexcheckedBodies"].as_u64().is_some_and(|n| n > 100), "{report}");
    }
    assert!(report["checks"].as_u64().is_some_and(|n| n > 1000), "{report}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next `app` message, as JSON (at most 20 s away; other messages passed over).
async fn next_app(ws: &mut Ws) -> serde_json::Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..100 {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message within 20 s");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "app" {
                    return v;
                }
                assert_ne!(v["type"], "error", "{v}");
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
    panic!("no app message in 100 messages");
}

fn create(base: &str, token: &str, did: &str, collection: &str, record: serde_json::Value) -> serde_json::Value {
    let mut res = support::agent()
        .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({ "repo": did, "collection": collection, "record": record }))
        .unwrap();
    assert_eq!(res.status(), 200);
    res.body_mut().read_json().unwrap()
}

/// A signed-in socket on the `feed` topic hears a followed account's new post (as a timeline
/// item seen by that account) and the like of its own post (as a notification); an anonymous
/// socket is refused the topic; REST `GET /api/v1/timeline` and `/api/v1/notifications` answer
/// what the XRPC methods answer.
#[test]
fn the_feed_topic_and_rest_routes_carry_the_timeline_and_notifications() {
    use futures::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (alice, alice_token) = support::create_account(&node.base, "alice-live.test");
    let (bob, bob_token) = support::create_account(&node.base, "bob-live.test");
    let now = || {
        ues_protocol::node::sequencer::iso_from_millis(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
        )
    };
    create(&node.base, &alice_token, &alice, "app.bsky.graph.follow", json!({ "subject": bob, "createdAt": now() }));
    let mine =
        create(&node.base, &alice_token, &alice, "app.bsky.feed.post", json!({ "text": "mine", "createdAt": now() }));
    // The index has taken those in before the socket listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut res = support::agent().get(format!("{}/xrpc/dev.ues.feed.getStatus", node.base)).call().unwrap();
        let v: serde_json::Value = res.body_mut().read_json().unwrap();
        if v["caughtUp"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the feed did not catch up: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Anonymous: refused.
        let (mut anon, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", node.port)).await.unwrap();
        anon.send(Message::text(json!({"type": "subscribe", "id": "f", "topic": "feed"}).to_string())).await.unwrap();
        let refused = loop {
            use futures::StreamExt;
            let m = tokio::time::timeout(Duration::from_secs(20), anon.next()).await.unwrap().unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            if v["type"] != "welcome" {
                break v;
            }
        };
        assert_eq!(refused["type"], "error", "{refused}");

        let url = format!("ws://127.0.0.1:{}/ws?access_token={alice_token}", node.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text(json!({"type": "subscribe", "id": "f", "topic": "feed"}).to_string())).await.unwrap();
        // bob posts: alice hears it as her timeline item.
        let (b, t, d) = (node.base.clone(), bob_token.clone(), bob.clone());
        let post = tokio::task::spawn_blocking(move || {
            create(&b, &t, &d, "app.bsky.feed.post", json!({ "text": "live from bob", "createdAt": now() }))
        })
        .await
        .unwrap();
        let m = next_app(&mut ws).await;
        assert_eq!(m["event"]["type"], "timeline", "{m}");
        assert_eq!(m["event"]["item"]["post"]["uri"], post["uri"], "{m}");
        assert!(m["event"]["item"]["post"]["author"]["viewer"]["following"].as_str().is_some(), "{m}");
        // bob likes alice's post: she hears the notification.
        let (b, t, d) = (node.base.clone(), bob_token.clone(), bob.clone());
        let subject = json!({ "uri": mine["uri"], "cid": mine["cid"] });
        tokio::task::spawn_blocking(move || {
            create(&b, &t, &d, "app.bsky.feed.like", json!({ "subject": subject, "createdAt": now() }))
        })
        .await
        .unwrap();
        let m = next_app(&mut ws).await;
        assert_eq!(m["event"]["type"], "notification", "{m}");
        assert_eq!(m["event"]["notification"]["reason"], "like", "{m}");
        assert_eq!(m["event"]["notification"]["reasonSubject"], mine["uri"], "{m}");
        assert_eq!(m["event"]["notification"]["author"]["did"], bob.as_str(), "{m}");
    });
    // REST answers as XRPC does (the index has caught up: the socket heard the last event).
    let get = |path: &str| -> (u16, serde_json::Value) {
        let mut res = support::agent()
            .get(format!("{}{path}", node.base))
            .header("authorization", &format!("Bearer {alice_token}"))
            .call()
            .unwrap();
        (res.status().as_u16(), res.body_mut().read_json().unwrap())
    };
    let (s, rest) = get("/api/v1/timeline?limit=10");
    assert_eq!(s, 200, "{rest}");
    let (_, xrpc) = get("/xrpc/app.bsky.feed.getTimeline?limit=10");
    assert_eq!(rest, xrpc);
    assert_eq!(rest["feed"].as_array().unwrap().len(), 2, "{rest}");
    let (s, rest) = get("/api/v1/notifications");
    assert_eq!(s, 200, "{rest}");
    let (_, xrpc) = get("/xrpc/app.bsky.notification.listNotifications");
    assert_eq!(rest, xrpc);
    let (s, _) = {
        let res = support::agent().get(format!("{}/api/v1/timeline", node.base)).call().unwrap();
        (res.status().as_u16(), ())
    };
    assert_eq!(s, 401);
}

/// Who answers `app.bsky.*` reads: with no AppView configured, this node, whatever
/// `atproto-proxy` says for `#bsky_appview`; with `[xrpc] appview_url`, `[feed] mode = "auto"`
/// and `"remote"` send them there (as before the feed existed) and `"local"` keeps them here;
/// `"remote"` without an AppView is a configuration the node refuses.
#[test]
fn feed_mode_chooses_between_this_node_and_the_configured_appview() {
    let (appview, seen) =
        http::serve(|_, _| http::Answer::json(&serde_json::json!({ "feed": [], "cursor": "from-the-appview" })));
    let timeline = |node: &support::Running, token: &str, proxy: Option<&str>| -> serde_json::Value {
        let mut req = support::agent()
            .get(format!("{}/xrpc/app.bsky.feed.getTimeline", node.base))
            .header("authorization", &format!("Bearer {token}"));
        if let Some(p) = proxy {
            req = req.header("atproto-proxy", p);
        }
        let mut res = req.call().unwrap();
        assert_eq!(res.status(), 200);
        res.body_mut().read_json().unwrap()
    };
    let config = |mode: &str, appview: Option<u16>| {
        let mut c = format!("{CONFIG}\n[feed]\nmode = \"{mode}\"\n");
        if let Some(port) = appview {
            c = format!(
                "[xrpc]\nappview_url = \"http://127.0.0.1:{port}\"\nappview_did = \"did:web:127.0.0.1%3A{port}\"\n\n{c}"
            );
        }
        c
    };
    // No AppView: answered here even when the client names Bluesky's.
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_with(&dir.path().join("a"), &config("auto", None));
    let (_, token) = support::create_account(&node.base, "routing-a.test");
    let v = timeline(&node, &token, Some("did:web:api.bsky.app#bsky_appview"));
    assert!(v["feed"].is_array() && v.get("cursor").is_none(), "{v}");
    drop(node);
    for (mode, remote) in [("auto", true), ("remote", true), ("local", false)] {
        let node = support::start_with(&dir.path().join(mode), &config(mode, Some(appview)));
        let (_, token) = support::create_account(&node.base, &format!("routing-{mode}.test"));
        let before = seen.lock().unwrap().len();
        let v = timeline(&node, &token, None);
        let went = seen.lock().unwrap().len() > before;
        assert_eq!(went, remote, "mode {mode}: {v}");
        assert_eq!(v["cursor"] == "from-the-appview", remote, "mode {mode}: {v}");
    }
    // "remote" with no AppView: refused at start, with the reason in the log.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("node.toml"), config("remote", None)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["run", "--data-dir"])
        .arg(&bad)
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs [xrpc] appview_url"), "{err}");
}
