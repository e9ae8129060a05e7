//! The feed application following accounts hosted on a rogue PDS. Each rogue is a server on
//! 127.0.0.1 that serves its own did:web document (`did:web:127.0.0.1%3A<port>`, naming itself
//! as `#atproto_pds` and a signing key it holds), `com.atproto.sync.getRepo` and
//! `com.atproto.sync.subscribeRepos`, and misbehaves in one way; a fresh account of the node
//! follows it. Repositories and commits are built with the node's own repository code and
//! then tampered with: commits signed by another key, records whose bytes are not their CIDs,
//! records left out, an endless repository body, stream commits whose operations do not undo
//! to `prevData`, an oversized stream message. Nothing of them is indexed, the refusal is
//! shown by `dev.ues.feed.getRemoteStatus` and logged, the node keeps answering and its memory
//! stays bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use ues_ipld::Ipld;
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::repo::{CommitResult, Repo, Write};
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey, TidGenerator};
use ues_storage::Cid;

use crate::common::*;
use crate::support::*;

/// The feed on, with the bounds these attacks run into: repositories of at most 1 MiB, stream
/// messages of at most 64 KiB.
const CONFIG: &str = "[apps]\nenabled = [\"dev.ues.stats\", \"dev.ues.feed\"]\n\n[xrpc.rate_limits]\nenabled = false\n\n[feed]\nmax_repo_mib = 1\nmax_frame_kib = 64\n";

/// How long anything the node does in the background may take to show (polled every 200 ms).
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Repositories and frames, built with the node's own code.

