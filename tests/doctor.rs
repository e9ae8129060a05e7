//! `ues doctor` against a running node: it names what to fix (a key file others can read, a
//! PLC directory that does not answer, a public URL that reaches something else, no HTTPS),
//! exits 1 while anything needs fixing, and passes each check once it is fixed.

#[path = "support/node.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;

/// A server on 127.0.0.1 that answers every request `200 OK` with an empty JSON object, for
/// as long as the test runs.
fn anything_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1_000) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    port
}

fn doctor(dir: &std::path::Path, port: u16) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["doctor", "--json", "--data-dir", dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// The failing checks, but for the free-space check: whether it passes depends on the
/// machine the test runs on, so it is asserted on its own.
fn failing(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false && c["check"] != "disk")
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name}: {report}"))
}

#[test]
fn doctor_names_what_to_fix_and_passes_what_is_fixed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let port = support::free_port();
    let plc_port = support::free_port();
    let toml = |public: String, plc: u16| {
        format!(
            "[xrpc]\npublic_url = \"{public}\"\nplc_url = \"http://127.0.0.1:{plc}\"\n[xrpc.rate_limits]\nenabled = false\n"
        )
    };
    std::fs::write(dir.join("node.toml"), toml(format!("http://127.0.0.1:{port}"), plc_port)).unwrap();
    let mut node = support::spawn(&dir, port, "/ip4/127.0.0.1/tcp/0", &dir.join("node.log"));
    support::wait_healthy(port);
    std::fs::set_permissions(dir.join("jwt.secret"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let (ok, report) = doctor(&dir, port);
    eprintln!("{report:#}");
    assert!(!ok, "exit 1 while anything needs fixing");
    assert_eq!(failing(&report), ["key files", "tls", "plc"], "{report:#}");
    assert!(check(&report, "key files")["detail"].as_str().unwrap().contains("jwt.secret"));
    assert!(check(&report, "public url")["detail"].as_str().unwrap().contains("reaches this node"));
    assert_eq!(check(&report, "listen")["ok"], true);
    let disk = check(&report, "disk");
    assert!(disk["detail"].as_str().unwrap().ends_with("GiB free"), "{disk}");
    assert_eq!(disk["ok"] == false, disk["fix"].is_string(), "a low disk says what to do: {disk}");
    assert!(check(&report, "plc")["fix"].as_str().is_some(), "a failing check says what to do");

    // Fixed: the key file's mode, a PLC directory that answers. A public URL that reaches
    // another server is named.
    std::fs::set_permissions(dir.join("jwt.secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = anything_server();
    std::fs::write(dir.join("node.toml"), toml(format!("http://127.0.0.1:{other}"), other)).unwrap();
    let (ok, report) = doctor(&dir, port);
    assert!(!ok);
    assert_eq!(failing(&report), ["tls", "public url"], "{report:#}");
    assert!(check(&report, "public url")["detail"].as_str().unwrap().contains("answers as"), "{report:#}");
    assert_eq!(check(&report, "plc")["ok"], true);

    let _ = node.kill();
    let _ = node.wait();
}
