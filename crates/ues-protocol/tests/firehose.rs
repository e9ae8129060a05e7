//! subscribeRepos over a real WebSocket on 127.0.0.1: replay from a cursor, live events,
//! FutureCursor, and every #commit checked the way a relay checks it (its blocks hold the new
//! records, and inverting its ops on its blocks alone gives prevData).

mod common;

use std::time::Duration;

use common::{account, call, node};
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use ues_sync::repo::ipld::Ipld;
use ues_sync::repo::ipld::car::CarReader;
use ues_sync::repo::ipld::dagcbor::{self, DecodeOptions, Reader};
use ues_sync::repo::ipld::mst::{RecordOp, invert};
use ues_sync::repo::ipld::storage::{Blockstore, MemoryBlockstore};

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Splits a frame into (header, body).
fn parse(frame: &[u8]) -> (Ipld, Ipld) {
    let mut r = Reader::new(frame);
    let opts = DecodeOptions::default();
    let header = dagcbor::decode_atproto(r.skip(&opts).unwrap()).unwrap();
    let body = r.value(&opts, 0).unwrap();
    r.finish().unwrap();
    (header, body)
}

fn check_commit(body: &Ipld) {
    let Some(Ipld::Bytes(car)) = body.get("blocks") else { panic!("no blocks") };
    let store = MemoryBlockstore::verifying();
    let reader = CarReader::new(&car[..]).unwrap();
    let root = reader.roots()[0];
    for b in reader {
        let (c, d) = b.unwrap();
        store.put(&c, &d).unwrap();
    }
    assert_eq!(Some(&Ipld::Link(root)), body.get("commit"));
    let commit = dagcbor::decode_atproto(&store.get(&root).unwrap().unwrap()).unwrap();
    let data = *commit.get("data").unwrap().as_link().unwrap();
    let Some(Ipld::List(ops)) = body.get("ops") else { panic!("no ops") };
    let mut inverse = Vec::new();
    for op in ops {
        let cid = op.get("cid").and_then(Ipld::as_link).copied();
        if let Some(c) = cid {
            assert!(store.has(&c).unwrap(), "the new record is in the event's blocks");
        }
        let prev = op.get("prev").and_then(Ipld::as_link).copied();
        inverse.push(RecordOp { path: op.get("path").unwrap().as_str().unwrap().to_string(), old: prev, new: cid });
    }
    if let Some(Ipld::Link(prev_data)) = body.get("prevData") {
        let (back, _) = invert(&store, data, &inverse).unwrap();
        assert_eq!(back, *prev_data, "inverting the ops on the event's blocks gives prevData");
    }
}

#[tokio::test]
async fn replay_live_and_cursor_errors() {
    let n = node();
    let addr = serve(n.app.clone()).await;
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap().to_string(), alice["accessJwt"].as_str().unwrap().to_string());
    for i in 0..5 {
        let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(json!({"repo": did, "collection": "com.example.note", "rkey": format!("n{i}"), "record": {"text": i.to_string()}}))).await;
        assert!(s.is_success(), "{v}");
    }
    call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.putRecord",
        Some(&token),
        Some(json!({"repo": did, "collection": "com.example.note", "rkey": "n1", "record": {"text": "edited"}})),
    )
    .await;
    call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.deleteRecord",
        Some(&token),
        Some(json!({"repo": did, "collection": "com.example.note", "rkey": "n2"})),
    )
    .await;

    // Replay from cursor 0: account creation's four events, then seven commits.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"))
            .await
            .unwrap();
    let mut kinds = Vec::new();
    let mut last_seq = 0;
    while kinds.len() < 11 {
        let msg =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("frames arrive").unwrap().unwrap();
        let Message::Binary(bytes) = msg else { continue };
        let (header, body) = parse(&bytes);
        let t = header.get("t").unwrap().as_str().unwrap().to_string();
        let Some(Ipld::Integer(seq)) = body.get("seq") else { panic!("no seq") };
        assert!(*seq > last_seq, "sequence numbers increase");
        last_seq = *seq;
        if t == "#commit" {
            check_commit(&body);
        }
        kinds.push(t);
    }
    assert_eq!(kinds[..4], ["#identity", "#account", "#commit", "#sync"]);
    assert!(kinds[4..].iter().all(|k| k == "#commit"));

    // Live: a new write arrives on the open stream.
    call(
        &n,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(&token),
        Some(json!({"repo": did, "collection": "com.example.note", "rkey": "live", "record": {"text": "now"}})),
    )
    .await;
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the live event arrives")
        .unwrap()
        .unwrap();
    let (header, body) = parse(&msg.into_data());
    assert_eq!(header.get("t").unwrap().as_str(), Some("#commit"));
    check_commit(&body);

    // Identity and account events travel on the same stream.
    call(&n, "POST", "/xrpc/com.atproto.identity.updateHandle", Some(&token), Some(json!({"handle": "alice2.test"})))
        .await;
    call(&n, "POST", "/xrpc/com.atproto.server.deactivateAccount", Some(&token), Some(json!({}))).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let msg =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("events arrive").unwrap().unwrap();
        let (header, body) = parse(&msg.into_data());
        seen.push((header.get("t").unwrap().as_str().unwrap().to_string(), body));
    }
    assert_eq!(seen[0].0, "#identity");
    assert_eq!(seen[0].1.get("handle").and_then(Ipld::as_str), Some("alice2.test"));
    assert_eq!(seen[1].0, "#account");
    assert_eq!(seen[1].1.get("active"), Some(&Ipld::Bool(false)));
    assert_eq!(seen[1].1.get("status").and_then(Ipld::as_str), Some("deactivated"));

    // Shutdown closes open streams with a frame (1001), so a graceful stop is not held open.
    n.state.firehose.close_all();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a close frame").unwrap().unwrap();
    match msg {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }

    // A cursor from the future: an error frame, then the stream closes.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos?cursor=999999"))
            .await
            .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    let (header, body) = parse(&msg.into_data());
    assert_eq!(header.get("op"), Some(&Ipld::Integer(-1)));
    assert_eq!(body.get("error").and_then(Ipld::as_str), Some("FutureCursor"));
}

