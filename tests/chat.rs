//! The chat application (`dev.ues.chat`) against an independent implementation of Matrix's
//! Olm and Megolm: client devices built on libolm (Debian's `python3-olm`, driven through
//! `tests/py/olm_client.py`) publish their keys on a running node, claim each other's keys and
//! the node's built-in devices' keys (checking every signature the node's vodozemac made), and
//! exchange Olm and Megolm messages through the node's inboxes. Then the attacks: forged key
//! signatures, oversized envelopes, unknown devices, a replayed envelope, a flooded inbox.

#[path = "support/dpop.rs"]
mod dpop;
#[path = "support/plc.rs"]
mod plc;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::{Running, agent, create_account, start_with, xrpc_post};

const CONFIG: &str = "[xrpc.rate_limits]\nenabled = false\n\n[chat]\nmax_inbox_items = 30\n";

/// The system Python with libolm, or `None` (after a loud message) when absent outside CI.
fn libolm() -> Option<&'static str> {
    let python = "/usr/bin/python3";
    let ok = Command::new(python).args(["-c", "import olm"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but python3-olm is missing: scripts/setup.sh installs it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: python3-olm is absent (run scripts/setup.sh); libolm interop not checked !!!!!!!!\n"
    );
    None
}

/// One libolm device (its state file).
struct Olm {
    python: &'static str,
    state: PathBuf,
}

impl Olm {
    fn new(python: &'static str, dir: &Path, name: &str) -> Self {
        Self { python, state: dir.join(format!("{name}.json")) }
    }

