//! The feed application following an account hosted elsewhere: an account on Bluesky's
//! reference PDS (`@atproto/pds`, dev mode, with a did:plc directory on loopback that the UES
//! node reads too) posts; a UES user who follows it sees the post in `getTimeline`, fetched
//! with `com.atproto.sync.getRepo` and verified; later posts arrive over the reference's
//! `subscribeRepos`, a deletion there removes the post here, and a restarted node neither
//! misses what was posted while it was down nor shows anything twice.
//!
//! `tests/js/refpds/feed_remote.mjs` keeps the reference and the directory running; this test
//! writes to the reference through its XRPC API.

#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long anything the node does in the background may take to show (polled every 200 ms).
const WAIT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_millis(200);

/// The reference PDS and its directory (`feed_remote.mjs`), stopped when dropped.
struct Reference {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://localhost:<port>`, as its DID documents name it.
    url: String,
    /// `http://127.0.0.1:<port>` of the did:plc directory.
    plc: String,
    stderr: std::path::PathBuf,
}

impl Drop for Reference {
    fn drop(&mut self) {
        // Closing its standard input asks it to stop; killed if it has not within 10 s.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the reference PDS and a did:plc directory on free loopback ports, data in `data`.
/// A port taken by a parallel test before the servers bind it: tried again on others (at
/// most three times).
fn start_reference(refpds: &Path, data: &Path) -> Reference {
    let mut last = String::new();
    for attempt in 0..3 {
        let (plc_port, pds_port) = (support::free_port(), support::free_port());
        let stderr = data.with_extension(format!("stderr{attempt}"));
        let mut child = Command::new("node")
            .arg(refpds.join("feed_remote.mjs"))
            .args([plc_port.to_string(), pds_port.to_string()])
            .arg(data)
            .current_dir(refpds)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        let v: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
        let reference = Reference {
            child,
            stdin,
            url: v["pds"].as_str().unwrap_or_default().to_string(),
            plc: v["plc"].as_str().unwrap_or_default().to_string(),
            stderr: stderr.clone(),
        };
        if v["ready"] == true {
            return reference;
        }
        drop(reference);
        last = format!("said {line:?}; stderr: {}", support::tail(&stderr, 2000));
    }
    panic!("the reference PDS did not start: {last}");
}

/// A JSON call: `(status, body)` (`null` when the body is not JSON; status 0 when the
/// connection failed).
fn call(url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let agent = support::agent();
    let res = match body {
        None => {
            let mut r = agent.get(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        Some(b) => {
            let mut r = agent.post(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send_json(b)
        }
    };
    match res {
        Ok(mut r) => {
            let status = r.status().as_u16();
            (status, r.body_mut().read_json().unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Polls `probe` every 200 ms until it gives a value (at most 60 s); `what` and `context()`
/// explain a timeout.
fn wait_for<T>(what: &str, context: impl Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {WAIT:?}\n{}", context());
        }
        std::thread::sleep(STEP);
    }
}

/// An account writing on the reference PDS.
struct Remote<'a> {
    reference: &'a Reference,
    did: String,
    token: String,
}

/// A post made on the reference: its URI, CID and text.
#[derive(Debug, Clone)]
struct Post {
    uri: String,
    cid: String,
    text: String,
}

impl Remote<'_> {
    fn create<'a>(reference: &'a Reference, handle: &str) -> Remote<'a> {
        let body = json!({"handle": handle, "email": format!("{handle}@example.com"), "password": "a long password"});
        let (s, v) = call(&format!("{}/xrpc/com.atproto.server.createAccount", reference.url), None, Some(body));
        assert_eq!(s, 200, "createAccount on the reference: {v}");
        Remote {
            reference,
            did: v["did"].as_str().unwrap().to_string(),
            token: v["accessJwt"].as_str().unwrap().to_string(),
        }
    }

    fn post(&self, text: &str) -> Post {
        let record = json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": now_iso()});
        let body = json!({"repo": self.did, "collection": "app.bsky.feed.post", "record": record});
        let url = format!("{}/xrpc/com.atproto.repo.createRecord", self.reference.url);
        let (s, v) = call(&url, Some(&self.token), Some(body));
        assert_eq!(s, 200, "createRecord on the reference: {v}");
        Post {
            uri: v["uri"].as_str().unwrap().to_string(),
            cid: v["cid"].as_str().unwrap().to_string(),
            text: text.to_string(),
        }
    }

    fn delete(&self, post: &Post) {
        let rkey = post.uri.rsplit('/').next().unwrap();
        let body = json!({"repo": self.did, "collection": "app.bsky.feed.post", "rkey": rkey});
        let url = format!("{}/xrpc/com.atproto.repo.deleteRecord", self.reference.url);
        let (s, v) = call(&url, Some(&self.token), Some(body));
        assert_eq!(s, 200, "deleteRecord on the reference: {v}");
    }

    /// The revision of the account's newest commit on the reference.
    fn rev(&self) -> String {
        let url = format!("{}/xrpc/com.atproto.sync.getLatestCommit?did={}", self.reference.url, self.did);
        let (s, v) = call(&url, None, None);
        assert_eq!(s, 200, "getLatestCommit on the reference: {v}");
        v["rev"].as_str().unwrap().to_string()
    }
}

/// Now, as an AT Protocol datetime.
fn now_iso() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    ues_protocol::node::sequencer::iso_from_millis(ms)
}

/// The posts of the viewer's timeline (`feed[].post`), `None` while the call fails.
fn timeline(node: &support::Running, token: &str) -> Option<Vec<Value>> {
    let (s, v) = call(&format!("{}/xrpc/app.bsky.feed.getTimeline?limit=100", node.base), Some(token), None);
    if s != 200 {
        return None;
    }
    Some(v["feed"].as_array()?.iter().map(|item| item["post"].clone()).collect())
}

/// How many times the timeline shows `uri`.
fn count(posts: &[Value], uri: &str) -> usize {
    posts.iter().filter(|p| p["uri"] == uri).count()
}

/// Asserts the timeline's view of `post` is the reference's post by `author`.
fn assert_view(posts: &[Value], post: &Post, author: &str) {
    let view = posts.iter().find(|p| p["uri"] == post.uri.as_str()).expect("the post is there");
    eprintln!("{}: {view}", post.text);
    assert_eq!(view["cid"], post.cid.as_str(), "the post's CID: {view}");
    assert_eq!(view["record"]["text"], post.text.as_str(), "the post's text: {view}");
    assert_eq!(view["author"]["did"], author, "the post's author: {view}");
    let handle = view["author"]["handle"].as_str().unwrap_or_default();
    assert!(handle == "remote.test" || handle == "handle.invalid", "the author's handle: {view}");
}

/// A live subscriber of the reference's own `subscribeRepos` (no cursor), opened before any
/// account exists: the `(seq, repo, rev)` of each `#commit` it is sent, in order.
///
/// The reference's sequencer sends new events to its subscribers when it polls its database
/// (at most a second apart). Events sent after the node subscribed reach the node as live ones,
/// so the test waits until this subscriber has been sent R's commits before the node follows R:
/// the node's stream then starts after them, as it would for an account created long ago.
struct Watcher {
    seen: std::sync::mpsc::Receiver<(i64, String, String)>,
    got: Vec<(i64, String, String)>,
}

impl Watcher {
    fn start(reference: &Reference) -> Watcher {
        use futures::StreamExt;
        let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos", reference.url.replacen("http://", "ws://", 1));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(Ok((mut ws, _))) =
                    tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::connect_async(url.as_str())).await
                else {
                    return;
                };
                let _ = ready_tx.send(());
                let limits = ues_repo::firehose::FrameLimits::default();
                // Bounded: at most 10 minutes and 10,000 messages.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                for _ in 0..10_000 {
                    let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await else { return };
                    let tokio_tungstenite::tungstenite::Message::Binary(bytes) = msg else { continue };
                    if let Ok(ues_repo::firehose::Frame::Commit(ev)) = ues_repo::firehose::decode_frame(&bytes, &limits)
                        && tx.send((ev.seq, ev.repo.to_string(), ev.rev.clone())).is_err()
                    {
                        return;
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("the reference's subscribeRepos opens");
        Watcher { seen: rx, got: Vec::new() }
    }

    /// Waits (at most 60 s) until the reference has sent its subscribers `did`'s commit `rev`.
    fn wait_sent(&mut self, did: &str, rev: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.got.iter().any(|(_, d, r)| d == did && r == rev) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(ev) => self.got.push(ev),
                Err(_) => panic!("the reference never sent {did}'s commit {rev} (sent: {:?})", self.got),
            }
        }
    }
}

