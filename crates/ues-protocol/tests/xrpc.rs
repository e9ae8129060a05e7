//! XRPC endpoints over the router (no sockets), as AT Protocol clients call them, including the
//! error paths: names and statuses as the reference PDS returns them.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{account, call, node};
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[tokio::test]
async fn accounts_and_sessions() {
    let n = node();
    let (s, d) = call(&n, "GET", "/xrpc/com.atproto.server.describeServer", None, None).await;
    assert_eq!((s, d["availableUserDomains"][0].as_str()), (StatusCode::OK, Some(".test")));

    let alice = account(&n, "alice.test").await;
    assert!(alice["did"].as_str().unwrap().starts_with("did:plc:"));
    assert_eq!(alice["didDoc"]["service"][0]["serviceEndpoint"], "http://127.0.0.1:2583");
    for (handle, pw, err) in [
        ("alice.test", "long enough", "HandleNotAvailable"),
        ("bob.example.com", "long enough", "UnsupportedDomain"),
        ("bob.test", "short", "InvalidPassword"),
        // Not a handle at all: refused by the lexicon (format "handle") before the handler runs.
        ("-bad-.test", "long enough", "InvalidRequest"),
    ] {
        let (s, v) = call(
            &n,
            "POST",
            "/xrpc/com.atproto.server.createAccount",
            None,
            Some(json!({"handle": handle, "password": pw})),
        )
        .await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some(err)), "{handle}");
    }
    // A migration (an existing DID) without its holder's service auth token is refused, not
    // answered with a new identity, and a field the lexicon does not name is refused, not
    // ignored; none creates anything.
    let migration =
        json!({"handle": "mover.test", "password": "long enough", "did": "did:plc:ewvi7nxzyoun6zhxrhs64oiz"});
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(migration)).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("AuthenticationRequired")), "{v}");
    for body in [
        json!({"handle": "mover.test", "password": "long enough", "plcOp": {"type": "plc_operation"}}),
        json!({"handle": "mover.test", "password": "long enough", "favouriteColour": "green"}),
    ] {
        let (s, v) = call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(body.clone())).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")), "{body}: {v}");
    }
    let (s, _) = call(&n, "GET", "/xrpc/com.atproto.identity.resolveHandle?handle=mover.test", None, None).await;
    assert_ne!(s, StatusCode::OK, "no account was made for mover.test");
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createAccount",
        None,
        Some(json!({"handle": "invited.test", "password": "long enough", "inviteCode": "any-code", "verificationCode": "1"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "the lexicon's optional fields are taken: {v}");

    // Sessions: by handle, by email; wrong password refused.
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({"identifier": "alice.test", "password": "wrong password"})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("AuthenticationRequired")));
    let (s, sess) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({"identifier": "alice.test@mail.test", "password": "correct horse"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{sess}");
    let access = sess["accessJwt"].as_str().unwrap();
    let refresh = sess["refreshJwt"].as_str().unwrap();
    let (s, me) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(access), None).await;
    assert_eq!((s, me["handle"].as_str()), (StatusCode::OK, Some("alice.test")));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("AuthenticationRequired")));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(refresh), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("InvalidToken")),
        "a refresh token is not an access token"
    );

    // Refresh rotates; reusing the old token within the grace period gives the same successor.
    let (s, r1) = call(&n, "POST", "/xrpc/com.atproto.server.refreshSession", Some(refresh), None).await;
    assert_eq!(s, StatusCode::OK, "{r1}");
    let (_, r2) = call(&n, "POST", "/xrpc/com.atproto.server.refreshSession", Some(refresh), None).await;
    assert_eq!(r1["refreshJwt"], r2["refreshJwt"]);
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.server.deleteSession", Some(r1["refreshJwt"].as_str().unwrap()), None)
            .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.refreshSession", Some(r1["refreshJwt"].as_str().unwrap()), None)
            .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("ExpiredToken")));

    // An expired access token: 400 ExpiredToken, the client's signal to refresh.
    let expired = n.state.access_token_expiring_at(alice["did"].as_str().unwrap(), 1_000);
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(&expired), None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("ExpiredToken")));

    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.identity.resolveHandle?handle=alice.test", None, None).await;
    assert_eq!((s, &v["did"]), (StatusCode::OK, &alice["did"]));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.server.nothingHere", None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("MethodNotImplemented")));
}

