//! The REST API (`/api/v1`) of a real `ues run` process, as an app uses it over HTTP: accounts
//! and sessions, records with ETags and preconditions, paging, search, blobs with byte ranges,
//! node status and peers, every error as JSON, rate limits; and `schemathesis` (PyPI) run
//! against the node's own `/api/openapi.json`.

#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::agent;

/// A node with `config` as its node.toml.
fn start(dir: &std::path::Path, config: &str) -> support::Running {
    support::start_with(dir, config)
}

/// An answer: status, headers we look at, body (JSON when it parses, else Null), raw bytes.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    json: Value,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every error is `{"error", "message"}` JSON.
    fn error(&self) -> &str {
        assert!(self.status >= 400, "not an error: {}", self.status);
        assert!(self.json["message"].is_string(), "error without a message: {}", self.json);
        self.json["error"].as_str().expect("error name")
    }
}

fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let agent = agent();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = match body {
        Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut res = res.unwrap();
    let status = res.status().as_u16();
    let headers =
        res.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let bytes = res.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, json, bytes }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn send_json(method: &str, url: &str, token: Option<&str>, extra: &[(&str, &str)], body: &Value) -> Answer {
    let auth = token.map(bearer);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    call(method, url, &headers, Some(body.to_string().as_bytes()))
}

fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    call("GET", url, headers, None)
}

/// Creates an account through the REST API; returns (did, access, refresh).
fn account(base: &str, handle: &str) -> (String, String, String) {
    let a = send_json(
        "POST",
        &format!("{base}/api/v1/accounts"),
        None,
        &[],
        &json!({"handle": handle, "password": "correct horse battery", "email": format!("{handle}@example.com")}),
    );
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["handle"], handle);
    (
        a.json["did"].as_str().unwrap().to_string(),
        a.json["accessToken"].as_str().unwrap().to_string(),
        a.json["refreshToken"].as_str().unwrap().to_string(),
    )
}

