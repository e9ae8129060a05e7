//! Locates `../shared` (the conformance vectors) beside the repository.
//!
//! Included by path from every crate's tests: `#[path = ".../tests/support/shared.rs"] mod shared;`
//! On a user's machine the folder may be absent: tests then skip with a loud message. Under CI
//! (`CI=true`) it is always there, so absence fails.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// `<repo>/../shared/<rel>`, or `None` (after a loud message) when absent outside CI.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join(".ci").is_dir() && p.join("crates").is_dir())
        .expect("the workspace root")
        .to_path_buf();
    let path = repo.join("..").join("shared").join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but the conformance vectors are missing: {} does not exist", path.display());
    }
    eprintln!("\n!!!!!!!! SKIPPED: {} is absent; conformance vectors not checked !!!!!!!!\n", path.display());
    None
}

/// Reads a JSON file under `../shared`.
pub fn json(rel: &str) -> Option<serde_json::Value> {
    let path = shared(rel)?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `<repo>/tests/js` with its `node_modules` installed (by `scripts/setup.sh`), or `None` after a
/// loud message when absent outside CI.
pub fn node_tests() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join(".ci").is_dir() && p.join("crates").is_dir())
        .expect("the workspace root")
        .to_path_buf();
    let dir = repo.join("tests").join("js");
    if dir.join("node_modules").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but {} has no node_modules: scripts/setup.sh should have installed them", dir.display());
    }
    eprintln!("\n!!!!!!!! SKIPPED: {} has no node_modules (run scripts/setup.sh) !!!!!!!!\n", dir.display());
    None
}

/// `node --version`, or `None` after a loud message naming `what` was not tested (a failure
/// under CI).
pub fn node_js(what: &str) -> Option<String> {
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        other => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but `node` does not run: {other:?}");
            }
            eprintln!("\n!!!!!!!! SKIPPED: `node` is not installed; {what} was not tested !!!!!!!!\n");
            None
        }
    }
}

/// The Python of `tests/py/.venv` (with the `atproto` SDK, installed by `scripts/setup.sh`), or
/// `None` after a loud message when absent outside CI.
pub fn python_sdk() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join(".ci").is_dir() && p.join("crates").is_dir())
        .expect("the workspace root")
        .to_path_buf();
    let python = repo.join("tests").join("py").join(".venv").join("bin").join("python");
    if python.is_file() {
        return Some(python);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but {} is missing: scripts/setup.sh should have created it", python.display());
    }
    eprintln!("\n!!!!!!!! SKIPPED: {} is missing (run scripts/setup.sh) !!!!!!!!\n", python.display());
    None
}

/// `tests/js/refpds` with its packages (Bluesky's reference PDS, installed by
/// `scripts/setup.sh`), or `None` after a loud message when absent outside CI.
pub fn reference_pds() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/refpds");
    if dir.join("node_modules/@atproto/pds").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but {} has no node_modules: scripts/setup.sh installs it", dir.display());
    }
    eprintln!("\n!!!!!!!! SKIPPED: the reference PDS is not installed (run scripts/setup.sh) !!!!!!!!\n");
    None
}
