//! The OAuth authorization server of a running node, driven as a client does it (the localhost
//! development client, a P-256 DPoP key, PKCE `S256`), with the consent form posted as a
//! browser posts it: a pushed request, the page with its CSRF cookie, a code, tokens bound to
//! the DPoP key, refresh rotation; and what is refused, each with the specification's error: no
//! proof, no nonce, a replayed proof, a proof for another URL, a wrong PKCE verifier, another
//! DPoP key, a redirect URI not in the metadata, a reused refresh token (which ends the
//! session), a scope escalation on refresh, a form without its CSRF cookie, the access token
//! used as a bearer token, and password guessing on the consent page past its budget.

#[path = "support/dpop.rs"]
mod dpop;
#[path = "support/http.rs"]
mod http;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dpop::{Key, key, now, proof, proof_of};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use support::{Running, start_with};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// The scope the tests' client asks for unless told otherwise.
const SCOPE: &str = "atproto transition:generic";

fn client_id() -> String {
    client_id_for(SCOPE)
}

/// The localhost client declaring `scope`.
fn client_id_for(scope: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .finish();
    format!("http://localhost?{q}")
}

/// An agent that does not follow redirects (the consent answers with one).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into()
}

/// POSTs a form with a DPoP proof (`None`: no proof header): status, JSON, the nonce answered.
fn post(node: &Running, path: &str, dpop: Option<&str>, form: &[(&str, &str)]) -> (u16, Value, Option<String>) {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    let mut req =
        agent().post(format!("{}{path}", node.base)).header("content-type", "application/x-www-form-urlencoded");
    if let Some(p) = dpop {
        req = req.header("DPoP", p);
    }
    let mut res = req.send(body.finish()).unwrap();
    let nonce = res.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_string());
    (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null), nonce)
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The nonce, from a proof-less request the server answers with one.
fn nonce(node: &Running, k: &Key) -> String {
    let (s, v, n) = post(node, "/oauth/par", Some(&proof(k, &format!("{}/oauth/par", node.base), None)), &[]);
    assert_eq!((s, v["error"].as_str()), (400, Some("use_dpop_nonce")), "{v}");
    n.expect("a nonce comes with use_dpop_nonce")
}

/// A pushed request: the request_uri.
fn par(node: &Running, k: &Key, challenge: &str, redirect: &str) -> (u16, Value) {
    par_for(node, k, challenge, redirect, SCOPE)
}

