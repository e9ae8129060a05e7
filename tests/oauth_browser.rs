//! Bluesky's own OAuth client (`@atproto/oauth-client-node`, `tests/js/oauth_e2e.mjs`) signs in
//! to a running node through a real headless Chromium (`playwright-core` driving Debian's
//! `chromium`): handle and DID resolved (a real did:plc directory), a pushed request, the
//! node's sign-in and consent page, the code exchanged, a record written and read with the
//! DPoP-bound token, a refresh, then the user revokes the app on the account page and the
//! client is refused. The pages' screenshots are taken on the way (into `docs/images/` when
//! `UES_UPDATE_SCREENSHOTS=1`).

#[path = "support/plc.rs"]
mod plc;
#[path = "support/shared.rs"]
mod shared;
#[path = "support/node.rs"]
mod support;

use std::process::Command;

use serde_json::Value;
use support::start_with;

/// Debian's Chromium, or `None` after a loud message when absent outside CI.
fn chromium() -> Option<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but {path} is absent: scripts/setup.sh installs chromium");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {path} is absent (run scripts/setup.sh); OAuth pages not driven !!!!!!!!\n");
    None
}

#[test]
fn bluesky_oauth_client_signs_in_writes_refreshes_and_is_refused_after_revocation() {
    let Some(js) = shared::node_tests() else { return };
    let Some(chromium) = chromium() else { return };
    let directory = plc::start_directory(&js);
    let root = tempfile::tempdir().unwrap();
    let config = format!("[xrpc]\nplc_url = \"{}\"\n[xrpc.rate_limits]\nenabled = false\n", directory.url);
    let node = start_with(&root.path().join("node"), &config);
    let (did, _) = support::create_account(&node.base, "alice.test");

    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = if std::env::var("UES_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        repo.join("docs/images")
    } else {
        root.path().join("shots")
    };
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .current_dir(&js)
        .arg("oauth_e2e.mjs")
        .args([&node.base, "alice.test", "a long password", &directory.url])
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    assert!(out.status.success(), "the client failed:\n{stderr}\nnode log tail:\n{}", tail(&log));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(v["pushed"], true, "{v}");
    assert_eq!(v["hinted"], "alice.test", "the login hint fills the identifier: {v}");
    let listed: Vec<&str> = v["consent_lists"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(listed.iter().any(|l| l.contains("Read and write your posts")), "{listed:?}");
    assert_eq!(v["redirected_with_iss"], node.base.as_str());
    assert_eq!(v["session_sub"], did.as_str());
    assert!(v["created"].as_str().unwrap().starts_with(&format!("at://{did}/app.bsky.feed.post/")), "{v}");
    assert_eq!(v["read_back"], "written through OAuth");
    assert_eq!(v["session_handle"], "alice.test");
    assert_eq!(v["refreshes_answered"], serde_json::json!([200]), "one forced refresh, answered: {v}");
    assert!(v["created_after_refresh"].is_string(), "{v}");
    assert_eq!(v["apps_listed"], 1, "{v}");
    assert!(v["revoked_note"].as_str().unwrap().contains("revoked"), "{v}");
    assert_eq!(v["apps_after_revoke"], 0, "{v}");
    assert!(v["refused_after_revoke"].is_string(), "a write after revocation must fail: {v}");
    for shot in ["oauth-consent.png", "oauth-account.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{shot}: {} bytes", bytes.len());
    }
    // The node logged the refresh the revoked session tried, and stored only the two posts.
    let list = support::agent()
        .get(format!("{}/xrpc/com.atproto.repo.listRecords?repo={did}&collection=app.bsky.feed.post", node.base))
        .call()
        .unwrap()
        .body_mut()
        .read_json::<Value>()
        .unwrap();
    let texts: Vec<&str> =
        list["records"].as_array().unwrap().iter().map(|r| r["value"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(!texts.contains(&"must not land"));
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Fields of the reference's metadata that describe what UES does not do: signed request
/// objects (JAR) and asymmetric token signing (a JWKS). Clients read these as optional.
const NOT_OFFERED: &[&str] = &[
    "jwks_uri",
    "request_object_signing_alg_values_supported",
    "request_object_encryption_alg_values_supported",
    "request_object_encryption_enc_values_supported",
];

#[test]
fn the_metadata_has_what_the_reference_pds_publishes() {
    let Some(refpds) = shared::reference_pds() else { return };
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    // A free port can be taken by another test between the check and the listen: three tries.
    let (mut out, mut pds_port) = (None, 0);
    for _ in 0..3 {
        let plc_port = support::free_port();
        pds_port = support::free_port();
        let run = Command::new("node")
            .arg(refpds.join("oauth_metadata.mjs"))
            .args([plc_port.to_string(), pds_port.to_string()])
            .arg(root.path().join(format!("reference-{pds_port}")))
            .arg(&node.base)
            .current_dir(&refpds)
            .output()
            .unwrap();
        let taken = String::from_utf8_lossy(&run.stderr).contains("EADDRINUSE");
        out = Some(run);
        if !taken {
            break;
        }
    }
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference_base = format!("http://localhost:{pds_port}");
    for doc in ["oauth-authorization-server", "oauth-protected-resource"] {
        let (theirs, ours) = (&v["reference"][doc], &v["ues"][doc]);
        assert_eq!(ours["status"], 200);
        let mime = |v: &Value| v.as_str().unwrap_or("").split(';').next().unwrap().trim().to_string();
        assert_eq!(mime(&ours["contentType"]), mime(&theirs["contentType"]), "{doc}");
        assert_eq!(ours["cors"], "*", "{doc}: browser apps read it");
        let (theirs, ours) = (theirs["body"].as_object().unwrap(), ours["body"].as_object().unwrap());
        for (key, value) in theirs {
            if NOT_OFFERED.contains(&key.as_str()) {
                continue;
            }
            let Some(mine) = ours.get(key) else { panic!("{doc}: {key} is missing") };
            // The same value, with each server's own URL; lists of algorithms may be narrower
            // (ES256, the profile's mandatory one, is always there).
            let theirs_here = value.to_string().replace(&reference_base, &node.base);
            if key.ends_with("alg_values_supported") {
                assert!(mine.as_array().unwrap().contains(&Value::from("ES256")), "{doc}: {key}: {mine}");
            } else if key == "request_parameter_supported" {
                assert_eq!(mine, false, "request objects are not taken");
            } else {
                let sorted = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(a) = v.as_array_mut() {
                        a.sort_by_key(|x| x.to_string());
                    }
                    v
                };
                let theirs_here: Value = serde_json::from_str(&theirs_here).unwrap();
                assert_eq!(sorted(mine), sorted(&theirs_here), "{doc}: {key}");
            }
        }
    }
}