#[test]
fn an_app_uses_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "[api]\nrate_per_ip = 0\nrate_per_token = 0\n");
    let base = &node.base;
    let api = format!("{base}/api/v1");

    // Accounts and sessions.
    let (did, access, refresh) = account(base, "alice.test");
    let again = send_json(
        "POST",
        &format!("{api}/accounts"),
        None,
        &[],
        &json!({"handle": "alice.test", "password": "another password"}),
    );
    assert_eq!((again.status, again.error()), (409, "HandleNotAvailable"));
    let short =
        send_json("POST", &format!("{api}/accounts"), None, &[], &json!({"handle": "bob.test", "password": "short"}));
    assert_eq!(short.status, 400);
    let foreign = send_json(
        "POST",
        &format!("{api}/accounts"),
        None,
        &[],
        &json!({"handle": "bob.example.com", "password": "long enough pw"}),
    );
    assert_eq!((foreign.status, foreign.error()), (400, "UnsupportedDomain"));
    let login = send_json(
        "POST",
        &format!("{api}/sessions"),
        None,
        &[],
        &json!({"identifier": "alice.test@example.com", "password": "correct horse battery"}),
    );
    assert_eq!((login.status, login.json["did"].as_str()), (201, Some(did.as_str())));
    let wrong = send_json(
        "POST",
        &format!("{api}/sessions"),
        None,
        &[],
        &json!({"identifier": "alice.test", "password": "nope"}),
    );
    assert_eq!((wrong.status, wrong.error()), (401, "AuthenticationRequired"));
    let me = get(&format!("{api}/sessions/current"), &[("authorization", &bearer(&access))]);
    assert_eq!(
        (me.status, &me.json["handle"], &me.json["email"]),
        (200, &json!("alice.test"), &json!("alice.test@example.com"))
    );
    assert_eq!(get(&format!("{api}/sessions/current"), &[]).status, 401);
    assert_eq!(get(&format!("{api}/sessions/current"), &[("authorization", "Bearer garbage")]).status, 401);
    // Refresh: new tokens; the refresh token cannot stand in for an access token.
    let refreshed = call("POST", &format!("{api}/sessions/refresh"), &[("authorization", &bearer(&refresh))], None);
    assert_eq!(refreshed.status, 200, "{}", refreshed.json);
    let access = refreshed.json["accessToken"].as_str().unwrap().to_string();
    let refresh = refreshed.json["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(
        call("POST", &format!("{api}/sessions/refresh"), &[("authorization", &bearer(&access))], None).status,
        401
    );
    let auth = bearer(&access);
    let authed = [("authorization", auth.as_str())];

    // Records: create (Location, ETag), read (ETag, 304), update with If-Match (412 when stale),
    // If-None-Match: * (create-only), delete.
    let notes = format!("{api}/repos/{did}/records/dev.ues.test.note");
    let created = send_json("POST", &notes, Some(&access), &[], &json!({"text": "first"}));
    assert_eq!(created.status, 201, "{}", created.json);
    let (rkey, cid1) =
        (created.json["rkey"].as_str().unwrap().to_string(), created.json["cid"].as_str().unwrap().to_string());
    assert_eq!(created.header("etag"), Some(format!("\"{cid1}\"").as_str()));
    let location = created.header("location").unwrap().to_string();
    assert_eq!(location, format!("/api/v1/repos/{did}/records/dev.ues.test.note/{rkey}"));
    let read = get(&format!("{base}{location}"), &[]);
    assert_eq!(
        (read.status, &read.json["value"]["text"], read.json["cid"].as_str()),
        (200, &json!("first"), Some(cid1.as_str()))
    );
    assert_eq!(read.json["value"]["$type"], "dev.ues.test.note");
    let etag = read.header("etag").unwrap().to_string();
    let cached = get(&format!("{base}{location}"), &[("if-none-match", &etag)]);
    assert_eq!((cached.status, cached.bytes.len()), (304, 0));
    let by_handle = get(&format!("{api}/repos/alice.test/records/dev.ues.test.note/{rkey}"), &[]);
    assert_eq!(by_handle.status, 200);
    let put = send_json(
        "PUT",
        &format!("{base}{location}"),
        Some(&access),
        &[("if-match", &etag)],
        &json!({"text": "second"}),
    );
    assert_eq!(put.status, 200, "{}", put.json);
    let cid2 = put.json["cid"].as_str().unwrap().to_string();
    assert_ne!(cid1, cid2);
    let stale =
        send_json("PUT", &format!("{base}{location}"), Some(&access), &[("if-match", &etag)], &json!({"text": "lost"}));
    assert_eq!((stale.status, stale.error()), (412, "InvalidSwap"));
    assert_eq!(
        get(&format!("{base}{location}"), &[]).json["value"]["text"],
        "second",
        "a refused write changed nothing"
    );
    assert_eq!(get(&format!("{base}{location}"), &[("if-none-match", &etag)]).status, 200, "changed since");
    let exists =
        send_json("PUT", &format!("{base}{location}"), Some(&access), &[("if-none-match", "*")], &json!({"text": "x"}));
    assert_eq!(exists.status, 412);
    let fresh = send_json(
        "PUT",
        &format!("{notes}/chosen-key"),
        Some(&access),
        &[("if-none-match", "*")],
        &json!({"text": "new"}),
    );
    assert_eq!(fresh.status, 200);
    let taken = send_json("POST", &format!("{notes}?rkey=chosen-key"), Some(&access), &[], &json!({"text": "dup"}));
    assert_eq!(taken.status, 409, "{}", taken.json);
    let deleted = call("DELETE", &format!("{notes}/chosen-key"), &authed, None);
    assert_eq!(deleted.status, 204);
    assert_eq!(get(&format!("{notes}/chosen-key"), &[]).error(), "RecordNotFound");
    assert_eq!(get(&format!("{notes}/chosen-key"), &[]).status, 404);

    // Validation against lexicons, with the failing path; writes to someone else's repository.
    let bad = send_json(
        "POST",
        &format!("{api}/repos/{did}/records/app.bsky.feed.post"),
        Some(&access),
        &[],
        &json!({"text": 5, "createdAt": "2026-11-25T00:00:00.000Z"}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json["message"].as_str().unwrap().contains("$.text"), "{}", bad.json);
    // The same record through XRPC is refused the same way, for the same reason.
    let via_xrpc = send_json(
        "POST",
        &format!("{base}/xrpc/com.atproto.repo.createRecord"),
        Some(&access),
        &[],
        &json!({"repo": did, "collection": "app.bsky.feed.post",
            "record": {"text": 5, "createdAt": "2026-11-25T00:00:00.000Z"}}),
    );
    assert_eq!(via_xrpc.status, 400);
    assert_eq!(via_xrpc.json["message"], bad.json["message"], "REST: {} XRPC: {}", bad.json, via_xrpc.json);
    let (bob, bob_access, _) = account(base, "bob.test");
    let forbidden = send_json(
        "POST",
        &format!("{api}/repos/{bob}/records/dev.ues.test.note"),
        Some(&access),
        &[],
        &json!({"text": "x"}),
    );
    assert_eq!(forbidden.status, 403);
    let unauthenticated = send_json("POST", &notes, None, &[], &json!({"text": "x"}));
    assert_eq!(unauthenticated.status, 401);
    let malformed =
        call("POST", &notes, &[("authorization", &auth), ("content-type", "application/json")], Some(b"{not json"));
    assert_eq!((malformed.status, malformed.error()), (400, "InvalidRequest"));
    let not_object = send_json("POST", &notes, Some(&access), &[], &json!([1, 2]));
    assert_eq!(not_object.status, 400);

    // Paging by cursor, newest first; the repository's ETag is its head commit.
    for i in 0..25 {
        let r =
            send_json("POST", &notes, Some(&access), &[], &json!({"text": format!("searchable walrus number {i}")}));
        assert_eq!(r.status, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let url = match &cursor {
            Some(c) => format!("{notes}?limit=10&cursor={c}"),
            None => format!("{notes}?limit=10"),
        };
        let page = get(&url, &[]);
        assert_eq!(page.status, 200);
        seen.extend(page.json["records"].as_array().unwrap().iter().map(|r| r["rkey"].as_str().unwrap().to_string()));
        match page.json["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first, no duplicates");
    assert_eq!(get(&format!("{notes}?limit=0"), &[]).status, 400);
    assert_eq!(get(&format!("{notes}?cursor=.."), &[]).status, 400);
    let repo = get(&format!("{api}/repos/{did}"), &[]);
    assert_eq!((repo.status, &repo.json["collections"]), (200, &json!(["dev.ues.test.note"])));
    let head = repo.header("etag").unwrap().to_string();
    assert_eq!(head, format!("\"{}\"", repo.json["head"].as_str().unwrap()));
    assert_eq!(get(&format!("{api}/repos/{did}"), &[("if-none-match", &head)]).status, 304);
    assert_eq!(get(&format!("{api}/repos/did:plc:nobodyhere"), &[]).status, 404);
    assert_eq!(get(&format!("{api}/repos/%00%01"), &[]).status, 404);

    // Full-text search through the collection indexer.
    let found = get(&format!("{api}/search?q=walrus%20number%207"), &[]);
    assert_eq!(found.status, 200);
    let hits = found.json["records"].as_array().unwrap();
    assert!(!hits.is_empty() && hits[0]["value"]["text"] == "searchable walrus number 7", "{}", found.json);
    assert_eq!(get(&format!("{api}/search?q=walrus%00"), &[]).status, 200, "NUL in a query is no server error");
    assert_eq!(get(&format!("{api}/search?q="), &[]).status, 400);

    // Blobs: upload, download whole and by ranges, 416 outside, 304 by ETag.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let up =
        call("POST", &format!("{api}/blobs"), &[("authorization", &auth), ("content-type", "image/png")], Some(&data));
    assert_eq!(up.status, 201, "{}", up.json);
    let blob_cid = up.json["cid"].as_str().unwrap().to_string();
    assert_eq!((up.json["size"].as_u64(), up.json["mimeType"].as_str()), (Some(100_000), Some("image/png")));
    let with_blob = send_json("POST", &notes, Some(&access), &[], &json!({"text": "pic", "image": up.json["ref"]}));
    assert_eq!(with_blob.status, 201, "{}", with_blob.json);
    let blob_url = format!("{api}/repos/{did}/blobs/{blob_cid}");
    let whole = get(&blob_url, &[]);
    assert_eq!((whole.status, whole.bytes == data, whole.header("content-type")), (200, true, Some("image/png")));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let part = get(&blob_url, &[("range", "bytes=1000-1999")]);
    assert_eq!((part.status, part.header("content-range")), (206, Some("bytes 1000-1999/100000")));
    assert_eq!(part.bytes, data[1000..2000]);
    let tail = get(&blob_url, &[("range", "bytes=-10")]);
    assert_eq!((tail.status, tail.bytes.as_slice()), (206, &data[99_990..]));
    let open = get(&blob_url, &[("range", "bytes=99999-")]);
    assert_eq!((open.status, open.bytes.len()), (206, 1));
    let outside = get(&blob_url, &[("range", "bytes=100000-")]);
    assert_eq!((outside.status, outside.header("content-range")), (416, Some("bytes */100000")));
    let blob_tag = whole.header("etag").unwrap().to_string();
    assert_eq!(get(&blob_url, &[("if-none-match", &blob_tag)]).status, 304);
    assert_eq!(get(&format!("{api}/repos/{did}/blobs/bafkreinotacid"), &[]).status, 404);
    let empty = call("POST", &format!("{api}/blobs"), &[("authorization", &auth)], Some(b""));
    assert_eq!(empty.status, 400);
    // Blobs may be larger than JSON bodies (16 MiB): 20 MB goes through.
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let up_big =
        call("POST", &format!("{api}/blobs"), &[("authorization", &auth), ("content-type", "video/mp4")], Some(&big));
    assert_eq!((up_big.status, up_big.json["size"].as_u64()), (201, Some(20_000_000)), "{}", up_big.json);
    let big_url = format!("{api}/repos/{did}/blobs/{}", up_big.json["cid"].as_str().unwrap());
    let mid = get(&big_url, &[("range", "bytes=10000000-10000099")]);
    assert_eq!((mid.status, mid.bytes.as_slice()), (206, &big[10_000_000..10_000_100]));

    // Node and peers.
    let status = get(&format!("{api}/node"), &[]);
    assert_eq!((status.status, status.json["accounts"].as_u64()), (200, Some(2)));
    assert!(status.json["peerId"].as_str().is_some_and(|p| p.starts_with("12D3")), "{}", status.json);
    assert!(status.json["seq"].as_i64().unwrap() > 0);
    // Peers and their addresses are the operator's to see, not an account's.
    assert_eq!(get(&format!("{api}/peers"), &[]).status, 401);
    assert_eq!(get(&format!("{api}/peers"), &[("authorization", &bearer(&bob_access))]).status, 401);
    let peers = get(&format!("{api}/peers"), &[("authorization", &node.operator_auth())]);
    assert_eq!((peers.status, &peers.json["peerId"]), (200, &status.json["peerId"]));

    // Routes and methods that do not exist answer JSON too; oversize bodies 413.
    let nowhere = get(&format!("{api}/nowhere"), &[]);
    assert_eq!((nowhere.status, nowhere.error()), (404, "NotFound"));
    let wrong_method = call("PATCH", &format!("{api}/node"), &[], None);
    assert_eq!((wrong_method.status, wrong_method.error()), (405, "MethodNotAllowed"));
    let huge = json!({"text": "x".repeat(17 << 20)});
    let too_big = send_json("POST", &notes, Some(&access), &[], &huge);
    assert_eq!((too_big.status, too_big.error()), (413, "PayloadTooLarge"));

    // The OpenAPI document describes every route.
    let doc = get(&format!("{base}/api/openapi.json"), &[]);
    assert_eq!((doc.status, doc.json["openapi"].as_str()), (200, Some("3.1.0")));
    let paths = doc.json["paths"].as_object().unwrap();
    for p in [
        "/api/v1/accounts",
        "/api/v1/sessions",
        "/api/v1/repos/{repo}/records/{collection}/{rkey}",
        "/api/v1/blobs",
        "/api/v1/node",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    assert!(doc.json["components"]["securitySchemes"]["bearer"].is_object());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let limited = &op["responses"]["429"];
            assert!(limited["headers"]["Retry-After"].is_object(), "{method} {path} does not document 429");
        }
    }

    // Sign out: the refresh token stops working.
    assert_eq!(
        call("DELETE", &format!("{api}/sessions/current"), &[("authorization", &bearer(&refresh))], None).status,
        204
    );
    assert_eq!(
        call("POST", &format!("{api}/sessions/refresh"), &[("authorization", &bearer(&refresh))], None).status,
        401
    );

    // Same data through XRPC: the REST writes are ordinary repository commits.
    let x = get(
        &format!("{base}/xrpc/com.atproto.repo.getRecord?repo={did}&collection=dev.ues.test.note&rkey={rkey}"),
        &[],
    );
    assert_eq!((x.status, &x.json["value"]["text"]), (200, &json!("second")));
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "[api]\nrate_per_ip = 5\nburst_per_ip = 10\nrate_per_token = 0\n");
    let url = format!("{}/api/v1/node", node.base);
    let answers: Vec<Answer> = (0..30).map(|_| get(&url, &[])).collect();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty(), "30 requests at once never hit a 10-request burst");
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 429));
    for a in &limited {
        assert_eq!(a.error(), "RateLimitExceeded");
        let after: u64 = a.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=2).contains(&after), "Retry-After {after}");
    }
    // After waiting as told, the client is served again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&url, &[]).status, 200);
    assert_eq!(get(&format!("{}/metrics", node.base), &[]).status, 401, "metrics are the operator's");
    let metrics = get(&format!("{}/metrics", node.base), &[("authorization", &node.operator_auth())]);
    let text = String::from_utf8_lossy(&metrics.bytes).to_string();
    let n: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ues_rest_rate_limited_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the rate-limit counter");
    assert_eq!(n, limited.len() as u64);

    // Per token: one token's flood is cut off while another client is still served.
    let dir2 = tempfile::tempdir().unwrap();
    let node2 = start(dir2.path(), "[api]\nrate_per_ip = 0\nrate_per_token = 2\nburst_per_token = 4\n");
    let (_, access, _) = account(&node2.base, "carol.test");
    let me = format!("{}/api/v1/sessions/current", node2.base);
    let auth = bearer(&access);
    let statuses: Vec<u16> = (0..12).map(|_| get(&me, &[("authorization", &auth)]).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(get(&format!("{}/api/v1/node", node2.base), &[]).status, 200);
}