/// A pushed request for `scope` (the client declaring it).
fn par_for(node: &Running, k: &Key, challenge: &str, redirect: &str, scope: &str) -> (u16, Value) {
    let n = nonce(node, k);
    let url = format!("{}/oauth/par", node.base);
    let (s, v, _) = post(
        node,
        "/oauth/par",
        Some(&proof(k, &url, Some(&n))),
        &[
            ("client_id", &client_id_for(scope)),
            ("response_type", "code"),
            ("redirect_uri", redirect),
            ("scope", scope),
            ("state", "the-state"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    (s, v)
}

/// Opens the consent page: the CSRF token of its form and cookie.
fn open_page(node: &Running, request_uri: &str) -> String {
    open_page_for(node, request_uri, &client_id())
}

fn open_page_for(node: &Running, request_uri: &str, client: &str) -> String {
    let url =
        format!("{}/oauth/authorize?client_id={}&request_uri={}", node.base, urlencode(client), urlencode(request_uri));
    let mut res = agent().get(&url).call().unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let html = res.body_mut().read_to_string().unwrap();
    assert!(html.contains("<label for=\"password\">") && html.contains("Know who you are"), "{html}");
    let token = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    assert!(html.contains(&format!("name=\"csrf\" value=\"{token}\"")));
    token
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Posts the consent form: status, `Location`, body.
fn consent(
    node: &Running,
    request_uri: &str,
    csrf: &str,
    cookie: Option<&str>,
    password: &str,
) -> (u16, String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("request_uri", request_uri)
        .append_pair("csrf", csrf)
        .append_pair("identifier", "alice.test")
        .append_pair("password", password)
        .append_pair("decision", "allow")
        .finish();
    let mut req = agent()
        .post(format!("{}/oauth/authorize", node.base))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", &format!("ues-oauth-csrf={c}"));
    }
    let mut res = req.send(body).unwrap();
    let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (res.status().as_u16(), location, res.body_mut().read_to_string().unwrap_or_default())
}

/// The whole way to a code: (code, verifier).
fn code(node: &Running, k: &Key) -> (String, String) {
    code_for(node, k, SCOPE)
}

fn code_for(node: &Running, k: &Key, scope: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let (s, v) = par_for(node, k, &challenge, REDIRECT, scope);
    assert_eq!(s, 201, "{v}");
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page_for(node, &request_uri, &client_id_for(scope));
    let (s, location, _) = consent(node, &request_uri, &csrf, Some(&csrf), "a long password");
    assert_eq!(s, 303);
    assert!(location.starts_with(&format!("{REDIRECT}?code=")), "{location}");
    let query = location.split_once('?').unwrap().1;
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!((params["state"].as_str(), params["iss"].as_str()), ("the-state", node.base.as_str()));
    (params["code"].clone(), verifier)
}

/// A whole sign-in: the token answer for a new session bound to `k`.
fn signed_in(node: &Running, k: &Key) -> Value {
    signed_in_for(node, k, SCOPE)
}

/// A whole sign-in of a client asking for `scope`.
fn signed_in_for(node: &Running, k: &Key, scope: &str) -> Value {
    let (c, verifier) = code_for(node, k, scope);
    let (s, v) = token(
        node,
        k,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("client_id", &client_id_for(scope)),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    );
    assert_eq!(s, 200, "{v}");
    v
}

fn token(node: &Running, k: &Key, form: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{}/oauth/token", node.base);
    let n = nonce(node, k);
    let (s, v, _) = post(node, "/oauth/token", Some(&proof(k, &url, Some(&n))), form);
    (s, v)
}

#[test]
fn the_authorization_server_issues_bound_tokens_and_refuses_what_it_must() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let (did, _) = support::create_account(&node.base, "alice.test");
    let k = key();
    let par_url = format!("{}/oauth/par", node.base);

    // Pushed requests: a proof is required, then a nonce, and a proof works once.
    let (s, v, _) = post(&node, "/oauth/par", None, &[("client_id", &client_id())]);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")));
    let n = nonce(&node, &k);
    let one = proof(&k, &par_url, Some(&n));
    let (verifier, challenge) = pkce();
    let form = [
        ("client_id", client_id()),
        ("response_type", "code".into()),
        ("redirect_uri", REDIRECT.into()),
        ("scope", "atproto transition:generic".into()),
        ("code_challenge", challenge.clone()),
        ("code_challenge_method", "S256".into()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, v, _) = post(&node, "/oauth/par", Some(&one), &form);
    assert_eq!(s, 201, "{v}");
    let (s, v, _) = post(&node, "/oauth/par", Some(&one), &form);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "a replayed proof: {v}");
    let other_url = proof(&k, &format!("{}/oauth/token", node.base), Some(&n));
    let (s, v, _) = post(&node, "/oauth/par", Some(&other_url), &form);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "a proof for another URL: {v}");
    // A redirect URI the client did not declare; a scope it did not declare; no S256.
    let (s, v) = par(&node, &k, &challenge, "http://127.0.0.1:9/elsewhere");
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    let n = nonce(&node, &k);
    let mut escalated = form.clone();
    escalated[3] = ("scope", "atproto transition:chat.bsky");
    let (s, v, _) = post(&node, "/oauth/par", Some(&proof(&k, &par_url, Some(&n))), &escalated);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")), "{v}");

    // The consent form: without its cookie refused, a wrong password shown again, then a code.
    let (_, v) = par(&node, &k, &challenge, REDIRECT);
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page(&node, &request_uri);
    let (s, _, _) = consent(&node, &request_uri, &csrf, None, "a long password");
    assert_eq!(s, 403, "no CSRF cookie");
    let (s, _, body) = consent(&node, &request_uri, &csrf, Some(&csrf), "wrong password");
    assert_eq!(s, 200);
    assert!(body.contains("role=\"alert\""), "the page again, with the error");

    // A wrong verifier or another DPoP key: the code is spent and refused.
    let (c, _) = code(&node, &k);
    let (s, v) = token(
        &node,
        &k,
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("client_id", &client_id()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &pkce().0),
        ],
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    let (c, v2) = code(&node, &k);
    let (s, v) = token(
        &node,
        &key(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("client_id", &client_id()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &v2),
        ],
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "another key: {v}");
    let _ = verifier;

    // The right way: a DPoP-bound token for alice.
    let (c, verifier) = code(&node, &k);
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("client_id", &client_id()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let (s, v) = token(&node, &k, &exchange);
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["token_type"].as_str(), v["sub"].as_str()), (Some("DPoP"), Some(did.as_str())));
    assert_eq!(v["scope"], "atproto transition:generic");
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(payload["cnf"]["jkt"], k.jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap());
    let (s, v) = token(&node, &k, &exchange);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "a code works once: {v}");
    // Bound: not a bearer token.
    let res = agent()
        .get(format!("{}/xrpc/com.atproto.server.getSession", node.base))
        .header("Authorization", &format!("Bearer {access}"))
        .call()
        .unwrap();
    assert_eq!(res.status(), 401);

    // Refresh: rotated; escalation refused; another key ends the session.
    let refreshing = |r: &str, scope: Option<&str>, k: &Key| {
        let mut f = vec![("grant_type", "refresh_token"), ("refresh_token", r), ("client_id", "")];
        let cid = client_id();
        f[2].1 = &cid;
        if let Some(s) = scope {
            f.push(("scope", s));
        }
        token(&node, k, &f)
    };
    let (s, v) = refreshing(&refresh, None, &k);
    assert_eq!(s, 200, "{v}");
    let second = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, refresh);
    let (s, v) = refreshing(&second, Some("atproto transition:chat.bsky"), &k);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")), "{v}");
    // The refused escalation changed nothing: the token still works, once.
    let (s, v) = refreshing(&second, Some("atproto"), &k);
    assert_eq!(s, 200, "{v}");
    let third = v["refresh_token"].as_str().unwrap().to_string();
    // The token it replaced, presented again: theft or a bug; the session ends.
    let (s, v) = refreshing(&second, None, &k);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "a reused refresh token: {v}");
    let (s, _) = refreshing(&third, None, &k);
    assert_ne!(s, 200, "the session ended");

    // Another session, ended by revocation.
    let v = signed_in(&node, &k);
    let r = v["refresh_token"].as_str().unwrap().to_string();
    let (s, _, _) = post(&node, "/oauth/revoke", None, &[("token", &r)]);
    assert_eq!(s, 200);
    let (s, v) = refreshing(&r, None, &k);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    // And one refreshed with another key: refused, and the session ends.
    let v = signed_in(&node, &k);
    let r = v["refresh_token"].as_str().unwrap().to_string();
    let (s, v) = refreshing(&r, None, &key());
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[test]
fn guessing_passwords_on_the_consent_page_is_cut_off() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    support::create_account(&node.base, "alice.test");
    let k = key();
    let (_, challenge) = pkce();
    let (_, v) = par(&node, &k, &challenge, REDIRECT);
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page(&node, &request_uri);
    let mut statuses = Vec::new();
    for i in 0..35 {
        statuses.push(consent(&node, &request_uri, &csrf, Some(&csrf), &format!("guess {i}")).0);
    }
    assert!(statuses[..30].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    // The right password from this address waits too, on the account page as well; the node
    // serves others.
    assert_eq!(consent(&node, &request_uri, &csrf, Some(&csrf), "a long password").0, 429);
    let res = agent()
        .post(format!("{}/account/sign-in", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .send("csrf=x&identifier=alice.test&password=a+long+password")
        .unwrap();
    assert_eq!(res.status(), 429, "the account page shares the sign-in budget");
    let res = agent().get(format!("{}/xrpc/com.atproto.server.describeServer", node.base)).call().unwrap();
    assert_eq!(res.status(), 200);
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("oauth rate limit reached"));
}

/// Calls an XRPC procedure with an OAuth access token and a DPoP proof (retrying once with the
/// nonce the node asks for): status and JSON.
fn xrpc_dpop(
    node: &Running,
    k: &Key,
    access: &str,
    method: &str,
    body: Value,
    proof_for: Option<&str>,
) -> (u16, Value) {
    let path = format!("/xrpc/{method}");
    dpop_call_as(node, k, access, ("POST", &path), proof_for, "application/json", body.to_string().as_bytes())
}

#[test]
fn xrpc_takes_dpop_bound_tokens_with_their_proofs() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let (did, _) = support::create_account(&node.base, "alice.test");
    let k = key();
    let v = signed_in(&node, &k);
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let record = json!({"repo": did, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.post", "text": "through OAuth", "createdAt": "2026-12-05T12:00:00Z"}});

    let (s, v) = xrpc_dpop(&node, &k, &access, "com.atproto.repo.createRecord", record.clone(), None);
    assert_eq!(s, 200, "a write with the bound token and its proof: {v}");
    let uri = v["uri"].as_str().unwrap().to_string();
    let got = ureq::get(format!(
        "{}/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={}",
        node.base,
        uri.rsplit('/').next().unwrap()
    ))
    .call()
    .unwrap()
    .body_mut()
    .read_json::<Value>()
    .unwrap();
    assert_eq!(got["value"]["text"], "through OAuth");
    // Another key's proof, a proof for another URL, no proof: refused.
    let (s, v) = xrpc_dpop(&node, &key(), &access, "com.atproto.repo.createRecord", record.clone(), None);
    assert_eq!(s, 401, "another key: {v}");
    let other = format!("{}/xrpc/com.atproto.repo.deleteRecord", node.base);
    let (s, v) = xrpc_dpop(&node, &k, &access, "com.atproto.repo.createRecord", record.clone(), Some(&other));
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_dpop_proof")), "{v}");
    let res = agent()
        .post(format!("{}/xrpc/com.atproto.repo.createRecord", node.base))
        .header("Authorization", &format!("DPoP {access}"))
        .send_json(record.clone())
        .unwrap();
    assert_eq!(res.status(), 401, "no proof");
    // A stolen token with the key's thumbprint forged into the header the node's own layers set
    // after checking a proof: refused on XRPC, REST and the applications' routes.
    let jkt = k.jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
    for (url, body) in [
        (format!("{}/xrpc/com.atproto.repo.createRecord", node.base), record.clone()),
        (format!("{}/api/v1/repos/{did}/records/app.bsky.feed.post", node.base), record["record"].clone()),
    ] {
        let res = agent()
            .post(&url)
            .header("Authorization", &format!("DPoP {access}"))
            .header("x-ues-dpop-jkt", &jkt)
            .header("x-ues-oauth-cleared", "1")
            .send_json(body)
            .unwrap();
        assert_eq!(res.status(), 401, "forged internal headers on {url}");
    }
    let res = agent()
        .get(format!("{}/api/v1/apps/dev.ues.stats/counts/{did}", node.base))
        .header("Authorization", &format!("DPoP {access}"))
        .header("x-ues-dpop-jkt", &jkt)
        .call()
        .unwrap();
    assert_eq!(res.status(), 401, "an application's route checks the proof too");
    // Account methods stay the account holder's.
    let (s, _) = xrpc_dpop(&node, &k, &access, "com.atproto.server.createAppPassword", json!({"name": "x"}), None);
    assert_ne!(s, 200);
    // Revoked: refused.
    let (s, _, _) = post(&node, "/oauth/revoke", None, &[("token", &refresh)]);
    assert_eq!(s, 200);
    let (s, v) = xrpc_dpop(&node, &k, &access, "com.atproto.repo.createRecord", record, None);
    assert_eq!(s, 400, "the ended session's token: {v}");
    assert_eq!(v["error"], "ExpiredToken");
}

/// Calls the node with an OAuth access token and a DPoP proof (retrying once with the nonce it
/// asks for): `method` `path` (no query in the proof's URL), a body of `content_type`. Status
/// and JSON.
fn dpop_call(
    node: &Running,
    k: &Key,
    access: &str,
    call: (&str, &str),
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    dpop_call_as(node, k, access, call, None, content_type, body)
}

/// [`dpop_call`] with the proof made for `htu` instead of the call's own URL.
fn dpop_call_as(
    node: &Running,
    k: &Key,
    access: &str,
    (method, path): (&str, &str),
    htu: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let url = format!("{}{}", node.base, path.split('?').next().unwrap());
    let sign = |nonce: Option<&str>| proof_of(k, (method, htu.unwrap_or(&url)), nonce, Some(access));
    let send = |p: &str| {
        let full = format!("{}{path}", node.base);
        let auth = format!("DPoP {access}");
        let mut res = if method == "GET" {
            agent().get(&full).header("Authorization", &auth).header("DPoP", p).call().unwrap()
        } else {
            let req = match method {
                "POST" => agent().post(&full),
                "PUT" => agent().put(&full),
                other => panic!("{other}"),
            };
            req.header("Authorization", &auth)
                .header("DPoP", p)
                .header("content-type", content_type)
                .send(body)
                .unwrap()
        };
        let nonce = res.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_string());
        (res.status().as_u16(), res.body_mut().read_json::<Value>().unwrap_or(Value::Null), nonce)
    };
    let (s, v, n) = send(&sign(None));
    if v["error"] == "use_dpop_nonce" {
        let (s, v, _) = send(&sign(n.as_deref()));
        return (s, v);
    }
    (s, v)
}

/// The status line of a WebSocket handshake on `/ws` with these extra header lines.
fn ws_handshake(node: &Running, extra: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        node.port
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

/// A DPoP proof for a GET of `url` with `access` (and the nonce the node gives out now).
fn get_proof(node: &Running, k: &Key, url: &str, access: &str) -> String {
    proof_of(k, ("GET", url), Some(&nonce(node, k)), Some(access))
}

#[test]
fn granular_scopes_allow_exactly_what_they_name_on_xrpc_rest_and_ws() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let (did, _) = support::create_account(&node.base, "alice.test");
    let k = key();
    let scope = "atproto repo:app.bsky.feed.like?action=create blob:image/* account:email";
    let v = signed_in_for(&node, &k, scope);
    assert_eq!(v["scope"], scope);
    let access = v["access_token"].as_str().unwrap().to_string();
    let call = |method: &str, path: &str, body: Value| {
        dpop_call(&node, &k, &access, (method, path), "application/json", body.to_string().as_bytes())
    };
    let record = |collection: &str| {
        json!({"repo": did, "collection": collection, "record": {"$type": collection, "text": "x", "createdAt": "2026-12-05T12:00:00Z",
            "subject": {"uri": format!("at://{did}/app.bsky.feed.post/3aaaaaaaaaaaa"), "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}}})
    };
    let refused = |(s, v): (u16, Value), scope: &str| {
        assert_eq!((s, v["error"].as_str()), (403, Some("InsufficientScope")), "{v}");
        assert!(v["message"].as_str().unwrap().contains(scope), "{v} should name {scope}");
    };

    // Records: likes may be created, not deleted; posts not at all, in one write or many.
    let (s, v) = call("POST", "/xrpc/com.atproto.repo.createRecord", record("app.bsky.feed.like"));
    assert_eq!(s, 200, "{v}");
    let like = v["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    refused(
        call("POST", "/xrpc/com.atproto.repo.createRecord", record("app.bsky.feed.post")),
        "repo:app.bsky.feed.post?action=create",
    );
    refused(
        call(
            "POST",
            "/xrpc/com.atproto.repo.deleteRecord",
            json!({"repo": did, "collection": "app.bsky.feed.like", "rkey": like}),
        ),
        "repo:app.bsky.feed.like?action=delete",
    );
    let writes = json!({"repo": did, "writes": [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.like", "value": record("app.bsky.feed.like")["record"]},
        {"$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.post", "value": record("app.bsky.feed.post")["record"]},
    ]});
    refused(call("POST", "/xrpc/com.atproto.repo.applyWrites", writes), "repo:app.bsky.feed.post?action=create");
    refused(
        call(
            "POST",
            "/xrpc/com.atproto.repo.putRecord",
            json!({"repo": did, "collection": "app.bsky.feed.like", "rkey": like, "record": record("app.bsky.feed.like")["record"]}),
        ),
        "repo:app.bsky.feed.like?action=update",
    );
    let likes =
        ureq::get(format!("{}/xrpc/com.atproto.repo.listRecords?repo={did}&collection=app.bsky.feed.like", node.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap();
    assert_eq!(likes["records"].as_array().unwrap().len(), 1, "the refused batch wrote nothing");

    // Uploads of the types granted.
    let png = b"\x89PNG\r\n\x1a\n a picture";
    let (s, v) = dpop_call(&node, &k, &access, ("POST", "/xrpc/com.atproto.repo.uploadBlob"), "image/png", png);
    assert_eq!(s, 200, "{v}");
    refused(
        dpop_call(&node, &k, &access, ("POST", "/xrpc/com.atproto.repo.uploadBlob"), "text/plain", b"text"),
        "blob:text/plain",
    );

    // The account: who it is, its email (granted); nothing it did not grant.
    let (s, v) = call("GET", "/xrpc/com.atproto.server.getSession", Value::Null);
    assert_eq!(
        (s, v["did"].as_str(), v["email"].as_str()),
        (200, Some(did.as_str()), Some("alice.test@example.com")),
        "{v}"
    );
    refused(call("POST", "/xrpc/com.atproto.server.createAppPassword", json!({"name": "x"})), "transition:generic");
    refused(call("POST", "/xrpc/com.atproto.identity.updateHandle", json!({"handle": "bob.test"})), "identity:handle");
    refused(
        call("POST", "/xrpc/com.atproto.server.updateEmail", json!({"email": "x@example.com"})),
        "account:email?action=manage",
    );
    refused(
        call(
            "GET",
            "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:api.bsky.app&lxm=app.bsky.feed.getTimeline",
            Value::Null,
        ),
        "rpc:app.bsky.feed.getTimeline",
    );

    // REST: the same grant.
    let post = json!({"text": "x", "createdAt": "2026-12-05T12:00:00Z"});
    refused(
        call("POST", &format!("/api/v1/repos/{did}/records/app.bsky.feed.post"), post),
        "repo:app.bsky.feed.post?action=create",
    );
    let (s, v) = call(
        "POST",
        &format!("/api/v1/repos/{did}/records/app.bsky.feed.like"),
        record("app.bsky.feed.like")["record"].clone(),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = call("GET", "/api/v1/sessions/current", Value::Null);
    assert_eq!((s, v["did"].as_str()), (200, Some(did.as_str())), "{v}");

    // /ws: the account's own socket takes transition:generic.
    let url = format!("{}/ws", node.base);
    let line = ws_handshake(
        &node,
        &format!("Authorization: DPoP {access}\r\nDPoP: {}\r\n", get_proof(&node, &k, &url, &access)),
    );
    assert!(line.contains(" 403 "), "a granular token on /ws: {line}");

    // A transition:generic session: REST and /ws take it; it does not see the email.
    let k2 = key();
    let v = signed_in(&node, &k2);
    let generic = v["access_token"].as_str().unwrap().to_string();
    let (s, v) = dpop_call(
        &node,
        &k2,
        &generic,
        ("POST", &format!("/api/v1/repos/{did}/records/app.bsky.feed.post")),
        "application/json",
        json!({"text": "x", "createdAt": "2026-12-05T12:00:00Z"}).to_string().as_bytes(),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = dpop_call(&node, &k2, &generic, ("GET", "/xrpc/com.atproto.server.getSession"), "", b"");
    assert_eq!((s, v.get("email")), (200, None), "no email without transition:email or account:email: {v}");
    let line = ws_handshake(
        &node,
        &format!("Authorization: DPoP {generic}\r\nDPoP: {}\r\n", get_proof(&node, &k2, &url, &generic)),
    );
    assert!(line.contains(" 101 "), "a transition:generic token on /ws: {line}");
    let line = ws_handshake(&node, &format!("Authorization: DPoP {generic}\r\n"));
    assert!(line.contains(" 401 "), "no proof on /ws: {line}");

    // Scopes that do not parse are refused when asked for, with the reason.
    let (_, challenge) = pkce();
    for bad in ["atproto repo:app.bsky.*", "atproto rpc:app.bsky.feed.getTimeline", "atproto include:app.bsky.authFull"]
    {
        let (s, v) = par_for(&node, &k, &challenge, REDIRECT, bad);
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")), "{bad}: {v}");
    }
}

/// A confidential client's public key as its key set publishes it.
fn published(k: &Key, kid: &str) -> Value {
    let mut j = serde_json::to_value(&k.jwk).unwrap();
    j["kid"] = json!(kid);
    j["alg"] = json!("ES256");
    j["use"] = json!("sig");
    j
}

/// A client assertion (`private_key_jwt`) signed by `k` as `kid`.
fn assertion(k: &Key, kid: &str, client_id: &str, aud: &str) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "iat": now(), "exp": now() + 60,
        "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())});
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}

#[test]
fn confidential_clients_authenticate_with_their_keys_and_private_addresses_are_refused() {
    let (k1, k2, rogue) = (key(), key(), key());
    let jwks = json!({"keys": [published(&k1, "k1"), published(&k2, "k2")]});
    let (port, _) = http::serve(move |req, port| match req.path.as_str() {
        "/client.json" => http::Answer::json(&json!({
            "client_id": format!("http://127.0.0.1:{port}/client.json"), "application_type": "web",
            "client_name": "A confidential client", "grant_types": ["authorization_code", "refresh_token"],
            "scope": "atproto transition:generic", "response_types": ["code"],
            "redirect_uris": [format!("http://127.0.0.1:{port}/callback")],
            "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
            "dpop_bound_access_tokens": true, "jwks_uri": format!("http://127.0.0.1:{port}/jwks.json"),
        })),
        "/jwks.json" => http::Answer::json(&jwks),
        _ => http::Answer { status: 404, headers: String::new(), body: Vec::new() },
    });
    let client = format!("http://127.0.0.1:{port}/client.json");
    let redirect = format!("http://127.0.0.1:{port}/callback");

    // A node that fetches client documents from public https: URLs only refuses this one.
    let root = tempfile::tempdir().unwrap();
    let public = start_with(&root.path().join("public"), "[xrpc.rate_limits]\nenabled = false\n");
    let k = key();
    let n = nonce(&public, &k);
    let (s, v, _) = post(
        &public,
        "/oauth/par",
        Some(&proof(&k, &format!("{}/oauth/par", public.base), Some(&n))),
        &[("client_id", &client)],
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")), "an http: client_id: {v}");
    let https = format!("https://127.0.0.1:{port}/client.json");
    let n = nonce(&public, &k);
    let (s, v, _) = post(
        &public,
        "/oauth/par",
        Some(&proof(&k, &format!("{}/oauth/par", public.base), Some(&n))),
        &[("client_id", &https)],
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")), "a loopback client_id: {v}");
    assert!(v["error_description"].as_str().unwrap().contains("not a public address"), "{v}");
    drop(public);

    let node = start_with(
        &root.path().join("node"),
        "[xrpc.rate_limits]\nenabled = false\n[oauth]\nprivate_client_addresses = true\n",
    );
    support::create_account(&node.base, "alice.test");
    let aud = node.base.clone();
    let (verifier, challenge) = pkce();
    let par_with = |auth: &[(&str, String)]| {
        let n = nonce(&node, &k);
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", client.clone()),
            ("response_type", "code".into()),
            ("redirect_uri", redirect.clone()),
            ("scope", "atproto transition:generic".into()),
            ("state", "s".into()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        form.extend(auth.iter().cloned());
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v, _) =
            post(&node, "/oauth/par", Some(&proof(&k, &format!("{}/oauth/par", node.base), Some(&n))), &form);
        (s, v)
    };
    let typ = ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string());
    let refused = |(s, v): (u16, Value), why: &str| {
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")), "{why}: {v}");
    };
    refused(par_with(&[]), "no assertion");
    refused(
        par_with(&[typ.clone(), ("client_assertion", assertion(&rogue, "k1", &client, &aud))]),
        "another key as k1",
    );
    refused(par_with(&[typ.clone(), ("client_assertion", assertion(&k1, "k9", &client, &aud))]), "a key not published");
    refused(
        par_with(&[typ.clone(), ("client_assertion", assertion(&k1, "k1", &client, "https://elsewhere.test"))]),
        "another audience",
    );
    refused(
        par_with(&[typ.clone(), ("client_assertion", assertion(&k1, "k1", "https://other.test/c.json", &aud))]),
        "another issuer",
    );
    let once = assertion(&k1, "k1", &client, &aud);
    let (s, v) = par_with(&[typ.clone(), ("client_assertion", once.clone())]);
    assert_eq!(s, 201, "{v}");
    refused(par_with(&[typ.clone(), ("client_assertion", once)]), "a replayed assertion");

    // Consent, then the code for tokens, authenticated again.
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page_for(&node, &request_uri, &client);
    let (s, location, _) = consent(&node, &request_uri, &csrf, Some(&csrf), "a long password");
    assert_eq!(s, 303);
    assert!(location.starts_with(&format!("{redirect}?code=")), "{location}");
    let query = location.split_once('?').unwrap().1;
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let exchange = |code: &str, auth: Option<(&Key, &str)>| {
        let mut f = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("client_id", client.clone()),
            ("redirect_uri", redirect.clone()),
            ("code_verifier", verifier.clone()),
        ];
        if let Some((key, kid)) = auth {
            f.push(typ.clone());
            f.push(("client_assertion", assertion(key, kid, &client, &format!("{aud}/oauth/token"))));
        }
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        token(&node, &k, &f)
    };
    refused(exchange(&params["code"], None), "a token request without the assertion");
    // The code was spent by the refused request? No: client authentication comes first.
    let (s, v) = exchange(&params["code"], Some((&k1, "k1")));
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_in"].as_u64().unwrap() <= 3600);
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let refreshing = |r: &str, key: &Key, kid: &str| {
        let f = [
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", r.to_string()),
            ("client_id", client.clone()),
            typ.clone(),
            ("client_assertion", assertion(key, kid, &client, &aud)),
        ];
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        token(&node, &k, &f)
    };
    let (s, v) = refreshing(&refresh, &k1, "k1");
    assert_eq!(s, 200, "a refresh signed by the session's key: {v}");
    let next = v["refresh_token"].as_str().unwrap().to_string();
    // The session is bound to k1: a refresh signed by the client's other key ends it.
    let (s, v) = refreshing(&next, &k2, "k2");
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    let (s, _) = refreshing(&next, &k1, "k1");
    assert_eq!(s, 400, "the session ended");
}

#[test]
fn proofs_for_another_method_or_with_an_unknown_nonce_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let k = key();
    let url = format!("{}/oauth/par", node.base);
    let p = proof_of(&k, ("GET", &url), Some(&nonce(&node, &k)), None);
    let (s, v, _) = post(&node, "/oauth/par", Some(&p), &[("client_id", &client_id())]);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "a GET proof on a POST: {v}");
    // A nonce this server did not give out (or gave out too long ago): a fresh one comes back.
    let (s, v, fresh) =
        post(&node, "/oauth/par", Some(&proof(&k, &url, Some("bm90LWEtbm9uY2U"))), &[("client_id", &client_id())]);
    assert_eq!((s, v["error"].as_str()), (400, Some("use_dpop_nonce")), "{v}");
    assert!(fresh.is_some_and(|f| f != "bm90LWEtbm9uY2U"));
    // Hostile bodies and proofs: an oversized form, a proof that is no JWT, one far too long,
    // a client assertion far too long. Each refused; the node answers others.
    let big = "x".repeat(64 * 1024);
    let res = agent()
        .post(format!("{}/oauth/par", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("client_id={big}"))
        .unwrap();
    assert_eq!(res.status(), 413, "a form over 16 KiB");
    for bad in ["not.a.jwt", &"A".repeat(9 * 1024)] {
        let (s, v, _) = post(&node, "/oauth/par", Some(bad), &[("client_id", &client_id())]);
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "{v}");
    }
    let n = nonce(&node, &k);
    let long = [("client_id", client_id()), ("client_assertion", "A".repeat(12 * 1024))];
    let long: Vec<(&str, &str)> = long.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, v, _) = post(&node, "/oauth/par", Some(&proof(&k, &url, Some(&n))), &long);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")), "a public client sends no assertion: {v}");
    let res = agent().get(format!("{}/xrpc/_health", node.base)).call().unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn two_factor_sign_in_by_email_on_xrpc_rest_and_the_consent_page() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let (did, token) = support::create_account(&node.base, "alice.test");
    let call = |method: &str, bearer: Option<&str>, body: Value| support::xrpc_post(&node, method, bearer, body);
    // Codes go to a confirmed address only.
    let (s, v) = call(
        "com.atproto.server.updateEmail",
        Some(&token),
        json!({"email": "alice.test@example.com", "emailAuthFactor": true}),
    );
    assert_eq!(s, 400, "unconfirmed: {v}");
    assert_eq!(call("com.atproto.server.requestEmailConfirmation", Some(&token), json!({})).0, 200);
    let code = support::mailed_token(&node, "confirm_email");
    let (s, v) = call(
        "com.atproto.server.confirmEmail",
        Some(&token),
        json!({"email": "alice.test@example.com", "token": code}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(call("com.atproto.server.requestEmailUpdate", Some(&token), json!({})).0, 200);
    let code = support::mailed_token(&node, "update_email");
    let on = json!({"email": "alice.test@example.com", "emailAuthFactor": true, "token": code});
    let (s, v) = call("com.atproto.server.updateEmail", Some(&token), on);
    assert_eq!(s, 200, "{v}");

    // createSession: the password alone mails a code; the code completes the sign-in.
    let login = json!({"identifier": "alice.test", "password": "a long password"});
    let (s, v) = call("com.atproto.server.createSession", None, login.clone());
    assert_eq!((s, v["error"].as_str()), (401, Some("AuthFactorTokenRequired")), "{v}");
    let code = support::mailed_token(&node, "sign_in");
    let mut wrong = login.clone();
    wrong["authFactorToken"] = json!("WRONG-CODE");
    assert_eq!(call("com.atproto.server.createSession", None, wrong).1["error"], "InvalidToken");
    let mut with = login.clone();
    with["authFactorToken"] = json!(code);
    let (s, v) = call("com.atproto.server.createSession", None, with.clone());
    assert_eq!((s, v["emailAuthFactor"].as_bool()), (200, Some(true)), "{v}");
    let full = v["accessJwt"].as_str().unwrap().to_string();
    assert_eq!(call("com.atproto.server.createSession", None, with).1["error"], "InvalidToken", "a code works once");
    // An app password is its own factor.
    let (_, v) = call("com.atproto.server.createAppPassword", Some(&full), json!({"name": "phone"}));
    let app = v["password"].as_str().unwrap().to_string();
    let (s, v) = call("com.atproto.server.createSession", None, json!({"identifier": "alice.test", "password": app}));
    assert_eq!(s, 200, "{v}");

    // REST: the same.
    let rest = |body: Value| {
        let mut res = support::agent().post(format!("{}/api/v1/sessions", node.base)).send_json(body).unwrap();
        (res.status().as_u16(), res.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    };
    let (s, v) = rest(login.clone());
    assert_eq!((s, v["error"].as_str()), (401, Some("AuthFactorTokenRequired")), "{v}");
    let mut with = login.clone();
    with["authFactorToken"] = json!(support::mailed_token(&node, "sign_in"));
    assert_eq!(rest(with).0, 201);

    // The consent page asks for the code, then takes it.
    let k = key();
    let (_, challenge) = pkce();
    let (_, v) = par(&node, &k, &challenge, REDIRECT);
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page(&node, &request_uri);
    let (s, _, body) = consent(&node, &request_uri, &csrf, Some(&csrf), "a long password");
    assert_eq!(s, 200);
    assert!(body.contains("<label for=\"code\">") && body.contains("sent to your email"), "{body}");
    let code = support::mailed_token(&node, "sign_in");
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("request_uri", &request_uri)
        .append_pair("csrf", &csrf)
        .append_pair("identifier", "alice.test")
        .append_pair("password", "a long password")
        .append_pair("code", &code)
        .append_pair("decision", "allow")
        .finish();
    let res = agent()
        .post(format!("{}/oauth/authorize", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &format!("ues-oauth-csrf={csrf}"))
        .send(form)
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(res.headers().get("location").unwrap().to_str().unwrap().contains("code="));

    // A new address turns the codes off until it is confirmed and they are asked for again
    // (another account: at most five mails go to one address an hour).
    let (_, bob) = support::create_account(&node.base, "bob.test");
    assert_eq!(call("com.atproto.server.requestEmailConfirmation", Some(&bob), json!({})).0, 200);
    let code = support::mailed_token(&node, "confirm_email");
    assert_eq!(
        call("com.atproto.server.confirmEmail", Some(&bob), json!({"email": "bob.test@example.com", "token": code})).0,
        200
    );
    assert_eq!(call("com.atproto.server.requestEmailUpdate", Some(&bob), json!({})).0, 200);
    let code = support::mailed_token(&node, "update_email");
    let on = json!({"email": "bob.test@example.com", "emailAuthFactor": true, "token": code});
    assert_eq!(call("com.atproto.server.updateEmail", Some(&bob), on).0, 200);
    assert_eq!(call("com.atproto.server.requestEmailUpdate", Some(&bob), json!({})).0, 200);
    let code = support::mailed_token(&node, "update_email");
    let moved = json!({"email": "bob@elsewhere.example", "token": code});
    assert_eq!(call("com.atproto.server.updateEmail", Some(&bob), moved).0, 200);
    let (s, v) = call(
        "com.atproto.server.createSession",
        None,
        json!({"identifier": "bob.test", "password": "a long password"}),
    );
    assert_eq!((s, v["emailAuthFactor"].as_bool()), (200, Some(false)), "{v}");
    let _ = did;
}

/// Signs in to the account page as `handle`: the web session cookie (`ues-account=...`).
fn account_sign_in(node: &Running, handle: &str, password: &str) -> Result<String, String> {
    let mut res = agent().get(format!("{}/account", node.base)).call().unwrap();
    let csp = res.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"), "{csp}");
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = cookie.split_once('=').unwrap().1.to_string();
    let page = res.body_mut().read_to_string().unwrap();
    assert!(page.contains("<label for=\"identifier\">") && page.contains(&format!("value=\"{csrf}\"")));
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", &csrf)
        .append_pair("identifier", handle)
        .append_pair("password", password)
        .finish();
    let mut res = agent()
        .post(format!("{}/account/sign-in", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .send(form)
        .unwrap();
    if res.status() != 303 {
        return Err(res.body_mut().read_to_string().unwrap_or_default());
    }
    let set = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/account"), "{set}");
    Ok(set.split(';').next().unwrap().to_string())
}

/// The account page as the web session `cookie` sees it.
fn account_page(node: &Running, cookie: &str) -> String {
    agent()
        .get(format!("{}/account", node.base))
        .header("cookie", cookie)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Posts the revoke form: status and `Location`.
fn account_revoke(node: &Running, cookie: Option<&str>, csrf: &str, session: &str) -> (u16, String) {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", csrf)
        .append_pair("session", session)
        .finish();
    let mut req = agent()
        .post(format!("{}/account/revoke", node.base))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send(form).unwrap();
    let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (res.status().as_u16(), location)
}

fn attribute(html: &str, name: &str) -> String {
    let start = html.find(&format!("name=\"{name}\" value=\"")).unwrap() + name.len() + 15;
    html[start..].split('"').next().unwrap().to_string()
}

#[test]
fn the_account_page_lists_and_revokes_apps_and_refuses_forged_forms() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let (_, alice_token) = support::create_account(&node.base, "alice.test");
    support::create_account(&node.base, "bob.test");
    let k = key();
    let v = signed_in(&node, &k);
    let refresh = v["refresh_token"].as_str().unwrap().to_string();

    // Only the account password signs in.
    let (_, app) =
        support::xrpc_post(&node, "com.atproto.server.createAppPassword", Some(&alice_token), json!({"name": "x"}));
    let refused = account_sign_in(&node, "alice.test", app["password"].as_str().unwrap()).unwrap_err();
    assert!(refused.contains("not an app password"), "{refused}");
    assert!(account_sign_in(&node, "alice.test", "wrong password").unwrap_err().contains("role=\"alert\""));
    let alice = account_sign_in(&node, "alice.test", "a long password").unwrap();
    let page = account_page(&node, &alice);
    assert!(page.contains("Development client") && page.contains("Read and write your posts"), "{page}");
    let (csrf, session) = (attribute(&page, "csrf"), attribute(&page, "session"));

    // Forged forms: no web session, a wrong CSRF token, another account's web session.
    assert_eq!(account_revoke(&node, None, &csrf, &session), (303, "/account".into()));
    assert_eq!(account_revoke(&node, Some(&alice), "forged", &session).0, 403);
    let bob = account_sign_in(&node, "bob.test", "a long password").unwrap();
    let bob_csrf = attribute(&account_page(&node, &bob), "csrf");
    assert_eq!(account_revoke(&node, Some(&bob), &bob_csrf, &session), (303, "/account".into()), "not bob's to revoke");
    assert_eq!(account_revoke(&node, Some("ues-account=made-up"), &csrf, &session), (303, "/account".into()));
    let cid = client_id();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", cid.as_str())];
    let (s, v) = token(&node, &k, &form);
    assert_eq!(s, 200, "the session survived every forged form: {v}");
    let refresh = v["refresh_token"].as_str().unwrap().to_string();

    // Alice revokes it: gone from the page, its tokens refused.
    assert_eq!(account_revoke(&node, Some(&alice), &csrf, &session), (303, "/account?revoked=1".into()));
    let page = account_page(&node, &alice);
    assert!(page.contains("No app can use your account"), "{page}");
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", cid.as_str())];
    let (s, v) = token(&node, &k, &form);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");

    // Signing out ends the web session.
    let form = form_urlencoded::Serializer::new(String::new()).append_pair("csrf", &csrf).finish();
    let res = agent()
        .post(format!("{}/account/sign-out", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &alice)
        .send(form)
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(account_page(&node, &alice).contains("<label for=\"password\">"), "signed out");
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("account page revocation without its CSRF token refused"));
}

#[test]
fn answers_go_back_in_the_response_mode_asked_for() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    support::create_account(&node.base, "alice.test");
    let k = key();
    let url = format!("{}/oauth/par", node.base);
    let pushed_with = |mode: &str, prompt: &str| {
        let (_, challenge) = pkce();
        let n = nonce(&node, &k);
        let mut form = vec![
            ("client_id", client_id()),
            ("response_type", "code".into()),
            ("redirect_uri", REDIRECT.into()),
            ("scope", SCOPE.into()),
            ("state", "st".into()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256".into()),
            ("response_mode", mode.into()),
        ];
        if !prompt.is_empty() {
            form.push(("prompt", prompt.into()));
        }
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v, _) = post(&node, "/oauth/par", Some(&proof(&k, &url, Some(&n))), &form);
        (s, v)
    };
    let pushed = |mode: &str| pushed_with(mode, "");
    let (s, v) = pushed("jwt");
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    // Fragment: the parameters after `#`.
    let (s, v) = pushed("fragment");
    assert_eq!(s, 201, "{v}");
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page(&node, &request_uri);
    let (s, location, _) = consent(&node, &request_uri, &csrf, Some(&csrf), "a long password");
    assert_eq!(s, 303);
    assert!(location.starts_with(&format!("{REDIRECT}#code=")) && location.contains("&state=st"), "{location}");
    // A form post: a page whose form (no script) posts them to the redirect URI.
    let (_, v) = pushed("form_post");
    let request_uri = v["request_uri"].as_str().unwrap().to_string();
    let csrf = open_page(&node, &request_uri);
    let (s, _, page) = consent(&node, &request_uri, &csrf, Some(&csrf), "a long password");
    assert_eq!(s, 200);
    assert!(page.contains(&format!("action=\"{REDIRECT}\"")) && page.contains("name=\"code\""), "{page}");
    assert!(page.contains("name=\"iss\"") && !page.contains("<script"), "{page}");
    // prompt=none: no page, so the answer is login_required; an unknown prompt is refused.
    assert_eq!(pushed_with("query", "sometimes").1["error"], "invalid_request");
    let (_, v) = pushed_with("query", "none");
    let res = agent()
        .get(format!("{}/oauth/authorize?request_uri={}", node.base, urlencode(v["request_uri"].as_str().unwrap())))
        .call()
        .unwrap();
    let location = res.headers().get("location").unwrap().to_str().unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT}?error=login_required")) && location.contains("state=st"),
        "{location}"
    );
    let (s, v) = pushed_with("query", "create");
    assert_eq!(s, 201, "{v}");
}

#[test]
fn a_permission_set_the_node_holds_grants_what_it_lists() {
    let Some(set) = shared::shared("reference/atproto-lexicons/app/bsky/authCreatePosts.json") else { return };
    let root = tempfile::tempdir().unwrap();
    // The operator adds Bluesky's permission set to the node's lexicons.
    let lexicons = root.path().join("lexicons");
    std::fs::create_dir_all(&lexicons).unwrap();
    std::fs::copy(&set, lexicons.join("authCreatePosts.json")).unwrap();
    let config = format!("[xrpc]\nlexicons_dir = \"{}\"\n[xrpc.rate_limits]\nenabled = false\n", lexicons.display());
    let node = start_with(&root.path().join("node"), &config);
    let (did, _) = support::create_account(&node.base, "alice.test");
    let k = key();
    let scope = "atproto include:app.bsky.authCreatePosts?aud=did:web:api.bsky.app%23bsky_appview";
    let (_, challenge) = pkce();
    let (s, v) = par_for(&node, &k, &challenge, REDIRECT, scope);
    assert_eq!(s, 201, "{v}");
    let page = agent()
        .get(format!("{}/oauth/authorize?request_uri={}", node.base, urlencode(v["request_uri"].as_str().unwrap())))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("Create Bluesky Posts: Can not update or delete posts."), "{page}");
    let v = signed_in_for(&node, &k, scope);
    let access = v["access_token"].as_str().unwrap().to_string();
    let call = |method: &str, body: Value| {
        dpop_call(
            &node,
            &k,
            &access,
            ("POST", &format!("/xrpc/{method}")),
            "application/json",
            body.to_string().as_bytes(),
        )
    };
    let post = json!({"repo": did, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.post", "text": "x", "createdAt": "2026-12-05T12:00:00Z"}});
    let (s, v) = call("com.atproto.repo.createRecord", post);
    assert_eq!(s, 200, "{v}");
    let rkey = v["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let (s, v) =
        call("com.atproto.repo.deleteRecord", json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey}));
    assert_eq!((s, v["error"].as_str()), (403, Some("InsufficientScope")), "the set creates only: {v}");
    let like = json!({"repo": did, "collection": "app.bsky.feed.like", "record": {"$type": "app.bsky.feed.like", "createdAt": "2026-12-05T12:00:00Z",
        "subject": {"uri": format!("at://{did}/app.bsky.feed.post/{rkey}"), "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}}});
    assert_eq!(call("com.atproto.repo.createRecord", like).0, 403, "likes are not in the set");
}
