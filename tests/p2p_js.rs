//! Interoperability with js-libp2p (npm `libp2p` v3, TCP, Noise, Yamux, identify, ping,
//! gossipsub): a JavaScript peer dials a `ues run` node on 127.0.0.1, identify and ping succeed
//! in both directions, and the peer receives the `ues/repo/<did>` head announcement after a
//! record is written through XRPC.

#[path = "support/node.rs"]
mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{agent, free_port};

fn call(base: &str, method: &str, auth: &str, body: Option<Value>) -> Value {
    let url = format!("{base}/xrpc/{method}");
    let a = agent();
    let mut res = match body {
        Some(b) => a.post(&url).header("authorization", auth).send_json(b),
        None => a.get(&url).header("authorization", auth).call(),
    }
    .unwrap();
    assert_eq!(res.status(), 200, "{method}");
    res.body_mut().read_json().unwrap()
}

#[test]
fn a_js_libp2p_peer_identifies_pings_and_hears_head_announcements() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules/libp2p").is_dir() {
        assert!(std::env::var("CI").is_err(), "CI must install tests/js (scripts/setup.sh)");
        eprintln!("SKIPPED: js-libp2p interop (tests/js/node_modules missing; run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (http, p2p) = (free_port(), free_port());
    let mut node = support::spawn(&data, http, &format!("/ip4/127.0.0.1/tcp/{p2p}"), &dir.path().join("node.log"));
    support::wait_healthy(http);
    let base = format!("http://127.0.0.1:{http}");
    let node_peer = support::peer_id(&data);
    let admin = {
        use base64::Engine;
        let pw = std::fs::read_to_string(data.join("admin.password")).unwrap();
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", pw.trim())))
    };
    let created = call(
        &base,
        "com.atproto.server.createAccount",
        "",
        Some(json!({"handle": "jsp.test", "email": "jsp@example.com", "password": "pass-word-123"})),
    );
    let did = created["did"].as_str().unwrap().to_string();
    let token = format!("Bearer {}", created["accessJwt"].as_str().unwrap());

    let mut peer = Command::new("node")
        .arg(js.join("libp2p_peer.mjs"))
        .arg(format!("/ip4/127.0.0.1/tcp/{p2p}/p2p/{node_peer}"))
        .arg(&did)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = peer.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut js_peer = String::new();
    let (mut pinged, mut identified) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(pinged && identified) {
        let v = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the js peer reports");
        match v["event"].as_str() {
            Some("started") => js_peer = v["peerId"].as_str().unwrap().to_string(),
            Some("ping") => pinged = v["rtt"].as_f64().is_some(),
            Some("identify") if v["peer"] == node_peer.as_str() => {
                assert!(v["agent"].as_str().is_some_and(|a| a.starts_with("ues/")), "{v}");
                let protocols: Vec<&str> =
                    v["protocols"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
                for p in ["/ues/sync/1", "/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/meshsub/1.1.0"] {
                    assert!(protocols.contains(&p), "the node speaks {p}: {protocols:?}");
                }
                identified = true;
            }
            _ => {}
        }
    }
    // The other direction: the node identified the js peer and pinged it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peers = call(&base, "dev.ues.admin.listPeers", &admin, None);
        let me = peers["connected"].as_array().unwrap().iter().find(|p| p["peerId"] == js_peer.as_str()).cloned();
        if let Some(p) = me
            && p["agent"].as_str().is_some_and(|a| a.contains("js-libp2p"))
            && p["rttMs"].as_f64().is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never identified and pinged the js peer: {peers}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A write through XRPC is announced on the account's topic (the peer's subscription may
    // take a moment to reach the node: write until it hears one, at most 20 times).
    let mut heard = None;
    for i in 0..20 {
        call(
            &base,
            "com.atproto.repo.createRecord",
            &token,
            Some(json!({"repo": did, "collection": "app.bsky.feed.post",
                "record": {"$type": "app.bsky.feed.post", "text": format!("hello {i}"), "createdAt": "2026-11-25T00:00:00.000Z"}})),
        );
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(500))
            && v["event"] == "message"
        {
            heard = Some(v);
            break;
        }
    }
    let m = heard.expect("the js peer heard a head announcement");
    assert_eq!(m["topic"], format!("ues/repo/{did}"));
    assert_eq!(m["from"], node_peer.as_str());
    assert_eq!(m["hasDid"], true);
    let status = peer.wait().unwrap();
    assert!(status.success());
    let _ = Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
    let _ = node.wait();
}