    /// Runs a command of the client; its one JSON line.
    fn run(&self, args: &[&str]) -> Value {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/olm_client.py");
        let out = Command::new(self.python).arg(&script).arg(&self.state).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "olm_client {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    }
}

fn xrpc_get(node: &Running, path: &str, token: &str) -> (u16, Value) {
    let mut res = agent()
        .get(format!("{}/xrpc/{path}", node.base))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
}

fn texts(received: &Value) -> Vec<String> {
    received["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "dev.ues.chat.message")
        .map(|m| m["content"]["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn libolm_devices_and_the_built_in_device_meet_through_the_node() {
    let Some(python) = libolm() else { return };
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), CONFIG);
    let (alice, alice_token) = create_account(&node.base, "alice.test");
    let (bob, bob_token) = create_account(&node.base, "bob.test");

    let a = Olm::new(python, root.path(), "alice-phone");
    let b = Olm::new(python, root.path(), "bob-phone");
    let up = a.run(&["init", &node.base, &alice_token, &alice, "PHONE", "5"]);
    assert_eq!(up["oneTimeKeyCounts"]["signed_curve25519"], 5, "{up}");
    b.run(&["init", &node.base, &bob_token, &bob, "PHONE", "5"]);

    // Bob's devices: the node's built-in one (made on first use, its keys signed by vodozemac)
    // and the libolm phone, with the keys it published.
    let (status, devices) = xrpc_get(&node, &format!("dev.ues.chat.queryKeys?did={bob}"), &alice_token);
    assert_eq!(status, 200, "{devices}");
    let devices = devices["devices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices[0]["builtIn"], true);
    let built_in = devices[0]["deviceId"].as_str().unwrap().to_string();
    assert_eq!(devices[1]["deviceId"], "PHONE");
    assert_eq!(devices[1]["deviceKeys"]["user_id"], bob.as_str());

    // Olm between the two libolm phones, both ways.
    let sent = a.run(&["send_olm", &bob, "PHONE", "c1", "hello bob"]);
    assert_eq!((sent["delivered"].as_u64(), sent["type"].as_u64()), (Some(1), Some(0)), "{sent}");
    let got = b.run(&["receive"]);
    assert_eq!(texts(&got), ["hello bob"], "{got}");
    assert_eq!(got["messages"][0]["sender"], alice.as_str());
    assert!(got["refused"].as_array().unwrap().is_empty(), "{got}");
    b.run(&["send_olm", &alice, "PHONE", "c1", "hi alice"]);
    assert_eq!(texts(&a.run(&["receive"])), ["hi alice"]);

    // Megolm: the room key over Olm, then the group message.
    let group = a.run(&["send_megolm", "c2", "group hello", &format!("{bob}:PHONE")]);
    assert_eq!(group["keyShared"].as_array().unwrap().len(), 1, "{group}");
    let got = b.run(&["receive"]);
    assert_eq!(texts(&got), ["group hello"], "{got}");
    assert!(got["messages"].as_array().unwrap().iter().any(|m| m["type"] == "m.room_key"), "{got}");
    a.run(&["send_megolm", "c2", "second in the group", &format!("{bob}:PHONE")]);
    assert_eq!(texts(&b.run(&["receive"])), ["second in the group"]);

    // libolm claims a key of Bob's built-in device and checks its signatures (the device keys'
    // and the one-time key's, both made by vodozemac here), then encrypts to it.
    let to_node = a.run(&["send_olm", &bob, &built_in, "c1", "to the node"]);
    assert_eq!(to_node["delivered"], 1, "{to_node}");
    // The built-in device reads its inbox at once: it decrypts the message and drops it, as it
    // names no conversation Bob is in.
    eventually("the built-in device's inbox read", || {
        let (_, inbox) = xrpc_get(&node, &format!("dev.ues.chat.getInbox?deviceId={built_in}"), &bob_token);
        inbox["items"].as_array().is_some_and(Vec::is_empty).then_some(())
    });
    eventually("the drop logged", || {
        let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
        log.contains("a message for unknown conversation").then_some(())
    });
    // The same id names Alice's own built-in device: her inbox, not Bob's.
    let (status, theirs) = xrpc_get(&node, &format!("dev.ues.chat.getInbox?deviceId={built_in}"), &alice_token);
    assert_eq!((status, theirs["items"].as_array().map(Vec::len)), (200, Some(0)), "{theirs}");
    let (status, _) = xrpc_get(&node, "dev.ues.chat.getInbox?deviceId=TABLET", &alice_token);
    assert_eq!(status, 400, "a device Alice does not have");

    attacks(&node, python, root.path(), (&alice, &alice_token), (&bob, &bob_token));
}

fn attacks(node: &Running, python: &'static str, dir: &Path, alice: (&str, &str), bob: (&str, &str)) {
    let (alice, alice_token) = alice;
    let (bob, bob_token) = bob;
    let inbox_len = || {
        let (_, v) = xrpc_get(node, "dev.ues.chat.getInbox?deviceId=PHONE&limit=100", bob_token);
        v["items"].as_array().map_or(0, Vec::len)
    };
    let before = inbox_len();

    // A claim for a device that does not exist.
    let (status, v) =
        xrpc_post(node, "dev.ues.chat.claimKeys", Some(alice_token), json!({"did": bob, "deviceId": "NOSUCH"}));
    assert_eq!((status, v["error"].as_str()), (400, Some("DeviceNotFound")), "{v}");
    // An account not held here.
    let (status, v) = xrpc_post(
        node,
        "dev.ues.chat.claimKeys",
        Some(alice_token),
        json!({"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "deviceId": "X"}),
    );
    assert_eq!((status, v["error"].as_str()), (400, Some("AccountNotFound")), "{v}");

    // Device keys whose signature is not their own key's: refused, nothing stored.
    let evil = Olm::new(python, dir, "evil");
    let (_, keys) = xrpc_get(node, &format!("dev.ues.chat.queryKeys?did={alice}"), alice_token);
    let mut forged = keys["devices"][1]["deviceKeys"].clone();
    forged["device_id"] = json!("EVIL");
    let phone_keys = forged["keys"].as_object().unwrap().clone();
    forged["keys"] = json!({
        "curve25519:EVIL": phone_keys["curve25519:PHONE"],
        "ed25519:EVIL": phone_keys["ed25519:PHONE"],
    });
    let sig = forged["signatures"][alice]["ed25519:PHONE"].clone();
    forged["signatures"] = json!({ alice: { "ed25519:EVIL": sig } });
    let (status, v) = xrpc_post(
        node,
        "dev.ues.chat.uploadKeys",
        Some(alice_token),
        json!({"deviceId": "EVIL", "deviceKeys": forged}),
    );
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidSignature")), "{v}");
    let (_, keys) = xrpc_get(node, &format!("dev.ues.chat.queryKeys?did={alice}"), alice_token);
    assert!(!keys.to_string().contains("EVIL"), "{keys}");
    drop(evil);

    // Another account's device keys, as they are (user_id Alice), uploaded by Bob; and with
    // user_id changed (then the signature no longer holds).
    let other = keys["devices"][1]["deviceKeys"].clone();
    let (status, v) =
        xrpc_post(node, "dev.ues.chat.uploadKeys", Some(bob_token), json!({"deviceId": "PHONE", "deviceKeys": other}));
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "{v}");
    let mut other = other;
    other["user_id"] = json!(bob);
    other["device_id"] = json!("PHONE2");
    let (status, v) =
        xrpc_post(node, "dev.ues.chat.uploadKeys", Some(bob_token), json!({"deviceId": "PHONE2", "deviceKeys": other}));
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "{v}");

    // An oversized envelope.
    let big = json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "session_id": "s", "ciphertext": "A".repeat(70_000)});
    let (status, v) = xrpc_post(
        node,
        "dev.ues.chat.sendToDevice",
        Some(alice_token),
        json!({"messages": [{"did": bob, "deviceId": "PHONE", "envelope": big}]}),
    );
    assert_eq!((status, v["error"].as_str()), (413, Some("EnvelopeTooLarge")), "{v}");
    assert_eq!(inbox_len(), before, "nothing stored");

    // The same envelope twice: stored once.
    let envelope =
        json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "session_id": "s", "ciphertext": "QUJD"});
    for _ in 0..2 {
        let (status, v) = xrpc_post(
            node,
            "dev.ues.chat.sendToDevice",
            Some(alice_token),
            json!({"messages": [{"did": bob, "deviceId": "PHONE", "envelope": envelope, "senderDevice": "PHONE"}]}),
        );
        assert_eq!((status, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    }
    assert_eq!(inbox_len(), before + 1, "a replayed envelope is stored once");

    // A flood into one inbox: refused whole once full, nothing stored past the bound, and the
    // node goes on answering others.
    let mut refused = 0;
    for i in 0..10 {
        let messages: Vec<Value> = (0..5)
            .map(|j| {
                json!({"did": bob, "deviceId": "PHONE", "envelope": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "session_id": "s", "ciphertext": format!("flood{i}x{j}")}})
            })
            .collect();
        let (status, v) =
            xrpc_post(node, "dev.ues.chat.sendToDevice", Some(alice_token), json!({"messages": messages}));
        if status == 429 {
            assert_eq!(v["error"], "InboxFull", "{v}");
            refused += 1;
        } else {
            assert_eq!(status, 200, "{v}");
        }
    }
    assert!(refused > 0, "the inbox never filled");
    assert!(inbox_len() <= 30, "the inbox holds at most its bound");
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    assert!(log.contains("an inbox is full"), "the refusal is logged");
    let (status, _) = xrpc_get(node, &format!("dev.ues.chat.queryKeys?did={alice}"), bob_token);
    assert_eq!(status, 200, "others are still served");

    // Without a session, nothing.
    let mut res = agent().get(format!("{}/xrpc/dev.ues.chat.getInbox?deviceId=PHONE", node.base)).call().unwrap();
    assert_eq!(res.status().as_u16(), 401, "{}", res.body_mut().read_to_string().unwrap_or_default());
}

