//! `docs/xrpc-methods.md` tells the truth: every method it lists as served answers on a
//! running node (whatever the answer, never 501 `MethodNotImplemented` or 404), and every
//! method it lists as not served here answers 501 on a node without an AppView.

#[path = "support/node.rs"]
mod support;

use serde_json::Value;
use support::{agent, start_with};

#[test]
fn every_method_the_doc_lists_is_answered_as_it_says() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/xrpc-methods.md")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let node = start_with(&root.path().join("node"), "[xrpc.rate_limits]\nenabled = false\n");
    let mut checked = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (nsid, kind, status) = (cells[1].trim_matches('`'), cells[2], cells[3]);
        let url = format!("{}/xrpc/{nsid}", node.base);
        // As the operator: admin methods are checked for credentials before anything else.
        let auth = node.operator_auth();
        let mut res = match kind {
            "procedure" => {
                agent().post(&url).header("content-type", "application/json").header("authorization", &auth).send("{}")
            }
            _ => agent().get(&url).header("authorization", &auth).call(),
        }
        .unwrap();
        let code = res.status().as_u16();
        let body: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        match status {
            "served" => assert!(code != 501 && code != 404, "{nsid} is listed as served but answered {code}: {body}"),
            _ => assert_eq!(code, 501, "{nsid} is listed as not served here but answered {code}: {body}"),
        }
        checked += 1;
    }
    assert!(checked > 90, "the table lists every method ({checked} rows)");
}
