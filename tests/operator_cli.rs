//! The operator's commands against a running node: `ues account create|list|info|takedown|
//! untakedown|reset-password|delete` (on a node that requires invite codes, so `create` makes
//! its own), `ues export-repo` and `ues import-repo` (an export restored over later writes),
//! and `ues request-crawl` reaching a stand-in relay.

#[path = "support/http.rs"]
mod http;
#[path = "support/node.rs"]
mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{agent, start_with};

fn run(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().expect("ues runs");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn login(base: &str, id: &str, password: &str) -> (u16, Value) {
    let mut res = agent()
        .post(format!("{base}/xrpc/com.atproto.server.createSession"))
        .send_json(json!({"identifier": id, "password": password}))
        .unwrap();
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
}

fn status(base: &str, path: &str) -> u16 {
    agent().get(format!("{base}/xrpc/{path}")).call().unwrap().status().as_u16()
}

/// A relay stand-in: records the bodies of the requestCrawl calls it takes.
fn relay() -> (u16, Arc<Mutex<Vec<http::Seen>>>) {
    http::serve(|_, _| http::Answer::json(&json!({})))
}

#[test]
fn accounts_repositories_and_crawls_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let node = start_with(&dir, "[xrpc]\ninvite_required = true\n[xrpc.rate_limits]\nenabled = false\n");
    let listen = format!("127.0.0.1:{}", node.port);
    let d = dir.to_str().unwrap();
    let ues = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", d, "--listen", &listen]);
        let (ok, v, err) = run(&all);
        assert!(ok, "ues {args:?}: {err}");
        v
    };

    // Create (the invite code made on the way), list, info.
    let made = ues(&["account", "create", "alice.test", "--email", "alice@example.com"]);
    let did = made["did"].as_str().unwrap().to_string();
    let password = made["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 20, "a generated password: {made}");
    assert_eq!(login(&node.base, "alice.test", &password).0, 200);
    ues(&["account", "create", "bob.test", "--password", "bob's long password"]);
    let all = ues(&["account", "list"]);
    assert_eq!(all["accounts"].as_array().unwrap().len(), 2, "{all}");
    let some = ues(&["account", "list", "--email", "ALICE@"]);
    assert_eq!(some["accounts"].as_array().unwrap().iter().map(|a| a["did"].clone()).collect::<Vec<_>>(), [json!(did)]);
    let info = ues(&["account", "info", "alice.test"]);
    assert_eq!(
        (&info["did"], &info["email"], &info["active"]),
        (&json!(did), &json!("alice@example.com"), &json!(true))
    );

    // Records, then an export.
    let (_, session) = login(&node.base, "alice.test", &password);
    let token = session["accessJwt"].as_str().unwrap().to_string();
    let write = |text: &str| {
        let res = agent()
            .post(format!("{}/xrpc/com.atproto.repo.createRecord", node.base))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(json!({"repo": did, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-12-05T12:00:00Z"}}))
            .unwrap();
        assert_eq!(res.status(), 200);
    };
    for i in 0..5 {
        write(&format!("post {i}"));
    }
    let car = tmp.path().join("alice.car");
    let exported = ues(&["export-repo", "alice.test", car.to_str().unwrap()]);
    assert_eq!(exported["bytes"].as_u64(), Some(std::fs::metadata(&car).unwrap().len()));
    let (ok, _, err) = run(&["export-repo", &did, car.to_str().unwrap(), "--data-dir", d, "--listen", &listen]);
    assert!(!ok && err.contains("exists"), "an existing file is not overwritten: {err}");
    write("after the export");
    let count = |base: &str| {
        let mut r = agent()
            .get(format!("{base}/xrpc/com.atproto.repo.listRecords?repo={did}&collection=app.bsky.feed.post&limit=100"))
            .call()
            .unwrap();
        r.body_mut().read_json::<Value>().unwrap()["records"].as_array().unwrap().len()
    };
    assert_eq!(count(&node.base), 6);
    let imported = ues(&["import-repo", car.to_str().unwrap()]);
    assert_eq!(imported["did"], did.as_str());
    assert_eq!(count(&node.base), 5, "the export is what the repository holds again");
    // A CAR that is not a repository is refused, and nothing changes.
    let junk = tmp.path().join("junk.car");
    std::fs::write(&junk, b"not a car at all").unwrap();
    let (ok, _, _) = run(&["import-repo", junk.to_str().unwrap(), "--data-dir", d, "--listen", &listen]);
    assert!(!ok);
    assert_eq!(count(&node.base), 5);

    // Takedown and back.
    ues(&["account", "takedown", "alice.test"]);
    assert_eq!(status(&node.base, &format!("com.atproto.sync.getRepo?did={did}")), 400);
    assert_eq!(ues(&["account", "info", &did])["active"], false);
    ues(&["account", "untakedown", &did]);
    assert_eq!(status(&node.base, &format!("com.atproto.sync.getRepo?did={did}")), 200);

    // A new password; the old one is gone.
    let reset = ues(&["account", "reset-password", "alice.test"]);
    let new_password = reset["password"].as_str().unwrap();
    assert_eq!(login(&node.base, "alice.test", &password).0, 401);
    assert_eq!(login(&node.base, "alice.test", new_password).0, 200);

    // The node asks a relay to crawl it.
    let (relay_port, crawled) = relay();
    let asked = ues(&["request-crawl", &format!("http://127.0.0.1:{relay_port}")]);
    assert_eq!(asked["accepted"], true, "{asked}");
    let crawled: Vec<(String, Value)> = crawled
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.path.clone(), serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
        .collect();
    assert_eq!(
        crawled,
        [("/xrpc/com.atproto.sync.requestCrawl".to_string(), json!({"hostname": format!("127.0.0.1:{}", node.port)}))]
    );

    // Delete.
    ues(&["account", "delete", "alice.test"]);
    assert_eq!(login(&node.base, &did, new_password).0, 401);
    assert_eq!(ues(&["account", "list"])["accounts"].as_array().unwrap().len(), 1);
    let (ok, _, err) = run(&["account", "info", "alice.test", "--data-dir", d, "--listen", &listen]);
    assert!(!ok, "a deleted account is not found: {err}");
}