/// Waits (at most 20 s) until `f` answers `Some`.
fn eventually<T>(what: impl std::fmt::Display, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{what}: never");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn message_texts(node: &Running, token: &str, convo: &str) -> Vec<String> {
    let (status, v) = xrpc_get(node, &format!("dev.ues.chat.getMessages?convoId={convo}"), token);
    if status != 200 {
        return Vec::new();
    }
    let mut out: Vec<String> =
        v["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    out.reverse();
    out
}

fn wait_texts(node: &Running, token: &str, convo: &str, want: &[&str]) {
    let start = std::time::Instant::now();
    while message_texts(node, token, convo) != want {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{want:?} never in {convo}: {:?}\nnode log: {}",
            message_texts(node, token, convo),
            std::fs::read_to_string(node.dir.join("node.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("chat"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn conversations_between_built_in_devices_and_libolm_clients() {
    let Some(python) = libolm() else { return };
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), CONFIG);
    let (alice, at) = create_account(&node.base, "alice.test");
    let (bob, bt) = create_account(&node.base, "bob.test");
    let (carol, ct) = create_account(&node.base, "carol.test");
    let phone = Olm::new(python, root.path(), "bob-phone");
    phone.run(&["init", &node.base, &bt, &bob, "PHONE", "10"]);

    // A DM: Olm from Alice's built-in device to every device of both accounts.
    let (status, v) = xrpc_post(&node, "dev.ues.chat.createConvo", Some(&at), json!({"members": [bob]}));
    assert_eq!(status, 200, "{v}");
    let dm = v["convoId"].as_str().unwrap().to_string();
    let (status, v) = xrpc_post(&node, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": dm, "text": "hi bob"}));
    assert_eq!(status, 200, "{v}");
    wait_texts(&node, &bt, &dm, &["hi bob"]);
    assert_eq!(message_texts(&node, &at, &dm), ["hi bob"], "the sender keeps its own copy");
    let (_, convos) = xrpc_get(&node, "dev.ues.chat.listConvos", &bt);
    assert_eq!(convos["convos"][0]["convoId"], dm.as_str(), "{convos}");
    assert_eq!(convos["convos"][0]["members"], json!([alice, bob]));
    // Bob's libolm phone decrypts the same DM (and the conversation's announcement).
    let got = phone.run(&["receive"]);
    assert_eq!(texts(&got), ["hi bob"], "{got}");
    assert!(got["refused"].as_array().unwrap().is_empty(), "{got}");
    // Bob answers from the built-in device; the phone answers with libolm; both read back here.
    xrpc_post(&node, "dev.ues.chat.sendMessage", Some(&bt), json!({"convoId": dm, "text": "hi alice"}));
    let (_, keys) = xrpc_get(&node, &format!("dev.ues.chat.queryKeys?did={alice}"), &bt);
    let alice_built_in = keys["devices"][0]["deviceId"].as_str().unwrap().to_string();
    phone.run(&["send_olm", &alice, &alice_built_in, &dm, "from the phone"]);
    wait_texts(&node, &at, &dm, &["hi bob", "hi alice", "from the phone"]);

    // The same over REST: Bob writes and reads the DM there, with the same answers.
    let rest = |method: &str, path: &str, token: &str, body: Option<Value>| -> (u16, Value) {
        let url = format!("{}{path}", node.base);
        let auth = format!("Bearer {token}");
        let mut res = match (method, body) {
            ("GET", _) => agent().get(&url).header("Authorization", &auth).call().unwrap(),
            ("DELETE", _) => agent().delete(&url).header("Authorization", &auth).call().unwrap(),
            (_, b) => agent().post(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))).unwrap(),
        };
        (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
    };
    let (status, v) =
        rest("POST", &format!("/api/v1/chat/convos/{dm}/messages"), &bt, Some(json!({"text": "over REST"})));
    assert_eq!(status, 200, "{v}");
    assert!(v["messageId"].is_string(), "{v}");
    let (status, v) = rest("GET", &format!("/api/v1/chat/convos/{dm}/messages?limit=1"), &bt, None);
    assert_eq!((status, v["messages"][0]["text"].as_str()), (200, Some("over REST")), "{v}");
    let (status, v) = rest("GET", "/api/v1/chat/convos", &bt, None);
    assert_eq!((status, v["convos"][0]["convoId"].as_str()), (200, Some(dm.as_str())), "{v}");
    let (status, v) = rest("POST", &format!("/api/v1/chat/convos/{dm}/messages"), &bt, Some(json!({"text": 5})));
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "checked against the lexicon: {v}");
    let (status, v) = rest("GET", "/api/v1/chat/inbox/PHONE?limit=500", &bt, None);
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "{v}");
    let mut res = agent().get(format!("{}/api/openapi.json", node.base)).call().unwrap();
    let openapi: Value = res.body_mut().read_json().unwrap();
    assert_eq!(openapi["paths"]["/api/v1/chat/convos/{convoId}/messages"]["post"]["operationId"], "sendMessage");
    wait_texts(&node, &at, &dm, &["hi bob", "hi alice", "from the phone", "over REST"]);

    // A group: Megolm, its room key over Olm to each member device.
    let (status, v) =
        xrpc_post(&node, "dev.ues.chat.createConvo", Some(&at), json!({"members": [bob, carol], "name": "three"}));
    assert_eq!(status, 200, "{v}");
    let group = v["convoId"].as_str().unwrap().to_string();
    xrpc_post(&node, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": group, "text": "group one"}));
    wait_texts(&node, &bt, &group, &["group one"]);
    wait_texts(&node, &ct, &group, &["group one"]);
    let got = phone.run(&["receive"]);
    assert_eq!(texts(&got), ["hi alice", "over REST", "group one"], "{got}");
    let first_session = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["algorithm"] == "m.megolm.v1.aes-sha2")
        .map(|m| m["sessionId"].clone())
        .unwrap();
    // The phone sends to the group with libolm's Megolm; the built-in devices read it.
    let (_, ck) = xrpc_get(&node, &format!("dev.ues.chat.queryKeys?did={carol}"), &bt);
    let carol_built_in = ck["devices"][0]["deviceId"].as_str().unwrap().to_string();
    phone.run(&[
        "send_megolm",
        &group,
        "megolm from libolm",
        &format!("{alice}:{alice_built_in}"),
        &format!("{carol}:{carol_built_in}"),
    ]);
    wait_texts(&node, &at, &group, &["group one", "megolm from libolm"]);
    wait_texts(&node, &ct, &group, &["group one", "megolm from libolm"]);

    // Carol is removed: the next message is under a new session she never gets the key of.
    let (status, v) = xrpc_post(&node, "dev.ues.chat.removeMember", Some(&bt), json!({"convoId": group, "did": carol}));
    assert_eq!((status, v["error"].as_str()), (403, Some("NotConvoCreator")), "{v}");
    let (status, v) = xrpc_post(&node, "dev.ues.chat.removeMember", Some(&at), json!({"convoId": group, "did": carol}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["members"], json!([alice, bob]));
    xrpc_post(&node, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": group, "text": "after carol"}));
    // (Bob's phone sent its Megolm message to Alice's and Carol's devices, not to Bob's own.)
    wait_texts(&node, &bt, &group, &["group one", "after carol"]);
    let got = phone.run(&["receive"]);
    let after: Vec<&Value> =
        got["messages"].as_array().unwrap().iter().filter(|m| m["content"]["text"] == "after carol").collect();
    assert_eq!(after.len(), 1, "{got}");
    assert_ne!(after[0]["sessionId"], first_session, "the group's session rotated");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, _) = xrpc_get(&node, &format!("dev.ues.chat.getMessages?convoId={group}"), &ct);
    assert_eq!(status, 400, "Carol is no longer in the conversation");
    let (_, carol_convos) = xrpc_get(&node, "dev.ues.chat.listConvos", &ct);
    assert!(!carol_convos.to_string().contains(&group), "{carol_convos}");

    // Bob leaves the DM; Alice's view drops him.
    let (status, _) = xrpc_post(&node, "dev.ues.chat.leaveConvo", Some(&bt), json!({"convoId": dm}));
    assert_eq!(status, 200);
    eventually("Bob gone from the DM", || {
        let (_, v) = xrpc_get(&node, "dev.ues.chat.listConvos", &at);
        let dm_view = v["convos"].as_array()?.iter().find(|c| c["convoId"] == dm.as_str())?.clone();
        (dm_view["members"] == json!([alice])).then_some(())
    });

    // No plaintext at rest: not one message text in any file of the node's data directory.
    let texts_sent =
        ["hi bob", "hi alice", "from the phone", "over REST", "group one", "megolm from libolm", "after carol"];
    let mut files = vec![node.dir.clone()];
    let mut found = Vec::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&p) {
            for t in texts_sent {
                if bytes.windows(t.len()).any(|w| w == t.as_bytes()) {
                    found.push(format!("{t:?} in {}", p.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "plaintext at rest: {found:?}");
}

/// A service-auth token claiming to be `iss`'s for `aud`, signed by a key `iss` never had.
fn forged_service_token(iss: &str, aud: &str, lxm: &str) -> String {
    let k = dpop::key();
    let claims = json!({"iss": iss, "aud": aud, "lxm": lxm, "exp": dpop::now() + 60, "iat": dpop::now(), "jti": format!("{:x}", rand::random::<u64>())});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &k.enc).unwrap()
}

#[test]
fn two_nodes_carry_dms_and_a_group_and_retry_until_the_other_is_back() {
    let Some(js) = shared::node_tests() else { return };
    let root = tempfile::tempdir().unwrap();
    let directory = plc::start_directory(&js);
    let config = format!("[xrpc]\nplc_url = \"{}\"\n[xrpc.rate_limits]\nenabled = false\n", directory.url);
    let a = start_with(&root.path().join("a"), &config);
    let mut b = start_with(&root.path().join("b"), &config);
    let (alice, at) = create_account(&a.base, "alice.test");
    let (bob, bt) = create_account(&b.base, "bob.test");
    let (carol, ct) = create_account(&b.base, "carol.test");
    // Bob also has a libolm phone on node B (when python3-olm is here).
    let phone = libolm().map(|python| {
        let phone = Olm::new(python, root.path(), "bob-phone");
        phone.run(&["init", &b.base, &bt, &bob, "PHONE", "5"]);
        phone
    });

    // Bob's devices, asked of node A, come from node B and are checked on A.
    let (status, v) = xrpc_get(&a, &format!("dev.ues.chat.queryKeys?did={bob}"), &at);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["devices"][0]["builtIn"], true, "{v}");
    let bob_device = v["devices"][0]["deviceId"].as_str().unwrap().to_string();

    // A DM across the nodes, both ways.
    let (status, v) = xrpc_post(&a, "dev.ues.chat.createConvo", Some(&at), json!({"members": [bob]}));
    assert_eq!(status, 200, "{v}");
    let dm = v["convoId"].as_str().unwrap().to_string();
    xrpc_post(&a, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": dm, "text": "hi bob, from node A"}));
    wait_texts(&b, &bt, &dm, &["hi bob, from node A"]);
    xrpc_post(&b, "dev.ues.chat.sendMessage", Some(&bt), json!({"convoId": dm, "text": "hi alice, from node B"}));
    wait_texts(&a, &at, &dm, &["hi bob, from node A", "hi alice, from node B"]);

    // A group of three over the two nodes.
    let (status, v) = xrpc_post(&a, "dev.ues.chat.createConvo", Some(&at), json!({"members": [bob, carol]}));
    assert_eq!(status, 200, "{v}");
    let group = v["convoId"].as_str().unwrap().to_string();
    xrpc_post(&a, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": group, "text": "to all three"}));
    wait_texts(&b, &bt, &group, &["to all three"]);
    wait_texts(&b, &ct, &group, &["to all three"]);
    xrpc_post(&b, "dev.ues.chat.sendMessage", Some(&ct), json!({"convoId": group, "text": "carol here"}));
    wait_texts(&a, &at, &group, &["to all three", "carol here"]);

    // Replays and tampering, sent again through node A to node B: the group message's envelope
    // as Bob's phone got it.
    if let Some(phone) = &phone {
        let (_, inbox) = xrpc_get(&b, "dev.ues.chat.getInbox?deviceId=PHONE&limit=100", &bt);
        let megolm = inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["envelope"]["algorithm"] == "m.megolm.v1.aes-sha2")
            .map(|i| i["envelope"].clone())
            .expect("the group message reached the phone");
        let (_, keys) = xrpc_get(&b, &format!("dev.ues.chat.queryKeys?did={bob}"), &bt);
        let bob_built_in = keys["devices"][0]["deviceId"].as_str().unwrap().to_string();
        let send = |device: &str, envelope: &Value| {
            let (status, v) = xrpc_post(
                &a,
                "dev.ues.chat.sendToDevice",
                Some(&at),
                json!({"messages": [{"did": bob, "deviceId": device, "envelope": envelope}]}),
            );
            assert_eq!((status, v["queued"].as_u64()), (200, Some(1)), "{v}");
        };
        // The same bytes again to the phone: stored once.
        send("PHONE", &megolm);
        // To the built-in device (which read that message index already), with a field the
        // encryption does not cover changed so the bytes differ: refused as a replay.
        let mut replay = megolm.clone();
        replay["device_id"] = json!("REPLAYED");
        send(&bob_built_in, &replay);
        // Its ciphertext altered: refused, nothing changed.
        let mut tampered = megolm.clone();
        let mut ct = tampered["ciphertext"].as_str().unwrap().to_string();
        let flipped = if ct.ends_with('A') { 'B' } else { 'A' };
        ct.pop();
        ct.push(flipped);
        tampered["ciphertext"] = json!(ct);
        tampered["device_id"] = json!("TAMPERED");
        send(&bob_built_in, &tampered);
        eventually("the replay and the tampered envelope refused on node B", || {
            let log = std::fs::read_to_string(b.dir.join("node.log")).unwrap_or_default();
            (log.contains("was read before (a replay)") && log.contains("Megolm decryption failed")).then_some(())
        });
        assert_eq!(message_texts(&b, &bt, &group), ["to all three", "carol here"], "nothing shown twice");
        let got = phone.run(&["receive"]);
        assert_eq!(texts(&got).iter().filter(|t| *t == "to all three").count(), 1, "{got}");
    }

    // Carol removed: she reads nothing after.
    let (status, v) = xrpc_post(&a, "dev.ues.chat.removeMember", Some(&at), json!({"convoId": group, "did": carol}));
    assert_eq!(status, 200, "{v}");
    xrpc_post(&a, "dev.ues.chat.sendMessage", Some(&at), json!({"convoId": group, "text": "without carol"}));
    wait_texts(&b, &bt, &group, &["to all three", "carol here", "without carol"]);
    let (status, _) = xrpc_get(&b, &format!("dev.ues.chat.getMessages?convoId={group}"), &ct);
    assert_eq!(status, 400, "Carol is out of the conversation");

    // Node B goes away; Alice writes three messages; they wait on A and arrive once B is back,
    // each once.
    let b_dir = b.dir.clone();
    let b_port = b.port;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for i in 1..=5 {
        let (status, v) = xrpc_post(
            &a,
            "dev.ues.chat.sendMessage",
            Some(&at),
            json!({"convoId": dm, "text": format!("while you were away {i}")}),
        );
        assert_eq!(status, 200, "{v}");
    }
    // Out of order and with a gap: in A's outbox (SQLite, written by A as it runs), the first
    // of them is held back ten seconds and the third is lost, so B gets 2, 4, then 1. The
    // fifth row is moved to another id, where its sealed envelope no longer opens: A drops it
    // (logged) and delivers the others. The others' failed attempts while B was away are
    // forgotten, so that their next tries (1.5 s, then backing off from 1 s) reach B, however
    // slowly it starts on a loaded machine, well before the first one's.
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             ids = [r[0] for r in c.execute('SELECT id FROM chat_outbox WHERE device_id = ? ORDER BY id', (sys.argv[2],))]\n\
             assert len(ids) == 5, ids\n\
             now = int(time.time() * 1000)\n\
             c.execute('UPDATE chat_outbox SET attempts = 0, next_try_at = ? WHERE device_id = ?', (now + 1500, sys.argv[2]))\n\
             c.execute('UPDATE chat_outbox SET id = id + 1000000 WHERE id = ?', (ids[4],))\n\
             c.execute('DELETE FROM chat_outbox WHERE id = ?', (ids[2],))\n\
             c.execute('UPDATE chat_outbox SET next_try_at = ? WHERE id = ?', (now + 10000, ids[0]))\n\
             c.commit()",
        )
        .arg(a.dir.join("index.sqlite"))
        .arg(&bob_device)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(std::time::Duration::from_secs(1));
    b = support::start_watched(&b_dir, b_port);
    wait_texts(
        &b,
        &bt,
        &dm,
        &[
            "hi bob, from node A",
            "hi alice, from node B",
            "while you were away 2",
            "while you were away 4",
            "while you were away 1",
        ],
    );
    let log = std::fs::read_to_string(a.dir.join("node.log")).unwrap_or_default();
    assert!(log.contains("an outbox envelope does not open: dropped"), "the moved row is dropped and logged");

    // Forged service-auth tokens: signed by a key Alice's DID document does not name, or for
    // another account than the messages'. Nothing stored.
    let envelope =
        json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "session_id": "s", "ciphertext": "QUJD"});
    let (_, keys) = xrpc_get(&b, &format!("dev.ues.chat.queryKeys?did={bob}"), &bt);
    let bob_built_in = keys["devices"][0]["deviceId"].as_str().unwrap().to_string();
    let forged = forged_service_token(&alice, &bob, "dev.ues.chat.sendToDevice");
    let mut res = agent()
        .post(format!("{}/xrpc/dev.ues.chat.sendToDevice", b.base))
        .header("Authorization", &format!("Bearer {forged}"))
        .send_json(json!({"messages": [{"did": bob, "deviceId": bob_built_in, "envelope": envelope}]}))
        .unwrap();
    let body = res.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(res.status().as_u16(), 401, "{body}");
    let (_, inbox) = xrpc_get(&b, &format!("dev.ues.chat.getInbox?deviceId={bob_built_in}"), &bt);
    assert!(!inbox.to_string().contains("QUJD"), "nothing stored: {inbox}");
    let log = std::fs::read_to_string(b.dir.join("node.log")).unwrap_or_default();
    assert!(log.contains("service auth token with a bad signature"), "the forgery is logged");
    // No plaintext at rest on either node.
    for node in [&a, &b] {
        let mut files = vec![node.dir.clone()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if let Ok(bytes) = std::fs::read(&p) {
                for t in ["hi bob, from node A", "to all three", "without carol", "while you were away"] {
                    assert!(!bytes.windows(t.len()).any(|w| w == t.as_bytes()), "{t:?} in {}", p.display());
                }
            }
        }
    }
    let _ = (ct, carol);
}

