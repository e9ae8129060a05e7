//! Credentials that must not reach further than they were given: app passwords, sessions that
//! were ended, and what only the node's operator may see.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::support::*;

fn login(node: &Running, identifier: &str, password: &str) -> (u16, Value) {
    call(
        node,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({ "identifier": identifier, "password": password })),
    )
}

fn app_password(node: &Running, token: &str, name: &str, privileged: bool) -> String {
    let (s, v) = call(
        node,
        "POST",
        "/xrpc/com.atproto.server.createAppPassword",
        Some(token),
        Some(json!({ "name": name, "privileged": privileged })),
    );
    assert_eq!(s, 200, "{v}");
    v["password"].as_str().unwrap().to_string()
}

/// An app password's session writes records but cannot manage the account: no deactivation,
/// no handle change (which signs a PLC operation), no app passwords, no service tokens without
/// a method or for creating accounts; a privileged one reaches chat and nothing more. The
/// account is unchanged afterwards.
#[test]
fn app_passwords_cannot_manage_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "");
    let (did, full) = account(&node, "owner.test");
    let plain = app_password(&node, &full, "phone", false);
    let privileged = app_password(&node, &full, "chat-app", true);
    let (s, v) = login(&node, "owner.test", &plain);
    assert_eq!(s, 200, "{v}");
    let app = v["accessJwt"].as_str().unwrap().to_string();
    let (s, v) = login(&node, "owner.test", &privileged);
    assert_eq!(s, 200, "{v}");
    let chat = v["accessJwt"].as_str().unwrap().to_string();

    // What an app password is for still works.
    let (s, v) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(&app),
        Some(json!({"repo": did, "collection": "com.example.note", "record": {"text": "from an app"}})),
    );
    assert_eq!(s, 200, "{v}");

    let refused = |token: &str, method: &str, path: &str, body: Option<Value>| {
        let (s, v) = call(&node, method, path, Some(token), body);
        assert_eq!((s, v["error"].as_str()), (400, Some("InvalidToken")), "{path}: {v}");
    };
    for token in [&app, &chat] {
        refused(token, "POST", "/xrpc/com.atproto.server.deactivateAccount", Some(json!({})));
        refused(token, "POST", "/xrpc/com.atproto.server.activateAccount", None);
        refused(token, "POST", "/xrpc/com.atproto.identity.updateHandle", Some(json!({"handle": "stolen.test"})));
        refused(token, "POST", "/xrpc/com.atproto.server.createAppPassword", Some(json!({"name": "more"})));
        refused(token, "GET", "/xrpc/com.atproto.server.listAppPasswords", None);
        refused(token, "POST", "/xrpc/com.atproto.server.revokeAppPassword", Some(json!({"name": "phone"})));
        refused(token, "GET", "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:elsewhere.test", None);
        refused(
            token,
            "GET",
            "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:elsewhere.test&lxm=com.atproto.server.createAccount",
            None,
        );
    }
    let chat_method = "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:chat.test&lxm=chat.bsky.convo.sendMessage";
    refused(&app, "GET", chat_method, None);
    let (s, v) = call(&node, "GET", chat_method, Some(&chat), None);
    assert_eq!(s, 200, "a privileged app password reaches chat: {v}");
    // Account management is never delegated, not even by the account holder.
    let (s, _) = call(
        &node,
        "GET",
        "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:x.test&lxm=com.atproto.server.createAppPassword",
        Some(&full),
        None,
    );
    assert_eq!(s, 400);
    let (s, _) = call(&node, "GET", "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:x.test", Some(&full), None);
    assert_eq!(s, 200, "the account holder may mint a short method-less token");

    // Nothing changed: still active, same handle, both app passwords.
    let (_, status) = call(&node, "GET", "/xrpc/com.atproto.server.checkAccountStatus", Some(&full), None);
    assert_eq!(status["activated"], true);
    let (_, repo) = call(&node, "GET", &format!("/xrpc/com.atproto.repo.describeRepo?repo={did}"), None, None);
    assert_eq!(repo["handle"], "owner.test");
    let (_, list) = call(&node, "GET", "/xrpc/com.atproto.server.listAppPasswords", Some(&full), None);
    assert_eq!(list["passwords"].as_array().unwrap().len(), 2);
    still_answers(&node, Duration::from_secs(5));
}