/// How many times the node fetched `did`'s whole repository (from its log).
fn fetches(log: &Path, did: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| l.contains("remote repository fetched") && l.contains(did)).count()
}

fn remote_status(node: &support::Running, did: &str) -> (u16, Value) {
    call(&format!("{}/xrpc/dev.ues.feed.getRemoteStatus?did={did}", node.base), None, None)
}

#[test]
fn a_post_on_bluesky_s_reference_pds_reaches_a_follower_s_timeline_and_its_deletion_too() {
    let Some(refpds) = shared::reference_pds() else { return };
    let Some(_) = shared::node_js("the remote feed") else { return };
    let root = tempfile::tempdir().unwrap();
    let reference = start_reference(&refpds, &root.path().join("reference"));

    let dir = root.path().join("ues");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[apps]\nenabled = [\"dev.ues.stats\", \"dev.ues.feed\"]\n\n[xrpc]\nplc_url = \"{}\"\n\n[xrpc.rate_limits]\nenabled = false\n",
        reference.plc
    );
    std::fs::write(dir.join("node.toml"), config).unwrap();
    let port = support::free_port();
    let node = support::start_watched(&dir, port);
    let log = dir.join("node.log");

    // R on the reference posts P1; U on UES follows R.
    let mut watcher = Watcher::start(&reference);
    let r = Remote::create(&reference, "remote.test");
    assert!(r.did.starts_with("did:plc:"), "{}", r.did);
    let p1 = r.post("P1: written on Bluesky's reference PDS");
    watcher.wait_sent(&r.did, &r.rev());
    let (u_did, u_token) = support::create_account(&node.base, "follower.test");
    let follow = json!({
        "repo": u_did, "collection": "app.bsky.graph.follow",
        "record": {"$type": "app.bsky.graph.follow", "subject": r.did, "createdAt": now_iso()},
    });
    let (s, v) = support::xrpc_post(&node, "com.atproto.repo.createRecord", Some(&u_token), follow);
    assert_eq!(s, 200, "U follows R: {v}");

    let context = |node: &support::Running| {
        let (s, status) = remote_status(node, &r.did);
        format!(
            "getRemoteStatus: {s} {status}\nreference stderr:\n{}\nnode log (tail):\n{}",
            support::tail(&reference.stderr, 2000),
            support::tail(&log, 6000)
        )
    };

    // The repository fetched and verified: P1 in U's timeline.
    let posts = wait_for(
        "P1 in U's timeline (fetched with getRepo)",
        || context(&node),
        || timeline(&node, &u_token).filter(|p| count(p, &p1.uri) == 1),
    );
    assert_view(&posts, &p1, &r.did);

    // The node opened R's PDS's stream and fetched R once more (what R committed between the
    // first fetch and the stream came before the stream): from here on, R's commits come over
    // the stream.
    wait_for(
        "the second fetch, once the stream is open",
        || context(&node),
        || (fetches(&log, &r.did) == 2 && remote_status(&node, &r.did).1["state"] == "live").then_some(()),
    );

    // Live, over the reference's subscribeRepos: P2 appears, then P1's deletion removes it.
    let p2 = r.post("P2: arrives over subscribeRepos");
    let posts = wait_for(
        "P2 in U's timeline (from the stream)",
        || context(&node),
        || timeline(&node, &u_token).filter(|p| count(p, &p2.uri) == 1),
    );
    assert_view(&posts, &p2, &r.did);
    let fetched = fetches(&log, &r.did);
    assert_eq!(
        fetched,
        2,
        "P2 came over the stream, not by fetching the repository again:\n{}",
        support::tail(&log, 6000)
    );
    r.delete(&p1);
    let posts = wait_for(
        "P1 gone from U's timeline after its deletion",
        || context(&node),
        || timeline(&node, &u_token).filter(|p| count(p, &p1.uri) == 0),
    );
    assert_eq!(count(&posts, &p2.uri), 1, "P2 stays: {posts:?}");
    assert_eq!(
        fetches(&log, &r.did),
        fetched,
        "P1's deletion came over the stream, not by fetching the repository again:\n{}",
        support::tail(&log, 6000)
    );
    let rev = r.rev();
    let status = wait_for(
        "getRemoteStatus live at the reference's revision",
        || context(&node),
        || {
            let (s, v) = remote_status(&node, &r.did);
            (s == 200 && v["state"] == "live" && v["rev"] == rev.as_str()).then_some(v)
        },
    );
    assert_eq!(status["did"], r.did.as_str(), "{status}");
    assert_eq!(status["pds"], reference.url.as_str(), "{status}");
    assert!(status.get("lastError").is_none_or(Value::is_null), "no error on a live repository: {status}");
    let (s, v) = remote_status(&node, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!((s, v["error"].as_str()), (400, Some("NotFound")), "an untracked DID: {v}");

    // The node is killed; R posts P3 while it is down; it starts again on the same data.
    let mut node = node;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(node);
    let p3 = r.post("P3: written while the UES node was down");
    let node = support::start_watched(&dir, port);
    let posts = wait_for(
        "P3 in U's timeline after the restart",
        || context(&node),
        || timeline(&node, &u_token).filter(|p| count(p, &p3.uri) >= 1),
    );
    assert_view(&posts, &p3, &r.did);
    // Nothing twice, nothing deleted back: checked again after the stream has had time to
    // replay from the persisted cursor.
    std::thread::sleep(Duration::from_secs(3));
    let posts = timeline(&node, &u_token).expect("the timeline answers");
    assert_eq!(count(&posts, &p2.uri), 1, "P2 exactly once after the restart: {posts:?}");
    assert_eq!(count(&posts, &p3.uri), 1, "P3 exactly once after the restart: {posts:?}");
    assert_eq!(count(&posts, &p1.uri), 0, "P1 stays deleted after the restart: {posts:?}");
    let remote: Vec<&Value> = posts.iter().filter(|p| p["author"]["did"] == r.did.as_str()).collect();
    assert_eq!(remote.len(), 2, "R's posts in U's timeline are P2 and P3: {remote:?}");

    // And the stream runs again after the restart.
    let p4 = r.post("P4: after the restart");
    let posts = wait_for(
        "P4 in U's timeline (the stream after the restart)",
        || context(&node),
        || timeline(&node, &u_token).filter(|p| count(p, &p4.uri) == 1),
    );
    for p in [&p2, &p3, &p4] {
        assert_eq!(count(&posts, &p.uri), 1, "{} once: {posts:?}", p.text);
    }
    assert_eq!(count(&posts, &p1.uri), 0);
    let rev = r.rev();
    wait_for(
        "getRemoteStatus live at the reference's revision after the restart",
        || context(&node),
        || {
            let (s, v) = remote_status(&node, &r.did);
            (s == 200 && v["state"] == "live" && v["rev"] == rev.as_str()).then_some(v)
        },
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("whole fetches of R's repository over the test: {}", fetches(&log, &r.did));
    // What the node did with the remote account, shown with --nocapture.
    for line in text.lines().filter(|l| l.contains("dev.ues.feed") && !l.contains("request refused")) {
        eprintln!("{line}");
    }
    assert!(
        !text.contains("remote repository refused"),
        "the reference's repository was refused:\n{}",
        support::tail(&log, 6000)
    );
}
