//! Blobs on the disk and in an S3-compatible object store (moto's S3 server, started on
//! loopback by the test): the same tests pass on both (upload, whole and ranged downloads,
//! garbage collection of unreferenced blobs); on S3 a large upload goes up as a multipart
//! upload and one cut off by its client leaves no object and no open upload behind; and
//! `ues blobs migrate` moves a node's blobs to S3 and back, every byte the same.

#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, agent, create_account, free_port, start_with};

const BUCKET: &str = "ues-blobs";
const COLLECTION: &str = "dev.ues.test.attachment";

/// moto's S3 server on a loopback port, killed when dropped.
struct S3 {
    child: Child,
    endpoint: String,
    python: PathBuf,
}

impl S3 {
    /// Starts it and makes the bucket; `None` (loudly, and a failure under CI) without the
    /// test virtualenv.
    fn start() -> Option<Self> {
        let python = shared::python_sdk()?;
        let has_moto = Command::new(&python).args(["-c", "import moto.server, boto3"]).status().unwrap().success();
        if !has_moto {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but moto is not installed in {}: scripts/setup.sh installs it", python.display());
            }
            eprintln!(
                "\n!!!!!!!! SKIPPED: moto is not installed in {} (run scripts/setup.sh) !!!!!!!!\n",
                python.display()
            );
            return None;
        }
        // A free port can be taken by a parallel test's node before moto binds it (moto then
        // exits), and a bare TCP connect can succeed against something else: so the server
        // counts as up only once it answers HTTP with moto's own header, and a server that
        // exited is started again on another port.
        for _attempt in 0..5 {
            let port = free_port();
            let child = Command::new(&python)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut s3 = S3 { child, endpoint: format!("http://127.0.0.1:{port}"), python: python.clone() };
            let deadline = Instant::now() + Duration::from_secs(60);
            let quick = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build();
            let quick: ureq::Agent = quick.into();
            let up = loop {
                if s3.child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(Instant::now() < deadline, "moto's S3 server never answered");
                if let Ok(res) = quick.get(format!("{}/moto-api/", s3.endpoint)).call()
                    && res.headers().get("server").is_some_and(|v| v.to_str().unwrap_or("").contains("Werkzeug"))
                {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                s3.tool(&["create", BUCKET]);
                return Some(s3);
            }
        }
        panic!("moto's S3 server exited five times at start");
    }

    fn tool(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/s3.py");
        let out = Command::new(&self.python).arg(script).arg(&self.endpoint).args(args).output().unwrap();
        assert!(out.status.success(), "s3.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The bucket's objects (key -> size) and open multipart uploads.
    fn state(&self) -> (serde_json::Map<String, Value>, Vec<Value>) {
        let v: Value = serde_json::from_str(&self.tool(&["state", BUCKET])).unwrap();
        (v["objects"].as_object().unwrap().clone(), v["uploads"].as_array().unwrap().clone())
    }

    /// `node.toml` for a node whose new blobs go to `place`, with this bucket configured.
    fn config(&self, dir: &Path, place: &str) -> String {
        let creds = dir.join("aws-credentials");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&creds, "[default]\naws_access_key_id = test-key\naws_secret_access_key = test-secret\n")
            .unwrap();
        format!(
            "[xrpc]\nblob_grace_secs = 2\n\n[storage]\nblobs = \"{place}\"\n\n[storage.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\ncredentials_file = \"{}\"\n",
            self.endpoint,
            creds.display()
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DISK_CONFIG: &str = "[xrpc]\nblob_grace_secs = 2\n";

fn ues(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().unwrap()
}

fn sample(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed as usize * 7) % 251) as u8).collect()
}

fn cid_of(bytes: &[u8]) -> String {
    use ues_repo::ipld::storage::{RAW, SHA2_256, cid_for};
    cid_for(RAW, SHA2_256, bytes).unwrap().to_string()
}

fn upload(base: &str, token: &str, mime: &str, bytes: &[u8]) -> Value {
    let mut res = agent()
        .post(format!("{base}/xrpc/com.atproto.repo.uploadBlob"))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", mime)
        .send(bytes)
        .unwrap();
    let v: Value = res.body_mut().read_json().unwrap();
    assert!(v["blob"].is_object(), "uploadBlob: {v}");
    v["blob"].clone()
}

/// A record of the account that references `blobs`.
fn reference(base: &str, did: &str, token: &str, blobs: &[&Value]) {
    let res = agent()
        .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(json!({"repo": did, "collection": COLLECTION, "record": {"$type": COLLECTION, "files": blobs}}))
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Bytes shown by their length and hash, so a failed comparison prints a line, not megabytes.
#[derive(PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, {}", self.0.len(), if self.0.is_empty() { "-".into() } else { cid_of(&self.0) })
    }
}

