//! Read-after-write, as the reference PDS does it: an AppView answers from what it has indexed
//! (its `atproto-repo-rev` header says up to which revision of the caller's repository), so a
//! user who just posted or edited their profile would not see it. For the methods below, the
//! caller's own records written after that revision are laid over the AppView's answer: the
//! profile's `displayName` and `description` on their own profile views, and their new posts
//! in their timeline and their own author feed. `Atproto-Upstream-Lag` then says, in
//! milliseconds, how far behind the AppView was. Only the newest [`LOOK_BACK`] records are
//! looked at, so the work per call is bounded.

use serde_json::{Value, json};
use ues_sync::repo::syntax::Did;

use crate::node::{Node, NodeError};

/// The newest records of the caller looked at.
const LOOK_BACK: usize = 100;

/// The methods whose answers get the caller's newer records.
pub(crate) const MUNGED: &[&str] = &[
    "app.bsky.actor.getProfile",
    "app.bsky.actor.getProfiles",
    "app.bsky.feed.getTimeline",
    "app.bsky.feed.getAuthorFeed",
];

/// The caller's records newer than `rev`: their profile (if it changed) and new posts (newest
/// first), with the age of the oldest.
struct Local {
    profile: Option<Value>,
    posts: Vec<(String, String, Value, i64)>,
    oldest_ms: Option<i64>,
}

fn local(st: &Node, did: &Did, rev: &str) -> Result<Local, NodeError> {
    let mut out = Local { profile: None, posts: Vec::new(), oldest_ms: None };
    for (rec, at) in st.accounts.records_after_rev(did, rev, LOOK_BACK)? {
        let wanted = match rec.collection.as_str() {
            "app.bsky.actor.profile" => rec.rkey == "self",
            "app.bsky.feed.post" => true,
            _ => false,
        };
        if !wanted {
            continue;
        }
        let view = st.get_record(did.as_str(), &rec.collection, &rec.rkey, None)?;
        out.oldest_ms = Some(out.oldest_ms.map_or(at, |o: i64| o.min(at)));
        if rec.collection == "app.bsky.actor.profile" {
            out.profile = Some(view.value);
        } else {
            out.posts.push((view.uri, view.cid, view.value, at));
        }
    }
    Ok(out)
}

/// A profile view of the caller with their newer profile record's words.
fn update_profile(view: &mut Value, profile: &Value) {
    for field in ["displayName", "description"] {
        match profile.get(field) {
            Some(v) => view[field] = v.clone(),
            None => {
                if let Some(o) = view.as_object_mut() {
                    o.remove(field);
                }
            }
        }
    }
}

/// Inserts the caller's newer posts into a feed (newest first), as post views authored by
/// `author`, those newer than the feed's last item only.
fn insert_posts(feed: &mut Vec<Value>, posts: &[(String, String, Value, i64)], author: &Value) {
    let last = feed.last().and_then(|i| i["post"]["indexedAt"].as_str()).unwrap_or("").to_string();
    for (uri, cid, record, at) in posts.iter().rev() {
        if feed.iter().any(|i| i["post"]["uri"] == uri.as_str()) {
            continue;
        }
        let indexed_at = crate::node::sequencer::iso_from_millis(*at);
        if !last.is_empty() && indexed_at < last {
            continue;
        }
        let item = json!({
            "post": {
                "uri": uri, "cid": cid, "author": author, "record": record, "indexedAt": indexed_at,
                "replyCount": 0, "repostCount": 0, "likeCount": 0, "quoteCount": 0, "labels": [],
            }
        });
        let at = feed.iter().position(|i| i["post"]["indexedAt"].as_str().is_some_and(|t| t < indexed_at.as_str()));
        feed.insert(at.unwrap_or(feed.len()), item);
    }
}

/// The caller's basic profile view: from an item of theirs in the answer, else their DID and
/// handle here; with their newer profile's words.
fn author_view(st: &Node, did: &Did, feed: &[Value], profile: Option<&Value>) -> Result<Value, NodeError> {
    let mut author = match feed.iter().map(|i| &i["post"]["author"]).find(|a| a["did"] == did.as_str()) {
        Some(a) => a.clone(),
        None => {
            let account = st.accounts.get(did)?.ok_or_else(|| NodeError::internal("the caller's account is gone"))?;
            json!({ "did": did.as_str(), "handle": account.handle.as_str() })
        }
    };
    if let Some(p) = profile {
        update_profile(&mut author, p);
    }
    Ok(author)
}

/// Lays the caller's records newer than `rev` over `body` (the AppView's answer to `nsid`);
/// returns the new body and the lag in milliseconds, or `None` when nothing changed.
pub(crate) fn apply(
    st: &Node,
    caller: &Did,
    nsid: &str,
    query: &str,
    rev: &str,
    body: &mut Value,
) -> Result<Option<u64>, NodeError> {
    let local = local(st, caller, rev)?;
    if local.profile.is_none() && local.posts.is_empty() {
        return Ok(None);
    }
    let own = |v: &Value| v["did"] == caller.as_str();
    match nsid {
        "app.bsky.actor.getProfile" => match &local.profile {
            Some(p) if own(body) => update_profile(body, p),
            _ => return Ok(None),
        },
        "app.bsky.actor.getProfiles" => {
            let Some(p) = &local.profile else { return Ok(None) };
            for view in body["profiles"].as_array_mut().into_iter().flatten().filter(|v| own(v)) {
                update_profile(view, p);
            }
        }
        "app.bsky.feed.getTimeline" => {
            let mut feed = body["feed"].as_array().cloned().unwrap_or_default();
            let author = author_view(st, caller, &feed, local.profile.as_ref())?;
            insert_posts(&mut feed, &local.posts, &author);
            body["feed"] = Value::Array(feed);
        }
        "app.bsky.feed.getAuthorFeed" => {
            let actor =
                form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "actor").map(|(_, v)| v.to_string());
            let handle = st.accounts.get(caller)?.map(|a| a.handle.to_string());
            if actor.as_deref() != Some(caller.as_str()) && actor != handle {
                return Ok(None);
            }
            let mut feed = body["feed"].as_array().cloned().unwrap_or_default();
            let author = author_view(st, caller, &feed, local.profile.as_ref())?;
            for item in feed.iter_mut().filter(|i| i["post"]["author"]["did"] == caller.as_str()) {
                item["post"]["author"] = author.clone();
            }
            insert_posts(&mut feed, &local.posts, &author);
            body["feed"] = Value::Array(feed);
        }
        _ => return Ok(None),
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ok(Some(local.oldest_ms.map_or(0, |o| now.saturating_sub(o).max(0) as u64)))
}
