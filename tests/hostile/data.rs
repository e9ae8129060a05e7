//! One account's data against everyone else's: records the store could not read back, a
//! taken-down account whose records must vanish from every read, not only from sync, and uploads
//! past the account's blob quota.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::support::*;

fn nested(levels: usize) -> Value {
    let mut v = json!("bottom");
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

fn create(node: &Running, token: &str, did: &str, collection: &str, record: Value) -> (u16, Value) {
    call(
        node,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({ "repo": did, "collection": collection, "record": record })),
    )
}

/// Records nested deeper than the store decodes, or larger than the record limit, are refused
/// at the door with 400 (before, one deep record committed and then made every node-wide query
/// answer 500 for everyone); the node-wide queries keep answering; nothing was committed.
#[test]
fn records_the_store_cannot_read_back_are_refused_and_queries_keep_answering() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "");
    let (did, token) = account(&node, "deep.test");
    let (other, other_token) = account(&node, "bystander.test");
    let (s, v) = create(&node, &other_token, &other, "com.example.note", json!({"text": "findme bystander"}));
    assert_eq!(s, 200, "{v}");

    // The data model's bound (values 64 levels below the record, as DAG-CBOR decodes) holds;
    // one level past it is refused with 400, however deep the attacker goes.
    let (s, v) = create(&node, &token, &did, "com.example.deep", nested(64));
    assert_eq!(s, 200, "the deepest readable record is accepted: {v}");
    let (_, before) = call(&node, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None);
    for levels in [65, 66, 100, 127] {
        let mut record = nested(levels);
        record["text"] = json!("findme deep");
        let (s, v) = create(&node, &token, &did, "com.example.deep", record);
        assert_eq!(s, 400, "{levels} levels: {v}");
        assert_eq!(v["error"], "InvalidRequest", "{v}");
    }
    // A record over the record limit (1,000,000 bytes) never commits either.
    let big = json!({ "text": "findme big", "pad": "x".repeat(1_000_100) });
    let (s, v) = create(&node, &token, &did, "com.example.big", big);
    assert!(s == 400 || s == 413, "a record over the limit: {s} {v}");
    let (_, after) = call(&node, "GET", &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"), None, None);
    assert_eq!(before["cid"], after["cid"], "nothing was committed");

    // Every node-wide query still answers, for everyone.
    for path in [
        "/xrpc/dev.ues.repo.searchRecords?q=findme".to_string(),
        format!("/xrpc/dev.ues.repo.listBacklinks?target={did}"),
        "/xrpc/dev.ues.repo.listRecordsByTime?limit=100".to_string(),
        "/api/v1/search?q=findme".to_string(),
    ] {
        let (s, v) = call(&node, "GET", &path, None, None);
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (_, found) = call(&node, "GET", "/xrpc/dev.ues.repo.searchRecords?q=findme", None, None);
    let uris: Vec<&str> = found["records"].as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert_eq!(uris.len(), 1, "{found}");
    assert!(uris[0].contains(&other), "{found}");
    still_answers(&node, Duration::from_secs(5));
}

/// A taken-down account's records are hidden from every read (XRPC, REST, node-wide search,
/// backlinks, time ranges), not only from sync; other accounts are served as before; reversing
/// the takedown shows the same records again, unchanged.
#[test]
fn a_takedown_hides_the_account_from_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "");
    let (did, token) = account(&node, "taken.test");
    let (other, other_token) = account(&node, "kept.test");
    let (s, mine) = create(&node, &token, &did, "com.example.note", json!({"text": "needle taken", "subject": other}));
    assert_eq!(s, 200, "{mine}");
    let (s, _) = create(&node, &other_token, &other, "com.example.note", json!({"text": "needle kept"}));
    assert_eq!(s, 200);
    let rkey = mine["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let get_record = format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=com.example.note&rkey={rkey}");
    let (_, original) = call(&node, "GET", &get_record, None, None);
    assert_eq!(original["value"]["text"], "needle taken");

    let takedown = |applied: bool| {
        let body = json!({
            "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
            "takedown": {"applied": applied, "ref": "hostile-test"},
        });
        let mut res = agent()
            .post(format!("{}/xrpc/com.atproto.admin.updateSubjectStatus", node.base))
            .header("authorization", &node.operator_auth())
            .send_json(body)
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.body_mut().read_to_string().unwrap_or_default());
    };
    takedown(true);

    let hidden = |path: &str, want: &[u16]| {
        let (s, v) = call(&node, "GET", path, None, None);
        assert!(want.contains(&s), "{path}: {s} {v}");
        if s == 400 {
            assert_eq!(v["error"], "RepoTakendown", "{path}: {v}");
        }
    };
    hidden(&get_record, &[400]);
    hidden(&format!("/xrpc/com.atproto.repo.listRecords?repo={did}&collection=com.example.note"), &[400]);
    hidden(&format!("/xrpc/com.atproto.repo.describeRepo?repo={did}"), &[400]);
    hidden(&format!("/xrpc/dev.ues.repo.listRecordsByTime?repo={did}"), &[400]);
    hidden(&format!("/xrpc/com.atproto.sync.getRepo?did={did}"), &[400]);
    hidden(&format!("/api/v1/repos/{did}"), &[404]);
    hidden(&format!("/api/v1/repos/{did}/records/com.example.note"), &[404]);
    hidden(&format!("/api/v1/repos/{did}/records/com.example.note/{rkey}"), &[404]);
    let uris = |path: &str| -> Vec<String> {
        let (s, v) = call(&node, "GET", path, None, None);
        assert_eq!(s, 200, "{path}: {v}");
        let list = v.get("records").or_else(|| v.get("results")).and_then(Value::as_array).cloned().unwrap_or_default();
        list.iter().map(|r| r["uri"].as_str().unwrap_or_default().to_string()).collect()
    };
    for path in [
        "/xrpc/dev.ues.repo.searchRecords?q=needle".to_string(),
        format!("/xrpc/dev.ues.repo.listBacklinks?target={other}"),
        "/xrpc/dev.ues.repo.listRecordsByTime?limit=100".to_string(),
    ] {
        let found = uris(&path);
        assert!(found.iter().all(|u| !u.contains(&did)), "{path} still shows the taken-down account: {found:?}");
    }
    assert!(uris("/xrpc/dev.ues.repo.searchRecords?q=needle").iter().any(|u| u.contains(&other)), "others are served");

    // Reversed: the same record, unchanged.
    takedown(false);
    let (s, back) = call(&node, "GET", &get_record, None, None);
    assert_eq!(s, 200, "{back}");
    assert_eq!(back, original);
    assert!(uris("/xrpc/dev.ues.repo.searchRecords?q=needle").iter().any(|u| u.contains(&did)));
    still_answers(&node, Duration::from_secs(5));
}