/// The `/ws` topic `chat` and the chat's own rate limits, attacked through real sockets: an
/// anonymous socket, a device that is not the caller's, then the live item on the caller's own
/// device; a burst of key claims past the per-account budget gets 429 while the node answers
/// others, and the keys it handed out are each handed out once.
#[test]
fn the_chat_topic_and_rate_limits_hold_against_strangers_and_bursts() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(python) = libolm() else { return };
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), CONFIG);
    let (alice, at) = create_account(&node.base, "alice.test");
    let (bob, bt) = create_account(&node.base, "bob.test");
    let phone = Olm::new(python, root.path(), "bob-phone");
    phone.run(&["init", &node.base, &bt, &bob, "PHONE", "5"]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
        async fn answer(ws: &mut Ws) -> Value {
            loop {
                let m = tokio::time::timeout(std::time::Duration::from_secs(20), ws.next()).await.unwrap().unwrap().unwrap();
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "welcome" && v["type"] != "subscribed" {
                    return v;
                }
            }
        }
        let subscribe = |device: &str| Message::text(json!({"type": "subscribe", "id": "c", "topic": "chat", "deviceId": device}).to_string());
        // Anonymous: refused.
        let (mut anon, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", node.port)).await.unwrap();
        anon.send(subscribe("PHONE")).await.unwrap();
        let v = answer(&mut anon).await;
        assert_eq!((v["type"].as_str(), v["error"].as_str()), (Some("error"), Some("AuthRequired")), "{v}");
        // Alice asks for Bob's phone: it is no device of hers.
        let (mut alice_ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?access_token={at}", node.port)).await.unwrap();
        alice_ws.send(subscribe("PHONE")).await.unwrap();
        let v = answer(&mut alice_ws).await;
        assert_eq!((v["type"].as_str(), v["error"].as_str()), (Some("error"), Some("DeviceNotFound")), "{v}");
        // Bob's own phone hears a new envelope.
        let (mut bob_ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?access_token={bt}", node.port)).await.unwrap();
        bob_ws.send(subscribe("PHONE")).await.unwrap();
        // Subscribed before the envelope is sent: an item pushed earlier is not the socket's.
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(20), bob_ws.next()).await.unwrap().unwrap().unwrap();
            let Message::Text(t) = m else { continue };
            if serde_json::from_str::<Value>(t.as_str()).unwrap()["type"] == "subscribed" {
                break;
            }
        }
        let envelope = json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "session_id": "s", "ciphertext": "TElWRQ"});
        let (n, a, b) = (node.base.clone(), at.clone(), bob.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let mut res = agent()
                .post(format!("{n}/xrpc/dev.ues.chat.sendToDevice"))
                .header("Authorization", &format!("Bearer {a}"))
                .send_json(json!({"messages": [{"did": b, "deviceId": "PHONE", "envelope": envelope, "senderDevice": "LAPTOP"}]}))
                .unwrap();
            (res.status().as_u16(), res.body_mut().read_to_string().unwrap_or_default())
        })
        .await
        .unwrap();
        assert_eq!(sent.0, 200, "{}", sent.1);
        let v = answer(&mut bob_ws).await;
        assert_eq!(v["type"], "app", "{v}");
        assert_eq!(v["event"]["type"], "inbox", "{v}");
        assert_eq!(v["event"]["item"]["sender"], alice.as_str(), "{v}");
        assert_eq!(v["event"]["item"]["envelope"]["ciphertext"], "TElWRQ", "{v}");
    });

    // A burst of claims for Bob's phone keys (5 one-time keys, then the fallback): at most the
    // per-minute budget (60) is answered, the rest get 429, every one-time key goes once.
    let mut one_time = std::collections::HashSet::new();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..70 {
        let (status, v) =
            xrpc_post(&node, "dev.ues.chat.claimKeys", Some(&at), json!({"did": bob, "deviceId": "PHONE"}));
        match status {
            200 => {
                ok += 1;
                if v["fallback"] != true {
                    assert!(
                        one_time.insert(v["keyId"].as_str().unwrap().to_string()),
                        "a one-time key handed out twice: {v}"
                    );
                }
            }
            429 => {
                assert_eq!(v["error"], "RateLimitExceeded", "{v}");
                limited += 1;
            }
            other => panic!("claimKeys answered {other}: {v}"),
        }
    }
    assert_eq!(one_time.len(), 5, "each of the 5 one-time keys once");
    assert!(ok <= 60 && limited >= 10, "{ok} answered, {limited} limited");
    // Others are still served.
    let (status, _) = xrpc_get(&node, &format!("dev.ues.chat.queryKeys?did={alice}"), &bt);
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    assert!(log.contains("claimKeys over its rate"), "the burst is logged");
}
