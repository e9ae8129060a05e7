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
