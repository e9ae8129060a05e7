//! What every attack checks afterwards.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Running, agent};

/// Resident set size of a process, in bytes (from `/proc/<pid>/status`).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node is running");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

/// Asserts the node answers an unrelated request (`describeServer`) within `deadline`.
pub fn still_answers(node: &Running, deadline: Duration) {
    let started = Instant::now();
    let client: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(deadline)).http_status_as_error(false).build().into();
    let res = client.get(format!("{}/xrpc/com.atproto.server.describeServer", node.base)).call();
    let elapsed = started.elapsed();
    let res = res.unwrap_or_else(|e| panic!("the node did not answer an unrelated request within {deadline:?}: {e}"));
    assert_eq!(res.status(), 200, "describeServer answered {}", res.status());
    assert!(elapsed <= deadline, "describeServer took {elapsed:?}");
}

/// Creates an account (`handle` under `.test`) and returns `(did, accessJwt)`.
pub fn account(node: &Running, handle: &str) -> (String, String) {
    let mut res = agent()
        .post(format!("{}/xrpc/com.atproto.server.createAccount", node.base))
        .send_json(json!({ "handle": handle, "password": "a long password", "email": format!("{handle}@example.com") }))
        .unwrap();
    assert_eq!(res.status(), 200, "createAccount");
    let body: Value = res.body_mut().read_json().unwrap();
    (body["did"].as_str().unwrap().to_string(), body["accessJwt"].as_str().unwrap().to_string())
}

/// A JSON call: `(status, body)` (body `null` when it is not JSON).
pub fn call(node: &Running, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{}", node.base, path);
    let a = agent();
    let res = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(&url);
            if let Some(t) = token {
                r = r.header("authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        (_, b) => {
            let mut r = a.post(&url);
            if let Some(t) = token {
                r = r.header("authorization", &format!("Bearer {t}"));
            }
            match b {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
    };
    let mut res = res.unwrap();
    let status = res.status().as_u16();
    let body = res.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    (status, body)
}

/// Threads of a process (from `/proc/<pid>/status`).
pub fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads in /proc status")
}

/// Raises this process's open-file soft limit to its hard limit (attacks open hundreds of
/// sockets; the usual soft limit is 1024).
pub fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum });
}

/// A TCP connection to the node from the loopback address `from` (any of 127.0.0.0/8), so an
/// attacker's address differs from the honest client's 127.0.0.1. `recv_buf`: a small receive
/// buffer makes a client that never reads stall the server sooner.
pub async fn connect_from(
    node: &Running,
    from: [u8; 4],
    recv_buf: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(n) = recv_buf {
        socket.set_recv_buffer_size(n)?;
    }
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], node.port))).await
}

/// Reads an HTTP response head from `stream` (at most 64 KiB, within `deadline`): the status
/// and the lower-cased headers. `None` if the connection closed or timed out first.
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    deadline: Duration,
) -> Option<(u16, Vec<(String, String)>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !tokio::time::timeout(deadline, read).await.unwrap_or(false) {
        return None;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers))
}

/// Whether the peer has closed `stream` (EOF or reset) within `deadline`; data it sends is
/// read and dropped.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    drain(stream, deadline).await.0
}

/// Reads and drops what the peer sends for at most `deadline`: whether it closed the
/// connection (EOF or reset) by then, and how many bytes came.
pub async fn drain(stream: &mut tokio::net::TcpStream, deadline: Duration) -> (bool, u64) {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 64 << 10];
    let mut got = 0u64;
    let wait = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
    };
    let closed = tokio::time::timeout(deadline, wait).await.is_ok();
    (closed, got)
}

/// Names of a process's threads, counted (for failure messages).
pub fn thread_names(pid: u32) -> String {
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *names.entry(name.trim().to_string()).or_default() += 1;
    }
    names.iter().map(|(n, c)| format!("{n} x{c}")).collect::<Vec<_>>().join(", ")
}
