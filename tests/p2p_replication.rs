//! Three `ues run` processes on 127.0.0.1 replicate one account multi-master over libp2p: an
//! account created on A, B and C authorized as its devices and handed the account; writes on
//! all three while they are partitioned (each runs alone); then reconnection: all three end
//! with the same MST root, every repository's commit verifies against the account's key, and
//! no write is lost. Then C is killed with SIGKILL in the middle of catching up, restarted, and
//! converges too.

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{agent, free_port};

const COLLECTION: &str = "dev.ues.test.note"; // no Lexicon: any record key

struct Node {
    name: &'static str,
    dir: PathBuf,
    http: u16,
    p2p: u16,
    peer: String,
    child: Option<Child>,
    password: String,
}

/// The last 60 lines of a node's log, on stderr.
fn log_tail(dir: &Path, name: &str) {
    eprintln!("--- {name} log tail");
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
}

/// The log tails of every node under `root`.
fn log_tails(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        log_tail(&entry.path(), &entry.file_name().to_string_lossy());
    }
}

impl Node {
    fn new(root: &Path, name: &'static str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p2p = free_port();
        // Reconcile every second, so convergence does not wait for the default 30 s.
        // Rate limits off: its bursts of writes go past an hour's write budget (its subject is
        // replication).
        std::fs::write(
            dir.join("node.toml"),
            "[p2p]\nsync_interval_secs = 1\ntombstone_grace_secs = 1\nmdns = false\n[xrpc.rate_limits]\nenabled = false\n",
        )
        .unwrap();
        let init = Command::new(env!("CARGO_BIN_EXE_ues")).args(["init", "--data-dir"]).arg(&dir).output().unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        let peer = support::peer_id(&dir);
        let http = free_port();
        Node { name, dir, http, p2p, peer, child: None, password: String::new() }
    }

    fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p, self.peer)
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let p2p = format!("/ip4/127.0.0.1/tcp/{}", self.p2p);
        self.child = Some(support::spawn(&self.dir, self.http, &p2p, &self.dir.join("node.log")));
        support::wait_healthy(self.http);
        self.password = std::fs::read_to_string(self.dir.join("admin.password")).unwrap().trim().to_string();
    }

    fn signal(&mut self, sig: &str) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.signal("-TERM");
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
    }

    fn call(&self, method: &str, token: Option<&str>, body: Option<Value>, basic: bool) -> (u16, Value) {
        use base64::Engine;
        let url = format!("http://127.0.0.1:{}/xrpc/{method}", self.http);
        let auth = match (token, basic) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, true) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", self.password))
            ),
            _ => String::new(),
        };
        let a = agent();
        let res = match body {
            Some(b) => a.post(&url).header("authorization", &auth).send_json(b),
            None => a.get(&url).header("authorization", &auth).call(),
        };
        let mut res = res.unwrap_or_else(|e| panic!("{} {method}: {e}", self.name));
        let status = res.status().as_u16();
        (status, res.body_mut().read_json().unwrap_or(Value::Null))
    }

    fn ok(&self, method: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, token, body, false);
        assert_eq!(status, 200, "{} {method}: {v}", self.name);
        v
    }

    fn admin(&self, method: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, None, body, true);
        if status != 200 {
            log_tails(self.dir.parent().unwrap());
        }
        assert_eq!(status, 200, "{} {method}: {v}", self.name);
        v
    }

    fn login(&self) -> String {
        let v = self.ok(
            "com.atproto.server.createSession",
            None,
            Some(json!({"identifier": "alice.test", "password": "correct horse battery"})),
        );
        v["accessJwt"].as_str().unwrap().to_string()
    }

    fn put(&self, token: &str, did: &str, rkey: &str, text: &str) {
        self.ok(
            "com.atproto.repo.putRecord",
            Some(token),
            Some(json!({"repo": did, "collection": COLLECTION, "rkey": rkey,
                "record": {"$type": COLLECTION, "text": text, "createdAt": "2026-11-25T00:00:00.000Z"}})),
        );
    }

    /// A record of the test collection that references a blob.
    fn put_blob_record(&self, token: &str, did: &str, rkey: &str, blob: &Value) {
        self.ok(
            "com.atproto.repo.putRecord",
            Some(token),
            Some(json!({"repo": did, "collection": COLLECTION, "rkey": rkey,
                "record": {"$type": COLLECTION, "text": rkey, "file": blob, "createdAt": "2026-12-05T00:00:00.000Z"}})),
        );
    }

    /// (replica root, repository root) of the account.
    fn roots(&self, did: &str) -> (Option<String>, Option<String>) {
        let v = self.admin("dev.ues.admin.getReplication", None);
        let acct = v["accounts"].as_array().and_then(|a| a.iter().find(|x| x["did"] == did)).cloned();
        match acct {
            Some(a) => (a["replicaRoot"].as_str().map(String::from), a["repoRoot"].as_str().map(String::from)),
            None => (None, None),
        }
    }

    /// Every record of the collection: rkey → text.
    fn records(&self, did: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let mut cursor = String::new();
        for _ in 0..100 {
            let mut q = format!("com.atproto.repo.listRecords?repo={did}&collection={COLLECTION}&limit=100");
            if !cursor.is_empty() {
                q.push_str(&format!("&cursor={cursor}"));
            }
            let v = self.ok(&q, None, None);
            let recs = v["records"].as_array().unwrap();
            for r in recs {
                let rkey = r["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
                out.insert(rkey, r["value"]["text"].as_str().unwrap_or("").to_string());
            }
            match v["cursor"].as_str() {
                Some(c) if !recs.is_empty() => cursor = c.to_string(),
                _ => break,
            }
        }
        out
    }

    /// The repository as served by `sync.getRepo`, verified end to end (every block, the tree,
    /// the commit's signature against the account's key from its DID document).
    fn verify_repo(&self, did: &str) -> String {
        let doc = self.ok(&format!("com.atproto.repo.describeRepo?repo={did}"), None, None);
        let multikey = doc["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
        let key = ues_repo::crypto::PublicKey::from_multikey(multikey).unwrap();
        let mut res = agent()
            .get(format!("http://127.0.0.1:{}/xrpc/com.atproto.sync.getRepo?did={did}", self.http))
            .call()
            .unwrap();
        let car = res.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
        let store = ues_repo::ipld::storage::MemoryBlockstore::new();
        let d = ues_repo::syntax::Did::new(did).unwrap();
        let repo = ues_repo::repo::import_car(&store, &car[..], &d, &key)
            .unwrap_or_else(|e| panic!("{}'s repository does not verify: {e}", self.name));
        std::fs::write(self.dir.join("repo.car"), &car).unwrap();
        repo.commit().data.to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until every running node's repository equals its replica and all are equal; returns the root.
fn converge(nodes: &[&Node], did: &str, what: &str) -> String {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let roots: Vec<_> = nodes.iter().map(|n| n.roots(did)).collect();
        let first = roots[0].1.clone();
        if let Some(root) = &first
            && roots.iter().all(|(rep, repo)| repo == &first && rep == &first)
        {
            eprintln!("{what}: converged on {root} in {:?}", started.elapsed());
            return root.clone();
        }
        if Instant::now() > deadline {
            for n in nodes {
                log_tail(&n.dir, n.name);
            }
            panic!("{what}: no convergence within 90 s: {roots:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three running nodes, and an account created on A with `seeds` records written from A.
fn three_nodes_and_an_account(root: &Path, seeds: usize) -> (Node, Node, Node, String) {
    let mut nodes = ["a", "b", "c"].map(|name| Node::new(root, name));
    nodes.iter_mut().for_each(Node::start);
    let [a, b, c] = nodes;
    let created = a.ok(
        "com.atproto.server.createAccount",
        None,
        Some(json!({"handle": "alice.test", "email": "alice@example.com", "password": "correct horse battery"})),
    );
    let did = created["did"].as_str().unwrap().to_string();
    let token_a = created["accessJwt"].as_str().unwrap().to_string();
    for i in 0..seeds {
        a.put(&token_a, &did, &format!("seed{i}"), &format!("seed {i} from a"));
    }
    (a, b, c, did)
}

#[test]
fn three_nodes_converge_after_partitioned_writes_and_a_kill_9() {
    let root = tempfile::tempdir().unwrap();
    // The account, with records written before it is replicated.
    let (mut a, mut b, mut c, did) = three_nodes_and_an_account(root.path(), 5);

    // B and C become devices of the account and take it over from A.
    for n in [&b, &c] {
        a.admin("dev.ues.admin.authorizeDevice", Some(json!({"did": did, "peerId": n.peer})));
    }
    // A device the account never authorized is refused the account.
    let mut stranger = Node::new(root.path(), "stranger");
    stranger.start();
    let (status, v) = stranger.call(
        "dev.ues.admin.replicate",
        None,
        Some(json!({"did": did, "from": a.peer, "addr": a.multiaddr()})),
        true,
    );
    if status != 502 {
        log_tails(root.path());
    }
    assert_eq!(status, 502, "{v}");
    assert!(v["message"].as_str().unwrap().contains("NotAuthorized"), "{v}");
    stranger.stop();
    // B is told through its admin API (`ues replicate`), C through node.toml at its next start.
    b.admin("dev.ues.admin.replicate", Some(json!({"did": did, "from": a.peer, "addr": a.multiaddr()})));
    c.stop();
    let toml = std::fs::read_to_string(c.dir.join("node.toml")).unwrap();
    let entry = format!("\n[[p2p.replicate]]\ndid = \"{did}\"\nfrom = \"{}\"\naddr = \"{}\"\n", a.peer, a.multiaddr());
    std::fs::write(c.dir.join("node.toml"), toml + &entry).unwrap();
    c.start();
    let first = converge(&[&a, &b, &c], &did, "initial replication");
    for n in [&a, &b, &c] {
        assert_eq!(n.verify_repo(&did), first);
        assert_eq!(n.records(&did).len(), 5, "{} holds the seeds", n.name);
    }
    // B's repository moved by commits from A's operations, and B's firehose carried them as
    // the usual #commit events (what a relay following B sees).
    let (mut fh, _) = tokio_tungstenite::tungstenite::connect(format!(
        "ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos?cursor=0",
        b.http
    ))
    .expect("B's firehose");
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(s) = fh.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_seed = false;
    while !seen_seed && Instant::now() < deadline {
        if let tokio_tungstenite::tungstenite::Message::Binary(frame) = fh.read().expect("a frame") {
            let has = |needle: &[u8]| frame.windows(needle.len()).any(|w| w == needle);
            seen_seed = has(b"#commit") && has(did.as_bytes()) && has(format!("{COLLECTION}/seed0").as_bytes());
        }
    }
    assert!(seen_seed, "B's firehose has a #commit carrying A's records");
    drop(fh);
    // Peer and replication status reach the metrics.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", b.http);
    let mut res = agent().get(&metrics_url).header("authorization", &support::operator_auth(&b.dir)).call().unwrap();
    let metrics = res.body_mut().read_to_string().unwrap();
    assert!(metrics.contains("ues_p2p_connected_peers"), "{metrics}");
    assert!(!metrics.contains("ues_p2p_remote_commits_total 0"), "B committed A's operations: {metrics}");
    // A live write reaches the others without a restart.
    let token_b = b.login();
    b.put(&token_b, &did, "live", "written on b while connected");
    let live = converge(&[&a, &b, &c], &did, "live write");
    assert_ne!(live, first);
    assert_eq!(a.records(&did)["live"], "written on b while connected");

    // Partition: each node runs alone and takes writes, some to the same record.
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
    for (i, n) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        n.start();
        let token = n.login();
        for k in 0..10 {
            n.put(&token, &did, &format!("{}{k}", n.name), &format!("{k} from {}", n.name));
        }
        n.put(&token, &did, "shared", &format!("shared from {}", n.name));
        if i == 1 {
            // B deletes a seed while partitioned.
            n.ok(
                "com.atproto.repo.deleteRecord",
                Some(&token),
                Some(json!({"repo": did, "collection": COLLECTION, "rkey": "seed0"})),
            );
        }
        n.verify_repo(&did);
        if i < 2 {
            n.stop();
        }
    }
    // Reconnection: C is running; A and B come back and find each other.
    a.start();
    b.start();
    let healed = converge(&[&a, &b, &c], &did, "after the partition");
    let mut expected = std::collections::BTreeMap::new();
    for i in 1..5 {
        expected.insert(format!("seed{i}"), format!("seed {i} from a"));
    }
    expected.insert("live".to_string(), "written on b while connected".to_string());
    for name in ["a", "b", "c"] {
        for k in 0..10 {
            expected.insert(format!("{name}{k}"), format!("{k} from {name}"));
        }
    }
    // The last write to the shared record wins everywhere (C wrote it last).
    expected.insert("shared".to_string(), "shared from c".to_string());
    for n in [&a, &b, &c] {
        assert_eq!(n.verify_repo(&did), healed, "{}", n.name);
        assert_eq!(n.records(&did), expected, "{} lost or kept the wrong writes", n.name);
    }
    // The tombstone of B's delete goes on every node once all three have acknowledged it, and
    // the record stays deleted.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in [&a, &b, &c] {
        loop {
            let v = n.admin("dev.ues.admin.getReplication", None);
            if v["accounts"][0]["tombstones"] == 0 && v["tombstonesCollected"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{} kept its tombstones: {v}", n.name);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(!n.records(&did).contains_key("seed0"), "{}", n.name);
    }
    assert_eq!(converge(&[&a, &b, &c], &did, "after collecting tombstones"), healed);

    // kill -9 in the middle of a sync: C is away while A takes 2,000 writes; C comes back, is
    // killed while catching up, and converges after a restart.
    let c_entries = c.admin("dev.ues.admin.getReplication", None)["entries"].as_u64().unwrap();
    c.stop();
    for batch in 0..10 {
        let writes: Vec<Value> = (0..200)
            .map(|i| {
                json!({"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
                    "rkey": format!("bulk{batch}x{i:03}"),
                    "value": {"$type": COLLECTION, "text": format!("bulk {batch} {i}"), "createdAt": "2026-11-25T00:00:00.000Z"}})
            })
            .collect();
        let token = a.login();
        a.ok("com.atproto.repo.applyWrites", Some(&token), Some(json!({"repo": did, "writes": writes})));
    }
    let before = c_entries;
    c.start();
    // Kill C once it has applied part of the catch-up and not all of it (or, if it was too
    // quick to be seen in between, as soon as it has anything).
    let deadline = Instant::now() + Duration::from_secs(30);
    let midway = loop {
        let v = c.admin("dev.ues.admin.getReplication", None);
        let entries = v["entries"].as_u64().unwrap_or(0);
        if entries > before {
            break v["accounts"][0]["repoRoot"] != v["accounts"][0]["replicaRoot"] || entries < before + 2_000;
        }
        assert!(Instant::now() < deadline, "C never caught up after its restart");
        std::thread::sleep(Duration::from_millis(2));
    };
    c.kill9();
    let log = std::fs::read_to_string(c.dir.join("node.log")).unwrap_or_default();
    let tail = log.rsplit("ues listening").next().unwrap_or("");
    eprintln!(
        "C killed {} the catch-up: {} sessions done, {} commits from peers since its restart",
        if midway { "in the middle of" } else { "after" },
        tail.matches("sync session done").count(),
        tail.matches("committed operations from peers").count()
    );
    c.start();
    let last = converge(&[&a, &b, &c], &did, "after kill -9");
    expected.extend((0..10).flat_map(|b| (0..200).map(move |i| (format!("bulk{b}x{i:03}"), format!("bulk {b} {i}")))));
    for n in [&a, &b, &c] {
        assert_eq!(n.verify_repo(&did), last, "{}", n.name);
        assert_eq!(n.records(&did), expected, "{} after kill -9", n.name);
    }
    // Bluesky's own implementation verifies each node's repository too, when it is installed.
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if js.join("node_modules/@atproto/repo").is_dir() {
        let doc = a.ok(&format!("com.atproto.repo.describeRepo?repo={did}"), None, None);
        let key = format!("did:key:{}", doc["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap());
        for n in [&a, &b, &c] {
            let out = Command::new("node")
                .arg(js.join("verify_repo_car.mjs"))
                .arg(n.dir.join("repo.car"))
                .arg(&did)
                .arg(&key)
                .output()
                .expect("node runs");
            assert!(out.status.success(), "{}: {}", n.name, String::from_utf8_lossy(&out.stdout));
        }
    } else {
        assert!(std::env::var("CI").is_err(), "CI must install tests/js (scripts/setup.sh)");
        eprintln!("SKIPPED: @atproto/repo verification (tests/js/node_modules missing; run scripts/setup.sh)");
    }
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

/// The signing key the node's DID document for the account names (did:key).
fn doc_key(n: &Node, did: &str) -> String {
    let doc = n.ok(&format!("com.atproto.repo.describeRepo?repo={did}"), None, None);
    let multikey = doc["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    format!("did:key:{multikey}")
}

/// Revoking a device rotates the account's signing key: the node that holds the DID's
/// rotation key publishes the new key in a PLC operation and seals it to the devices that stay;
/// a device that stays installs it and signs with it; the revoked device is left with a key
/// that verifies nothing the account commits from then on, and its writes go nowhere.
#[test]
fn revoking_a_device_rotates_the_signing_key_past_it() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c, did) = three_nodes_and_an_account(root.path(), 3);
    for n in [&b, &c] {
        let v = a.admin("dev.ues.admin.authorizeDevice", Some(json!({"did": did, "peerId": n.peer})));
        assert_eq!(v["keyRotated"], false, "an authorization rotates nothing: {v}");
    }
    for n in [&b, &c] {
        n.admin("dev.ues.admin.replicate", Some(json!({"did": did, "from": a.peer, "addr": a.multiaddr()})));
    }
    converge(&[&a, &b, &c], &did, "initial replication");
    let old = doc_key(&a, &did);
    assert_eq!(doc_key(&b, &did), old);
    assert_eq!(doc_key(&c, &did), old);

    // A revokes C: the key rotates.
    let v = a.admin("dev.ues.admin.authorizeDevice", Some(json!({"did": did, "peerId": c.peer, "revoke": true})));
    assert_eq!(v["keyRotated"], true, "{v}");
    let new = v["signingKey"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(doc_key(&a, &did), new, "A's DID document names the new key");

    // B installs the key sealed to it, and what it commits from then on verifies against it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while doc_key(&b, &did) != new {
        assert!(Instant::now() < deadline, "B never installed the new key");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token_b = b.login();
    b.put(&token_b, &did, "after", "written on b after the rotation");
    let root_ab = converge(&[&a, &b], &did, "after the rotation");
    for n in [&a, &b] {
        assert_eq!(n.verify_repo(&did), root_ab, "{}", n.name);
        assert_eq!(n.records(&did)["after"], "written on b after the rotation");
    }
    // The key C holds no longer verifies the account's repository.
    let car = std::fs::read(a.dir.join("repo.car")).unwrap();
    let stale = ues_repo::crypto::PublicKey::from_did_key(&old).unwrap();
    let store = ues_repo::ipld::storage::MemoryBlockstore::new();
    let d = ues_repo::syntax::Did::new(did.as_str()).unwrap();
    assert!(ues_repo::repo::import_car(&store, &car[..], &d, &stale).is_err(), "the old key still verifies");
    let log = std::fs::read_to_string(b.dir.join("node.log")).unwrap();
    assert!(log.contains("the account's new signing key installed"), "B's log says so");

    // C keeps the old key and nothing it writes reaches the others.
    assert_eq!(doc_key(&c, &did), old, "C was never given the new key");
    let token_c = c.login();
    let (status, _) = c.call(
        "com.atproto.repo.putRecord",
        Some(&token_c),
        Some(json!({"repo": did, "collection": COLLECTION, "rkey": "from-c",
            "record": {"$type": COLLECTION, "text": "revoked", "createdAt": "2026-11-25T00:00:00.000Z"}})),
        false,
    );
    eprintln!("the revoked device's own write answered {status}");
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        assert!(!n.records(&did).contains_key("from-c"), "{} took a write of the revoked device", n.name);
    }
}

/// Uploads `bytes` as a blob of the account; returns the blob reference.
fn upload(n: &Node, token: &str, mime: &str, bytes: &[u8]) -> Value {
    let mut res = agent()
        .post(format!("http://127.0.0.1:{}/xrpc/com.atproto.repo.uploadBlob", n.http))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", mime)
        .send(bytes)
        .unwrap_or_else(|e| panic!("{} uploadBlob: {e}", n.name));
    res.body_mut().read_json::<Value>().unwrap()["blob"].clone()
}

/// The blob as `n` serves it (`sync.getBlob`), once it does (within 60 s).
fn served_blob(n: &Node, did: &str, cid: &str) -> Vec<u8> {
    let url = format!("http://127.0.0.1:{}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}", n.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut res) = agent().get(&url).call()
            && res.status() == 200
        {
            return res.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
        }
        if Instant::now() > deadline {
            log_tails(n.dir.parent().unwrap());
            panic!("{} never served blob {cid}: {}", n.name, n.admin("dev.ues.admin.getReplication", None)["blobs"]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n`'s blob copy status (`ues peer status`).
fn blob_status(n: &Node) -> Value {
    let v = n.admin("dev.ues.admin.getReplication", None);
    json!({"blobs": v["blobs"], "pending": v["accounts"][0]["blobsPending"]})
}

/// Waits until `n` has written part of `cid`'s copy and not all of it.
fn copy_midway(n: &Node, cid: &str, size: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = blob_status(n);
        let got = s["blobs"]["copying"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["cid"] == cid))
            .and_then(|c| c["received"].as_u64())
            .unwrap_or(0);
        if got > 0 && got < size {
            return got;
        }
        assert!(Instant::now() < deadline, "{} never held part of the blob: {s}", n.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes that differ from blob to blob (a `seed` each), `n` of them.
fn blob_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Blobs travel with a replicated account, both ways: an image uploaded and posted on one
/// device after replication started is served by the other's `getBlob`, byte for byte. A copy
/// cut off by a kill -9 of the sender resumes from what it holds once the sender is back, and
/// one cut off by a kill -9 of the receiver resumes after its restart; `ues peer status` shows
/// the pending blobs and the copies under way.
#[test]
fn blobs_follow_a_replicated_account_and_cut_copies_resume() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = ["a", "b"].map(|name| Node::new(root.path(), name));
    // Copies paced to 1 MiB/s, so that one of a few MiB can be cut in the middle.
    for n in &nodes {
        let toml = std::fs::read_to_string(n.dir.join("node.toml")).unwrap();
        std::fs::write(n.dir.join("node.toml"), toml.replace("[p2p]\n", "[p2p]\nblob_bytes_per_sec = 1048576\n"))
            .unwrap();
    }
    nodes.iter_mut().for_each(Node::start);
    let [mut a, mut b] = nodes;
    let created = a.ok(
        "com.atproto.server.createAccount",
        None,
        Some(json!({"handle": "alice.test", "email": "alice@example.com", "password": "correct horse battery"})),
    );
    let did = created["did"].as_str().unwrap().to_string();
    a.admin("dev.ues.admin.authorizeDevice", Some(json!({"did": did, "peerId": b.peer})));
    b.admin("dev.ues.admin.replicate", Some(json!({"did": did, "from": a.peer, "addr": a.multiaddr()})));
    converge(&[&a, &b], &did, "replication");

    // An image posted on A after replication started: B serves it.
    let token_a = a.login();
    let image: Vec<u8> = [&b"\x89PNG\r\n\x1a\n"[..], &blob_bytes(1, 40_000)].concat();
    let blob = upload(&a, &token_a, "image/png", &image);
    let post = json!({"$type": "app.bsky.feed.post", "text": "a picture", "createdAt": "2026-12-05T00:00:00.000Z",
        "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "noise", "image": blob}]}});
    a.ok(
        "com.atproto.repo.createRecord",
        Some(&token_a),
        Some(json!({"repo": did, "collection": "app.bsky.feed.post", "record": post})),
    );
    let cid = blob["ref"]["$link"].as_str().unwrap().to_string();
    assert_eq!(served_blob(&b, &did, &cid), image, "B serves A's image byte for byte");

    // The other way: a file attached on B reaches A.
    let token_b = b.login();
    let doc = blob_bytes(2, 70_000);
    let blob_b = upload(&b, &token_b, "application/pdf", &doc);
    b.put_blob_record(&token_b, &did, "attachment", &blob_b);
    assert_eq!(served_blob(&a, &did, blob_b["ref"]["$link"].as_str().unwrap()), doc, "A serves B's file");

    // A large blob on A; B's copy is cut by a kill -9 of A in the middle, and goes on when A is back.
    let big = blob_bytes(3, 5 << 20);
    let big_ref = upload(&a, &token_a, "video/mp4", &big);
    let big_cid = big_ref["ref"]["$link"].as_str().unwrap().to_string();
    a.put_blob_record(&token_a, &did, "big", &big_ref);
    let held = copy_midway(&b, &big_cid, big.len() as u64);
    a.kill9();
    eprintln!("A killed with {held} of {} bytes copied to B", big.len());
    let s = blob_status(&b);
    assert_eq!(s["pending"], 1, "B's status shows the blob still pending: {s}");
    std::thread::sleep(Duration::from_secs(2));
    a.start();
    assert_eq!(served_blob(&b, &did, &big_cid), big, "B's copy completed after A came back");
    let s = blob_status(&b);
    assert_eq!(s["pending"], 0, "{s}");
    let received = s["blobs"]["bytesReceived"].as_u64().unwrap();
    let total = (image.len() + big.len()) as u64;
    assert!(received < total + (1 << 19), "B resumed instead of starting over: {received} bytes for {total}: {s}");
    assert!(std::fs::read_to_string(b.dir.join("node.log")).unwrap().contains("blob copy paused"));

    // Another large blob; this time the receiver is killed in the middle, and after its restart
    // it goes on from the chunks it had written.
    let token_a = a.login();
    let big2 = blob_bytes(4, 4 << 20);
    let big2_ref = upload(&a, &token_a, "video/mp4", &big2);
    let big2_cid = big2_ref["ref"]["$link"].as_str().unwrap().to_string();
    a.put_blob_record(&token_a, &did, "big2", &big2_ref);
    copy_midway(&b, &big2_cid, big2.len() as u64);
    std::thread::sleep(Duration::from_millis(600));
    b.kill9();
    b.start();
    assert_eq!(served_blob(&b, &did, &big2_cid), big2, "B's copy completed after its restart");
    let log = std::fs::read_to_string(b.dir.join("node.log")).unwrap();
    let resumed = log.rsplit("ues listening").next().unwrap_or("").contains("blob copy resumed");
    assert!(resumed, "B went on from the chunks it held");
    for n in [&a, &b] {
        let s = blob_status(n);
        assert_eq!(s["pending"], 0, "{}: {s}", n.name);
    }
    a.stop();
    b.stop();
}