fn map(entries: Vec<(&str, Ipld)>) -> Ipld {
    Ipld::Map(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A CAR of `blocks` under `root`, written by hand (so blocks whose bytes are not their CID's
/// can be written too).
fn car(root: &Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let header = ues_ipld::car::encode_header(std::slice::from_ref(root));
    let mut out = Vec::new();
    ues_ipld::car::write_varint(&mut out, header.len() as u64);
    out.extend(header);
    for (cid, data) in blocks {
        let c = cid.to_bytes();
        ues_ipld::car::write_varint(&mut out, (c.len() + data.len()) as u64);
        out.extend(c);
        out.extend_from_slice(data);
    }
    out
}

/// The blocks of a whole repository, as `getRepo` sends them (the commit first).
fn repo_blocks(repo: &Repo<MemoryBlockstore>) -> Vec<(Cid, Vec<u8>)> {
    let bytes = repo.export_car(Vec::new()).unwrap();
    ues_ipld::car::CarReader::new(&bytes[..]).unwrap().map(Result::unwrap).collect()
}

fn post_record(text: &str) -> Ipld {
    ues_ipld::json::record_from_json(&json!({
        "$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00.000Z",
    }))
    .unwrap()
}

/// A repository of the rogue's DID, its commits signed by `key`.
struct Built {
    repo: Repo<MemoryBlockstore>,
    tids: TidGenerator,
    did: Did,
}

impl Built {
    fn new(did: &str, key: &Keypair) -> Self {
        let tids = TidGenerator::new(3);
        let did = Did::new(did).unwrap();
        let (repo, _) = Repo::create(MemoryBlockstore::new(), did.clone(), key, tids.next()).unwrap();
        Self { repo, tids, did }
    }

    /// Commits one post per text (signed by `key`): the commit and each post's `at://` URI.
    fn post(&mut self, texts: &[&str], key: &Keypair) -> (CommitResult, Vec<String>) {
        let mut writes = Vec::new();
        let mut uris = Vec::new();
        for text in texts {
            let rkey = self.tids.next().to_string();
            uris.push(format!("at://{}/app.bsky.feed.post/{rkey}", self.did));
            writes.push(Write::Create {
                collection: Nsid::new("app.bsky.feed.post").unwrap(),
                rkey: RecordKey::new(rkey).unwrap(),
                record: post_record(text),
            });
        }
        let res = self.repo.apply_writes(&writes, key, self.tids.next(), None).unwrap();
        (res, uris)
    }

    /// The whole repository as `getRepo` answers it.
    fn car(&self) -> Vec<u8> {
        car(&self.repo.head(), &repo_blocks(&self.repo))
    }

    /// A `#commit` frame for `res` with sequence number `seq`: only the operations `keep`
    /// accepts are listed, and `extra` blocks are added to its blocks.
    fn frame(&self, seq: i64, res: &CommitResult, keep: impl Fn(&str) -> bool, extra: &[(Cid, Vec<u8>)]) -> Vec<u8> {
        let mut blocks = self.repo.commit_event_blocks(res).unwrap();
        blocks.extend_from_slice(extra);
        let ops = res
            .ops
            .iter()
            .filter(|op| keep(&op.path))
            .map(|op| {
                let action = match op.action {
                    ues_repo::repo::Action::Create => "create",
                    ues_repo::repo::Action::Update => "update",
                    ues_repo::repo::Action::Delete => "delete",
                };
                let mut m = vec![
                    ("action", Ipld::String(action.into())),
                    ("path", Ipld::String(op.path.clone())),
                    ("cid", op.cid.map_or(Ipld::Null, Ipld::Link)),
                ];
                if let Some(prev) = op.prev {
                    m.push(("prev", Ipld::Link(prev)));
                }
                map(m)
            })
            .collect();
        let mut body = vec![
            ("seq", Ipld::Integer(i128::from(seq))),
            ("rebase", Ipld::Bool(false)),
            ("tooBig", Ipld::Bool(false)),
            ("repo", Ipld::String(self.did.to_string())),
            ("commit", Ipld::Link(res.cid)),
            ("rev", Ipld::String(res.commit.rev.to_string())),
            ("since", res.since.as_ref().map_or(Ipld::Null, |s| Ipld::String(s.to_string()))),
            ("blocks", Ipld::Bytes(car(&res.cid, &blocks))),
            ("ops", Ipld::List(ops)),
            ("blobs", Ipld::List(vec![])),
            ("time", Ipld::String("2026-01-01T00:00:00.000Z".into())),
        ];
        if let Some(p) = res.prev_data {
            body.push(("prevData", Ipld::Link(p)));
        }
        let mut out =
            ues_ipld::dagcbor::encode(&map(vec![("op", Ipld::Integer(1)), ("t", Ipld::String("#commit".into()))]));
        out.extend(ues_ipld::dagcbor::encode(&map(body)));
        out
    }
}

/// A raw block of `len` bytes (padding).
fn raw_block(len: usize, fill: u8) -> (Cid, Vec<u8>) {
    let data = vec![fill; len];
    (ues_ipld::cid_sha256(ues_ipld::RAW, &data), data)
}

// ---------------------------------------------------------------------------------------------
// The rogue PDS.

/// What `getRepo` answers.
#[derive(Clone)]
enum RepoBody {
    /// Nothing yet (404).
    None,
    /// These bytes.
    Car(Vec<u8>),
    /// `prefix`, then `filler` again and again (slowly for the first 512 KiB, then as fast as
    /// the node reads), up to 512 MiB or 60 s.
    Endless { prefix: Vec<u8>, filler: Vec<u8> },
}

/// What a rogue saw and did.
struct Shared {
    doc: Value,
    repo: Mutex<RepoBody>,
    /// Frames of the stream by sequence number; each connection gets those after its cursor.
    frames: Mutex<Vec<(i64, Vec<u8>)>>,
    get_repos: AtomicU64,
    /// The most bytes one getRepo body handed to the connection.
    most_body_bytes: AtomicU64,
    streams_opened: AtomicU64,
    /// Stream connections the node closed (or that failed under a send).
    streams_cut: AtomicU64,
    requests: Mutex<Vec<String>>,
}

struct Rogue {
    did: String,
    /// The key its DID document names.
    key: Keypair,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Rogue {
    fn start() -> Rogue {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let did = format!("did:web:127.0.0.1%3A{port}");
        let key = Keypair::generate(KeyType::K256);
        let doc = ues_repo::identity::did_document(
            &Did::new(&did).unwrap(),
            &Handle::new("rogue.test").unwrap(),
            &key.public(),
            &format!("http://127.0.0.1:{port}"),
        );
        let shared = Arc::new(Shared {
            doc,
            repo: Mutex::new(RepoBody::None),
            frames: Mutex::new(Vec::new()),
            get_repos: AtomicU64::new(0),
            most_body_bytes: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            streams_cut: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let app = axum::Router::new()
            .route("/.well-known/did.json", axum::routing::get(did_json))
            .route("/xrpc/com.atproto.sync.getRepo", axum::routing::get(get_repo))
            .route("/xrpc/com.atproto.sync.subscribeRepos", axum::routing::get(subscribe))
            .fallback(fallback)
            .with_state(shared.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app).await;
        });
        Rogue { did, key, shared, rt: Some(rt) }
    }

    fn serve_repo(&self, body: RepoBody) {
        *self.shared.repo.lock().unwrap() = body;
    }

    fn push_frame(&self, seq: i64, frame: Vec<u8>) {
        let mut frames = self.shared.frames.lock().unwrap();
        frames.retain(|(s, _)| *s != seq);
        frames.push((seq, frame));
        frames.sort_by_key(|(s, _)| *s);
    }

    fn get_repos(&self) -> u64 {
        self.shared.get_repos.load(Ordering::SeqCst)
    }

    fn requests(&self) -> String {
        self.shared.requests.lock().unwrap().join(", ")
    }
}

fn note(s: &Shared, what: String) {
    let mut r = s.requests.lock().unwrap();
    if r.len() < 1000 {
        r.push(what);
    }
}

async fn did_json(State(s): State<Arc<Shared>>) -> Response {
    note(&s, "did.json".into());
    axum::Json(s.doc.clone()).into_response()
}

async fn fallback(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    note(&s, format!("unexpected {uri}"));
    (axum::http::StatusCode::NOT_FOUND, axum::Json(json!({"error": "MethodNotImplemented"}))).into_response()
}

async fn get_repo(State(s): State<Arc<Shared>>) -> Response {
    s.get_repos.fetch_add(1, Ordering::SeqCst);
    note(&s, "getRepo".into());
    let body = s.repo.lock().unwrap().clone();
    let car_type = [(axum::http::header::CONTENT_TYPE, "application/vnd.ipld.car")];
    match body {
        RepoBody::None => {
            (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "RepoNotFound"}))).into_response()
        }
        RepoBody::Car(bytes) => (car_type, bytes).into_response(),
        RepoBody::Endless { prefix, filler } => {
            const SLOW_CHUNKS: u64 = 32;
            let limit = (512u64 << 20) / filler.len() as u64;
            let started = Instant::now();
            let (prefix, filler) = (axum::body::Bytes::from(prefix), axum::body::Bytes::from(filler));
            let stream = futures::stream::unfold((0u64, 0u64), move |(i, sent)| {
                let (s, prefix, filler) = (s.clone(), prefix.clone(), filler.clone());
                async move {
                    if i > limit || started.elapsed() > Duration::from_secs(60) {
                        return None;
                    }
                    if i == 0 {
                        s.most_body_bytes.fetch_max(prefix.len() as u64, Ordering::SeqCst);
                        return Some((Ok::<_, std::io::Error>(prefix.clone()), (1, prefix.len() as u64)));
                    }
                    if i <= SLOW_CHUNKS {
                        tokio::time::sleep(Duration::from_millis(60)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    let sent = sent + filler.len() as u64;
                    s.most_body_bytes.fetch_max(sent, Ordering::SeqCst);
                    Some((Ok(filler), (i + 1, sent)))
                }
            });
            (car_type, axum::body::Body::from_stream(stream)).into_response()
        }
    }
}

async fn subscribe(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let cursor: i64 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    note(&s, format!("subscribeRepos cursor={cursor}"));
    ws.on_upgrade(move |socket| stream(s, socket, cursor))
}

/// Sends each frame after `cursor` as it is pushed, for at most 120 s; notes whether the node
/// closed the connection.
async fn stream(s: Arc<Shared>, mut socket: WebSocket, cursor: i64) {
    s.streams_opened.fetch_add(1, Ordering::SeqCst);
    let mut sent_up_to = cursor;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let due: Vec<(i64, Vec<u8>)> =
            s.frames.lock().unwrap().iter().filter(|(seq, _)| *seq > sent_up_to).cloned().collect();
        for (seq, frame) in due {
            if socket.send(WsMessage::Binary(frame.into())).await.is_err() {
                s.streams_cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            sent_up_to = seq;
        }
        match tokio::time::timeout(Duration::from_millis(100), socket.recv()).await {
            Err(_)
            | Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Text(_) | WsMessage::Binary(_)))) => {}
            Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => {
                s.streams_cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node's side.

/// A DID as a query parameter: the `%` of `did:web:127.0.0.1%3A<port>` escaped.
fn query(did: &str) -> String {
    did.replace('%', "%25")
}

/// `(status, body)` of `dev.ues.feed.getRemoteStatus` for `did`.
fn remote_status(node: &Running, did: &str) -> (u16, Value) {
    call(node, "GET", &format!("/xrpc/dev.ues.feed.getRemoteStatus?did={}", query(did)), None, None)
}

/// The URIs of the posts `getAuthorFeed` shows for `did` (none when the actor is unknown).
fn author_posts(node: &Running, did: &str) -> Vec<String> {
    let url = format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={}&limit=100", query(did));
    let (s, v) = call(node, "GET", &url, None, None);
    if s == 400 {
        return Vec::new();
    }
    assert_eq!(s, 200, "getAuthorFeed of {did}: {v}");
    v["feed"].as_array().unwrap().iter().map(|i| i["post"]["uri"].as_str().unwrap().to_string()).collect()
}

/// The URIs of the posts in the viewer's timeline.
fn timeline(node: &Running, token: &str) -> Vec<String> {
    let (s, v) = call(node, "GET", "/xrpc/app.bsky.feed.getTimeline?limit=100", Some(token), None);
    assert_eq!(s, 200, "getTimeline: {v}");
    v["feed"].as_array().unwrap().iter().map(|i| i["post"]["uri"].as_str().unwrap().to_string()).collect()
}

/// A fresh account of the node that follows `rogue`: its access token.
fn follower(node: &Running, handle: &str, rogue: &Rogue) -> String {
    let (did, token) = account(node, handle);
    let follow = json!({
        "repo": did, "collection": "app.bsky.graph.follow",
        "record": {"$type": "app.bsky.graph.follow", "subject": rogue.did, "createdAt": "2026-01-01T00:00:00.000Z"},
    });
    let (s, v) = call(node, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(follow));
    assert_eq!(s, 200, "the follow: {v}");
    token
}

fn log_tail(node: &Running) -> String {
    let text = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `probe` every 200 ms until it gives a value (at most 60 s).
fn wait_for<T>(what: &str, node: &Running, rogue: &Rogue, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            let (s, status) = remote_status(node, &rogue.did);
            panic!(
                "{what}: not within {WAIT:?}\ngetRemoteStatus: {s} {status}\nthe rogue saw: {}\nnode log (tail):\n{}",
                rogue.requests(),
                log_tail(node)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the node has fetched, checked and indexed the rogue's honest repository.
fn wait_live(node: &Running, rogue: &Rogue, post: &str) {
    wait_for("the honest repository indexed", node, rogue, || {
        let (s, v) = remote_status(node, &rogue.did);
        (s == 200 && v["state"] == "live" && author_posts(node, &rogue.did).contains(&post.to_string())).then_some(())
    });
}

/// The node logged the refusal of `did`'s repository at WARN.
fn assert_refusal_logged(node: &Running, did: &str) {
    let text = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    assert!(
        text.lines().any(|l| l.contains("remote repository refused") && l.contains(did) && l.contains("WARN")),
        "no WARN \"remote repository refused\" naming {did}:\n{}",
        log_tail(node)
    );
}

// ---------------------------------------------------------------------------------------------
// The attacks.

/// getRepo answers a repository that does not check: its commit signed by another key than the
/// DID's, a record whose bytes are not those of its CID (the text forged under the honest
/// CID), a record left out of the CAR. Each is refused whole: state `refused` with the reason,
/// no post of it indexed, the refusal logged; the rogue is not asked again at once.
#[test]
fn repositories_that_do_not_check_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), CONFIG);

    // Signed by a key the DID document does not name.
    let wrong_key = Rogue::start();
    let other = Keypair::generate(KeyType::K256);
    let mut b = Built::new(&wrong_key.did, &other);
    let (_, signed_by_other) = b.post(&["signed by another key"], &other);
    wrong_key.serve_repo(RepoBody::Car(b.car()));

    // A record's bytes replaced under its CID.
    let forged = Rogue::start();
    let mut b = Built::new(&forged.did, &forged.key);
    let (res, forged_uris) = b.post(&["the honest text"], &forged.key);
    let record = res.ops[0].cid.unwrap();
    let blocks: Vec<(Cid, Vec<u8>)> = repo_blocks(&b.repo)
        .into_iter()
        .map(|(c, d)| if c == record { (c, ues_ipld::dagcbor::encode(&post_record("a forged text"))) } else { (c, d) })
        .collect();
    forged.serve_repo(RepoBody::Car(car(&b.repo.head(), &blocks)));

    // A record left out.
    let partial = Rogue::start();
    let mut b = Built::new(&partial.did, &partial.key);
    let (res, partial_uris) = b.post(&["kept", "left out of the CAR"], &partial.key);
    let left_out = res.ops[1].cid.unwrap();
    let blocks: Vec<(Cid, Vec<u8>)> = repo_blocks(&b.repo).into_iter().filter(|(c, _)| *c != left_out).collect();
    partial.serve_repo(RepoBody::Car(car(&b.repo.head(), &blocks)));

    let cases = [
        (&wrong_key, "sign", signed_by_other, "a.test"),
        (&forged, "does not check", forged_uris, "b.test"),
        (&partial, "missing", partial_uris, "c.test"),
    ];
    let tokens: Vec<String> = cases.iter().map(|(rogue, _, _, handle)| follower(&node, handle, rogue)).collect();
    for ((rogue, why, uris, _), token) in cases.iter().zip(&tokens) {
        let status = wait_for("the repository refused", &node, rogue, || {
            let (s, v) = remote_status(&node, &rogue.did);
            (s == 200 && v["state"] != "pending").then_some(v)
        });
        eprintln!("getRepo that does not check ({why}): {status}");
        assert_eq!(status["state"], "refused", "{status}");
        let error = status["lastError"].as_str().unwrap_or_default();
        assert!(error.to_lowercase().contains(why), "lastError says why ({why}): {status}");
        assert!(status.get("rev").is_none_or(Value::is_null), "no revision is held of it: {status}");
        assert_eq!(author_posts(&node, &rogue.did), Vec::<String>::new(), "nothing of {} indexed", rogue.did);
        let shown = timeline(&node, token);
        assert!(uris.iter().all(|u| !shown.contains(u)), "the follower's timeline shows none of it: {shown:?}");
        assert_refusal_logged(&node, &rogue.did);
    }
    // Refused repositories are fetched again only after a backoff (a minute at first).
    std::thread::sleep(Duration::from_secs(3));
    for (rogue, ..) in &cases {
        assert_eq!(rogue.get_repos(), 1, "{} was asked once: {}", rogue.did, rogue.requests());
        assert!(
            !rogue.requests().contains("subscribeRepos"),
            "no stream opened to a refused PDS: {}",
            rogue.requests()
        );
    }
    still_answers(&node, Duration::from_secs(2));
}

/// getRepo streams a repository without end (a valid commit, then blocks for ever, up to
/// 512 MiB from the rogue's side): the node stops reading at `max_repo_mib` (1 MiB), marks the
/// account `tooLarge`, indexes nothing, and answers `_health` promptly before, during and
/// after the fetch with its memory bounded.
#[test]
fn an_endless_repository_is_cut_off_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), CONFIG);
    let pid = node.child.id();
    let rogue = Rogue::start();
    let mut b = Built::new(&rogue.did, &rogue.key);
    b.post(&["the start of an endless repository"], &rogue.key);
    let commit = b.repo.store().get(&b.repo.head()).unwrap().unwrap();
    let prefix = car(&b.repo.head(), &[(b.repo.head(), commit)]);
    // Each filler chunk is a whole CAR section: a 16 KiB raw block.
    let (cid, data) = raw_block(16 << 10, 0x5a);
    let filler = car(&cid, &[(cid, data)]);
    let header_len = car(&cid, &[]).len();
    let filler = filler[header_len..].to_vec();
    rogue.serve_repo(RepoBody::Endless { prefix, filler });

    // `_health` asked every 100 ms, each within 2 s, from before the follow to the end.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (base, stop) = (node.base.clone(), stop.clone());
        std::thread::spawn(move || {
            let client: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .build()
                .into();
            let (mut asked, mut slowest, mut failures) = (0u32, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::SeqCst) && asked < 2000 {
                let t = Instant::now();
                match client.get(format!("{base}/xrpc/_health")).call() {
                    Ok(r) if r.status() == 200 => {}
                    other => failures.push(format!("{:?}", other.map(|r| r.status()))),
                }
                slowest = slowest.max(t.elapsed());
                asked += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (asked, slowest, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(pid);
    let mut peak = before;
    let token = follower(&node, "endless.test", &rogue);

    let status = wait_for("the endless repository cut off", &node, &rogue, || {
        peak = peak.max(rss(pid));
        let (s, v) = remote_status(&node, &rogue.did);
        (s == 200 && v["state"] != "pending").then_some(v)
    });
    for _ in 0..10 {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let (asked, slowest, failures) = prober.join().unwrap();

    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(
        status["state"] == "tooLarge" || (status["state"] == "refused" && error.contains("bytes")),
        "the account is marked too large: {status}"
    );
    assert!(!error.is_empty(), "lastError names the bound: {status}");
    assert_eq!(author_posts(&node, &rogue.did), Vec::<String>::new(), "nothing of it indexed");
    assert!(timeline(&node, &token).is_empty(), "the follower's timeline is empty");
    assert_refusal_logged(&node, &rogue.did);
    // The node stopped reading: what the rogue handed over is the 1 MiB bound plus what the
    // loopback socket buffers hold (a few MiB), far from the 512 MiB offered.
    let handed = rogue.shared.most_body_bytes.load(Ordering::SeqCst);
    assert!(handed < 32 << 20, "the rogue handed {handed} bytes to one getRepo before the node stopped reading");
    assert_eq!(rogue.get_repos(), 1, "asked once, then backed off: {}", rogue.requests());
    // Memory: a bounded reader holds at most the 1 MiB body and its checks; a node that kept
    // what it was sent would hold hundreds of MiB. 128 MiB over the idle node's RSS leaves room
    // for allocator slack and the index's caches.
    assert!(peak < before + (128 << 20), "RSS rose from {before} to {peak} bytes");
    assert!(failures.is_empty(), "_health failed during the fetch: {failures:?}");
    assert!(asked >= 10 && slowest < Duration::from_secs(2), "_health asked {asked} times, slowest {slowest:?}");
    still_answers(&node, Duration::from_secs(2));
    eprintln!(
        "endless getRepo: {status}; handed {handed} bytes; RSS {before} -> peak {peak}; _health x{asked}, slowest {slowest:?}"
    );
}

/// After an honest getRepo, the stream sends a commit that does not check: (a) its operations
/// name one post while the commit's tree gained two, so undoing them does not give `prevData`;
/// (b) a well-formed commit signed by another key. The posts it claims are not indexed; the
/// account is refused (or fetched again) with the reason.
#[test]
fn stream_commits_that_do_not_check_are_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), CONFIG);

    let uninvertible = Rogue::start();
    let mut a = Built::new(&uninvertible.did, &uninvertible.key);
    let (_, honest_a) = a.post(&["honest, from getRepo"], &uninvertible.key);
    uninvertible.serve_repo(RepoBody::Car(a.car()));

    let other_key = Rogue::start();
    let mut b = Built::new(&other_key.did, &other_key.key);
    let (_, honest_b) = b.post(&["honest, from getRepo"], &other_key.key);
    other_key.serve_repo(RepoBody::Car(b.car()));

    let token_a = follower(&node, "uninvertible.test", &uninvertible);
    let token_b = follower(&node, "otherkey.test", &other_key);
    wait_live(&node, &uninvertible, &honest_a[0]);
    wait_live(&node, &other_key, &honest_b[0]);

    let (held_a, held_b) = (a.repo.commit().rev.to_string(), b.repo.commit().rev.to_string());
    // (a) Two posts committed, one listed.
    let (res, claimed_a) = a.post(&["listed in the ops", "hidden in the tree"], &uninvertible.key);
    let listed = claimed_a[0].rsplit('/').next().unwrap().to_string();
    uninvertible.push_frame(1, a.frame(1, &res, |path| path.ends_with(&listed), &[]));
    // (b) A consistent commit, signed by a key the DID document does not name.
    let stranger = Keypair::generate(KeyType::K256);
    let (res, claimed_b) = b.post(&["signed by a stranger"], &stranger);
    other_key.push_frame(1, b.frame(1, &res, |_| true, &[]));

    for (rogue, claimed, honest, token, held, why) in [
        (&uninvertible, &claimed_a, &honest_a, &token_a, &held_a, "prevdata"),
        (&other_key, &claimed_b, &honest_b, &token_b, &held_b, "signature"),
    ] {
        let status = wait_for("the stream's commit refused", &node, rogue, || {
            let (s, v) = remote_status(&node, &rogue.did);
            let refused = v["state"] == "refused" || (v["state"] == "pending" && v["lastError"].is_string());
            (s == 200 && refused).then_some(v)
        });
        eprintln!("stream commit that does not check ({why}): {status}");
        let error = status["lastError"].as_str().unwrap_or_default();
        assert!(error.to_lowercase().contains(why), "lastError says why ({why}): {status}");
        assert_refusal_logged(&node, &rogue.did);
        // Checked again a little later: nothing it claimed shows anywhere.
        std::thread::sleep(Duration::from_secs(2));
        let posts = author_posts(&node, &rogue.did);
        let shown = timeline(&node, token);
        for uri in claimed {
            assert!(!posts.contains(uri), "{uri} indexed from a commit that does not check: {posts:?}");
            assert!(!shown.contains(uri), "{uri} in the follower's timeline: {shown:?}");
        }
        assert!(posts.iter().all(|p| honest.contains(p)), "only the honest post: {posts:?}");
        let (_, status) = remote_status(&node, &rogue.did);
        assert_eq!(status["rev"], held.as_str(), "the revision held is the honest one: {status}");
    }
    still_answers(&node, Duration::from_secs(2));
}

/// After an honest getRepo, the stream sends one message over `max_frame_kib` (64 KiB): a
/// commit that would check, padded with a 200 KiB block. The node cuts the connection, keeps
/// answering, indexes nothing of it, and reconnects with a backoff. Once the same commit comes
/// without the padding it is indexed: the cut was the size, not the commit.
#[test]
fn an_oversized_stream_message_cuts_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), CONFIG);
    let rogue = Rogue::start();
    let mut b = Built::new(&rogue.did, &rogue.key);
    let (_, honest) = b.post(&["honest, from getRepo"], &rogue.key);
    rogue.serve_repo(RepoBody::Car(b.car()));
    let token = follower(&node, "oversized.test", &rogue);
    wait_live(&node, &rogue, &honest[0]);
    wait_for("the node on the rogue's stream", &node, &rogue, || {
        (rogue.shared.streams_opened.load(Ordering::SeqCst) >= 1).then_some(())
    });

    let (res, claimed) = b.post(&["sent in an oversized message"], &rogue.key);
    let oversized = b.frame(1, &res, |_| true, &[raw_block(200 << 10, 0xa5)]);
    assert!(oversized.len() > 64 << 10, "{} bytes", oversized.len());
    rogue.push_frame(1, oversized);
    wait_for("the node cuts the stream", &node, &rogue, || {
        (rogue.shared.streams_cut.load(Ordering::SeqCst) >= 1).then_some(())
    });
    still_answers(&node, Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!author_posts(&node, &rogue.did).contains(&claimed[0]), "nothing indexed from the oversized message");
    assert!(!timeline(&node, &token).contains(&claimed[0]));
    let (_, status) = remote_status(&node, &rogue.did);
    eprintln!("after the oversized message: {status}");

    // The same commit, small: indexed once the node is back (after its backoff).
    rogue.push_frame(1, b.frame(1, &res, |_| true, &[]));
    wait_for("the commit indexed once it comes within the bound", &node, &rogue, || {
        author_posts(&node, &rogue.did).contains(&claimed[0]).then_some(())
    });
    let opened = rogue.shared.streams_opened.load(Ordering::SeqCst);
    assert!(opened <= 10, "reconnections back off: {opened} connections: {}", rogue.requests());
    still_answers(&node, Duration::from_secs(2));
    eprintln!(
        "oversized message: {opened} stream connections, {} cut",
        rogue.shared.streams_cut.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// The feed's own read methods, asked hostile questions through a real socket.

/// Malformed cursors, limits past the lexicons, full-text operators and a huge query, a thread
/// asked for 1,000 levels both ways, too many URIs, feeds and lists that are not there, a seen
/// time that is not a time, an oversized body, an anonymous timeline: each gets its typed error
/// (or a bounded answer), nothing in the index changes, and the node keeps answering others
/// with its memory and threads bounded.
#[test]
fn hostile_questions_to_the_feed_get_typed_errors_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), CONFIG);
    let (did, token) = account(&node, "asker.test");
    // A reply chain 30 deep to walk.
    let mut parent: Option<Value> = None;
    let mut root_ref: Option<Value> = None;
    for i in 0..30 {
        let mut record = json!({ "$type": "app.bsky.feed.post", "text": format!("level {i}"), "createdAt": now() });
        if let (Some(p), Some(r)) = (&parent, &root_ref) {
            record["reply"] = json!({ "root": r, "parent": p });
        }
        let (s, v) = call(
            &node,
            "POST",
            "/xrpc/com.atproto.repo.createRecord",
            Some(&token),
            Some(json!({ "repo": did, "collection": "app.bsky.feed.post", "record": record })),
        );
        assert_eq!(s, 200, "{v}");
        let r = json!({ "uri": v["uri"], "cid": v["cid"] });
        root_ref.get_or_insert(r.clone());
        parent = Some(r);
    }
    let deepest = parent.unwrap()["uri"].as_str().unwrap().to_string();
    let timeline = || {
        let deadline = Instant::now() + WAIT;
        loop {
            let (s, v) = call(&node, "GET", "/xrpc/app.bsky.feed.getTimeline?limit=100", Some(&token), None);
            if s == 200 && v["feed"].as_array().is_some_and(|f| f.len() == 30) {
                return v;
            }
            assert!(Instant::now() < deadline, "the timeline never held the 30 posts: {s} {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = timeline();
    let rss_before = rss(node.child.id());
    let threads_before = threads(node.child.id());

    let q = |path: &str| call(&node, "GET", path, Some(&token), None);
    let expect = |(s, v): (u16, Value), status: u16, error: &str, what: &str| {
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["error"], error, "{what}: {v}");
    };
    for cursor in ["garbage", "1::", "::1", "1::2::3", "99999999999999999999::1", "%00"] {
        expect(q(&format!("/xrpc/app.bsky.feed.getTimeline?cursor={cursor}")), 400, "InvalidRequest", cursor);
        expect(
            q(&format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={did}&cursor={cursor}")),
            400,
            "InvalidRequest",
            cursor,
        );
    }
    expect(q("/xrpc/app.bsky.feed.getTimeline?limit=100000"), 400, "InvalidRequest", "limit past the lexicon");
    expect(q("/xrpc/app.bsky.feed.getTimeline?limit=-5"), 400, "InvalidRequest", "negative limit");
    expect(
        call(&node, "GET", "/xrpc/app.bsky.feed.getTimeline", None, None),
        401,
        "AuthenticationRequired",
        "anonymous timeline",
    );
    // Full-text operators are words, not syntax; a query of 20,000 characters is answered.
    for text in ["\"NEAR(level", "level* OR ^x", "-- ;DROP TABLE feed_post", "\u{0}\u{1}", "\"\"\"\""] {
        let (s, v) = q(&format!("/xrpc/app.bsky.feed.searchPosts?q={}", urlencode(text)));
        assert!(s == 200 || (s == 400 && v["error"] == "BadQueryString"), "{text:?}: {s} {v}");
    }
    let (s, v) = q(&format!("/xrpc/app.bsky.feed.searchPosts?q={}", "level+".repeat(3000)));
    assert!(s == 200 || s == 400 || s == 414 || s == 431, "a long query: {s} {v}");
    // A thread asked for 1,000 levels down and up is the 30 there are.
    let (s, v) = q(&format!("/xrpc/app.bsky.feed.getPostThread?uri={deepest}&depth=1000&parentHeight=1000"));
    assert_eq!(s, 200, "{v}");
    let mut up = 0;
    let mut node_v = &v["thread"];
    while node_v.get("parent").is_some() {
        node_v = &node_v["parent"];
        up += 1;
    }
    assert_eq!(up, 29, "{v}");
    expect(
        q("/xrpc/app.bsky.feed.getPostThread?uri=at://did:plc:nobody/app.bsky.feed.post/x"),
        400,
        "NotFound",
        "no post",
    );
    let uris: String = (0..26).map(|i| format!("uris=at://{did}/app.bsky.feed.post/{i}&")).collect();
    expect(q(&format!("/xrpc/app.bsky.feed.getPosts?{uris}")), 400, "InvalidRequest", "26 URIs");
    expect(
        q(&format!("/xrpc/app.bsky.feed.getFeed?feed=at://{did}/app.bsky.feed.generator/nothing")),
        400,
        "UnknownFeed",
        "no generator",
    );
    expect(q("/xrpc/app.bsky.graph.getList?list=not-a-uri"), 400, "InvalidRequest", "a list that is not a URI");
    expect(q("/xrpc/app.bsky.actor.getProfile?actor=did:plc:nobody"), 400, "InvalidRequest", "no profile");
    expect(q("/xrpc/dev.ues.feed.getRemoteStatus?did=did:plc:nobody"), 400, "NotFound", "not followed");
    let seen = |body: Value| call(&node, "POST", "/xrpc/app.bsky.notification.updateSeen", Some(&token), Some(body));
    expect(seen(json!({ "seenAt": "yesterday" })), 400, "InvalidRequest", "a seen time that is not a time");
    expect(seen(json!({})), 400, "InvalidRequest", "no seen time");
    let (s, _) = seen(json!({ "seenAt": "x".repeat(4 << 20) }));
    assert!(s == 413 || s == 400, "an oversized body: {s}");

    still_answers(&node, Duration::from_secs(2));
    assert_eq!(timeline(), before, "the index is unchanged");
    let grown = rss(node.child.id()).saturating_sub(rss_before);
    assert!(grown < 100 << 20, "RSS grew by {grown} bytes");
    assert!(threads(node.child.id()) <= threads_before + 8, "threads grew");
}

fn now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    ues_protocol::node::sequencer::iso_from_millis(ms)
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