/// `getBlob` with an optional `Range` header: (status, body).
fn get_blob(base: &str, did: &str, cid: &str, range: Option<&str>) -> (u16, Bytes) {
    let mut req = agent().get(format!("{base}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}"));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let mut res = req.call().unwrap();
    (res.status().as_u16(), Bytes(res.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()))
}

/// The blob tests both stores pass: uploads keep their CIDs, whole and ranged downloads
/// return the right bytes (across S3 part and disk chunk boundaries), and an unreferenced blob
/// is deleted after the grace period while referenced ones stay. Returns the blobs' CIDs
/// (referenced, referenced, deleted).
fn blob_suite(node: &Running) -> [String; 3] {
    let base = &node.base;
    let (did, token) = create_account(base, "blobs.test");
    let small = sample(3_000, 1);
    let large = sample(12 * 1024 * 1024 + 123, 2);
    let orphan = sample(40_000, 3);
    let small_ref = upload(base, &token, "image/png", &small);
    let large_ref = upload(base, &token, "video/mp4", &large);
    let orphan_ref = upload(base, &token, "image/jpeg", &orphan);
    let cids = [&small_ref, &large_ref, &orphan_ref].map(|r| r["ref"]["$link"].as_str().unwrap().to_string());
    assert_eq!(cids, [cid_of(&small), cid_of(&large), cid_of(&orphan)], "the AT Protocol CIDs of the bytes");
    reference(base, &did, &token, &[&small_ref, &large_ref]);

    assert_eq!(get_blob(base, &did, &cids[0], None), (200, Bytes(small.clone())));
    assert_eq!(get_blob(base, &did, &cids[1], None), (200, Bytes(large.clone())));
    // Across the first part boundary of a multipart upload (5 MiB) and disk chunks (256 KiB).
    let (from, to) = (5 * 1024 * 1024 - 1000, 5 * 1024 * 1024 + 999);
    assert_eq!(
        get_blob(base, &did, &cids[1], Some(&format!("bytes={from}-{to}"))),
        (206, Bytes(large[from..=to].to_vec()))
    );
    assert_eq!(get_blob(base, &did, &cids[1], Some("bytes=-100")), (206, Bytes(large[large.len() - 100..].to_vec())));
    assert_eq!(get_blob(base, &did, &cids[0], Some("bytes=2990-")), (206, Bytes(small[2990..].to_vec())));
    assert_eq!(get_blob(base, &did, &cids[0], Some("bytes=5000-6000")).0, 416);

    let deadline = Instant::now() + Duration::from_secs(60);
    // Gone as the reference PDS answers a blob it does not hold: 400 BlobNotFound. A read that
    // the collection cuts short (the blob deleted while it streams) counts as not gone yet.
    let status = |cid: &str| {
        let url = format!("{base}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}");
        agent().get(url).call().ok().and_then(|mut r| r.body_mut().read_to_vec().ok().map(|_| r.status().as_u16()))
    };
    while status(&cids[2]) != Some(400) {
        assert!(Instant::now() < deadline, "the unreferenced blob was never collected");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(get_blob(base, &did, &cids[0], None), (200, Bytes(small)));
    assert_eq!(get_blob(base, &did, &cids[1], None), (200, Bytes(large)));
    cids
}

#[test]
fn the_same_blob_tests_pass_on_disk_and_on_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = start_with(&tmp.path().join("disk"), DISK_CONFIG);
    blob_suite(&disk);
    drop(disk);

    let Some(s3) = S3::start() else { return };
    let dir = tmp.path().join("s3");
    let node = start_with(&dir, &s3.config(&dir, "s3"));
    let cids = blob_suite(&node);
    let (objects, uploads) = s3.state();
    let mut keys: Vec<String> = objects.keys().cloned().collect();
    keys.sort();
    let mut want = vec![format!("blobs/{}", cids[0]), format!("blobs/{}", cids[1])];
    want.sort();
    assert_eq!(keys, want, "one object per referenced blob, nothing staged: {objects:?}");
    assert_eq!(objects[&format!("blobs/{}", cids[1])], 12 * 1024 * 1024 + 123);
    assert!(uploads.is_empty(), "no multipart upload left open: {uploads:?}");
}

