//! Account migration between two nodes sharing a real did:plc directory (`@did-plc/server`,
//! started by the test), step by step as Bluesky's migration guide does it: a service auth
//! token from the old server, `createAccount` with the DID on the new one (deactivated),
//! `importRepo`, missing blobs, preferences, recommended DID credentials, a PLC operation the
//! old server signs with an emailed token and the new one submits, activation here and
//! deactivation there. The DID stays; its document names the new server and key; the records
//! verify. Also the identity methods and what is refused: no token, another DID's token, a
//! replayed token, activation before the DID points here, a tampered operation.

#[path = "support/plc.rs"]
mod plc;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::xrpc_post as post;
use support::{Running, agent, mailed_token, start_with};

fn config(plc: &str) -> String {
    format!("[xrpc]\nplc_url = \"{plc}\"\n[xrpc.rate_limits]\nenabled = false\n")
}

fn get(node: &Running, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = agent().get(format!("{}/xrpc/{path}", node.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut res = req.call().unwrap();
    let status = res.status().as_u16();
    (status, res.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap())
}

fn get_json(node: &Running, path: &str, token: Option<&str>) -> (u16, Value) {
    let (s, body) = get(node, path, token);
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn service_did(node: &Running) -> String {
    get_json(node, "com.atproto.server.describeServer", None).1["did"].as_str().unwrap().to_string()
}

fn service_auth(node: &Running, token: &str, aud: &str, lxm: &str) -> String {
    let mut res = agent()
        .get(format!("{}/xrpc/com.atproto.server.getServiceAuth", node.base))
        .query("aud", aud)
        .query("lxm", lxm)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let (s, v) = (res.status().as_u16(), res.body_mut().read_json::<Value>().unwrap());
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[test]
fn an_account_moves_between_nodes_and_keeps_its_did() {
    let Some(js) = shared::node_tests() else { return };
    let directory = plc::start_directory(&js);
    let root = tempfile::tempdir().unwrap();
    let old = start_with(&root.path().join("old"), &config(&directory.url));
    let new = start_with(&root.path().join("new"), &config(&directory.url));

    // The account on the old node: records, a blob that a record references, preferences.
    let (s, v) = post(
        &old,
        "com.atproto.server.createAccount",
        None,
        json!({"handle": "alice.test", "email": "alice@example.com", "password": "a long password"}),
    );
    assert_eq!(s, 200, "{v}");
    let did = v["did"].as_str().unwrap().to_string();
    let old_token = v["accessJwt"].as_str().unwrap().to_string();
    let blob = {
        let mut res = agent()
            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", old.base))
            .header("Authorization", &format!("Bearer {old_token}"))
            .header("Content-Type", "image/png")
            .send(&b"\x89PNG\r\n\x1a\n not really a picture, but bytes to carry"[..])
            .unwrap();
        assert_eq!(res.status(), 200);
        res.body_mut().read_json::<Value>().unwrap()["blob"].clone()
    };
    for i in 0..20 {
        let mut record =
            json!({"$type": "app.bsky.feed.post", "text": format!("post {i}"), "createdAt": "2026-12-05T12:00:00Z"});
        if i == 0 {
            record["embed"] =
                json!({"$type": "app.bsky.embed.images", "images": [{"image": blob, "alt": "a picture"}]});
        }
        let (s, v) = post(
            &old,
            "com.atproto.repo.createRecord",
            Some(&old_token),
            json!({"repo": did, "collection": "app.bsky.feed.post", "record": record}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let prefs = json!({"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": false}]});
    assert_eq!(post(&old, "app.bsky.actor.putPreferences", Some(&old_token), prefs.clone()).0, 200);

    // createAccount with the DID: refused without a service auth token, with one for another
    // method, and with a replayed one.
    let new_did = service_did(&new);
    let account =
        json!({"did": did, "handle": "alice.test", "email": "alice@example.com", "password": "a long password"});
    let (s, v) = post(&new, "com.atproto.server.createAccount", None, account.clone());
    assert_eq!(s, 401, "{v}");
    let wrong_lxm = service_auth(&old, &old_token, &new_did, "com.atproto.repo.createRecord");
    assert_eq!(post(&new, "com.atproto.server.createAccount", Some(&wrong_lxm), account.clone()).0, 401);
    let other_aud = service_auth(&old, &old_token, "did:web:elsewhere.test", "com.atproto.server.createAccount");
    assert_eq!(post(&new, "com.atproto.server.createAccount", Some(&other_aud), account.clone()).0, 401);
    // Tokens that are no JWT, no ES256K/ES256 JWT, or far too long: 401, nothing made.
    let garbage = [
        "x".to_string(),
        "a.b.c".to_string(),
        format!("{}.{}.{}", "e30", "e30", "AAAA"),
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJkaWQ6cGxjOmFhYSJ9.".to_string(),
        "a".repeat(10_000),
    ];
    for token in &garbage {
        let (s, v) = post(&new, "com.atproto.server.createAccount", Some(token), account.clone());
        assert_eq!(s, 401, "{token:.40}: {v}");
    }
    let (_, bob_token) = support::create_account(&old.base, "bob.test");
    let bobs = service_auth(&old, &bob_token, &new_did, "com.atproto.server.createAccount");
    let (s, v) = post(&new, "com.atproto.server.createAccount", Some(&bobs), account.clone());
    assert_eq!(s, 401, "another account's token does not bring this DID: {v}");
    assert_eq!(
        get_json(&new, &format!("com.atproto.repo.describeRepo?repo={did}"), None).0,
        400,
        "nothing was created by the refused calls"
    );

    let (new_token, reserved) = move_account(&old, &old_token, &new, &did, false);
    check_moved(&js, root.path(), &old, &old_token, &new, &new_token, &did, &reserved, 20);
    let (s, v) = post(
        &new,
        "com.atproto.repo.createRecord",
        Some(&new_token),
        json!({"repo": did, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.post", "text": "moved", "createdAt": "2026-12-05T13:00:00Z"}}),
    );
    assert_eq!(s, 200, "writes go on here: {v}");

    // And back: the old node still holds the account, deactivated, and takes it back (its key
    // there is the one the DID names again).
    let (back_token, back_key) = move_account(&new, &new_token, &old, &did, true);
    check_moved(&js, root.path(), &new, &new_token, &old, &back_token, &did, &back_key, 21);
}

/// Moves `did` from `old` to `new` as the migration guide does; returns the session on `new`
/// and the account's signing key there. Asserts on the way that activation waits for the PLC
/// operation and that a tampered operation is refused.
fn move_account(old: &Running, old_token: &str, new: &Running, did: &str, returning: bool) -> (String, String) {
    let new_did = service_did(new);
    let account =
        json!({"did": did, "handle": "alice.test", "email": "alice@example.com", "password": "a long password"});
    // A key reserved for the DID is the one the account gets (a returning account keeps its
    // own).
    let (s, v) = post(new, "com.atproto.server.reserveSigningKey", None, json!({"did": did}));
    assert_eq!(s, 200, "{v}");
    let reserved = v["signingKey"].as_str().unwrap().to_string();
    let auth = service_auth(old, old_token, &new_did, "com.atproto.server.createAccount");
    let (s, v) = post(new, "com.atproto.server.createAccount", Some(&auth), account.clone());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["did"], did, "the same DID");
    let new_token = v["accessJwt"].as_str().unwrap().to_string();
    let (s, _) = post(new, "com.atproto.server.createAccount", Some(&auth), account);
    assert_ne!(s, 200, "a service auth token works once");
    let status = get_json(new, "com.atproto.server.checkAccountStatus", Some(&new_token)).1;
    assert_eq!((&status["activated"], &status["validDid"]), (&json!(false), &json!(false)), "{status}");

    // The repository, its blobs, the preferences.
    let (s, car) = get(old, &format!("com.atproto.sync.getRepo?did={did}"), None);
    assert_eq!(s, 200);
    let mut res = agent()
        .post(format!("{}/xrpc/com.atproto.repo.importRepo", new.base))
        .header("Authorization", &format!("Bearer {new_token}"))
        .header("Content-Type", "application/vnd.ipld.car")
        .send(&car[..])
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
    let missing = get_json(new, "com.atproto.repo.listMissingBlobs", Some(&new_token)).1;
    for m in missing["blobs"].as_array().unwrap() {
        let cid = m["cid"].as_str().unwrap();
        let (s, bytes) = get(old, &format!("com.atproto.sync.getBlob?did={did}&cid={cid}"), None);
        assert_eq!(s, 200);
        let res = agent()
            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", new.base))
            .header("Authorization", &format!("Bearer {new_token}"))
            .header("Content-Type", "image/png")
            .send(&bytes[..])
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let still = get_json(new, "com.atproto.repo.listMissingBlobs", Some(&new_token)).1;
    assert!(still["blobs"].as_array().unwrap().is_empty(), "{still}");
    let (_, p) = get_json(old, "app.bsky.actor.getPreferences", Some(old_token));
    assert_eq!(post(new, "app.bsky.actor.putPreferences", Some(&new_token), p).0, 200);

    // Not active before the DID points here.
    let (s, v) = post(new, "com.atproto.server.activateAccount", Some(&new_token), json!({}));
    assert_eq!(s, 400, "{v}");

    // The PLC operation: recommended by the new node, signed by the old with a mailed token,
    // submitted by the new.
    let (s, creds) = get_json(new, "com.atproto.identity.getRecommendedDidCredentials", Some(&new_token));
    assert_eq!(s, 200, "{creds}");
    let key = creds["verificationMethods"]["atproto"].as_str().unwrap().to_string();
    assert_eq!(key == reserved, !returning, "a new account takes the reserved key, a returning one keeps its own");
    assert_eq!(creds["services"]["atproto_pds"]["endpoint"], new.base.as_str());
    assert_eq!(post(old, "com.atproto.identity.requestPlcOperationSignature", Some(old_token), json!({})).0, 200);
    let code = mailed_token(old, "plc_operation");
    let mut sign = creds.clone();
    sign["token"] = json!("AAAAA-BBBBB");
    assert_eq!(
        post(old, "com.atproto.identity.signPlcOperation", Some(old_token), sign.clone()).1["error"],
        "InvalidToken"
    );
    sign["token"] = json!(code);
    let (s, v) = post(old, "com.atproto.identity.signPlcOperation", Some(old_token), sign);
    assert_eq!(s, 200, "{v}");
    let op = v["operation"].clone();
    let mut tampered = op.clone();
    tampered["services"]["atproto_pds"]["endpoint"] = json!("https://evil.test");
    let (s, v) = post(new, "com.atproto.identity.submitPlcOperation", Some(&new_token), json!({"operation": tampered}));
    assert_eq!((s, v["message"].as_str().unwrap_or("")), (400, "Incorrect endpoint on atproto_pds service"));
    let (s, v) = post(new, "com.atproto.identity.submitPlcOperation", Some(&new_token), json!({"operation": op}));
    assert_eq!(s, 200, "{v}");

    // Activate here, deactivate there.
    let (s, v) = post(new, "com.atproto.server.activateAccount", Some(&new_token), json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(post(old, "com.atproto.server.deactivateAccount", Some(old_token), json!({})).0, 200);
    (new_token, key)
}

/// After a move: the old node reports the account deactivated and serves its repository no
/// more; the new one has it active with every record and blob; the DID's document names the
/// new node; the handle resolves there; `@atproto/repo` verifies the repository with `key`.
#[allow(clippy::too_many_arguments)]
fn check_moved(
    js: &std::path::Path,
    scratch: &std::path::Path,
    old: &Running,
    old_token: &str,
    new: &Running,
    new_token: &str,
    did: &str,
    key: &str,
    records: u64,
) {
    let status = get_json(old, "com.atproto.server.checkAccountStatus", Some(old_token)).1;
    assert_eq!((&status["activated"], &status["validDid"]), (&json!(false), &json!(false)), "{status}");
    let status = get_json(new, "com.atproto.server.checkAccountStatus", Some(new_token)).1;
    assert_eq!((&status["activated"], &status["validDid"]), (&json!(true), &json!(true)), "{status}");
    assert_eq!(status["indexedRecords"], records);
    assert_eq!(status["expectedBlobs"], status["importedBlobs"]);
    let (_, id) = get_json(old, &format!("com.atproto.identity.resolveIdentity?identifier={did}"), None);
    assert_eq!(id["did"], did);
    assert_eq!(id["didDoc"]["service"][0]["serviceEndpoint"], new.base.as_str(), "{id}");
    let (_, resolved) = get_json(new, "com.atproto.identity.resolveHandle?handle=alice.test", None);
    assert_eq!(resolved["did"], did);
    let (s, car) = get(new, &format!("com.atproto.sync.getRepo?did={did}"), None);
    assert_eq!(s, 200);
    let car_file = scratch.join("moved.car");
    std::fs::write(&car_file, &car).unwrap();
    let out = std::process::Command::new("node")
        .arg(js.join("verify_repo_car.mjs"))
        .arg(&car_file)
        .arg(did)
        .arg(key)
        .current_dir(js)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(out.status.success(), "@atproto/repo verifies the moved repository: {report}");
    assert_eq!(report["records"], records);
    assert_eq!(get(old, &format!("com.atproto.sync.getRepo?did={did}"), None).0, 400, "deactivated there");
}

#[test]
fn identity_methods_resolve_local_and_remote_dids() {
    let Some(js) = shared::node_tests() else { return };
    let directory = plc::start_directory(&js);
    let root = tempfile::tempdir().unwrap();
    let a = start_with(&root.path().join("a"), &config(&directory.url));
    let b = start_with(&root.path().join("b"), &config(&directory.url));
    let (bob, _) = support::create_account(&b.base, "bob.test");
    let (carol, _) = support::create_account(&a.base, "carol.test");

    // A's own account, from its own state.
    let (s, v) = get_json(&a, "com.atproto.identity.resolveIdentity?identifier=carol.test", None);
    assert_eq!((s, &v["did"], &v["handle"]), (200, &json!(carol), &json!("carol.test")), "{v}");
    // B's account, through the directory: the document is B's; bob.test does not lead back to
    // it from A (A does not host it and .test is no public name), so the handle is not claimed.
    let (s, v) = get_json(&a, &format!("com.atproto.identity.resolveDid?did={bob}"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["didDoc"]["service"][0]["serviceEndpoint"], b.base.as_str());
    let (s, v) = get_json(&a, &format!("com.atproto.identity.resolveIdentity?identifier={bob}"), None);
    assert_eq!((s, &v["handle"]), (200, &json!("handle.invalid")), "{v}");
    let (s, v) = post(&a, "com.atproto.identity.refreshIdentity", None, json!({"identifier": bob}));
    assert_eq!(s, 200, "{v}");
    // Unknown DIDs and handles, typed.
    let (s, v) = get_json(&a, "com.atproto.identity.resolveDid?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None);
    assert_eq!((s, v["error"].as_str()), (400, Some("DidNotFound")), "{v}");
    let (s, v) = get_json(&a, "com.atproto.identity.resolveIdentity?identifier=nobody.test", None);
    assert_eq!((s, v["error"].as_str()), (400, Some("HandleNotFound")), "{v}");
    let (s, _) = get_json(&a, "com.atproto.identity.resolveDid?did=not-a-did", None);
    assert_eq!(s, 400);
    // Handle availability, with suggestions for a taken one.
    let (s, v) = get_json(&a, "com.atproto.temp.checkHandleAvailability?handle=erin.test", None);
    assert_eq!(
        (s, v["result"]["$type"].as_str()),
        (200, Some("com.atproto.temp.checkHandleAvailability#resultAvailable")),
        "{v}"
    );
    let (s, v) =
        get_json(&a, "com.atproto.temp.checkHandleAvailability?handle=carol.test&email=caro@example.com", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["$type"], "com.atproto.temp.checkHandleAvailability#resultUnavailable");
    let suggested: Vec<&str> =
        v["result"]["suggestions"].as_array().unwrap().iter().map(|x| x["handle"].as_str().unwrap()).collect();
    assert_eq!(suggested.first(), Some(&"caro.test"), "{v}");
    assert!(suggested.contains(&"carol1.test") && !suggested.contains(&"carol.test"), "{v}");
    // Attacks on the unauthenticated identity methods: a flood of key reservations (held in
    // memory, bounded), DIDs naming unreachable or malformed hosts, an oversized identifier,
    // refreshes in a loop; each a typed answer, and the node answers others throughout.
    for _ in 0..300 {
        let (s, v) = post(&a, "com.atproto.server.reserveSigningKey", None, json!({}));
        assert_eq!(s, 200, "{v}");
    }
    let closed = support::free_port();
    let (s, v) = get_json(&a, &format!("com.atproto.identity.resolveDid?did=did:web:127.0.0.1%253A{closed}"), None);
    assert_eq!((s, v["error"].as_str()), (502, Some("UpstreamFailure")), "{v}");
    let (s, v) = get_json(&a, "com.atproto.identity.resolveDid?did=did:web:example.test:some:path", None);
    assert_eq!((s, v["error"].as_str()), (400, Some("DidNotFound")), "{v}");
    let (s, _) = get_json(&a, &format!("com.atproto.identity.resolveIdentity?identifier={}", "a".repeat(10_000)), None);
    assert_eq!(s, 400);
    for _ in 0..20 {
        let (s, _) = post(&a, "com.atproto.identity.refreshIdentity", None, json!({"identifier": bob}));
        assert_eq!(s, 200);
    }
    let (s, v) = get_json(&a, "com.atproto.temp.checkHandleAvailability?handle=x.test&email=not-an-email", None);
    assert_eq!((s, v["error"].as_str()), (400, Some("InvalidEmail")), "{v}");
    assert_eq!(get_json(&a, "com.atproto.server.describeServer", None).0, 200);
    // No sign-up queue.
    let (_, tok) = support::create_account(&a.base, "dave.test");
    assert_eq!(get_json(&a, "com.atproto.temp.checkSignupQueue", Some(&tok)).1["activated"], true);
}

#[test]
fn an_account_moves_from_the_reference_pds_to_ues_and_back() {
    let Some(refpds) = shared::reference_pds() else { return };
    let root = tempfile::tempdir().unwrap();
    let plc_port = support::free_port();
    let pds_port = support::free_port();
    let node = start_with(&root.path().join("ues"), &config(&format!("http://127.0.0.1:{plc_port}")));
    let mut child = std::process::Command::new("node")
        .arg(refpds.join("migrate.mjs"))
        .arg(plc_port.to_string())
        .arg(pds_port.to_string())
        .arg(root.path().join("reference"))
        .arg(&node.base)
        .arg(node.dir.join("outbox/mail.jsonl"))
        .current_dir(&refpds)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the whole run takes seconds; a hung one is killed.
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("migrate.mjs did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(out.status.success() && report["ok"] == true, "{report}\n{stderr}");
    assert_eq!((&report["blobsToUes"], &report["blobsBack"]), (&json!(1), &json!(1)), "{report}");
    assert_eq!(report["uesRecommended"]["services"]["atproto_pds"]["endpoint"], node.base.as_str());
    // UES saw the account come and go: active while it was here, deactivated now.
    let did = report["did"].as_str().unwrap();
    let (s, v) = get_json(&node, &format!("com.atproto.sync.getRepoStatus?did={did}"), None);
    assert_eq!((s, &v["active"], &v["status"]), (200, &json!(false), &json!("deactivated")), "{v}");
}