#[tokio::test]
async fn records_crud_listing_validation_and_refusals() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let bob = account(&n, "bob.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let post =
        |text: &str| json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-24T12:00:00.000Z"});

    let mut uris = Vec::new();
    for i in 0..12 {
        let (s, v) = call(
            &n,
            "POST",
            "/xrpc/com.atproto.repo.createRecord",
            Some(token),
            Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": post(&format!("hello {i}"))})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["validationStatus"], "valid");
        uris.push(v["uri"].as_str().unwrap().to_string());
    }
    let rkey = uris[3].rsplit('/').next().unwrap().to_string();
    let (s, v) = call(
        &n,
        "GET",
        &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={rkey}"),
        None,
        None,
    )
    .await;
    assert_eq!((s, v["value"]["text"].as_str()), (StatusCode::OK, Some("hello 3")));

    // Paging, newest first by default.
    let (_, p1) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=app.bsky.feed.post&limit=5",
        None,
        None,
    )
    .await;
    assert_eq!(p1["records"].as_array().unwrap().len(), 5);
    assert_eq!(p1["records"][0]["value"]["text"], "hello 11");
    let cursor = p1["cursor"].as_str().unwrap();
    let (_, p2) = call(
        &n,
        "GET",
        &format!(
            "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=app.bsky.feed.post&limit=100&cursor={cursor}"
        ),
        None,
        None,
    )
    .await;
    assert_eq!(p2["records"].as_array().unwrap().len(), 7);
    assert!(p2["cursor"].is_null());
    // An empty cursor is no cursor (as a form that always sends the field would).
    let (s, p0) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=app.bsky.feed.post&limit=5&cursor=",
        None,
        None,
    )
    .await;
    assert_eq!((s, &p0["records"]), (StatusCode::OK, &p1["records"]));
    let (s, v) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=app.bsky.feed.post&limit=101",
        None,
        None,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));

    // Update with a swap, then a stale swap.
    let (_, cur) = call(
        &n,
        "GET",
        &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={rkey}"),
        None,
        None,
    )
    .await;
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.putRecord", Some(token), Some(json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey, "record": post("edited"), "swapRecord": cur["cid"]}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.putRecord", Some(token), Some(json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey, "record": post("again"), "swapRecord": cur["cid"]}))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidSwap")));

    // An invalid record: refused with the lexicon path, nothing written.
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": post(&"x".repeat(3001))})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    assert!(v["message"].as_str().unwrap().contains("$.text"), "{v}");
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": {"$type": "app.bsky.feed.like", "subject": 1}}))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    let (_, all) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=app.bsky.feed.post&limit=100",
        None,
        None,
    )
    .await;
    assert_eq!(all["records"].as_array().unwrap().len(), 12);

    // Another account's token cannot write here; malformed JSON and oversize bodies are refused.
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(bob["accessJwt"].as_str().unwrap()),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": post("intruder")})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let req = Request::post("/xrpc/com.atproto.repo.createRecord")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = n.send(req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"], "InvalidRequest");
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": post(&"y".repeat(70_000))})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("PayloadTooLarge")));

    // Delete, describeRepo.
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.deleteRecord",
        Some(token),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &n,
        "GET",
        &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={rkey}"),
        None,
        None,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RecordNotFound")));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.repo.describeRepo?repo=alice.test", None, None).await;
    assert_eq!((s, v["collections"][0].as_str()), (StatusCode::OK, Some("app.bsky.feed.post")));
}

