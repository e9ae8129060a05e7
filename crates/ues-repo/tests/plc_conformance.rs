//! did:plc audit-log vectors: every valid log validates, every invalid one is refused.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use ues_repo::plc::validate_audit_log;

fn logs(kind: &str, expected: usize) -> Option<Vec<(String, Vec<serde_json::Value>)>> {
    let dir = shared::shared(&format!("interop/did-plc-interop-tests/audit_log/{kind}"))?;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v.as_array().unwrap().clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), expected, "{kind}: file count");
    Some(out)
}

#[test]
fn valid_audit_logs() {
    let Some(logs) = logs("valid", 10) else { return };
    let failures: Vec<String> =
        logs.iter().filter_map(|(name, log)| validate_audit_log(log).err().map(|e| format!("{name}: {e}"))).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn invalid_audit_logs() {
    let Some(logs) = logs("invalid", 10) else { return };
    let accepted: Vec<&str> =
        logs.iter().filter(|(_, log)| validate_audit_log(log).is_ok()).map(|(n, _)| n.as_str()).collect();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}
