//! The feed application's lexicons (`crates/ues-apps/lexicons/`): every document loads with the
//! node's Lexicon parser, `src/feed/lexicon_docs.rs` embeds exactly them, and their parameters
//! (and input schemas) accept what Bluesky's official lexicons accept, field by field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use ues_apps::protocol::sync::repo::lexicon::{Def, Field, Lexicons};

/// The methods the feed application serves.
const METHODS: &[&str] = &[
    "app.bsky.actor.getProfile",
    "app.bsky.actor.getProfiles",
    "app.bsky.actor.searchActors",
    "app.bsky.actor.searchActorsTypeahead",
    "app.bsky.feed.getActorLikes",
    "app.bsky.feed.getAuthorFeed",
    "app.bsky.feed.getFeed",
    "app.bsky.feed.getFeedGenerator",
    "app.bsky.feed.getFeedGenerators",
    "app.bsky.feed.getLikes",
    "app.bsky.feed.getPostThread",
    "app.bsky.feed.getPosts",
    "app.bsky.feed.getQuotes",
    "app.bsky.feed.getRepostedBy",
    "app.bsky.feed.getTimeline",
    "app.bsky.feed.searchPosts",
    "app.bsky.graph.getBlocks",
    "app.bsky.graph.getFollowers",
    "app.bsky.graph.getFollows",
    "app.bsky.graph.getList",
    "app.bsky.graph.getLists",
    "app.bsky.notification.getUnreadCount",
    "app.bsky.notification.listNotifications",
    "app.bsky.notification.updateSeen",
];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<repo>/../shared/<rel>`, or `None` (after a loud message) when absent outside CI.
fn shared(rel: &str) -> Option<PathBuf> {
    let path = manifest().join("../../../shared").join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but the reference lexicons are missing: {} does not exist", path.display());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {} is absent; feed lexicons not compared with the official ones !!!!!!!!\n",
        path.display()
    );
    None
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of `lexicons/`, by file name.
fn ours() -> Vec<(String, Value)> {
    let dir = manifest().join("lexicons");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), read_json(&dir.join(&n)))).collect()
}

#[test]
fn the_directory_holds_one_document_per_method() {
    let names: Vec<String> = ours().into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = METHODS.iter().map(|m| format!("{m}.json")).collect();
    assert_eq!(names, expected);
    for (name, doc) in ours() {
        assert_eq!(format!("{}.json", doc["id"].as_str().unwrap_or_default()), name, "{name}: id and file name");
    }
}

#[test]
fn lexicon_docs_embeds_every_document_sorted() {
    let path = manifest().join("src/feed/lexicon_docs.rs");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let included: Vec<String> = text
        .split("include_str!(\"../../lexicons/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    let expected: Vec<String> = METHODS.iter().map(|m| format!("{m}.json")).collect();
    assert_eq!(included, expected, "{}", path.display());
}

#[test]
fn every_document_loads_with_the_node_parser() {
    let mut all = Lexicons::new();
    let mut failed = Vec::new();
    for (name, doc) in ours() {
        if let Err(e) = Lexicons::new().add(&doc) {
            failed.push(format!("{name}: {e}"));
            continue;
        }
        all.add(&doc).unwrap();
    }
    assert!(failed.is_empty(), "documents the node cannot load:\n{}", failed.join("\n"));
    for m in METHODS {
        match all.get(m) {
            Some(Def::Query { parameters: Some(_), output: Some(out) }) => {
                assert_eq!(out.encoding.as_deref(), Some("application/json"), "{m}: output encoding");
                assert!(out.schema.is_none(), "{m}: the output has no schema (responses are checked elsewhere)");
            }
            Some(Def::Procedure { input: Some(input), .. }) => {
                assert_eq!(input.encoding.as_deref(), Some("application/json"), "{m}: input encoding");
                assert!(input.schema.is_some(), "{m}: the input has a schema");
            }
            other => panic!("{m}: not a query with parameters or a procedure with an input: {other:?}"),
        }
    }
}

#[test]
fn parameters_are_enforced() {
    let mut lex = Lexicons::new();
    for (_, doc) in ours() {
        lex.add(&doc).unwrap();
    }
    for m in METHODS {
        let Some(Def::Query { parameters: Some(params), .. }) = lex.get(m) else { continue };
        // Every required parameter, with a valid value, is enough; dropping one fails.
        let sample = |name: &str| -> (String, String) {
            let field = match &params.properties[name] {
                Field::Array { items, .. } => items.as_ref(),
                f => f,
            };
            let value = match field {
                Field::String { format: Some(f), .. } if f == "at-uri" => "at://did:plc:abc/app.bsky.feed.post/3k",
                Field::String { format: Some(f), .. } if f == "at-identifier" => "alice.test",
                Field::String { format: None, .. } => "x",
                other => panic!("{m}: a required {name} of type {other:?}"),
            };
            (name.to_string(), value.to_string())
        };
        let pairs: Vec<_> = params.required.iter().map(|r| sample(r)).collect();
        lex.validate_params(m, &pairs).unwrap_or_else(|e| panic!("{m}: {e}"));
        for r in &params.required {
            let without: Vec<_> = pairs.iter().filter(|(k, _)| k != r).cloned().collect();
            assert!(lex.validate_params(m, &without).is_err(), "{m}: {r} is required");
        }
        if let Some(Field::Integer { maximum: Some(max), .. }) = params.properties.get("limit") {
            let mut over = pairs.clone();
            over.push(("limit".into(), (max + 1).to_string()));
            assert!(lex.validate_params(m, &over).is_err(), "{m}: limit above {max}");
            let mut bad = pairs.clone();
            bad.push(("limit".into(), "ten".into()));
            assert!(lex.validate_params(m, &bad).is_err(), "{m}: limit not an integer");
        }
    }
}

/// `v` without any `description` (at any depth).
fn without_descriptions(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| *k != "description").map(|(k, v)| (k.clone(), without_descriptions(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_descriptions).collect()),
        other => other.clone(),
    }
}

/// Where `ours` and `official` differ (`required` lists compare as sets), as `path: ours vs official`.
fn diff(path: &str, ours: &Value, official: &Value, out: &mut Vec<String>) {
    match (ours, official) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if k == "required" => {
                        let set = |v: &Value| -> BTreeSet<String> {
                            v.as_array().into_iter().flatten().map(|s| s.to_string()).collect()
                        };
                        if set(x) != set(y) {
                            out.push(format!("{p}: {x} vs {y}"));
                        }
                    }
                    (Some(x), Some(y)) => diff(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: {x} vs (absent)")),
                    (None, Some(y)) => out.push(format!("{p}: (absent) vs {y}")),
                    (None, None) => unreachable!(),
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

#[test]
fn parameters_match_the_official_lexicons() {
    let Some(reference) = shared("reference/atproto-lexicons") else { return };
    let mut differences = Vec::new();
    for (name, doc) in ours() {
        let id = doc["id"].as_str().unwrap();
        let official_path = reference.join(format!("{}.json", id.replace('.', "/")));
        let official = read_json(&official_path);
        let (mine, theirs) = (&doc["defs"]["main"], &official["defs"]["main"]);
        if mine["type"] != theirs["type"] {
            differences.push(format!("{name}: type {} vs {}", mine["type"], theirs["type"]));
        }
        for key in ["parameters", "input"] {
            let strip = |v: Option<&Value>| v.map(without_descriptions).unwrap_or(Value::Null);
            diff(&format!("{name}: {key}"), &strip(mine.get(key)), &strip(theirs.get(key)), &mut differences);
        }
        let encoding = |v: &Value| v.get("output").map(|o| o["encoding"].clone());
        if encoding(mine) != encoding(theirs) {
            differences.push(format!("{name}: output encoding {:?} vs {:?}", encoding(mine), encoding(theirs)));
        }
        let errors = |v: &Value| -> BTreeSet<String> {
            v["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        if errors(mine) != errors(theirs) {
            differences.push(format!("{name}: errors {:?} vs {:?}", errors(mine), errors(theirs)));
        }
    }
    assert!(
        differences.is_empty(),
        "differences from the official lexicons (ours vs official):\n{}",
        differences.join("\n")
    );
}