#[tokio::test]
async fn apply_writes_limits_and_sync_reads() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let create = |i: usize| json!({"$type": "com.atproto.repo.applyWrites#create", "collection": "com.example.note", "rkey": format!("n{i}"), "value": {"text": i.to_string()}});
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.applyWrites",
        Some(token),
        Some(json!({"repo": did, "writes": (0..201).map(create).collect::<Vec<_>>()})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.applyWrites",
        Some(token),
        Some(json!({"repo": did, "writes": (0..200).map(create).collect::<Vec<_>>()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 200);
    let bad_type =
        json!({"$type": "com.atproto.repo.applyWrites#explode", "collection": "com.example.note", "rkey": "x"});
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.applyWrites",
        Some(token),
        Some(json!({"repo": did, "writes": [create(500), bad_type]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, all) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=com.example.note&limit=100",
        None,
        None,
    )
    .await;
    assert_eq!(all["records"].as_array().unwrap().len(), 100, "the refused batch wrote nothing");

    let (s, latest) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!((s, &latest["cid"]), (StatusCode::OK, &v["commit"]["cid"]));
    let (s, e) =
        call(&n, "GET", "/xrpc/com.atproto.sync.getLatestCommit?did=did:plc:nobodynobodynobodynobody", None, None)
            .await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RepoNotFound")));
    let (s, e) = call(&n, "GET", "/xrpc/com.atproto.sync.getRepo", None, None).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")), "missing did");
    let resp =
        n.send(Request::get(format!("/xrpc/com.atproto.sync.getRepo?did={did}")).body(Body::empty()).unwrap()).await;
    assert_eq!(resp.headers()["content-type"], "application/vnd.ipld.car");
    let car = resp.into_body().collect().await.unwrap().to_bytes();
    let blocks = ues_sync::repo::ipld::car::CarReader::new(&car[..]).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert!(blocks.len() > 200);
}

#[tokio::test]
async fn blobs_upload_reference_fetch_and_limits() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let png: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let req = Request::post("/xrpc/com.atproto.repo.uploadBlob")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "image/png")
        .body(Body::from(png.clone()))
        .unwrap();
    let resp = n.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let up: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!((up["blob"]["mimeType"].as_str(), up["blob"]["size"].as_u64()), (Some("image/png"), Some(300_000)));
    let cid = up["blob"]["ref"]["$link"].as_str().unwrap().to_string();

    // Over the limit: 413, nothing stored. Without a token: 401.
    let big = Request::post("/xrpc/com.atproto.repo.uploadBlob")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "video/mp4")
        .body(Body::from(vec![0u8; 1024 * 1024 + 10]))
        .unwrap();
    let resp = n.send(big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let anon = Request::post("/xrpc/com.atproto.repo.uploadBlob")
        .header("content-type", "image/png")
        .body(Body::from(vec![1u8; 10]))
        .unwrap();
    assert_eq!(n.send(anon).await.status(), StatusCode::UNAUTHORIZED);

    // A record referencing it; then listBlobs and getBlob.
    let record = json!({"$type": "app.bsky.feed.post", "text": "pic", "createdAt": "2026-11-24T12:00:00.000Z",
        "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": up["blob"]}]}});
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": record})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, listed) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.listBlobs?did={did}"), None, None).await;
    assert_eq!(listed["cids"][0].as_str(), Some(cid.as_str()));
    let resp = n
        .send(Request::get(format!("/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().to_vec(), png);
    let (s, e) = call(
        &n,
        "GET",
        &format!(
            "/xrpc/com.atproto.sync.getBlob?did={did}&cid=bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        ),
        None,
        None,
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("BlobNotFound")));
    let (s, m) = call(&n, "GET", "/xrpc/com.atproto.repo.listMissingBlobs", Some(token), None).await;
    assert_eq!((s, m["blobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
}

#[tokio::test]
async fn sync_listings_blocks_and_well_known() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    account(&n, "bob.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let (_, made) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({"repo": did, "collection": "com.example.note", "rkey": "a", "record": {"text": "x"}})),
    )
    .await;

    let (s, repos) = call(&n, "GET", "/xrpc/com.atproto.sync.listRepos?limit=1", None, None).await;
    assert_eq!((s, repos["repos"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let cursor = repos["cursor"].as_str().unwrap();
    let (_, rest) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.listRepos?cursor={cursor}"), None, None).await;
    assert_eq!(rest["repos"].as_array().map(Vec::len), Some(1));
    assert!(rest.get("cursor").is_none());
    let (s, st) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"), None, None).await;
    assert_eq!((s, st["active"].as_bool(), &st["rev"]), (StatusCode::OK, Some(true), &made["commit"]["rev"]));

    // The deprecated getHead answers the head commit as getLatestCommit does; an unknown DID is
    // HeadNotFound. Repositories by collection: alice has com.example.note, bob nothing.
    let (s, head) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getHead?did={did}"), None, None).await;
    let (_, latest) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!((s, &head["root"]), (StatusCode::OK, &latest["cid"]));
    let (s, v) =
        call(&n, "GET", "/xrpc/com.atproto.sync.getHead?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) =
        call(&n, "GET", "/xrpc/com.atproto.sync.listReposByCollection?collection=com.example.note", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"repos": [{"did": did}]})));
    let (_, v) =
        call(&n, "GET", "/xrpc/com.atproto.sync.listReposByCollection?collection=com.example.none", None, None).await;
    assert_eq!(v, json!({"repos": []}));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.sync.getHostStatus?hostname=127.0.0.1", None, None).await;
    assert_eq!((s, &v["accountCount"], &v["status"]), (StatusCode::OK, &json!(2), &json!("active")), "{v}");
    assert!(v["seq"].as_i64().unwrap() > 0);
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.sync.getHostStatus?hostname=elsewhere.example", None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HostNotFound")));
    let (_, v) = call(&n, "GET", "/xrpc/com.atproto.sync.listHosts", None, None).await;
    assert_eq!(v, json!({"hosts": []}));
    let checkout = n
        .send(Request::get(format!("/xrpc/com.atproto.sync.getCheckout?did={did}")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(checkout.status(), StatusCode::OK);
    assert_eq!(checkout.headers()["content-type"], "application/vnd.ipld.car");

    let record_cid = made["cid"].as_str().unwrap();
    let resp = n
        .send(
            Request::get(format!("/xrpc/com.atproto.sync.getBlocks?did={did}&cids={record_cid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let car = resp.into_body().collect().await.unwrap().to_bytes();
    let blocks = ues_sync::repo::ipld::car::CarReader::new(&car[..]).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].0.to_string(), record_cid);
    // The empty tree of the account's first commit is one of its blocks; a CID nothing has is not.
    let empty_tree = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
    let (s, _) =
        call(&n, "GET", &format!("/xrpc/com.atproto.sync.getBlocks?did={did}&cids={empty_tree}"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let unknown = "bafyreie5737gdxlw5i64vzichcamba3z2v5n6icifvx5xytvske7mr3hpm";
    let (s, e) =
        call(&n, "GET", &format!("/xrpc/com.atproto.sync.getBlocks?did={did}&cids={unknown}"), None, None).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("BlockNotFound")));

    let resp = n
        .send(Request::get("/.well-known/atproto-did").header("host", "alice.test").body(Body::empty()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap(), did);
    let resp = n
        .send(Request::get("/.well-known/atproto-did").header("host", "nobody.test").body(Body::empty()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/xrpc/com.atproto.repo.createRecord")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .body(Body::empty())
        .unwrap();
    let resp = n.send(preflight).await;
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    let (s, doc) = call(&n, "GET", "/.well-known/did.json", None, None).await;
    assert_eq!((s, doc["id"].as_str()), (StatusCode::OK, Some("did:web:localhost")));
}

#[tokio::test]
async fn handle_changes_and_account_status() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    account(&n, "bob.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.identity.updateHandle",
        Some(token),
        Some(json!({"handle": "alice2.test"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = call(&n, "GET", "/xrpc/com.atproto.identity.resolveHandle?handle=alice2.test", None, None).await;
    assert_eq!(v["did"].as_str(), Some(did));
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.identity.resolveHandle?handle=alice.test", None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HandleNotFound")));
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.identity.updateHandle", Some(token), Some(json!({"handle": "bob.test"})))
            .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HandleNotAvailable")));

    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.server.deactivateAccount", Some(token), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, st) = call(&n, "GET", "/xrpc/com.atproto.server.checkAccountStatus", Some(token), None).await;
    assert_eq!(st["activated"], false);
    let (_, me) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(token), None).await;
    assert_eq!((me["active"].as_bool(), me["status"].as_str()), (Some(false), Some("deactivated")));
    let write = json!({"repo": did, "collection": "com.example.note", "record": {"text": "x"}});
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(write.clone())).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("AccountDeactivated")));
    call(&n, "POST", "/xrpc/com.atproto.server.activateAccount", Some(token), Some(json!({}))).await;
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(write)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, st) = call(&n, "GET", "/xrpc/com.atproto.server.checkAccountStatus", Some(token), None).await;
    assert_eq!((st["activated"].as_bool(), st["indexedRecords"].as_i64()), (Some(true), Some(1)));
}

#[tokio::test]
async fn preferences_and_reports() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let token = alice["accessJwt"].as_str().unwrap();
    let (s, v) = call(&n, "GET", "/xrpc/app.bsky.actor.getPreferences", Some(token), None).await;
    assert_eq!((s, v["preferences"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let prefs = json!({"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": false}]});
    let (s, _) = call(&n, "POST", "/xrpc/app.bsky.actor.putPreferences", Some(token), Some(prefs.clone())).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = call(&n, "GET", "/xrpc/app.bsky.actor.getPreferences", Some(token), None).await;
    assert_eq!(v["preferences"], prefs["preferences"]);
    let bad = json!({"preferences": [{"$type": "com.evil.pref"}]});
    let (s, _) = call(&n, "POST", "/xrpc/app.bsky.actor.putPreferences", Some(token), Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&n, "GET", "/xrpc/app.bsky.actor.getPreferences", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let report = json!({"reasonType": "com.atproto.moderation.defs#reasonSpam", "reason": "spam", "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}});
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.moderation.createReport", Some(token), Some(report)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["reportedBy"], alice["did"]);
    assert!(v["id"].as_i64().unwrap() >= 1);
}

#[tokio::test]
async fn app_passwords() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let (s, app) =
        call(&n, "POST", "/xrpc/com.atproto.server.createAppPassword", Some(token), Some(json!({"name": "phone"})))
            .await;
    assert_eq!(s, StatusCode::OK, "{app}");
    let password = app["password"].as_str().unwrap();
    assert_eq!(password.len(), 19);
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.server.createAppPassword", Some(token), Some(json!({"name": "phone"})))
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, list) = call(&n, "GET", "/xrpc/com.atproto.server.listAppPasswords", Some(token), None).await;
    assert_eq!(list["passwords"][0]["name"], "phone");
    assert!(list["passwords"][0].get("password").is_none(), "never shown again");

    // A session from the app password writes records but cannot manage app passwords.
    let (s, sess) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({"identifier": "alice.test", "password": password})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{sess}");
    let app_token = sess["accessJwt"].as_str().unwrap();
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(app_token),
        Some(json!({"repo": did, "collection": "com.example.note", "record": {"text": "from phone"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&n, "GET", "/xrpc/com.atproto.server.listAppPasswords", Some(app_token), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Revoked: the app session can no longer refresh, and the password no longer logs in.
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.server.revokeAppPassword", Some(token), Some(json!({"name": "phone"})))
            .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.refreshSession", Some(sess["refreshJwt"].as_str().unwrap()), None)
            .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("ExpiredToken")));
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({"identifier": "alice.test", "password": password})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn service_auth_is_signed_by_the_repository_key() {
    use base64::Engine;
    let n = node();
    let alice = account(&n, "alice.test").await;
    let token = alice["accessJwt"].as_str().unwrap();
    let (s, v) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:appview.test&lxm=app.bsky.feed.getTimeline",
        Some(token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let jwt = v["token"].as_str().unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        (payload["iss"].as_str(), payload["aud"].as_str(), payload["lxm"].as_str()),
        (alice["did"].as_str(), Some("did:web:appview.test"), Some("app.bsky.feed.getTimeline"))
    );
    // Verifies with the key the DID document publishes.
    let multikey = alice["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    let key = ues_sync::repo::crypto::PublicKey::from_multikey(multikey).unwrap();
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &b64.decode(parts[2]).unwrap()).unwrap();
    let (s, _) =
        call(&n, "GET", "/xrpc/com.atproto.server.getServiceAuth?aud=did:web:appview.test&exp=1", Some(token), None)
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn prometheus_metrics() {
    let n = node();
    account(&n, "alice.test").await;
    call(&n, "GET", "/xrpc/com.atproto.server.describeServer", None, None).await;
    // The operator's, not the public's.
    let resp = n.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let req = Request::get("/metrics").header("authorization", common::admin_auth(common::ADMIN_PASSWORD));
    let resp = n.send(req.body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("ues_http_requests_total{route=\"/xrpc/com.atproto.server.createAccount\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("ues_http_request_duration_seconds_count"), "{text}");
    assert!(text.contains("ues_firehose_seq 4"), "account creation sequenced four events: {text}");
}

#[tokio::test]
async fn import_repo_restores_a_backup_and_refuses_foreign_or_tampered_cars() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let bob = account(&n, "bob.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let note = |i: usize| json!({"repo": did, "collection": "com.example.note", "rkey": format!("n{i}"), "record": {"text": format!("note {i}")}});
    for i in 0..5 {
        call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(note(i))).await;
    }
    let get_car = |did: String| {
        let n = &n;
        async move {
            let resp = n
                .send(Request::get(format!("/xrpc/com.atproto.sync.getRepo?did={did}")).body(Body::empty()).unwrap())
                .await;
            resp.into_body().collect().await.unwrap().to_bytes().to_vec()
        }
    };
    let backup = get_car(did.to_string()).await;
    let (_, at_backup) =
        call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    for i in 5..8 {
        call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(note(i))).await;
    }
    let import = |car: Vec<u8>, tok: String| {
        let n = &n;
        async move {
            let req = Request::post("/xrpc/com.atproto.repo.importRepo")
                .header("authorization", format!("Bearer {tok}"))
                .header("content-type", "application/vnd.ipld.car")
                .body(Body::from(car))
                .unwrap();
            n.send(req).await.status()
        }
    };
    // Bob's repository cannot be imported into Alice's account; a changed byte is refused.
    let bobs = get_car(bob["did"].as_str().unwrap().to_string()).await;
    assert_eq!(import(bobs, token.to_string()).await, StatusCode::BAD_REQUEST);
    let mut tampered = backup.clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 1;
    assert_eq!(import(tampered, token.to_string()).await, StatusCode::BAD_REQUEST);
    let (_, all) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=com.example.note&limit=100",
        None,
        None,
    )
    .await;
    assert_eq!(all["records"].as_array().unwrap().len(), 8, "refused imports changed nothing");

    // The backup restores: the head, the records and the index are those of the backup.
    assert_eq!(import(backup, token.to_string()).await, StatusCode::OK);
    let (_, latest) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!(latest["cid"], at_backup["cid"]);
    let (_, all) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.repo.listRecords?repo=alice.test&collection=com.example.note&limit=100",
        None,
        None,
    )
    .await;
    assert_eq!(all["records"].as_array().unwrap().len(), 5);
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(token), Some(note(9))).await;
    assert_eq!(s, StatusCode::OK, "writes continue on the restored repository");
}

#[path = "../../../tests/support/dns.rs"]
mod dns;

static ALICE_DID: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// `alice.example.com` names Alice's DID, `other.example.com` another account's; no other record.
fn zone(name: &str) -> Vec<Vec<&'static str>> {
    let alice = ALICE_DID.get().map(|d| format!("did={d}")).unwrap_or_default();
    match name {
        "_atproto.alice.example.com." => vec![vec![Box::leak(alice.into_boxed_str())]],
        "_atproto.other.example.com." => vec![vec!["did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"]],
        _ => vec![],
    }
}

#[tokio::test]
async fn external_handles_are_verified_through_dns() {
    let n = common::node_with_dns(Some(dns::txt_server(zone)));
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    ALICE_DID.set(Box::leak(did.to_string().into_boxed_str())).unwrap();
    let update = |h: &str| json!({"handle": h});
    let path = "/xrpc/com.atproto.identity.updateHandle";
    for refused in ["other.example.com", "nobody.example.com"] {
        let (s, v) = call(&n, "POST", path, Some(token), Some(update(refused))).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidHandle")), "{refused}: {v}");
    }
    let (_, me) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(token), None).await;
    assert_eq!(me["handle"], "alice.test", "a refused handle changes nothing");
    let (s, _) = call(&n, "POST", path, Some(token), Some(update("alice.example.com"))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, me) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(token), None).await;
    assert_eq!(me["handle"], "alice.example.com");
    let resolve = |h: &str| format!("/xrpc/com.atproto.identity.resolveHandle?handle={h}");
    let (_, v) = call(&n, "GET", &resolve("alice.example.com"), None, None).await;
    assert_eq!(v["did"].as_str(), Some(did));
    let (_, v) = call(&n, "GET", &resolve("other.example.com"), None, None).await;
    assert_eq!(v["did"], "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "a handle hosted elsewhere resolves through DNS");
    let (s, v) = call(&n, "GET", &resolve("nobody.example.com"), None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HandleNotFound")));
}

#[tokio::test]
async fn parameters_and_bodies_are_checked_against_the_lexicons() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let list = "/xrpc/com.atproto.repo.listRecords";
    let cases = [
        (format!("{list}?repo={did}&collection=app.bsky.feed.post&limit=101"), "Params/limit"),
        (format!("{list}?repo={did}&collection=app.bsky.feed.post&limit=ten"), "Params/limit must be an integer"),
        (format!("{list}?repo={did}&collection=app.bsky.feed.post&reverse=maybe"), "Params/reverse"),
        (format!("{list}?repo={did}&collection=not..an.nsid"), "Params/collection"),
        (format!("{list}?repo={did}"), "Params/collection is a required parameter"),
        (format!("{list}?repo={did}&collection=a.b.c&collection=d.e.f"), "Params/collection must be given once"),
        ("/xrpc/com.atproto.sync.getLatestCommit?did=alice".to_string(), "Params/did"),
        ("/xrpc/com.atproto.sync.getBlocks?did=did:plc:x&cids=nope".to_string(), "Params/cids"),
    ];
    for (uri, want) in cases {
        let (s, v) = call(&n, "GET", &uri, None, None).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")), "{uri}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(want), "{uri}: {v}");
    }
    let (s, _) = call(&n, "GET", &format!("{list}?repo={did}&collection=a.b.c&limit=100&unknown=1"), None, None).await;
    assert_eq!(s, StatusCode::OK, "undeclared parameters are ignored");
    let create = "/xrpc/com.atproto.repo.createRecord";
    let bodies = [
        (json!({"repo": did, "record": {"text": "x"}}), "Input/collection is required"),
        (json!({"repo": did, "collection": 7, "record": {}}), "Input/collection"),
        (json!({"repo": did, "collection": "a.b.c", "record": {}, "validate": "yes"}), "Input/validate"),
        (json!({"repo": did, "collection": "a.b.c", "record": {}, "swapCommit": "bafy"}), "Input/swapCommit"),
    ];
    for (body, want) in bodies {
        let (s, v) = call(&n, "POST", create, Some(token), Some(body.clone())).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")), "{body}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(want), "{body}: {v}");
    }
    let (_, v) = call(&n, "GET", &format!("{list}?repo={did}&collection=a.b.c"), None, None).await;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(0), "nothing refused was written");
}