/// A client that sends part of a large upload and hangs up: the node had begun a multipart
/// upload; it is aborted and nothing is left in the bucket, and the node goes on answering.
#[test]
fn an_upload_cut_off_mid_multipart_leaves_nothing_in_the_bucket() {
    let Some(s3) = S3::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let node = start_with(&dir, &s3.config(&dir, "s3"));
    let (_, token) = create_account(&node.base, "cut.test");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let total = 20 * 1024 * 1024;
    write!(
        sock,
        "POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: video/mp4\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let body = sample(11 * 1024 * 1024, 9);
    sock.write_all(&body).unwrap();
    sock.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.state().1.is_empty() {
        assert!(Instant::now() < deadline, "the node never began a multipart upload for 11 MiB");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(sock);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (objects, uploads) = s3.state();
        if objects.is_empty() && uploads.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: objects {objects:?}, uploads {uploads:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    assert!(!log.contains("not aborted"), "the abort failed: {log}");
    assert_eq!(agent().get(format!("{}/xrpc/_health", node.base)).call().unwrap().status(), 200);
}

/// `ues blobs migrate`: a node's blobs move from its disk to S3 and back, each served with the
/// same bytes after every move, and the place left holds none of them; a second run moves
/// nothing, and a run while the node is up is refused.
#[test]
fn blobs_migrate_to_s3_and_back() {
    let Some(s3) = S3::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let data_dir = dir.to_str().unwrap().to_string();
    let blobs = [sample(7 * 1024 * 1024 + 5, 4), sample(1000, 5)];
    let node = start_with(&dir, &s3.config(&dir, "disk"));
    let (did, token) = create_account(&node.base, "moving.test");
    let refs: Vec<Value> = blobs.iter().map(|b| upload(&node.base, &token, "application/octet-stream", b)).collect();
    reference(&node.base, &did, &token, &refs.iter().collect::<Vec<_>>());
    let cids: Vec<String> = blobs.iter().map(|b| cid_of(b)).collect();
    assert!(s3.state().0.is_empty(), "blobs = \"disk\": nothing goes to the bucket");
    // `ues doctor` reaches the bucket; one that does not exist is something to fix.
    let doctor = |config: &str| -> Value {
        let d = tmp.path().join("doctor");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("node.toml"), config).unwrap();
        let out = ues(&["doctor", "--json", "--data-dir", d.to_str().unwrap()]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "objects").unwrap().clone()
    };
    let good = doctor(&s3.config(&dir, "s3"));
    assert_eq!(good["ok"], true, "{good}");
    let bad = doctor(&s3.config(&dir, "s3").replace(BUCKET, "no-such-bucket"));
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["fix"].as_str().unwrap().contains("[storage.s3]"), "{bad}");
    assert!(s3.state().0.is_empty(), "the probe left nothing");
    let out = ues(&["blobs", "migrate", "--to", "s3", "--data-dir", &data_dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the node"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(node);

    let migrate = |to: &str| -> Value {
        let out = ues(&["blobs", "migrate", "--to", to, "--data-dir", &data_dir]);
        assert!(out.status.success(), "migrate --to {to}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let served = |place: &str| {
        let node = start_with(&dir, &s3.config(&dir, place));
        for (cid, bytes) in cids.iter().zip(&blobs) {
            assert_eq!(get_blob(&node.base, &did, cid, None), (200, Bytes(bytes.clone())), "blob {cid} after the move");
        }
    };
    let v = migrate("s3");
    assert_eq!((v["moved"].as_u64(), v["alreadyThere"].as_u64()), (Some(2), Some(0)), "{v}");
    let mut keys: Vec<String> = s3.state().0.keys().cloned().collect();
    keys.sort();
    let mut want: Vec<String> = cids.iter().map(|c| format!("blobs/{c}")).collect();
    want.sort();
    assert_eq!(keys, want);
    served("s3");
    let v = migrate("s3");
    assert_eq!((v["moved"].as_u64(), v["alreadyThere"].as_u64()), (Some(0), Some(2)), "{v}");

    let v = migrate("disk");
    assert_eq!(v["moved"].as_u64(), Some(2), "{v}");
    assert!(s3.state().0.is_empty(), "the objects went with the move back");
    served("disk");
}
