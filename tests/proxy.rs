//! Service proxying through a real node to a stand-in chat service started by the test (a
//! `did:web` on loopback whose document names its `#bsky_chat` endpoint): the call arrives with
//! a service-auth token bound to the service's DID and the method, signed by the caller's
//! repository key; the allowed headers go both ways and no others; chat needs a privileged
//! credential; malformed `atproto-proxy` headers and unknown services are refused; an answer
//! past the size bound is cut off; moderation reports go to the configured report service; and
//! answers of a stale AppView get the caller's newer profile and posts (read-after-write).

#[path = "support/http.rs"]
mod http;
#[path = "support/node.rs"]
mod support;

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Answer, Seen};
use serde_json::{Value, json};
use support::{agent, start_with};

/// The stand-in service on a loopback port: its DID document, an answer to every XRPC call
/// (with a few response headers, one of which must not come back), and an oversized answer.
fn stand_in() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    http::serve(|req, port| {
        if req.path == "/.well-known/did.json" {
            let endpoint = format!("http://127.0.0.1:{port}");
            return Answer::json(&json!({
                "id": format!("did:web:127.0.0.1%3A{port}"),
                "service": [
                    {"id": "#bsky_chat", "type": "BskyChatService", "serviceEndpoint": endpoint},
                    {"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": endpoint}
                ]
            }));
        }
        if req.path.starts_with("/xrpc/chat.bsky.convo.getLog") {
            return Answer { status: 200, headers: String::new(), body: vec![b' '; 17 << 20] };
        }
        Answer {
            status: 200,
            headers: "atproto-repo-rev: 3kabc\r\ncontent-language: en\r\nx-internal-secret: do-not-relay\r\n".into(),
            body: br#"{"convos":[]}"#.to_vec(),
        }
    })
}