#[tokio::test]
async fn ues_index_queries() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let bob = account(&n, "bob.test").await;
    let (adid, atok) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let (bdid, btok) = (bob["did"].as_str().unwrap(), bob["accessJwt"].as_str().unwrap());
    let create = "/xrpc/com.atproto.repo.createRecord";
    let post = json!({"repo": bdid, "collection": "app.bsky.feed.post",
        "record": {"$type": "app.bsky.feed.post", "text": "persimmon season is here", "createdAt": "2026-11-24T12:00:00Z"}});
    let (s, p) = call(&n, "POST", create, Some(btok), Some(post)).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let subject = json!({"uri": p["uri"], "cid": p["cid"]});
    for (did, tok) in [(adid, atok), (bdid, btok)] {
        let like = json!({"repo": did, "collection": "app.bsky.feed.like",
            "record": {"$type": "app.bsky.feed.like", "subject": subject, "createdAt": "2026-11-24T12:00:00Z"}});
        let (s, v) = call(&n, "POST", create, Some(tok), Some(like)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let uri = p["uri"].as_str().unwrap();
    let likes =
        format!("/xrpc/dev.ues.repo.queryIndex?collection=app.bsky.feed.like&index=subject&value={uri}&limit=1");
    let (s, v) = call(&n, "GET", &likes, None, None).await;
    assert_eq!((s, v["records"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{v}");
    let next = format!("{likes}&cursor={}", v["cursor"].as_str().unwrap());
    let (_, v2) = call(&n, "GET", &next, None, None).await;
    assert_eq!(v2["records"].as_array().map(Vec::len), Some(1));
    assert_ne!(v["records"][0]["uri"], v2["records"][0]["uri"]);
    assert_eq!(v2["records"][0]["value"]["subject"]["uri"], uri);
    let (s, v) =
        call(&n, "GET", "/xrpc/dev.ues.repo.queryIndex?collection=app.bsky.feed.like&index=nope&value=x", None, None)
            .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));

    let (_, v) = call(&n, "GET", "/xrpc/dev.ues.repo.searchRecords?q=persimmon", None, None).await;
    assert_eq!(v["records"][0]["uri"], uri);
    let (_, v) = call(&n, "GET", &format!("/xrpc/dev.ues.repo.listBacklinks?target={uri}"), None, None).await;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(2), "both likes reference the post");
    let (_, v) = call(&n, "GET", &format!("/xrpc/dev.ues.repo.listRecordsByTime?repo={bdid}"), None, None).await;
    let kinds: Vec<&str> =
        v["records"].as_array().unwrap().iter().map(|r| r["value"]["$type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["app.bsky.feed.like", "app.bsky.feed.post"], "newest first");
    let (_, v) = call(&n, "GET", "/xrpc/dev.ues.repo.listRecordsByTime?until=2000-01-01T00:00:00Z", None, None).await;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(0));
    let (s, _) = call(&n, "GET", "/xrpc/dev.ues.repo.listRecordsByTime?since=yesterday", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn admin_endpoints_behind_basic_auth() {
    use common::{ADMIN_PASSWORD, admin_auth};
    let n = node();
    let alice = account(&n, "alice.test").await;
    let bob = account(&n, "bob.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let bob_did = bob["did"].as_str().unwrap();
    let admin = admin_auth(ADMIN_PASSWORD);
    let info = format!("/xrpc/com.atproto.admin.getAccountInfo?did={did}");
    for bad in [None, Some(admin_auth("wrong")), Some(token.to_string()), Some("Basic !!!".to_string())] {
        let (s, v) = call(&n, "GET", &info, bad.as_deref(), None).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("AuthenticationRequired")), "{bad:?}");
    }
    let (s, v) = call(&n, "GET", &info, Some(&admin), None).await;
    assert_eq!(
        (s, v["handle"].as_str(), v["email"].as_str()),
        (StatusCode::OK, Some("alice.test"), Some("alice.test@mail.test"))
    );
    assert!(v["indexedAt"].as_str().unwrap().ends_with('Z'));
    let infos = format!(
        "/xrpc/com.atproto.admin.getAccountInfos?dids={did}&dids={bob_did}&dids=did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"
    );
    let (_, v) = call(&n, "GET", &infos, Some(&admin), None).await;
    assert_eq!(v["infos"].as_array().map(Vec::len), Some(2), "unknown DIDs are left out");

    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.updateAccountHandle",
        Some(&admin),
        Some(json!({"did": did, "handle": "alice3.test"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.updateAccountHandle",
        Some(&admin),
        Some(json!({"did": did, "handle": "bob.test"})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HandleNotAvailable")));
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.updateAccountEmail",
        Some(&admin),
        Some(json!({"account": did, "email": "bob.test@mail.test"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "another account's email");

    // A new password: old sessions end, the old password no longer logs in, the new one does.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // revocation has 1 s resolution
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.updateAccountPassword",
        Some(&admin),
        Some(json!({"did": did, "password": "new battery"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.server.getSession", Some(token), None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("ExpiredToken")));
    let login = |pw: &str| json!({"identifier": "alice3.test", "password": pw});
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.server.createSession", None, Some(login("correct horse"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.server.createSession", None, Some(login("new battery"))).await;
    assert_eq!(s, StatusCode::OK);

    // Takedown: the repository stops being served, logins refused; restoring undoes it.
    let takedown = |applied: bool| json!({"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did}, "takedown": {"applied": applied}});
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.admin.updateSubjectStatus", Some(&admin), Some(takedown(true))).await;
    assert_eq!((s, v["takedown"]["applied"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let (_, v) =
        call(&n, "GET", &format!("/xrpc/com.atproto.admin.getSubjectStatus?did={did}"), Some(&admin), None).await;
    assert_eq!(v["takedown"]["applied"], true);
    let (s, v) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RepoTakendown")));
    let (_, v) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"), None, None).await;
    assert_eq!((v["active"].as_bool(), v["status"].as_str()), (Some(false), Some("takendown")));
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.server.createSession", None, Some(login("new battery"))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("AccountTakedown")));
    let record = json!({"subject": {"uri": "at://did:plc:x/a.b.c/1", "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}});
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.admin.updateSubjectStatus", Some(&admin), Some(record)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "record takedowns are not supported, and say so");
    call(&n, "POST", "/xrpc/com.atproto.admin.updateSubjectStatus", Some(&admin), Some(takedown(false))).await;
    let (s, _) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!(s, StatusCode::OK);

    // Reports filed by users are listed to the admin, newest first, with a cursor.
    let bob_token = bob["accessJwt"].as_str().unwrap();
    for reason in ["spam", "rude"] {
        let report = json!({"reasonType": "com.atproto.moderation.defs#reasonSpam", "reason": reason,
            "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did}});
        let (s, v) = call(&n, "POST", "/xrpc/com.atproto.moderation.createReport", Some(bob_token), Some(report)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, v) = call(&n, "GET", "/xrpc/dev.ues.admin.listReports?limit=1", Some(&admin), None).await;
    assert_eq!(
        (v["reports"][0]["reason"].as_str(), v["reports"][0]["reportedBy"].as_str()),
        (Some("rude"), Some(bob_did))
    );
    let (_, v) = call(
        &n,
        "GET",
        &format!("/xrpc/dev.ues.admin.listReports?limit=1&cursor={}", v["cursor"].as_str().unwrap()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(v["reports"][0]["reason"], "spam");

    // Deletion: gone from every read; the handle is free again.
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.admin.deleteAccount", Some(&admin), Some(json!({"did": did}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&n, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RepoNotFound")));
    let (s, _) = call(&n, "POST", "/xrpc/com.atproto.server.createSession", None, Some(login("new battery"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    account(&n, "alice3.test").await;
}

/// A stand-in AppView on 127.0.0.1: echoes the method, the query and the Authorization header.
async fn fake_appview() -> std::net::SocketAddr {
    use axum::extract::Request as AxRequest;
    let app = axum::Router::new().route(
        "/xrpc/{method}",
        axum::routing::any(|req: AxRequest| async move {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let q = req.uri().query().unwrap_or("").to_string();
            let path = req.uri().path().to_string();
            axum::Json(json!({"path": path, "query": q, "authorization": auth}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn app_methods_go_to_the_appview_with_service_auth() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Without an AppView: a clear 501.
    let n = node();
    let (s, v) = call(&n, "GET", "/xrpc/app.bsky.feed.getTimeline", None, None).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("MethodNotImplemented")));
    assert!(v["message"].as_str().unwrap().contains("appview_url"), "{v}");
    let (s, _) = call(&n, "GET", "/xrpc/com.example.nothing", None, None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED);

    let upstream = fake_appview().await;
    let appview = ues_protocol::node::AppView { url: format!("http://{upstream}"), did: "did:web:appview.test".into() };
    let n = common::node_with(None, Some(appview));
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap(), alice["accessJwt"].as_str().unwrap());
    let (s, v) = call(&n, "GET", "/xrpc/app.bsky.feed.getTimeline?limit=5", Some(token), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["path"].as_str(), v["query"].as_str()), (Some("/xrpc/app.bsky.feed.getTimeline"), Some("limit=5")));
    // The token: signed by Alice's repository key, for the AppView, for this method only.
    let jwt = v["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        (claims["iss"].as_str(), claims["aud"].as_str(), claims["lxm"].as_str()),
        (Some(did), Some("did:web:appview.test"), Some("app.bsky.feed.getTimeline"))
    );
    let key = alice["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    let public = ues_sync::repo::crypto::PublicKey::from_did_key(&format!("did:key:{key}")).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    // Unauthenticated calls go without a token; other proxy targets are refused; bad tokens too.
    let (_, v) = call(&n, "GET", "/xrpc/app.bsky.actor.getProfile?actor=alice.test", None, None).await;
    assert_eq!(v["authorization"], "");
    let req = Request::get("/xrpc/app.bsky.feed.getTimeline")
        .header("atproto-proxy", "did:web:elsewhere.test#bsky_appview")
        .body(Body::empty())
        .unwrap();
    assert_eq!(n.send(req).await.status(), StatusCode::BAD_REQUEST);
    let (s, _) = call(&n, "GET", "/xrpc/app.bsky.feed.getTimeline", Some("not.a.token"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn relays_are_asked_to_crawl_at_start() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/xrpc/com.atproto.sync.requestCrawl",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let _n = common::node_full(None, None, vec![relay]);
    for _ in 0..100 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls, vec![json!({"hostname": "127.0.0.1:2583"})], "one request, naming the node's host");
}

#[tokio::test]
async fn firehose_events_past_the_backfill_window_are_pruned() {
    let n = node();
    for h in ["p1.test", "p2.test"] {
        account(&n, h).await;
    }
    let count = |n: &common::Node| -> (i64, i64) {
        n.state
            .accounts
            .db()
            .read(|c| c.query_row("SELECT count(*), max(seq) FROM repo_seq", [], |r| Ok((r.get(0)?, r.get(1)?))))
            .unwrap()
    };
    let (events, newest) = count(&n);
    assert!(events >= 8, "two accounts: identity, account, commit and sync events each");
    // Every event is now older than a zero-length window.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let gone = n.state.firehose.prune(std::time::Duration::ZERO).unwrap();
    assert_eq!(gone as i64, events - 1, "everything but the newest event");
    assert_eq!(count(&n), (1, newest));
    let latest = newest;
    // The sequence goes on after pruning, and a cursor before the oldest kept event is outdated.
    account(&n, "p3.test").await;
    assert!(*n.state.firehose.latest() > latest);
}

/// Invite codes: with invites required, an account is made only with a code that has a use
/// left (none, an unknown, a used-up or a disabled code is `InvalidInviteCode`, and a refused
/// sign-up spends no use); the operator makes, lists and disables codes, an account lists
/// those made for it, a barred account gets none; `describeServer` tells the truth; only the
/// operator may make codes.
#[tokio::test]
async fn invite_codes() {
    let n = node();
    let admin = common::admin_auth(common::ADMIN_PASSWORD);
    let owner = account(&n, "owner.test").await;
    let owner_did = owner["did"].as_str().unwrap();
    n.state.invite_required.store(true, std::sync::atomic::Ordering::Relaxed);
    let (_, d) = call(&n, "GET", "/xrpc/com.atproto.server.describeServer", None, None).await;
    assert_eq!(d["inviteCodeRequired"], true);

    let sign_up = |handle: &str, code: Option<&str>| {
        let mut body = json!({"handle": handle, "password": "long enough"});
        if let Some(c) = code {
            body["inviteCode"] = json!(c);
        }
        body
    };
    let (s, v) = call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("a.test", None))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidInviteCode")), "{v}");

    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createInviteCode",
        Some(owner["accessJwt"].as_str().unwrap()),
        Some(json!({"useCount": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "an account may not make codes: {v}");
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.createInviteCode", Some(&admin), Some(json!({"useCount": 2}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let code = v["code"].as_str().unwrap().to_string();
    assert!(code.starts_with("127-0-0-1-") && code.len() == "127-0-0-1-".len() + 11, "{code}");

    // A refused sign-up (the handle is taken) spends no use; two uses make two accounts.
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("owner.test", Some(&code))))
            .await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("HandleNotAvailable")), "{v}");
    for handle in ["b.test", "c.test"] {
        let (s, v) =
            call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up(handle, Some(&code)))).await;
        assert_eq!(s, StatusCode::OK, "{handle}: {v}");
    }
    for bad in [code.as_str(), "127-0-0-1-aaaaa-bbbbb", ""] {
        let (s, v) =
            call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("d.test", Some(bad)))).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidInviteCode")), "{bad}: {v}");
    }

    // Codes for an account: it lists them; disabled, they admit no one; a barred account gets none.
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createInviteCodes",
        Some(&admin),
        Some(json!({"codeCount": 2, "useCount": 1, "forAccounts": [owner_did]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mine: Vec<String> =
        v["codes"][0]["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!((v["codes"][0]["account"].as_str(), mine.len()), (Some(owner_did), 2));
    let (s, v) = call(
        &n,
        "GET",
        "/xrpc/com.atproto.server.getAccountInviteCodes",
        Some(owner["accessJwt"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let listed = v["codes"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{v}");
    assert!(listed.iter().all(|c| c["forAccount"] == owner_did && c["available"] == 1 && c["disabled"] == false));
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.admin.disableInviteCodes", Some(&admin), Some(json!({"codes": [mine[0]]})))
            .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("e.test", Some(&mine[0])))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidInviteCode")), "disabled: {v}");
    let (s, v) =
        call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("e.test", Some(&mine[1])))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.disableAccountInvites",
        Some(&admin),
        Some(json!({"account": owner_did, "note": "spam"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.server.createInviteCode",
        Some(&admin),
        Some(json!({"useCount": 1, "forAccount": owner_did})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a barred account gets no new code: {v}");
    let (s, _) = call(
        &n,
        "POST",
        "/xrpc/com.atproto.admin.enableAccountInvites",
        Some(&admin),
        Some(json!({"account": owner_did})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // The operator's listing: every code with its uses, most used first, paged.
    let (s, v) = call(&n, "GET", "/xrpc/com.atproto.admin.getInviteCodes?sort=usage&limit=2", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let first = &v["codes"][0];
    assert_eq!(first["code"], code.as_str());
    let used_by: Vec<&str> = first["uses"].as_array().unwrap().iter().map(|u| u["usedBy"].as_str().unwrap()).collect();
    assert_eq!(used_by.len(), 2, "two accounts, no held use left over: {first}");
    assert!(used_by.iter().all(|d| d.starts_with("did:plc:")));
    let cursor = v["cursor"].as_str().unwrap();
    let (_, rest) =
        call(&n, "GET", &format!("/xrpc/com.atproto.admin.getInviteCodes?limit=2&cursor={cursor}"), Some(&admin), None)
            .await;
    assert_eq!(rest["codes"].as_array().unwrap().len(), 1, "three codes in all: {rest}");
    let (s, _) = call(&n, "GET", "/xrpc/com.atproto.admin.getInviteCodes", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Attacks: requests past the bounds are refused with a typed error and make nothing;
    // guessing codes admits no one, spends no use, and leaves the node answering.
    for (method, body) in [
        ("createInviteCodes", json!({"codeCount": 100_000, "useCount": 1})),
        ("createInviteCodes", json!({"codeCount": 1, "useCount": 0})),
        ("createInviteCode", json!({"useCount": 1_000_000_000})),
    ] {
        let (s, v) = call(&n, "POST", &format!("/xrpc/com.atproto.server.{method}"), Some(&admin), Some(body)).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")), "{method}: {v}");
    }
    let many: Vec<String> = (0..2_000).map(|i| format!("code-{i}")).collect();
    let (s, _) =
        call(&n, "POST", "/xrpc/com.atproto.admin.disableInviteCodes", Some(&admin), Some(json!({"codes": many})))
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for query in ["cursor=abc", "sort=bogus"] {
        let (s, _) =
            call(&n, "GET", &format!("/xrpc/com.atproto.admin.getInviteCodes?{query}"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
    }
    for i in 0..30 {
        let guess = format!("127-0-0-1-{i:05}-zzzzz");
        let (s, v) =
            call(&n, "POST", "/xrpc/com.atproto.server.createAccount", None, Some(sign_up("guess.test", Some(&guess))))
                .await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidInviteCode")), "{guess}");
    }
    let (_, v) = call(&n, "GET", "/xrpc/com.atproto.admin.getInviteCodes?limit=500", Some(&admin), None).await;
    assert_eq!(v["codes"].as_array().unwrap().len(), 3, "no code was made by the refused calls: {v}");
    let uses: usize = v["codes"].as_array().unwrap().iter().map(|c| c["uses"].as_array().unwrap().len()).sum();
    assert_eq!(uses, 3, "the guesses spent no use: {v}");
    let (s, _) = call(&n, "GET", "/xrpc/com.atproto.server.describeServer", None, None).await;
    assert_eq!(s, StatusCode::OK, "the node still answers");
}