/// Applications read the log with each record's bytes (from the event's own blocks, matching
/// the op's CID) and the commit's time, so they need not read the repository again.
#[tokio::test]
async fn log_events_carry_their_records_and_time() {
    let n = node();
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap().to_string(), alice["accessJwt"].as_str().unwrap().to_string());
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let create = json!({"repo": did, "collection": "com.example.note", "rkey": "a", "record": {"text": "first"}});
    assert!(call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(create)).await.0.is_success());
    let put = json!({"repo": did, "collection": "com.example.note", "rkey": "a", "record": {"text": "second"}});
    assert!(call(&n, "POST", "/xrpc/com.atproto.repo.putRecord", Some(&token), Some(put)).await.0.is_success());
    let delete = json!({"repo": did, "collection": "com.example.note", "rkey": "a"});
    assert!(call(&n, "POST", "/xrpc/com.atproto.repo.deleteRecord", Some(&token), Some(delete)).await.0.is_success());

    let events = ues_protocol::node::sequencer::read_events(n.state.accounts.db(), 0, 100).unwrap();
    let ops: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.what {
            ues_protocol::node::sequencer::Happened::Commit(ops) => Some((e, ops)),
            _ => None,
        })
        .flat_map(|(e, ops)| ops.iter().map(move |op| (e, op)))
        .filter(|(_, op)| op.collection == "com.example.note")
        .collect();
    assert_eq!(ops.len(), 3, "{ops:?}");
    for ((e, op), (action, text)) in
        ops.iter().zip([("create", Some("first")), ("update", Some("second")), ("delete", None)])
    {
        assert_eq!(op.action, action);
        assert!(e.time_ms.is_some_and(|t| t >= before - 1000), "the commit's time: {:?}", e.time_ms);
        match text {
            Some(t) => {
                let bytes = op.record.as_ref().expect("the record's bytes");
                let cid = ues_sync::repo::ipld::cid_sha256(0x71, bytes);
                assert_eq!(Some(cid.to_string()), op.cid, "the bytes are the CID's");
                let value = dagcbor::decode_atproto(bytes).unwrap();
                assert_eq!(value.get("text"), Some(&Ipld::String(t.into())));
            }
            None => assert!(op.record.is_none() && op.cid.is_none()),
        }
    }
}