fn claims(token: &str) -> (Value, String, Vec<u8>) {
    let mut parts = token.split('.');
    let (h, p, sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    (payload, format!("{h}.{p}"), URL_SAFE_NO_PAD.decode(sig).unwrap())
}

#[test]
fn chat_reaches_the_service_its_did_document_names_with_a_bound_token() {
    let (port, seen) = stand_in();
    let service = format!("did:web:127.0.0.1%3A{port}");
    let root = tempfile::tempdir().unwrap();
    let config = format!(
        "[xrpc]\nreport_service_url = \"http://127.0.0.1:{port}\"\nreport_service_did = \"{service}\"\n[xrpc.rate_limits]\nenabled = false\n"
    );
    let node = start_with(&root.path().join("node"), &config);
    let (did, token) = support::create_account(&node.base, "alice.test");
    let call = |auth: Option<&str>, proxy: &str, method: &str| {
        let mut req = agent()
            .get(format!("{}/xrpc/{method}?limit=10", node.base))
            .header("atproto-proxy", proxy)
            .header("accept-language", "fr, en;q=0.5")
            .header("x-not-forwarded", "1");
        if let Some(t) = auth {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        req.call().unwrap()
    };

    let mut res = call(Some(&token), &format!("{service}#bsky_chat"), "chat.bsky.convo.listConvos");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("atproto-repo-rev").unwrap(), "3kabc");
    assert_eq!(res.headers().get("content-language").unwrap(), "en");
    assert!(res.headers().get("x-internal-secret").is_none(), "only the allowed headers come back");
    assert_eq!(res.body_mut().read_json::<Value>().unwrap(), json!({"convos": []}));
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((got.method.as_str(), got.path.as_str()), ("GET", "/xrpc/chat.bsky.convo.listConvos?limit=10"));
    assert_eq!(got.header("accept-language"), Some("fr, en;q=0.5"));
    assert!(got.header("x-not-forwarded").is_none());
    let bearer = got.header("authorization").unwrap().strip_prefix("Bearer ").unwrap().to_string();
    let (payload, signed, sig) = claims(&bearer);
    assert_eq!(payload["iss"], did.as_str());
    assert_eq!(payload["aud"], service.as_str(), "bound to the service's DID");
    assert_eq!(payload["lxm"], "chat.bsky.convo.listConvos", "bound to the method");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(payload["exp"].as_u64().unwrap() <= now + 61);
    let key = {
        let mut r = agent()
            .get(format!("{}/xrpc/com.atproto.identity.getRecommendedDidCredentials", node.base))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        r.body_mut().read_json::<Value>().unwrap()["verificationMethods"]["atproto"].as_str().unwrap().to_string()
    };
    let key = ues_repo::crypto::PublicKey::from_did_key(&key).unwrap();
    key.verify(signed.as_bytes(), &sig).expect("signed with the caller's repository key");

    // Chat needs a privileged credential.
    let app_password = |privileged: bool| {
        let mut r = agent()
            .post(format!("{}/xrpc/com.atproto.server.createAppPassword", node.base))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(json!({"name": format!("app {privileged}"), "privileged": privileged}))
            .unwrap();
        let password = r.body_mut().read_json::<Value>().unwrap()["password"].as_str().unwrap().to_string();
        let mut r = agent()
            .post(format!("{}/xrpc/com.atproto.server.createSession", node.base))
            .send_json(json!({"identifier": "alice.test", "password": password}))
            .unwrap();
        r.body_mut().read_json::<Value>().unwrap()["accessJwt"].as_str().unwrap().to_string()
    };
    let plain = app_password(false);
    let before = seen.lock().unwrap().len();
    let res = call(Some(&plain), &format!("{service}#bsky_chat"), "chat.bsky.convo.listConvos");
    assert_ne!(res.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), before, "nothing reached the service");
    let privileged = app_password(true);
    assert_eq!(call(Some(&privileged), &format!("{service}#bsky_chat"), "chat.bsky.convo.listConvos").status(), 200);

    // Malformed headers and services the document does not name.
    for bad in [
        service.clone(),
        "#bsky_chat".to_string(),
        format!("{service}#"),
        format!("{service}#a#b"),
        format!("{service}#no_such_service"),
        "not-a-did#bsky_chat".to_string(),
    ] {
        let mut res = call(Some(&token), &bad, "chat.bsky.convo.listConvos");
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(res.body_mut().read_json::<Value>().unwrap()["error"], "InvalidRequest", "{bad}");
    }
    // Account management never goes through another service.
    let res = call(Some(&token), &format!("{service}#bsky_chat"), "com.atproto.server.requestAccountDelete");
    assert_ne!(res.status(), 200);
    // An answer past the bound is not relayed; the node answers on.
    let mut res = call(Some(&token), &format!("{service}#bsky_chat"), "chat.bsky.convo.getLog");
    assert_eq!(res.status(), 502);
    assert_eq!(res.body_mut().read_json::<Value>().unwrap()["error"], "UpstreamFailure");
    // Without a header, a method nothing serves.
    let res = agent().get(format!("{}/xrpc/com.example.nothing.here", node.base)).call().unwrap();
    assert_eq!(res.status(), 501);

    // A report goes to the report service, in the reporter's name.
    let before = seen.lock().unwrap().len();
    let mut res = agent()
        .post(format!("{}/xrpc/com.atproto.moderation.createReport", node.base))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(json!({"reasonType": "com.atproto.moderation.defs#reasonSpam", "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did}}))
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), before + 1);
    let report = seen.last().unwrap();
    assert_eq!((report.method.as_str(), report.path.as_str()), ("POST", "/xrpc/com.atproto.moderation.createReport"));
    let (payload, _, _) = claims(report.header("authorization").unwrap().strip_prefix("Bearer ").unwrap());
    assert_eq!((&payload["aud"], &payload["lxm"]), (&json!(service), &json!("com.atproto.moderation.createReport")));
    assert_eq!(
        serde_json::from_slice::<Value>(&report.body).unwrap()["reasonType"],
        "com.atproto.moderation.defs#reasonSpam"
    );
}

/// A stand-in AppView that has indexed the caller's repository up to `rev` (its
/// `atproto-repo-rev`): an old profile and a feed of one old post by someone else.
fn stale_appview(rev: Arc<Mutex<String>>, did: Arc<Mutex<String>>) -> u16 {
    http::serve(move |req, _| {
        let me = did.lock().unwrap().clone();
        let other = json!({"post": {"uri": "at://did:plc:someoneelse/app.bsky.feed.post/3jzfcijpj2z2a", "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", "author": {"did": "did:plc:someoneelse", "handle": "someone.test"}, "record": {"$type": "app.bsky.feed.post", "text": "old", "createdAt": "2020-01-01T00:00:00Z"}, "indexedAt": "2020-01-01T00:00:00.000Z"}});
        let body = if req.path.starts_with("/xrpc/app.bsky.actor.getProfile?") {
            json!({"did": me, "handle": "alice.test", "displayName": "Old name", "description": "old words", "followersCount": 7})
        } else if req.path.contains("app.bsky.feed.getTimeline") || req.path.contains("app.bsky.feed.getAuthorFeed") {
            json!({"feed": [other]})
        } else {
            json!({})
        };
        Answer { headers: format!("atproto-repo-rev: {}\r\n", rev.lock().unwrap()), ..Answer::json(&body) }
    })
    .0
}

#[test]
fn the_callers_newer_records_are_laid_over_a_stale_appview() {
    let rev = Arc::new(Mutex::new(String::new()));
    let me = Arc::new(Mutex::new(String::new()));
    let port = stale_appview(rev.clone(), me.clone());
    let root = tempfile::tempdir().unwrap();
    let config = format!(
        "[xrpc]\nappview_url = \"http://127.0.0.1:{port}\"\nappview_did = \"did:web:appview.test\"\n[xrpc.rate_limits]\nenabled = false\n"
    );
    let node = start_with(&root.path().join("node"), &config);
    let (did, token) = support::create_account(&node.base, "alice.test");
    *me.lock().unwrap() = did.clone();
    let get = |path: &str| {
        let mut r = agent()
            .get(format!("{}/xrpc/{path}", node.base))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let lag = r.headers().get("atproto-upstream-lag").map(|v| v.to_str().unwrap().to_string());
        (r.body_mut().read_json::<Value>().unwrap(), lag)
    };
    let head = |r: &str| {
        let mut res =
            agent().get(format!("{}/xrpc/com.atproto.sync.getLatestCommit?did={did}", node.base)).call().unwrap();
        res.body_mut().read_json::<Value>().unwrap()[r].as_str().unwrap().to_string()
    };
    // The AppView has seen everything so far: its answer comes as it is.
    *rev.lock().unwrap() = head("rev");
    let (profile, lag) = get(&format!("app.bsky.actor.getProfile?actor={did}"));
    assert_eq!((profile["displayName"].as_str(), lag), (Some("Old name"), None));

    // A new profile and a new post, which the AppView has not indexed.
    let write = |collection: &str, rkey: Option<&str>, record: Value| {
        let mut body = json!({"repo": did, "collection": collection, "record": record});
        let method = match rkey {
            Some(k) => {
                body["rkey"] = json!(k);
                "com.atproto.repo.putRecord"
            }
            None => "com.atproto.repo.createRecord",
        };
        let mut r = agent()
            .post(format!("{}/xrpc/{method}", node.base))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(body)
            .unwrap();
        assert_eq!(r.status(), 200);
        r.body_mut().read_json::<Value>().unwrap()["uri"].as_str().unwrap().to_string()
    };
    write(
        "app.bsky.actor.profile",
        Some("self"),
        json!({"$type": "app.bsky.actor.profile", "displayName": "New name"}),
    );
    let post = write(
        "app.bsky.feed.post",
        None,
        json!({"$type": "app.bsky.feed.post", "text": "just now", "createdAt": "2026-12-05T12:00:00Z"}),
    );

    let (profile, lag) = get(&format!("app.bsky.actor.getProfile?actor={did}"));
    assert_eq!(profile["displayName"], "New name", "{profile}");
    assert!(profile.get("description").is_none(), "the new profile has no description: {profile}");
    assert_eq!(profile["followersCount"], 7, "the AppView's counts stay");
    assert!(lag.is_some(), "the lag is reported");
    let (timeline, _) = get("app.bsky.feed.getTimeline");
    let feed = timeline["feed"].as_array().unwrap();
    assert_eq!(feed.len(), 2, "{timeline}");
    assert_eq!(feed[0]["post"]["uri"], post.as_str(), "the new post first");
    assert_eq!(feed[0]["post"]["author"]["displayName"], "New name");
    assert_eq!(feed[0]["post"]["record"]["text"], "just now");
    assert_eq!(feed[1]["post"]["record"]["text"], "old");
    let (own, _) = get("app.bsky.feed.getAuthorFeed?actor=alice.test");
    assert_eq!(own["feed"][0]["post"]["uri"], post.as_str());
    let (theirs, lag) = get("app.bsky.feed.getAuthorFeed?actor=someone.test");
    assert_eq!((theirs["feed"].as_array().unwrap().len(), lag), (1, None), "another's feed is left alone");

    // Once the AppView has caught up, nothing is added.
    *rev.lock().unwrap() = head("rev");
    let (timeline, lag) = get("app.bsky.feed.getTimeline");
    assert_eq!((timeline["feed"].as_array().unwrap().len(), lag), (1, None));
}
