//! Power cuts. The node runs under `tests/powercut/powercut.c` (an `LD_PRELOAD` library) that
//! keeps, beside the data directory, an image of exactly what a disk would hold after a power
//! cut: only what the node synced. Clients write records and blobs; at a random moment the node
//! is killed, the data directory is replaced by the image, and the node is started on it. Every
//! write it acknowledged must be there (every acknowledged deletion still gone, every blob with
//! its bytes), and the repository must verify end to end (`ues car verify`).
//!
//! The same cut under `durability = "process"` loses acknowledged writes: the control that
//! shows the image really drops what was not synced.

#[path = "support/node.rs"]
mod node;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const COLLECTION: &str = "dev.ues.test.powercut";
const WRITERS: usize = 4;

/// Rounds of cut and restart (`UES_POWERCUT_ROUNDS` to change).
fn rounds() -> usize {
    std::env::var("UES_POWERCUT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

/// Builds the library with the system C compiler (RocksDB's build needs one anyway).
fn library() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libues_powercut.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/powercut.c");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("a C compiler (cc) to build the power-cut library");
    assert!(status.success(), "building {} failed", src.display());
    out
}

/// xorshift64*: the cut times, reproducible from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A data directory, its power-cut image, and the node's log.
struct Disk {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    image: PathBuf,
    log: PathBuf,
    library: PathBuf,
}

impl Disk {
    fn new(config: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (data, image) = (root.join("data"), root.join("image"));
        for d in [&data, &image] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("node.toml"), config).unwrap();
        }
        Disk { data, image, log: root.join("node.log"), library: library(), _tmp: tmp }
    }

    /// `ues run` on the data directory with the power-cut library loaded.
    fn start(&self) -> (Child, u16) {
        let port = node::free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ues"))
            .args(["run", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .env("RUST_LOG", "info")
            .env("LD_PRELOAD", &self.library)
            .env("UES_POWERCUT_ROOT", &self.data)
            .env("UES_POWERCUT_IMAGE", &self.image)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        (child, port)
    }

    /// The power comes back: the disk holds what was synced, nothing else.
    fn cut(&self, mut child: Child) {
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&self.data).unwrap();
        copy_dir(&self.image, &self.data);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn call(base: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let agent = node::agent();
    let url = format!("{base}{path}");
    let resp = match body {
        None => agent.get(&url).header("authorization", &format!("Bearer {}", token.unwrap_or(""))).call(),
        Some(b) => agent.post(&url).header("authorization", &format!("Bearer {}", token.unwrap_or(""))).send_json(b),
    };
    match resp {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The answer to a procedure call if the node acknowledged it (200); `None` for anything else,
/// the node gone included.
fn acknowledged(base: &str, nsid: &str, token: &str, body: Value) -> Option<Value> {
    match call(base, &format!("/xrpc/{nsid}"), Some(token), Some(body)) {
        (200, v) => Some(v),
        _ => None,
    }
}

/// What the node acknowledged.
#[derive(Default)]
struct Acked {
    /// rkey -> CID of every acknowledged create not deleted since.
    records: BTreeMap<String, String>,
    /// rkeys whose deletion was acknowledged.
    deleted: Vec<String>,
    /// blob CID -> its bytes.
    blobs: BTreeMap<String, Vec<u8>>,
}

/// One writer: creates records, deletes every seventh it made, and (writer 0) uploads a blob
/// and a record holding it every tenth turn, until `stop` or the node goes away.
fn writer(base: String, did: String, token: String, id: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    for i in 0..1_000_000usize {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut record =
            json!({"$type": COLLECTION, "writer": id, "n": i, "text": format!("{id}-{i} {}", "x".repeat(i % 300))});
        let mut blob: Option<(String, Vec<u8>)> = None;
        if id == 0 && i % 10 == 0 {
            let bytes: Vec<u8> = (0..(20_000 + i * 37 % 30_000)).map(|k| (k * 31 + i) as u8).collect();
            let res = node::agent()
                .post(format!("{base}/xrpc/com.atproto.repo.uploadBlob"))
                .header("authorization", &format!("Bearer {token}"))
                .header("content-type", "application/octet-stream")
                .send(&bytes[..]);
            let Ok(mut res) = res else { return };
            if res.status().as_u16() != 200 {
                return;
            }
            let v: Value = res.body_mut().read_json().unwrap();
            record["image"] = v["blob"].clone();
            blob = Some((v["blob"]["ref"]["$link"].as_str().unwrap().to_string(), bytes));
        }
        let body = json!({"repo": did, "collection": COLLECTION, "record": record});
        let Some(v) = acknowledged(&base, "com.atproto.repo.createRecord", &token, body) else { return };
        let rkey = v["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        {
            let mut a = acked.lock().unwrap();
            a.records.insert(rkey.clone(), v["cid"].as_str().unwrap().to_string());
            if let Some((cid, bytes)) = blob {
                a.blobs.insert(cid, bytes);
            }
        }
        if i % 7 == 3 {
            // From here until the deletion is acknowledged the record may be there or not.
            acked.lock().unwrap().records.remove(&rkey);
            let body = json!({"repo": did, "collection": COLLECTION, "rkey": rkey});
            if acknowledged(&base, "com.atproto.repo.deleteRecord", &token, body).is_none() {
                return;
            }
            acked.lock().unwrap().deleted.push(rkey);
        }
    }
}

/// Every acknowledged write that is not there (as text, for the assertion message), after the
/// repository itself verified.
fn missing(base: &str, did: &str, acked: &Acked, workdir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (rkey, cid) in &acked.records {
        let (s, v) = call(
            base,
            &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection={COLLECTION}&rkey={rkey}"),
            None,
            None,
        );
        if s != 200 || v["cid"].as_str() != Some(cid) {
            out.push(format!("record {rkey} ({cid}): {s} {v}"));
        }
    }
    for rkey in &acked.deleted {
        let (s, _) = call(
            base,
            &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection={COLLECTION}&rkey={rkey}"),
            None,
            None,
        );
        if s != 404 && s != 400 {
            out.push(format!("deleted record {rkey} is back ({s})"));
        }
    }
    for (cid, bytes) in &acked.blobs {
        let res = node::agent().get(format!("{base}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}")).call();
        let got = res.ok().filter(|r| r.status().as_u16() == 200).map(|mut r| r.body_mut().read_to_vec().unwrap());
        if got.as_ref() != Some(bytes) {
            out.push(format!("blob {cid}: {:?} bytes instead of {}", got.map(|g| g.len()), bytes.len()));
        }
    }
    // The whole repository, exported and checked block by block, tree and records.
    let car = workdir.join("repo.car");
    let res = node::agent().get(format!("{base}/xrpc/com.atproto.sync.getRepo?did={did}")).call();
    match res {
        Ok(mut r) if r.status().as_u16() == 200 => match r.body_mut().with_config().limit(1 << 30).read_to_vec() {
            Ok(bytes) => {
                std::fs::write(&car, bytes).unwrap();
                let v = Command::new(env!("CARGO_BIN_EXE_ues")).args(["car", "verify"]).arg(&car).output().unwrap();
                if !v.status.success() {
                    out.push(format!("the repository does not verify: {}", String::from_utf8_lossy(&v.stdout)));
                }
            }
            Err(e) => out.push(format!("getRepo broke off: {e}")),
        },
        other => out.push(format!("getRepo failed: {:?}", other.map(|r| r.status()))),
    }
    out
}

fn healthy_within(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if node::agent().get(format!("http://127.0.0.1:{port}/xrpc/_health")).call().is_ok_and(|r| r.status() == 200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Writes for a random while with [`WRITERS`] clients, then cuts the power mid-stream.
fn write_then_cut(
    disk: &Disk,
    child: Child,
    base: &str,
    did: &str,
    token: &str,
    rng: &mut Rng,
    acked: &Arc<Mutex<Acked>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (b, d, t, s, a) = (base.to_string(), did.to_string(), token.to_string(), stop.clone(), acked.clone());
            std::thread::spawn(move || writer(b, d, t, id, s, a))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(rng.between(300, 2_500)));
    disk.cut(child);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}

/// A new account's DID.
fn create_account(base: &str, handle: &str) -> String {
    let body = json!({"handle": handle, "password": "a long password"});
    let (s, v) = call(base, "/xrpc/com.atproto.server.createAccount", None, Some(body));
    assert_eq!(s, 200, "{v}");
    v["did"].as_str().unwrap().to_string()
}

fn session(base: &str, handle: &str) -> String {
    let (s, v) = call(
        base,
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({"identifier": handle, "password": "a long password"})),
    );
    assert_eq!(s, 200, "{v}");
    v["accessJwt"].as_str().unwrap().to_string()
}

#[test]
fn no_acknowledged_write_is_lost_to_a_power_cut() {
    let disk = Disk::new("[xrpc.rate_limits]\nenabled = false\n");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("power-cut seed {seed}");
    let mut rng = Rng(seed);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (mut child, mut port) = disk.start();
    assert!(healthy_within(port, Duration::from_secs(60)), "the node never answered:\n{}", disk.log_text());
    let base = format!("http://127.0.0.1:{port}");
    let did = create_account(&base, "cut.test");
    let mut replays = 0;
    for round in 0..rounds() {
        let base = format!("http://127.0.0.1:{port}");
        let token = session(&base, "cut.test");
        let before = acked.lock().unwrap().records.len();
        write_then_cut(&disk, child, &base, &did, &token, &mut rng, &acked);
        let a = acked.lock().unwrap();
        println!(
            "round {round}: {} records, {} deletions, {} blobs acknowledged so far ({} new records live)",
            a.records.len(),
            a.deleted.len(),
            a.blobs.len(),
            a.records.len() as i64 - before as i64
        );
        drop(a);
        (child, port) = disk.start();
        assert!(
            healthy_within(port, Duration::from_secs(60)),
            "round {round}: the node did not come back:\n{}",
            disk.log_text()
        );
        let base = format!("http://127.0.0.1:{port}");
        let lost = missing(&base, &did, &acked.lock().unwrap(), disk.image.parent().unwrap());
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): {} acknowledged writes lost: {:#?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        let log = disk.log_text();
        replays = log.matches("put back from the journal").count();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(acked.lock().unwrap().records.len() > 50, "too few writes to say anything");
    // The cuts fell between checkpoints: commits came back from the journal, not only from
    // what the blockstore had synced.
    assert!(replays > 0, "no restart replayed the journal:\n{}", disk.log_text());
}

#[test]
fn process_durability_loses_acknowledged_writes_to_the_same_cut() {
    let disk = Disk::new("[xrpc.rate_limits]\nenabled = false\n[storage]\ndurability = \"process\"\n");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (child, port) = disk.start();
    assert!(healthy_within(port, Duration::from_secs(60)), "the node never answered:\n{}", disk.log_text());
    let base = format!("http://127.0.0.1:{port}");
    let did = create_account(&base, "loose.test");
    // Long enough that acknowledged writes exist, short of SQLite's first checkpoint after them.
    let token = session(&base, "loose.test");
    write_then_cut(&disk, child, &base, &did, &token, &mut rng, &acked);
    let acknowledged = {
        let a = acked.lock().unwrap();
        assert!(a.records.len() > 20, "too few writes to say anything ({})", a.records.len());
        a.records.len() + a.deleted.len() + a.blobs.len()
    };
    let (mut child, port) = disk.start();
    let lost = if healthy_within(port, Duration::from_secs(60)) {
        missing(&format!("http://127.0.0.1:{port}"), &did, &acked.lock().unwrap(), disk.image.parent().unwrap()).len()
    } else {
        acknowledged
    };
    let _ = child.kill();
    let _ = child.wait();
    println!("process durability: {lost} of {acknowledged} acknowledged writes (or the repository) lost to the cut");
    assert!(lost > 0, "the image kept every unsynced write: the power-cut model does not cut");
}
