//! `ues invite`: a node that requires invite codes admits an account with a code the operator
//! made from the command line, once per use; `ues invite list` shows who used it, and a code
//! `ues invite disable` names admits no one.

#[path = "support/node.rs"]
mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{agent, start_with};

fn ues(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().expect("ues runs");
    assert!(out.status.success(), "ues {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `createAccount` with `code`: (status, error name).
fn sign_up(base: &str, handle: &str, code: &str) -> (u16, Option<String>) {
    let mut res = agent()
        .post(format!("{base}/xrpc/com.atproto.server.createAccount"))
        .send_json(json!({"handle": handle, "password": "a long password", "inviteCode": code}))
        .unwrap();
    let v: Value = res.body_mut().read_json().unwrap_or(Value::Null);
    (res.status().as_u16(), v["error"].as_str().map(str::to_string))
}

#[test]
fn invite_codes_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let node = start_with(&dir, "[xrpc]\ninvite_required = true\n");
    let listen = format!("127.0.0.1:{}", node.port);
    let d = dir.to_str().unwrap();
    let made = ues(&["invite", "create", "--uses", "1", "--count", "2", "--data-dir", d, "--listen", &listen]);
    let codes: Vec<String> =
        made["codes"][0]["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!((made["codes"][0]["account"].as_str(), codes.len()), (Some("admin"), 2), "{made}");

    assert_eq!(sign_up(&node.base, "first.test", &codes[0]), (200, None));
    assert_eq!(sign_up(&node.base, "second.test", &codes[0]), (400, Some("InvalidInviteCode".into())), "used up");
    let listed = ues(&["invite", "list", "--data-dir", d, "--listen", &listen]);
    let used = listed["codes"].as_array().unwrap().iter().find(|c| c["code"] == codes[0].as_str()).unwrap();
    assert!(used["uses"][0]["usedBy"].as_str().unwrap().starts_with("did:plc:"), "{listed}");

    ues(&["invite", "disable", &codes[1], "--data-dir", d, "--listen", &listen]);
    assert_eq!(sign_up(&node.base, "second.test", &codes[1]), (400, Some("InvalidInviteCode".into())), "disabled");
    let out = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["invite", "disable", "--data-dir", d, "--listen", &listen])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}
