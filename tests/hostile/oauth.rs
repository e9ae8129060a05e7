//! Attacks on the OAuth authorization server: clients whose metadata servers stall, and
//! guessing the sign-in code mailed to an account with two-factor sign-in.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{call, rss, still_answers, threads};
use crate::dpop::{key, proof};
use crate::support::{Running, agent, mailed_token, start_with};

/// Posts a pushed authorization request for `client_id` with a fresh key (and the nonce the
/// node asks for): status and JSON.
fn par(node: &Running, client_id: &str) -> (u16, Value) {
    let k = key();
    let url = format!("{}/oauth/par", node.base);
    let form = format!("client_id={}", form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>());
    let send = |p: &str| {
        let mut res = agent()
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("DPoP", p)
            .send(form.clone())
            .unwrap();
        let nonce = res.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_string());
        (res.status().as_u16(), res.body_mut().read_json::<Value>().unwrap_or(Value::Null), nonce)
    };
    let (_, _, nonce) = send(&proof(&k, &url, None));
    let (s, v, _) = send(&proof(&k, &url, nonce.as_deref()));
    (s, v)
}

/// A client's metadata server that accepts connections and never answers (each held until
/// the test ends, at most `n`).
fn stalling_server(n: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(n) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    port
}

#[test]
fn clients_whose_metadata_never_comes_tie_up_nothing() {
    let root = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(start_with(
        &root.path().join("node"),
        "[xrpc.rate_limits]\nenabled = false\n[oauth]\nprivate_client_addresses = true\n",
    ));
    let pid = node.child.id();
    let (rss_before, threads_before) = (rss(pid), threads(pid));
    const CLIENTS: usize = 24;
    let port = stalling_server(CLIENTS * 2);
    let started = Instant::now();
    let attackers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || par(&node, &format!("http://127.0.0.1:{port}/client-{i}.json")))
        })
        .collect();
    // While every fetch hangs, the node answers others, within its bounds.
    std::thread::sleep(Duration::from_secs(2));
    still_answers(&node, Duration::from_secs(2));
    let (s, _) = call(&node, "GET", "/.well-known/oauth-authorization-server", None, None);
    assert_eq!(s, 200);
    assert!(threads(pid) < threads_before + CLIENTS as u64 + 16, "threads: {} (were {threads_before})", threads(pid));
    for a in attackers {
        let (s, v) = a.join().unwrap();
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")), "{v}");
        assert!(v["error_description"].as_str().unwrap().contains("could not be fetched"), "{v}");
    }
    // Each fetch gave up at its time bound (10 s), not later.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(rss(pid) < rss_before + (64 << 20), "RSS {} -> {}", rss_before, rss(pid));
    still_answers(&node, Duration::from_secs(2));
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("oauth request refused"), "the refusals are logged");
}

#[test]
fn sign_in_codes_cannot_be_guessed() {
    let root = tempfile::tempdir().unwrap();
    // The node's default rate limits.
    let node = start_with(&root.path().join("node"), "");
    let (_, token) = crate::common::account(&node, "alice.test");
    let post = |method: &str, bearer: Option<&str>, body: Value| {
        call(&node, "POST", &format!("/xrpc/{method}"), bearer, Some(body))
    };
    assert_eq!(post("com.atproto.server.requestEmailConfirmation", Some(&token), json!({})).0, 200);
    let code = mailed_token(&node, "confirm_email");
    assert_eq!(
        post(
            "com.atproto.server.confirmEmail",
            Some(&token),
            json!({"email": "alice.test@example.com", "token": code})
        )
        .0,
        200
    );
    assert_eq!(post("com.atproto.server.requestEmailUpdate", Some(&token), json!({})).0, 200);
    let code = mailed_token(&node, "update_email");
    let on = json!({"email": "alice.test@example.com", "emailAuthFactor": true, "token": code});
    assert_eq!(post("com.atproto.server.updateEmail", Some(&token), on).0, 200);
    let login = json!({"identifier": "alice.test", "password": "a long password"});
    assert_eq!(post("com.atproto.server.createSession", None, login.clone()).1["error"], "AuthFactorTokenRequired");
    // A code was mailed (the wait fails otherwise).
    mailed_token(&node, "sign_in");

    // Guesses: refused as invalid, then cut off by the sign-in budget long before a code
    // (10 characters of a 32-letter alphabet) could be found.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let mut guess = login.clone();
        guess["authFactorToken"] = json!(format!("GUESS-{i:05}"));
        let (s, v) = post("com.atproto.server.createSession", None, guess);
        if s == 400 {
            assert_eq!(v["error"], "InvalidToken", "{v}");
        }
        statuses.push(s);
        if s == 429 {
            break;
        }
    }
    assert!(statuses.contains(&400) && statuses.last() == Some(&429), "{statuses:?}");
    still_answers(&node, Duration::from_secs(2));
    // The account is untouched: its open session works and its factor is still on.
    let (s, v) = call(&node, "GET", "/xrpc/com.atproto.server.getSession", Some(&token), None);
    assert_eq!((s, v["emailAuthFactor"].as_bool()), (200, Some(true)), "{v}");
}