/// `schemathesis` against the live node's document: examples, coverage (valid and invalid
/// requests), fuzzing and stateful sequences, with every check but `positive_data_acceptance`
/// (a schema cannot say everything the node refuses: AT Protocol records may not hold floats,
/// lexicons constrain records further, handles must be free). Twice: with any repository, and
/// with the signed-in account's repository and one collection, so writes really happen.
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(python) = shared::python_sdk() else { return };
    let schemathesis = python.parent().unwrap().join("schemathesis");
    if !schemathesis.is_file() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but {} is missing: scripts/setup.sh installs it", schemathesis.display());
        }
        eprintln!("\n!!!!!!!! SKIPPED: {} is missing (run scripts/setup.sh) !!!!!!!!\n", schemathesis.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "[api]\nrate_per_ip = 0\nrate_per_token = 0\n");
    let (did, access, _) = account(&node.base, "fuzz.test");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[parameters]\n\"path.repo\" = \"${UES_REPO}\"\n\"path.collection\" = \"dev.ues.test.note\"\n",
    )
    .unwrap();
    let runs: [(&str, &[&str]); 2] = [
        ("any repository", &[]),
        // The stateful phase with fixed parameters reports its own positive cases as
        // schema-violating (a schemathesis quirk), so this run leaves it out.
        ("the account's repository", &["--phases", "examples,coverage,fuzzing"]),
    ];
    for (i, (what, extra)) in runs.iter().enumerate() {
        let started = Instant::now();
        let mut cmd = Command::new(&schemathesis);
        if i == 1 {
            cmd.arg("--config-file").arg(&config);
        }
        cmd.args(["run", &format!("{}/api/openapi.json", node.base)])
            .args(["-H", &format!("Authorization: Bearer {access}")])
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "40", "--workers", "1", "--seed", "20261125"])
            .args(extra.iter())
            .env("UES_REPO", &did)
            .env("NO_COLOR", "1");
        let out = cmd.output().expect("schemathesis runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("generated") || l.contains(" in ")).collect();
        eprintln!("schemathesis ({what}): {:?} in {:.1} s", summary, started.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "schemathesis ({what}) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(!log.contains("internal error"), "the node logged an internal error under fuzzing");
    // The account's data is intact and still verifies.
    let r = get(&format!("{}/xrpc/com.atproto.sync.getLatestCommit?did={did}", node.base), &[]);
    assert_eq!(r.status, 200);
}
