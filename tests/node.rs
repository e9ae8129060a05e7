//! `ues run` as a user runs it: a real process, a real socket on 127.0.0.1.

#[path = "support/shared.rs"]
mod shared;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One HTTP/1.1 GET, answered as (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http(addr, "GET", path, None, None)
}

/// One HTTP/1.1 request with an optional bearer token and JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn spawn_node(data_dir: &std::path::Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["run", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &addr.to_string()])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_healthy(addr: SocketAddr) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(answer) = http_get(addr, "/xrpc/_health") {
            return answer;
        }
        assert!(Instant::now() < deadline, "node never answered on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn first_run_initialises_serves_health_refuses_a_second_node_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_port();
    let mut node = spawn_node(&data, addr);

    let (status, body) = wait_healthy(addr);
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = http_get(addr, "/health").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""), "{body}");

    // First run initialised the data directory.
    let key = data.join("identity.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert!(std::fs::read_to_string(data.join("node.toml")).unwrap().contains("[storage]"));

    // A second node on the same data directory is refused with a clear message.
    let second = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["run", "--data-dir"])
        .arg(&data)
        .args(["--listen", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("locked"), "stderr: {err}");

    let status = terminate(&mut node);
    assert!(status.success(), "graceful shutdown exits 0, got {status:?}");
    let mut log = String::new();
    node.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("ues stopped"), "{log}");

    // The same data directory starts again, with the same identity.
    let before = std::fs::read(&key).unwrap();
    let mut again = spawn_node(&data, addr);
    assert_eq!(wait_healthy(addr).0, 200);
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert!(terminate(&mut again).success());
}

#[test]
fn init_writes_config_and_key_and_refuses_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(["init", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("node.toml").is_file() && data.join("identity.key").is_file());
    let again = Command::new(env!("CARGO_BIN_EXE_ues")).args(["init", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!again.status.success(), "init must not overwrite an identity");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\nlisten = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(["run", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
    let help = Command::new(env!("CARGO_BIN_EXE_ues")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("init") && help.contains("run"), "{help}");
}

fn json(answer: (u16, String)) -> (u16, serde_json::Value) {
    (answer.0, serde_json::from_str(&answer.1).unwrap_or(serde_json::Value::Null))
}

#[test]
fn accounts_records_and_sessions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_port();
    let mut node = spawn_node(&data, addr);
    wait_healthy(addr);
    let (s, acct) = json(
        http(
            addr,
            "POST",
            "/xrpc/com.atproto.server.createAccount",
            None,
            Some(&serde_json::json!({"handle": "alice.test", "password": "correct horse"})),
        )
        .unwrap(),
    );
    assert_eq!(s, 200, "{acct}");
    let (did, token) = (acct["did"].as_str().unwrap().to_string(), acct["accessJwt"].as_str().unwrap().to_string());
    assert_eq!(acct["didDoc"]["service"][0]["serviceEndpoint"], format!("http://{addr}"));
    let record = serde_json::json!({"repo": did, "collection": "com.example.note", "rkey": "first", "record": {"text": "kept across restarts"}});
    let (s, created) =
        json(http(addr, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(&record)).unwrap());
    assert_eq!((s, created["validationStatus"].as_str()), (200, Some("unknown")), "{created}");
    assert!(terminate(&mut node).success());

    let mut node = spawn_node(&data, addr);
    wait_healthy(addr);
    let (s, got) = json(
        http_get(addr, &format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=com.example.note&rkey=first"))
            .unwrap(),
    );
    assert_eq!((s, got["value"]["text"].as_str()), (200, Some("kept across restarts")));
    assert_eq!(got["cid"], created["cid"]);
    let (s, me) = json(http(addr, "GET", "/xrpc/com.atproto.server.getSession", Some(&token), None).unwrap());
    assert_eq!((s, me["handle"].as_str()), (200, Some("alice.test")), "the session secret is persisted");
    assert!(terminate(&mut node).success());
}

#[test]
fn the_official_client_drives_the_node() {
    // Bluesky's @atproto/api (AtpAgent), unchanged, against `ues run` over real HTTP.
    let Some(js) = shared::node_tests() else { return };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut node = spawn_node(&dir.path().join("data"), addr);
    wait_healthy(addr);
    // 500 creates, forced token expiry (the script signs an expired token with the node's
    // jwt.secret), then the firehose from cursor 0 checked as a relay would.
    let out = Command::new("node")
        .arg("--experimental-websocket")
        .arg(js.join("client_smoke.mjs"))
        .args([format!("http://{addr}"), "500".to_string(), dir.path().join("data").display().to_string()])
        .current_dir(&js)
        .output()
        .expect("node runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert!(terminate(&mut node).success());
    assert_eq!(
        report["ok"],
        true,
        "client said: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["forcedExpiry"], true, "{report}");
    // 500 creates, a put, a delete, an applyWrites, a post with a blob, a post after expiry.
    assert_eq!(report["firehoseCommits"].as_u64(), Some(505), "{report}");
}

#[test]
fn sigterm_stops_the_node_even_with_a_firehose_subscriber_connected() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut node = spawn_node(&dir.path().join("data"), addr);
    wait_healthy(addr);
    // A raw WebSocket handshake on subscribeRepos, then keep the socket open.
    let mut ws = TcpStream::connect(addr).unwrap();
    write!(
        ws,
        "GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = ws.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"), "upgrade refused");
    let started = Instant::now();
    assert!(terminate(&mut node).success());
    assert!(started.elapsed() < Duration::from_secs(20), "shutdown waited on the stream");
    // The subscriber received a close frame (opcode 0x8) before the connection ended.
    let mut rest = Vec::new();
    let _ = ws.read_to_end(&mut rest);
    assert!(rest.first().is_some_and(|b| b & 0x0f == 0x8), "no close frame: {rest:?}");
}

#[test]
fn the_python_sdk_drives_the_node() {
    let Some(python) = shared::python_sdk() else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/client_smoke.py");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut node = spawn_node(&dir.path().join("data"), addr);
    wait_healthy(addr);
    let out = Command::new(python).arg(script).arg(format!("http://{addr}")).output().expect("python runs");
    assert!(terminate(&mut node).success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(
        report["ok"],
        true,
        "sdk said: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
