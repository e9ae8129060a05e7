//! What the feed reads from records: pure functions over a record's JSON (as the node serves
//! it), so a malformed record is a `None`, never a failed batch.

use serde_json::Value;
use ues_protocol::sync::repo::syntax::Datetime;

pub(super) const POST: &str = "app.bsky.feed.post";
pub(super) const LIKE: &str = "app.bsky.feed.like";
pub(super) const REPOST: &str = "app.bsky.feed.repost";
pub(super) const FOLLOW: &str = "app.bsky.graph.follow";
pub(super) const BLOCK: &str = "app.bsky.graph.block";
pub(super) const PROFILE: &str = "app.bsky.actor.profile";
pub(super) const LIST: &str = "app.bsky.graph.list";
pub(super) const LIST_ITEM: &str = "app.bsky.graph.listitem";
pub(super) const GENERATOR: &str = "app.bsky.feed.generator";

/// The collections the feed indexes.
pub(super) const COLLECTIONS: &[&str] = &[PROFILE, FOLLOW, BLOCK, LIST, LIST_ITEM, GENERATOR, POST, REPOST, LIKE];

/// A post has images (directly or beside a quote).
pub(super) const MEDIA_IMAGES: i64 = 1;
/// A post has a video.
pub(super) const MEDIA_VIDEO: i64 = 2;

/// What the feed keeps of a post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Post {
    pub(super) text: String,
    pub(super) created_at: Option<String>,
    pub(super) parent: Option<String>,
    pub(super) root: Option<String>,
    /// The post it quotes (an `app.bsky.feed.post` URI only).
    pub(super) quote: Option<String>,
    pub(super) media: i64,
    /// DIDs its facets mention.
    pub(super) mentions: Vec<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// `at://did/collection/rkey` split, when it is one.
pub(super) fn split_uri(uri: &str) -> Option<(&str, &str, &str)> {
    let rest = uri.strip_prefix("at://")?;
    let mut parts = rest.splitn(3, '/');
    let (did, coll, rkey) = (parts.next()?, parts.next()?, parts.next()?);
    (did.starts_with("did:") && !rkey.is_empty() && !rkey.contains('/')).then_some((did, coll, rkey))
}

fn media_of(embed: &Value) -> i64 {
    match embed.get("$type").and_then(Value::as_str) {
        Some("app.bsky.embed.images") => MEDIA_IMAGES,
        Some("app.bsky.embed.video") => MEDIA_VIDEO,
        Some("app.bsky.embed.recordWithMedia") => embed.get("media").map_or(0, media_of),
        _ => 0,
    }
}

pub(super) fn post(v: &Value) -> Option<Post> {
    let text = v.get("text")?.as_str()?.to_string();
    let created_at = v.get("createdAt").and_then(Value::as_str).map(str::to_string);
    let parent = str_at(v, &["reply", "parent", "uri"]).map(str::to_string);
    let root = str_at(v, &["reply", "root", "uri"]).map(str::to_string);
    let embed = v.get("embed");
    let quote = embed
        .and_then(|e| match e.get("$type").and_then(Value::as_str) {
            Some("app.bsky.embed.record") => str_at(e, &["record", "uri"]),
            Some("app.bsky.embed.recordWithMedia") => str_at(e, &["record", "record", "uri"]),
            _ => None,
        })
        .filter(|u| split_uri(u).is_some_and(|(_, c, _)| c == POST))
        .map(str::to_string);
    let media = embed.map_or(0, media_of);
    let mut mentions = Vec::new();
    for facet in v.get("facets").and_then(Value::as_array).into_iter().flatten() {
        for feature in facet.get("features").and_then(Value::as_array).into_iter().flatten() {
            if feature.get("$type").and_then(Value::as_str) == Some("app.bsky.richtext.facet#mention")
                && let Some(did) = feature.get("did").and_then(Value::as_str)
                && !mentions.iter().any(|m| m == did)
                && mentions.len() < 64
            {
                mentions.push(did.to_string());
            }
        }
    }
    Some(Post { text, created_at, parent: parent.filter(|_| root.is_some()), root, quote, media, mentions })
}