/// One account's uploads cannot fill the disk: past its blob quota an upload is refused with
/// 413 `QuotaExceeded`, what it stored before stays whole, and another account still uploads.
#[test]
fn an_account_past_its_blob_quota_is_refused_and_others_still_upload() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "[xrpc]\nblob_quota_mib = 1\n");
    let (did, token) = account(&node, "hoarder.test");
    let (_, other_token) = account(&node, "neighbour.test");
    const SIZE: usize = 300 << 10;
    let upload = |token: &str, fill: u8| -> (u16, Value) {
        let res = agent()
            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", node.base))
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/octet-stream")
            .send(&vec![fill; SIZE][..]);
        let mut res = res.unwrap();
        (res.status().as_u16(), res.body_mut().read_json().unwrap_or(Value::Null))
    };
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..10u8 {
        let (status, v) = upload(&token, i);
        if status != 200 {
            refused = Some((status, v));
            break;
        }
        stored.push(v["blob"]["ref"]["$link"].as_str().unwrap().to_string());
    }
    let (status, v) = refused.expect("ten uploads of 300 KiB pass a 1 MiB quota");
    assert_eq!((status, v["error"].as_str()), (413, Some("QuotaExceeded")), "{v}");
    assert_eq!(stored.len(), 3, "three uploads fit in 1 MiB, the fourth does not");
    for (i, cid) in stored.iter().enumerate() {
        let mut res =
            agent().get(format!("{}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}", node.base)).call().unwrap();
        let bytes = res.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap();
        assert_eq!(bytes, vec![i as u8; SIZE], "blob {i} is whole");
    }
    let (status, v) = upload(&other_token, 99);
    assert_eq!(status, 200, "another account's upload: {v}");
    still_answers(&node, Duration::from_secs(10));
}