/// The node's own firehose, read as another server's would be: each `#commit` decodes and
/// checks against the account's key and the revision held before it; tampered copies are
/// refused, each for its reason.
#[tokio::test]
async fn commits_of_a_firehose_check_out_and_tampered_ones_do_not() {
    use ues_sync::repo::crypto::{KeyType, Keypair, PublicKey};
    use ues_sync::repo::firehose::{CheckError, Frame, FrameError, FrameLimits, decode_frame, verify_commit};

    let n = node();
    let addr = serve(n.app.clone()).await;
    let alice = account(&n, "alice.test").await;
    let (did, token) = (alice["did"].as_str().unwrap().to_string(), alice["accessJwt"].as_str().unwrap().to_string());
    let writes = [
        (
            "com.atproto.repo.createRecord",
            json!({"repo": did, "collection": "com.example.note", "rkey": "a", "record": {"text": "first"}}),
        ),
        (
            "com.atproto.repo.createRecord",
            json!({"repo": did, "collection": "com.example.note", "rkey": "b", "record": {"text": "other"}}),
        ),
        (
            "com.atproto.repo.putRecord",
            json!({"repo": did, "collection": "com.example.note", "rkey": "a", "record": {"text": "second"}}),
        ),
        ("com.atproto.repo.deleteRecord", json!({"repo": did, "collection": "com.example.note", "rkey": "b"})),
    ];
    for (method, body) in writes {
        assert!(call(&n, "POST", &format!("/xrpc/{method}"), Some(&token), Some(body)).await.0.is_success());
    }
    let (_, repo) = call(&n, "GET", &format!("/xrpc/com.atproto.repo.describeRepo?repo={did}"), None, None).await;
    let multikey = repo["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    let key = PublicKey::from_multikey(multikey).unwrap();

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"))
            .await
            .unwrap();
    let limits = FrameLimits::default();
    let mut commits = Vec::new();
    while commits.len() < 5 {
        let msg =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("frames arrive").unwrap().unwrap();
        let Message::Binary(bytes) = msg else { continue };
        if let Frame::Commit(ev) = decode_frame(&bytes, &limits).unwrap() {
            commits.push(*ev);
        }
    }
    // In order, each against what the one before left.
    let mut held: Option<(String, cid::Cid)> = None;
    let mut verified = Vec::new();
    for ev in &commits {
        let v = verify_commit(ev, &key, held.as_ref().map(|(r, d)| (r.as_str(), *d))).unwrap();
        held = Some((v.rev.clone(), v.data));
        verified.push(v);
    }
    let first = &verified[1].records[0];
    assert_eq!((first.0.action.as_str(), first.0.path.as_str()), ("create", "com.example.note/a"));
    let text = dagcbor::decode_atproto(first.1.as_ref().unwrap()).unwrap();
    assert_eq!(text.get("text"), Some(&Ipld::String("first".into())));
    assert_eq!(verified[4].records[0].1, None, "a delete has no record");

    // Tampered copies of the update (third write), against what the second left.
    let (ev, before) = (&commits[3], (verified[2].rev.as_str(), verified[2].data));
    let check = |edit: &dyn Fn(&mut ues_sync::repo::firehose::CommitEvent), key: &PublicKey, held| {
        let mut e = ev.clone();
        edit(&mut e);
        verify_commit(&e, key, held)
    };
    assert!(check(&|_| {}, &key, Some(before)).is_ok());
    let other = Keypair::generate(KeyType::K256).public();
    assert_eq!(check(&|_| {}, &other, Some(before)), Err(CheckError::BadSignature));
    assert_eq!(
        check(
            &|e| e.repo = ues_sync::repo::syntax::Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            &key,
            Some(before)
        ),
        Err(CheckError::WrongDid)
    );
    assert!(matches!(check(&|_| {}, &key, Some((ev.rev.as_str(), before.1))), Err(CheckError::StaleRev { .. })));
    let older = (verified[1].rev.as_str(), verified[1].data);
    assert!(matches!(check(&|_| {}, &key, Some(older)), Err(CheckError::Gap { .. })), "a missed commit");
    assert_eq!(
        check(&|e| e.ops[0].action = "delete".into(), &key, Some(before)),
        Err(CheckError::OpMismatch("com.example.note/a".into()))
    );
    assert_eq!(
        check(&|e| e.prev_data = Some(verified[0].data), &key, None),
        Err(CheckError::InversionMismatch),
        "a prevData the operations do not lead back to"
    );
    assert_eq!(
        check(
            &|e| e.ops.push(ues_sync::repo::firehose::CommitOp {
                action: "delete".into(),
                path: "com.example.note/zz".into(),
                cid: None,
                prev: verified[1].records[0].0.cid
            }),
            &key,
            None
        ),
        Err(CheckError::InversionMismatch),
        "an operation the tree does not show"
    );
    // Without the record's block.
    let record = ev.ops[0].cid.unwrap();
    let without = {
        let reader = ues_sync::repo::ipld::car::CarReader::new(&ev.blocks[..]).unwrap();
        let roots = reader.roots().to_vec();
        let mut w = ues_sync::repo::ipld::car::CarWriter::new(Vec::new(), &roots).unwrap();
        for b in reader {
            let (c, d) = b.unwrap();
            if c != record {
                w.write_block(&c, &d).unwrap();
            }
        }
        w.finish().unwrap()
    };
    assert_eq!(check(&|e| e.blocks = without.clone(), &key, Some(before)), Err(CheckError::MissingBlock(record)));

    // Frames: over the bound, not a frame, an error frame.
    let big = vec![0u8; limits.max_frame + 1];
    assert_eq!(decode_frame(&big, &limits), Err(FrameError::TooLarge("frame")));
    assert!(matches!(decode_frame(b"\xa2garbage", &limits), Err(FrameError::Malformed(_))));
    let mut error = dagcbor::encode(&Ipld::Map([("op".to_string(), Ipld::Integer(-1))].into()));
    error.extend(dagcbor::encode(&Ipld::Map([("error".to_string(), Ipld::String("FutureCursor".into()))].into())));
    assert_eq!(decode_frame(&error, &limits), Ok(Frame::Error { error: "FutureCursor".into(), message: None }));
}
