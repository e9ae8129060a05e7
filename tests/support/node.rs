//! `ues run` as the integration tests start it: free ports on 127.0.0.1, a process whose log
//! goes to a file, the wait until it answers, and an HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
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

/// `ues peer id` of a data directory.
pub fn peer_id(data_dir: &Path) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ues")).args(["peer", "id", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
