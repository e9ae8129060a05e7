//! `lexicon/` vectors (schema documents and record data) and every official Lexicon file.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use ues_repo::lexicon::{Lexicons, ValidationStatus};

fn cases(rel: &str, expected: usize) -> Option<Vec<serde_json::Value>> {
    let v = shared::json(rel)?;
    let list = v.as_array().unwrap().clone();
    assert_eq!(list.len(), expected, "{rel}: case count");
    Some(list)
}

#[test]
fn lexicon_documents_valid_and_invalid() {
    let Some(valid) = cases("interop/atproto-interop-tests/lexicon/lexicon-valid.json", 3) else { return };
    for c in valid {
        Lexicons::new().add(&c["lexicon"]).unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
    }
    let Some(invalid) = cases("interop/atproto-interop-tests/lexicon/lexicon-invalid.json", 7) else { return };
    for c in invalid {
        assert!(Lexicons::new().add(&c["lexicon"]).is_err(), "accepted: {}", c["name"]);
    }
}

fn catalog() -> Option<Lexicons> {
    let dir = shared::shared("interop/atproto-interop-tests/lexicon/catalog")?;
    let mut lex = Lexicons::new();
    assert_eq!(lex.load_dir(&dir).unwrap(), 5);
    Some(lex)
}

#[test]
fn record_data_valid_and_invalid() {
    let Some(lex) = catalog() else { return };
    let Some(valid) = cases("interop/atproto-interop-tests/lexicon/record-data-valid.json", 3) else { return };
    for c in valid {
        let data = ues_ipld::json::record_from_json(&c["data"]).unwrap();
        let status = lex.validate_record("example.lexicon.record", c["rkey"].as_str().unwrap(), &data);
        assert_eq!(status, Ok(ValidationStatus::Valid), "{}", c["name"]);
    }
    let Some(invalid) = cases("interop/atproto-interop-tests/lexicon/record-data-invalid.json", 50) else { return };
    let mut accepted = Vec::new();
    for c in invalid {
        let refused = match ues_ipld::json::record_from_json(&c["data"]) {
            Err(_) => true, // not even valid AT Protocol data
            Ok(data) => lex.validate_record("example.lexicon.record", c["rkey"].as_str().unwrap(), &data).is_err(),
        };
        if !refused {
            accepted.push(c["name"].as_str().unwrap().to_string());
        }
    }
    assert!(accepted.is_empty(), "accepted invalid records: {accepted:#?}");
}

#[test]
fn every_official_lexicon_loads() {
    let Some(dir) = shared::shared("reference/atproto-lexicons") else { return };
    let mut lex = Lexicons::new();
    let n = lex.load_dir(&dir).unwrap();
    assert!(n >= 250, "only {n} lexicons found");
    assert_eq!(lex.len(), n);
    // A real record against the real schema.
    let post = serde_json::json!({
        "$type": "app.bsky.feed.post",
        "text": "hello world",
        "createdAt": "2026-11-24T12:00:00.000Z",
        "langs": ["en"],
    });
    let ipld = ues_ipld::json::record_from_json(&post).unwrap();
    assert_eq!(lex.validate_record("app.bsky.feed.post", "3kabcdefghij2", &ipld), Ok(ValidationStatus::Valid));
    let mut bad = post.clone();
    bad["text"] = serde_json::json!("x".repeat(3001));
    let err = lex
        .validate_record("app.bsky.feed.post", "3kabcdefghij2", &ues_ipld::json::record_from_json(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.path, "$.text");
    assert_eq!(lex.validate_record("com.example.nothing", "x", &ipld), Ok(ValidationStatus::Unknown));
}