/// Ending an account's sessions (here: the operator resets its password) refuses every token
/// issued before, even one issued in the same second, and none issued after.
#[test]
fn a_password_reset_ends_every_earlier_session_even_in_the_same_second() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "");
    let (did, _) = account(&node, "reset.test");
    for round in 0..3 {
        let (s, v) = login(&node, "reset.test", if round == 0 { "a long password" } else { "the new password" });
        assert_eq!(s, 200, "{v}");
        let (access, refresh) =
            (v["accessJwt"].as_str().unwrap().to_string(), v["refreshJwt"].as_str().unwrap().to_string());
        // The reset comes at once: usually within the same second as the login.
        let mut res = agent()
            .post(format!("{}/xrpc/com.atproto.admin.updateAccountPassword", node.base))
            .header("authorization", &node.operator_auth())
            .send_json(json!({ "did": did, "password": "the new password" }))
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
        let (s, v) = call(&node, "GET", "/xrpc/com.atproto.server.getSession", Some(&access), None);
        assert_eq!((s, v["error"].as_str()), (400, Some("ExpiredToken")), "round {round}: {v}");
        let (s, v) = call(&node, "POST", "/xrpc/com.atproto.server.refreshSession", Some(&refresh), None);
        assert_eq!((s, v["error"].as_str()), (400, Some("ExpiredToken")), "round {round}: {v}");
        // A session opened after the reset, in the same second, works.
        let (s, v) = login(&node, "reset.test", "the new password");
        assert_eq!(s, 200, "{v}");
        let (s, v) =
            call(&node, "GET", "/xrpc/com.atproto.server.getSession", Some(v["accessJwt"].as_str().unwrap()), None);
        assert_eq!(s, 200, "{v}");
    }
    let (s, _) = login(&node, "reset.test", "a long password");
    assert_eq!(s, 401, "the old password no longer logs in");
}

/// The node's peers, their addresses and its counters are the operator's to see: not the
/// public's, and not any account's.
#[test]
fn peers_metrics_and_stats_are_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "");
    let (_, token) = account(&node, "curious.test");
    let operator = node.operator_auth();
    for path in ["/metrics", "/stats", "/api/v1/peers"] {
        let url = format!("{}{path}", node.base);
        assert_eq!(agent().get(&url).call().unwrap().status(), 401, "{path} without credentials");
        let as_user = agent().get(&url).header("authorization", &format!("Bearer {token}")).call().unwrap();
        assert_eq!(as_user.status(), 401, "{path} with an account's token");
        let as_operator = agent().get(&url).header("authorization", &operator).call().unwrap();
        assert_eq!(as_operator.status(), 200, "{path} for the operator");
    }
    let wrong = agent()
        .get(format!("{}/metrics", node.base))
        .header("authorization", "Basic YWRtaW46d3Jvbmc=") // admin:wrong
        .call()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Over /ws: an account's socket may not subscribe to peer or sync events; the operator's may.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let ws_url = format!("ws://127.0.0.1:{}/ws", node.port);
        let subscribe =
            |topic: &str| Message::Text(json!({"type": "subscribe", "id": "x", "topic": topic}).to_string().into());
        let answer = |mut ws: tokio_tungstenite::WebSocketStream<_>, topic: &'static str| async move {
            ws.send(subscribe(topic)).await.unwrap();
            loop {
                let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("an answer")
                    .unwrap()
                    .unwrap();
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "subscribed" || v["type"] == "error" {
                        return v;
                    }
                }
            }
        };
        for topic in ["peers", "sync"] {
            let (ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}?access_token={token}")).await.unwrap();
            let v = answer(ws, topic).await;
            assert_eq!((v["type"].as_str(), v["error"].as_str()), (Some("error"), Some("AuthRequired")), "{v}");
            let mut req = ws_url.as_str().into_client_request().unwrap();
            req.headers_mut().insert("authorization", operator.parse().unwrap());
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let v = answer(ws, topic).await;
            assert_eq!(v["type"], "subscribed", "{v}");
        }
    });
}