/// A like's or repost's subject: `(uri, cid)`.
pub(super) fn subject_ref(v: &Value) -> Option<(String, Option<String>)> {
    let uri = str_at(v, &["subject", "uri"])?;
    split_uri(uri)?;
    Some((uri.to_string(), str_at(v, &["subject", "cid"]).map(str::to_string)))
}

/// A follow's or block's subject DID.
pub(super) fn subject_did(v: &Value) -> Option<&str> {
    v.get("subject")?.as_str().filter(|d| d.starts_with("did:"))
}

pub(super) fn created_at(v: &Value) -> Option<String> {
    v.get("createdAt").and_then(Value::as_str).map(str::to_string)
}

/// `min(createdAt, indexed_at)` (just `indexed_at` when `createdAt` is absent or not a datetime).
pub(super) fn sort_at(created_at: Option<&str>, indexed_at: i64) -> i64 {
    created_at
        .and_then(|c| Datetime::new(c).ok())
        .and_then(|d| d.unix_millis())
        .map_or(indexed_at, |c| c.min(indexed_at))
}

/// A blob field's CID (`{"$type": "blob", "ref": {"$link": ...}}`, or the legacy `{"cid": ...}`).
pub(super) fn blob_cid(v: Option<&Value>) -> Option<String> {
    let v = v?;
    str_at(v, &["ref", "$link"]).or_else(|| v.get("cid").and_then(Value::as_str)).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_post_gives_its_thread_quote_media_and_mentions() {
        let v = json!({
            "$type": POST, "text": "hi @a", "createdAt": "2026-01-01T00:00:00.000Z",
            "reply": { "root": { "uri": "at://did:plc:r/app.bsky.feed.post/1", "cid": "x" },
                       "parent": { "uri": "at://did:plc:p/app.bsky.feed.post/2", "cid": "y" } },
            "embed": { "$type": "app.bsky.embed.recordWithMedia",
                       "record": { "record": { "uri": "at://did:plc:q/app.bsky.feed.post/3", "cid": "z" } },
                       "media": { "$type": "app.bsky.embed.images", "images": [] } },
            "facets": [{ "index": { "byteStart": 3, "byteEnd": 5 },
                         "features": [{ "$type": "app.bsky.richtext.facet#mention", "did": "did:plc:a" },
                                      { "$type": "app.bsky.richtext.facet#mention", "did": "did:plc:a" }] }]
        });
        let p = post(&v).unwrap();
        assert_eq!(p.root.as_deref(), Some("at://did:plc:r/app.bsky.feed.post/1"));
        assert_eq!(p.parent.as_deref(), Some("at://did:plc:p/app.bsky.feed.post/2"));
        assert_eq!(p.quote.as_deref(), Some("at://did:plc:q/app.bsky.feed.post/3"));
        assert_eq!(p.media, MEDIA_IMAGES);
        assert_eq!(p.mentions, vec!["did:plc:a".to_string()]);
        assert_eq!(sort_at(p.created_at.as_deref(), i64::MAX), 1_767_225_600_000);
    }

    #[test]
    fn malformed_records_are_none_and_bad_times_fall_back() {
        assert!(post(&json!({ "createdAt": "x" })).is_none());
        assert!(subject_ref(&json!({ "subject": { "uri": "https://x" } })).is_none());
        assert!(subject_did(&json!({ "subject": "alice" })).is_none());
        assert_eq!(sort_at(Some("yesterday"), 5), 5);
        assert_eq!(sort_at(Some("2999-01-01T00:00:00Z"), 5), 5);
        // A quote of something that is not a post is not a quote.
        let v = json!({ "text": "", "embed": { "$type": "app.bsky.embed.record",
                        "record": { "uri": "at://did:plc:q/app.bsky.feed.generator/x" } } });
        assert_eq!(post(&v).unwrap().quote, None);
    }
}
