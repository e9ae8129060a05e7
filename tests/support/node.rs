//! `ues run` as the integration tests start it: free ports on 127.0.0.1, a process whose log
//! goes to a file, the wait until it answers, and an HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 now, below the kernel's range of ephemeral ports: a port from that
/// range (what binding port 0 gives) can be taken, between this call and the server's bind, as
/// the source port of any outgoing connection on the machine. Ports are picked at random and
/// never handed out twice in one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(given.len());
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTP client that returns every status as a response (60 s per call).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Starts `ues run` on `data_dir` with HTTP on 127.0.0.1:`http`, libp2p on `p2p_listen`,
/// no mDNS (tests stay on loopback), its log appended to `log` (then [`wait_healthy`]).
pub fn spawn(data_dir: &Path, http: u16, p2p_listen: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["run", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{http}"), "--p2p-listen", p2p_listen, "--no-mdns"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Waits (at most 60 s) until 127.0.0.1:`http` answers `/xrpc/_health`.
pub fn wait_healthy(http: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent().get(format!("http://127.0.0.1:{http}/xrpc/_health")).call().is_err() {
        assert!(Instant::now() < deadline, "the node on port {http} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `ues run` on 127.0.0.1 that is killed when dropped.
pub struct Running {
    pub child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its data directory.
    pub dir: std::path::PathBuf,
}

impl Running {
    /// The `Authorization` value of the node's operator (user `admin`, the password `ues run`
    /// generated into the data directory).
    pub fn operator_auth(&self) -> String {
        operator_auth(&self.dir)
    }
}

/// The operator's `Authorization` value for the node whose data directory is `dir`.
pub fn operator_auth(dir: &Path) -> String {
    use base64::Engine;
    let password = std::fs::read_to_string(dir.join("admin.password")).expect("the node wrote admin.password");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", password.trim())))
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `max` bytes of a file, as text (a node's log in a failure message).
pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_string()
}

/// Starts `ues run` on `dir` (its node.toml already written) on `port` and waits (at most 60 s)
/// until it answers; a node that exits first (a configuration it refuses) fails with its log.
pub fn start_watched(dir: &Path, port: u16) -> Running {
    let log = dir.join("node.log");
    let mut child = spawn(dir, port, "/ip4/127.0.0.1/tcp/0", &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the node exited before answering ({status}); its log:\n{}", tail(&log, 8000));
        }
        if agent().get(format!("http://127.0.0.1:{port}/xrpc/_health")).call().is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node on port {port} never answered; its log:\n{}", tail(&log, 8000));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { child, port, base: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() }
}

/// Starts `ues run` on `dir` with `config` as its node.toml (libp2p on a free loopback port)
/// and waits until it answers.
pub fn start_with(dir: &Path, config: &str) -> Running {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node.toml"), config).unwrap();
    let child = spawn(dir, port, "/ip4/127.0.0.1/tcp/0", &dir.join("node.log"));
    wait_healthy(port);
    Running { child, port, base: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() }
}

/// A new account on the node at `base` (`http://...`): its DID and access token.
pub fn create_account(base: &str, handle: &str) -> (String, String) {
    let mut res = agent()
        .post(format!("{base}/xrpc/com.atproto.server.createAccount"))
        .send_json(serde_json::json!({"handle": handle, "email": format!("{handle}@example.com"), "password": "a long password"}))
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.body_mut().read_json().unwrap();
    (v["did"].as_str().unwrap().to_string(), v["accessJwt"].as_str().unwrap().to_string())
}

/// Calls the XRPC procedure `method` on `node` with `body` (and `token` as the bearer): the
/// status and the JSON answer (`Null` when there is none).
pub fn xrpc_post(
    node: &Running,
    method: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = agent().post(format!("{}/xrpc/{method}", node.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut res = req.send_json(body).unwrap();
    let status = res.status().as_u16();
    (status, res.body_mut().read_json().unwrap_or(serde_json::Value::Null))
}

/// `ues peer id` of a data directory.
pub fn peer_id(data_dir: &Path) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ues")).args(["peer", "id", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The newest token mailed with `template` from the node's outbox (waits up to 20 s).
pub fn mailed_token(node: &Running, template: &str) -> String {
    let outbox = node.dir.join("outbox/mail.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["template"] == template)
        {
            return line["token"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no {template} mail in {}", outbox.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}
