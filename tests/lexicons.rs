//! The Lexicons UES ships (`lexicons/`): they load, validate real records, refuse bad ones,
//! and accept everything Bluesky's official schemas accept (no definition is narrower).

#[path = "support/shared.rs"]
mod shared;

use std::path::Path;

use serde_json::json;
use ues_repo::lexicon::{Lexicons, ValidationStatus};
use ues_repo::lexicon_evolution::check_evolution;

fn ours() -> Lexicons {
    let mut lex = Lexicons::new();
    let n = lex.load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/lexicons"))).unwrap();
    assert_eq!(n, 161);
    lex
}

fn ipld(v: serde_json::Value) -> ues_repo::ipld::Ipld {
    ues_repo::ipld::json::record_from_json(&v).unwrap()
}

#[test]
fn shipped_lexicons_validate_records() {
    let lex = ours();
    let cid = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
    let post = json!({
        "$type": "app.bsky.feed.post", "text": "hi @alice.test", "createdAt": "2026-11-24T12:00:00.000Z", "langs": ["en"],
        "facets": [{"index": {"byteStart": 3, "byteEnd": 14}, "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:ewvi7nxzyoun6zhxrhs64oiz"}]}],
        "reply": {"root": {"uri": "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3k2a", "cid": cid}, "parent": {"uri": "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3k2a", "cid": cid}},
        "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": {"$type": "blob", "ref": {"$link": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"}, "mimeType": "image/png", "size": 1000}}]},
    });
    assert_eq!(
        lex.validate_record("app.bsky.feed.post", "3kabcdefghij2", &ipld(post.clone())),
        Ok(ValidationStatus::Valid)
    );
    let mut long = post.clone();
    long["text"] = json!("x".repeat(301));
    assert_eq!(lex.validate_record("app.bsky.feed.post", "3kabcdefghij2", &ipld(long)).unwrap_err().path, "$.text");
    let mut video_in_images = post.clone();
    video_in_images["embed"]["images"][0]["image"]["mimeType"] = json!("video/mp4");
    assert!(lex.validate_record("app.bsky.feed.post", "3kabcdefghij2", &ipld(video_in_images)).is_err());
    let follow = json!({"$type": "app.bsky.graph.follow", "subject": "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "createdAt": "2026-11-24T12:00:00Z"});
    assert_eq!(
        lex.validate_record("app.bsky.graph.follow", "3kabcdefghij2", &ipld(follow.clone())),
        Ok(ValidationStatus::Valid)
    );
    assert!(lex.validate_record("app.bsky.graph.follow", "not-a-tid", &ipld(follow)).is_err(), "key type tid");
    let profile = json!({"$type": "app.bsky.actor.profile", "displayName": "Alice"});
    assert_eq!(
        lex.validate_record("app.bsky.actor.profile", "self", &ipld(profile.clone())),
        Ok(ValidationStatus::Valid)
    );
    assert!(lex.validate_record("app.bsky.actor.profile", "other", &ipld(profile)).is_err(), "key literal:self");
}

#[test]
fn shipped_lexicons_accept_what_the_official_ones_accept() {
    let Some(official_dir) = shared::shared("reference/atproto-lexicons") else { return };
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/lexicons"));
    let mut checked = 0;
    let mut narrower = Vec::new();
    for entry in walk(root) {
        let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
        let rel = entry.strip_prefix(root).unwrap();
        if rel.starts_with("dev") {
            continue; // UES's own namespace: no official counterpart
        }
        let official: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(official_dir.join(rel)).unwrap()).unwrap();
        // Compare only the definitions we ship (the official files also hold API views).
        for (name, def) in ours["defs"].as_object().unwrap() {
            let one = |d: &serde_json::Value| json!({"lexicon": 1, "id": ours["id"], "defs": {name.as_str(): d}});
            for i in check_evolution(&one(&official["defs"][name]), &one(def)) {
                narrower.push(format!("{}#{name}: {} {}", ours["id"].as_str().unwrap(), i.path, i.reason));
            }
            checked += 1;
        }
    }
    assert!(narrower.is_empty(), "narrower than the official schemas:\n{}", narrower.join("\n"));
    assert_eq!(checked, 146, "definitions compared");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out
}
