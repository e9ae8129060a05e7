//! The `app.bsky.*` read methods, answered from the feed's index in the shapes of Bluesky's
//! lexicons (`app.bsky.actor.defs`, `app.bsky.feed.defs`, ...), with the viewer's state.
//!
//! Lists are ordered newest first by `sort_at`, then by row number; a cursor is
//! `<sort_at>::<row>` of the last row examined, so a page never repeats or skips a row even
//! when rows were left out of the page (blocked, deleted) or new ones arrived meanwhile.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use ues_protocol::node::extract::XJson;
use ues_protocol::node::sequencer::iso_from_millis;
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection, OptionalExtension, params};
use ues_protocol::sync::repo::syntax::{Datetime, Handle};

use super::index::{FLAG_IMAGES, FLAG_REPLY, FLAG_SELF_ROOT, FLAG_VIDEO, ITEM_REPOST, Reason, uri};
use super::records::{self, POST, split_uri};

type Params = Vec<(String, String)>;
type Answer = Result<Json<Value>, NodeError>;

/// Thread levels walked at most, up or down (the lexicons allow at most 1,000).
const MAX_DEPTH: i64 = 1000;
/// Posts a thread shows at most below its anchor.
const MAX_THREAD_POSTS: i64 = 10_000;

pub(super) fn routes() -> Router<Arc<Node>> {
    let q = |f: fn(&Ctx<'_>, &Params) -> Result<Value, NodeError>, nsid: &'static str, auth: bool| {
        get(move |State(node): State<Arc<Node>>, headers: HeaderMap, Query(p): Query<Params>| async move {
            answer(node, headers, nsid, auth, p, f).await
        })
    };
    Router::new()
        .route("/xrpc/app.bsky.actor.getProfile", q(get_profile, "app.bsky.actor.getProfile", false))
        .route("/xrpc/app.bsky.actor.getProfiles", q(get_profiles, "app.bsky.actor.getProfiles", false))
        .route("/xrpc/app.bsky.actor.searchActors", q(search_actors, "app.bsky.actor.searchActors", false))
        .route(
            "/xrpc/app.bsky.actor.searchActorsTypeahead",
            q(search_actors_typeahead, "app.bsky.actor.searchActorsTypeahead", false),
        )
        .route("/xrpc/app.bsky.feed.getTimeline", q(get_timeline, "app.bsky.feed.getTimeline", true))
        .route("/xrpc/app.bsky.feed.getAuthorFeed", q(get_author_feed, "app.bsky.feed.getAuthorFeed", false))
        .route("/xrpc/app.bsky.feed.getPostThread", q(get_post_thread, "app.bsky.feed.getPostThread", false))
        .route("/xrpc/app.bsky.feed.getPosts", q(get_posts, "app.bsky.feed.getPosts", false))
        .route("/xrpc/app.bsky.feed.getLikes", q(get_likes, "app.bsky.feed.getLikes", false))
        .route("/xrpc/app.bsky.feed.getRepostedBy", q(get_reposted_by, "app.bsky.feed.getRepostedBy", false))
        .route("/xrpc/app.bsky.feed.getActorLikes", q(get_actor_likes, "app.bsky.feed.getActorLikes", true))
        .route("/xrpc/app.bsky.feed.getQuotes", q(get_quotes, "app.bsky.feed.getQuotes", false))
        .route("/xrpc/app.bsky.feed.searchPosts", q(search_posts, "app.bsky.feed.searchPosts", false))
        .route("/xrpc/app.bsky.graph.getFollows", q(get_follows, "app.bsky.graph.getFollows", false))
        .route("/xrpc/app.bsky.graph.getFollowers", q(get_followers, "app.bsky.graph.getFollowers", false))
        .route("/xrpc/app.bsky.graph.getBlocks", q(get_blocks, "app.bsky.graph.getBlocks", true))
        .route("/xrpc/app.bsky.graph.getLists", q(get_lists, "app.bsky.graph.getLists", false))
        .route("/xrpc/app.bsky.graph.getList", q(get_list, "app.bsky.graph.getList", false))
        .route("/xrpc/app.bsky.feed.getFeedGenerator", q(get_feed_generator, "app.bsky.feed.getFeedGenerator", false))
        .route(
            "/xrpc/app.bsky.feed.getFeedGenerators",
            q(get_feed_generators, "app.bsky.feed.getFeedGenerators", false),
        )
        .route("/xrpc/app.bsky.feed.getFeed", q(get_feed, "app.bsky.feed.getFeed", true))
        .route(
            "/xrpc/app.bsky.notification.listNotifications",
            q(list_notifications, "app.bsky.notification.listNotifications", true),
        )
        .route(
            "/xrpc/app.bsky.notification.getUnreadCount",
            q(get_unread_count, "app.bsky.notification.getUnreadCount", true),
        )
        .route("/xrpc/app.bsky.notification.updateSeen", post(update_seen))
}

/// REST for apps that do not speak XRPC: `GET /api/v1/timeline` and
/// `GET /api/v1/notifications` (`limit`, `cursor`), the same answers as `getTimeline` and
/// `listNotifications`, 404 for a missing resource as REST has it.
pub(super) fn rest_routes(node: Arc<Node>) -> Router {
    let q = |f: fn(&Ctx<'_>, &Params) -> Result<Value, NodeError>, nsid: &'static str| {
        get(move |State(node): State<Arc<Node>>, headers: HeaderMap, Query(p): Query<Params>| async move {
            answer(node, headers, nsid, true, p, f).await
        })
    };
    Router::new()
        .route("/api/v1/timeline", q(get_timeline, "app.bsky.feed.getTimeline"))
        .route("/api/v1/notifications", q(list_notifications, "app.bsky.notification.listNotifications"))
        .with_state(node)
}

/// The caller, when signed in (a session token, app password or OAuth token allowed this
/// method with `rpc:` for the AppView).
fn viewer(node: &Node, headers: &HeaderMap, nsid: &str) -> Result<Option<String>, NodeError> {
    if !headers.contains_key("authorization") {
        return Ok(None);
    }
    let claims = node.access(headers)?;
    let aud = headers
        .get("atproto-proxy")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("{}#bsky_appview", node.cfg.service_did), str::to_string);
    claims.check_rpc(nsid, &aud)?;
    Ok(Some(claims.sub))
}

async fn answer(
    node: Arc<Node>,
    headers: HeaderMap,
    nsid: &'static str,
    auth: bool,
    p: Params,
    f: fn(&Ctx<'_>, &Params) -> Result<Value, NodeError>,
) -> Answer {
    let who = viewer(&node, &headers, nsid)?;
    if auth && who.is_none() {
        return Err(NodeError::auth_required("Authentication Required"));
    }
    blocking(move || {
        node.accounts
            .db()
            .read(|conn| {
                let ctx = Ctx::new(conn, &node, who.as_deref()).map_err(NodeError::internal)?;
                f(&ctx, &p)
            })
            .map(Json)
    })
    .await
}

async fn update_seen(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(body): XJson<Value>,
) -> Result<StatusCode, NodeError> {
    let nsid = "app.bsky.notification.updateSeen";
    let who = viewer(&node, &headers, nsid)?.ok_or_else(|| NodeError::auth_required("Authentication Required"))?;
    let text = body.get("seenAt").and_then(Value::as_str).ok_or_else(|| NodeError::invalid("seenAt is required"))?;
    let ms = Datetime::new(text)
        .ok()
        .and_then(|d| d.unix_millis())
        .ok_or_else(|| NodeError::invalid("seenAt must be a datetime"))?;
    let text = text.to_string();
    blocking(move || {
        node.accounts
            .db()
            .write(|tx| {
                tx.execute("INSERT OR IGNORE INTO feed_actor (did) VALUES (?1)", [&who])?;
                tx.execute(
                    "INSERT INTO feed_seen (actor_id, seen_at, seen_at_text) SELECT id, ?2, ?3 FROM feed_actor WHERE did = ?1
                     ON CONFLICT (actor_id) DO UPDATE SET seen_at = excluded.seen_at, seen_at_text = excluded.seen_at_text",
                    params![who, ms, text],
                )?;
                Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(())
            })
            .map_err(NodeError::internal)
    })
    .await?;
    Ok(StatusCode::OK)
}

/// `dev.ues.feed.getStatus`.
pub(super) async fn get_status(State(node): State<Arc<Node>>, serving: bool) -> Answer {
    blocking(move || {
        node.accounts
            .db()
            .read(|c| {
                let cursor: i64 = c
                    .query_row("SELECT seq FROM app_cursor WHERE app = ?1", [super::NAME], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                let head = ues_protocol::node::sequencer::latest_seq_in(c)?;
                Ok::<_, rusqlite::Error>(
                    json!({ "cursor": cursor, "head": head, "caughtUp": cursor >= head, "serving": serving }),
                )
            })
            .map(Json)
            .map_err(internal)
    })
    .await
}

// ---- parameters ----

fn one<'p>(p: &'p Params, name: &str) -> Option<&'p str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn all<'p>(p: &'p Params, name: &str) -> Vec<&'p str> {
    p.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn required<'p>(p: &'p Params, name: &str) -> Result<&'p str, NodeError> {
    one(p, name).ok_or_else(|| NodeError::invalid(format!("Error: Params must have the property \"{name}\"")))
}

fn limit(p: &Params, default: i64, max: i64) -> i64 {
    one(p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(default).clamp(1, max)
}

/// `<sort_at>::<row>`, or the top.
fn cursor(p: &Params) -> Result<(i64, i64), NodeError> {
    match one(p, "cursor") {
        None | Some("") => Ok((i64::MAX, i64::MAX)),
        Some(c) => c
            .split_once("::")
            .and_then(|(s, i)| Some((s.parse().ok()?, i.parse().ok()?)))
            .ok_or_else(|| NodeError::invalid("Malformed cursor")),
    }
}

/// The cursor to the rows after the last one examined, when a full page was examined.
fn next_cursor(out: &mut Map<String, Value>, examined: usize, limit: i64, last: Option<(i64, i64)>) {
    if examined as i64 >= limit
        && let Some((s, i)) = last
    {
        out.insert("cursor".into(), Value::String(format!("{s}::{i}")));
    }
}

fn internal(e: rusqlite::Error) -> NodeError {
    NodeError::internal(e)
}

// ---- the viewer and the actors ----

struct Actor {
    did: String,
    handle: Option<String>,
    status: String,
}

/// One request's reading context: the viewer, whom it blocks or is blocked by, and the
/// profiles already rendered.
pub(super) struct Ctx<'c> {
    conn: &'c Connection,
    node: &'c Node,
    viewer: Option<i64>,
    viewer_did: String,
    /// Accounts the viewer blocks.
    blocking: HashSet<i64>,
    /// Accounts that block the viewer.
    blocked_by: HashSet<i64>,
    basics: RefCell<HashMap<i64, Value>>,
    /// Posts already read in this request, by URI.
    posts: RefCell<HashMap<String, Option<PostRow>>>,
}

impl<'c> Ctx<'c> {
    fn new(conn: &'c Connection, node: &'c Node, viewer_did: Option<&str>) -> rusqlite::Result<Self> {
        let viewer = match viewer_did {
            Some(d) => conn.query_row("SELECT id FROM feed_actor WHERE did = ?1", [d], |r| r.get(0)).optional()?,
            None => None,
        };
        let mut blocking = HashSet::new();
        let mut blocked_by = HashSet::new();
        if let Some(v) = viewer {
            let mut s = conn.prepare_cached("SELECT subject_id FROM feed_block WHERE actor_id = ?1")?;
            for id in s.query_map([v], |r| r.get(0))? {
                blocking.insert(id?);
            }
            let mut s = conn.prepare_cached("SELECT actor_id FROM feed_block WHERE subject_id = ?1")?;
            for id in s.query_map([v], |r| r.get(0))? {
                blocked_by.insert(id?);
            }
        }
        let viewer_did = viewer_did.unwrap_or_default().to_string();
        Ok(Self {
            conn,
            node,
            viewer,
            viewer_did,
            blocking,
            blocked_by,
            basics: RefCell::new(HashMap::new()),
            posts: RefCell::new(HashMap::new()),
        })
    }

    fn viewer(&self) -> Result<i64, NodeError> {
        // A signed-in account with nothing indexed yet has no number: nothing to show.
        Ok(self.viewer.unwrap_or(-1))
    }

    fn blocked(&self, actor: i64) -> bool {
        self.blocking.contains(&actor) || self.blocked_by.contains(&actor)
    }

    fn actor(&self, id: i64) -> rusqlite::Result<Option<Actor>> {
        self.conn
            .prepare_cached("SELECT did, handle, status FROM feed_actor WHERE id = ?1")?
            .query_row([id], |r| Ok(Actor { did: r.get(0)?, handle: r.get(1)?, status: r.get(2)? }))
            .optional()
    }

    fn actor_id(&self, did: &str) -> rusqlite::Result<Option<i64>> {
        self.conn.prepare_cached("SELECT id FROM feed_actor WHERE did = ?1")?.query_row([did], |r| r.get(0)).optional()
    }

    /// An `at-identifier` parameter to an indexed account (`None`: not known here).
    fn resolve(&self, ident: &str) -> rusqlite::Result<Option<i64>> {
        if ident.starts_with("did:") {
            return self.actor_id(ident);
        }
        let by_handle = self
            .conn
            .prepare_cached("SELECT id FROM feed_actor WHERE handle = ?1 COLLATE NOCASE AND local = 1")?
            .query_row([ident], |r| r.get(0))
            .optional()?;
        if by_handle.is_some() {
            return Ok(by_handle);
        }
        let Ok(handle) = Handle::new(ident) else { return Ok(None) };
        match self.node.accounts.by_handle(&handle) {
            Ok(Some(a)) => self.actor_id(a.did.as_str()),
            _ => Ok(None),
        }
    }

    fn blob_url(&self, did: &str, cid: &str) -> String {
        format!("{}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}", self.node.cfg.public_url.trim_end_matches('/'))
    }

    fn viewer_state(&self, id: i64) -> rusqlite::Result<Value> {
        let mut v = Map::new();
        v.insert("muted".into(), Value::Bool(false));
        let Some(me) = self.viewer else {
            v.insert("blockedBy".into(), Value::Bool(false));
            return Ok(Value::Object(v));
        };
        v.insert("blockedBy".into(), Value::Bool(self.blocked_by.contains(&id)));
        let did = |actor: i64| -> rusqlite::Result<String> {
            if actor == me {
                return Ok(self.viewer_did.clone());
            }
            self.conn.prepare_cached("SELECT did FROM feed_actor WHERE id = ?1")?.query_row([actor], |r| r.get(0))
        };
        if self.blocking.contains(&id) {
            let rkey: Option<String> = self
                .conn
                .prepare_cached(
                    "SELECT rkey FROM feed_block WHERE actor_id = ?1 AND subject_id = ?2 ORDER BY id LIMIT 1",
                )?
                .query_row([me, id], |r| r.get(0))
                .optional()?;
            if let Some(rkey) = rkey {
                v.insert("blocking".into(), Value::String(uri(&did(me)?, records::BLOCK, &rkey)));
            }
        }
        if id != me && !self.blocked(id) {
            let mut s = self.conn.prepare_cached(
                "SELECT rkey FROM feed_follow WHERE actor_id = ?1 AND subject_id = ?2 ORDER BY id LIMIT 1",
            )?;
            let following: Option<String> = s.query_row([me, id], |r| r.get(0)).optional()?;
            let followed_by: Option<String> = s.query_row([id, me], |r| r.get(0)).optional()?;
            if let Some(rkey) = following {
                v.insert("following".into(), Value::String(uri(&did(me)?, records::FOLLOW, &rkey)));
            }
            if let Some(rkey) = followed_by {
                v.insert("followedBy".into(), Value::String(uri(&did(id)?, records::FOLLOW, &rkey)));
            }
        }
        Ok(Value::Object(v))
    }

    /// `app.bsky.actor.defs#profileViewBasic` (`None`: the actor is not known here).
    fn profile_basic(&self, id: i64) -> rusqlite::Result<Option<Value>> {
        if let Some(v) = self.basics.borrow().get(&id) {
            return Ok(Some(v.clone()));
        }
        let Some(v) = self.profile(id, 0)? else { return Ok(None) };
        self.basics.borrow_mut().insert(id, v.clone());
        Ok(Some(v))
    }

    /// A profile view: 0 basic, 1 `#profileView`, 2 `#profileViewDetailed`.
    fn profile(&self, id: i64, level: u8) -> rusqlite::Result<Option<Value>> {
        let Some(a) = self.actor(id)? else { return Ok(None) };
        let mut v = Map::new();
        v.insert("did".into(), Value::String(a.did.clone()));
        v.insert("handle".into(), Value::String(a.handle.clone().unwrap_or_else(|| "handle.invalid".into())));
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT display_name, description, avatar, banner, pinned_uri, pinned_cid, created_at, indexed_at FROM feed_profile WHERE actor_id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
            .optional()?;
        if let Some((name, description, avatar, banner, pinned_uri, pinned_cid, created_at, indexed_at)) = &row {
            if let Some(n) = name {
                v.insert("displayName".into(), Value::String(n.clone()));
            }
            if let Some(cid) = avatar {
                v.insert("avatar".into(), Value::String(self.blob_url(&a.did, cid)));
            }
            if let Some(c) = created_at.as_ref().filter(|c| Datetime::new(c.as_str()).is_ok()) {
                v.insert("createdAt".into(), Value::String(c.clone()));
            }
            if level >= 1 {
                if let Some(d) = description {
                    v.insert("description".into(), Value::String(d.clone()));
                }
                v.insert("indexedAt".into(), Value::String(iso_from_millis(*indexed_at)));
            }
            if level >= 2 {
                if let Some(b) = banner {
                    v.insert("banner".into(), Value::String(self.blob_url(&a.did, b)));
                }
                if let (Some(u), Some(c)) = (pinned_uri, pinned_cid) {
                    v.insert("pinnedPost".into(), json!({ "uri": u, "cid": c }));
                }
            }
        }
        if level >= 2 {
            let (followers, follows, posts): (i64, i64, i64) = self
                .conn
                .prepare_cached("SELECT followers, follows, posts FROM feed_actor_count WHERE actor_id = ?1")?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?
                .unwrap_or((0, 0, 0));
            v.insert("followersCount".into(), followers.into());
            v.insert("followsCount".into(), follows.into());
            v.insert("postsCount".into(), posts.into());
            let (lists, feedgens): (i64, i64) = self
                .conn
                .prepare_cached(
                    "SELECT (SELECT count(*) FROM feed_list WHERE actor_id = ?1), (SELECT count(*) FROM feed_generator WHERE actor_id = ?1)",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            v.insert(
                "associated".into(),
                json!({ "lists": lists, "feedgens": feedgens, "starterPacks": 0, "labeler": false }),
            );
        }
        if a.status == "takendown" {
            v.insert(
                "labels".into(),
                json!([{ "src": a.did, "uri": a.did, "val": "!takedown", "cts": iso_from_millis(0) }]),
            );
        } else {
            v.insert("labels".into(), json!([]));
        }
        v.insert("viewer".into(), self.viewer_state(id)?);
        Ok(Some(Value::Object(v)))
    }

    // ---- posts ----

    /// The post at `uri`, when indexed: (row, author, cid, record JSON, indexed_at).
    fn post_row(&self, at: &str) -> rusqlite::Result<Option<PostRow>> {
        if let Some(row) = self.posts.borrow().get(at) {
            return Ok(row.clone());
        }
        let Some((did, coll, rkey)) = split_uri(at) else { return Ok(None) };
        if coll != POST {
            return Ok(None);
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT p.id, p.author_id, p.cid, p.record, p.indexed_at FROM feed_post p JOIN feed_actor a ON a.id = p.author_id
                 WHERE a.did = ?1 AND p.rkey = ?2",
            )?
            .query_row([did, rkey], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .optional()?;
        let mut posts = self.posts.borrow_mut();
        if posts.len() > 4096 {
            posts.clear();
        }
        posts.insert(at.to_string(), row.clone());
        Ok(row)
    }

    fn counts(&self, at: &str) -> rusqlite::Result<(i64, i64, i64, i64)> {
        Ok(self.counts_and_mine(at, -1)?.0)
    }

    /// A post's counts, and the viewer's like and repost of it. (Plain statements: SQLite
    /// prepares ones with scalar subqueries again at each run, which costs more than the
    /// statements saved.)
    #[allow(clippy::type_complexity)]
    fn counts_and_mine(
        &self,
        at: &str,
        me: i64,
    ) -> rusqlite::Result<((i64, i64, i64, i64), Option<String>, Option<String>)> {
        let counts = self
            .conn
            .prepare_cached("SELECT likes, reposts, replies, quotes FROM feed_post_count WHERE uri = ?1")?
            .query_row([at], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?
            .unwrap_or((0, 0, 0, 0));
        if me < 0 {
            return Ok((counts, None, None));
        }
        let like = self
            .conn
            .prepare_cached("SELECT rkey FROM feed_like WHERE actor_id = ?1 AND subject_uri = ?2 ORDER BY id LIMIT 1")?
            .query_row(params![me, at], |r| r.get(0))
            .optional()?;
        let repost = self
            .conn
            .prepare_cached(
                "SELECT rkey FROM feed_repost WHERE actor_id = ?1 AND subject_uri = ?2 ORDER BY id LIMIT 1",
            )?
            .query_row(params![me, at], |r| r.get(0))
            .optional()?;
        Ok((counts, like, repost))
    }

    /// `app.bsky.feed.defs#postView` (`None`: not indexed).
    fn post_view(&self, at: &str) -> rusqlite::Result<Option<Value>> {
        self.post_view_at(at, 0)
    }

    fn post_view_at(&self, at: &str, depth: u8) -> rusqlite::Result<Option<Value>> {
        let Some((_, author, cid, record, indexed_at)) = self.post_row(at)? else { return Ok(None) };
        let Some(author_view) = self.profile_basic(author)? else { return Ok(None) };
        let record: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
        let ((likes, reposts, replies, quotes), my_like, my_repost) =
            self.counts_and_mine(at, self.viewer.unwrap_or(-1))?;
        let mut v = Map::new();
        v.insert("$type".into(), Value::String("app.bsky.feed.defs#postView".into()));
        v.insert("uri".into(), Value::String(at.to_string()));
        v.insert("cid".into(), Value::String(cid));
        v.insert("author".into(), author_view.clone());
        let did = author_view["did"].as_str().unwrap_or_default().to_string();
        if let Some(embed) = record.get("embed").and_then(|e| self.embed_view(&did, e, depth).transpose()) {
            v.insert("embed".into(), embed?);
        }
        v.insert("record".into(), record);
        v.insert("replyCount".into(), replies.into());
        v.insert("repostCount".into(), reposts.into());
        v.insert("likeCount".into(), likes.into());
        v.insert("quoteCount".into(), quotes.into());
        v.insert("indexedAt".into(), Value::String(iso_from_millis(indexed_at)));
        if self.viewer.is_some() {
            let mut viewer = Map::new();
            if let Some(k) = my_like {
                viewer.insert("like".into(), Value::String(uri(&self.viewer_did, records::LIKE, &k)));
            }
            if let Some(k) = my_repost {
                viewer.insert("repost".into(), Value::String(uri(&self.viewer_did, records::REPOST, &k)));
            }
            viewer.insert("threadMuted".into(), Value::Bool(false));
            viewer.insert("embeddingDisabled".into(), Value::Bool(false));
            v.insert("viewer".into(), Value::Object(viewer));
        }
        v.insert("labels".into(), json!([]));
        Ok(Some(Value::Object(v)))
    }

    /// An embed's view (`app.bsky.embed.*#view`), blob references turned into URLs.
    fn embed_view(&self, did: &str, e: &Value, depth: u8) -> rusqlite::Result<Option<Value>> {
        Ok(match e.get("$type").and_then(Value::as_str) {
            Some("app.bsky.embed.images") => {
                let images: Vec<Value> = e
                    .get("images")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| {
                        let cid = records::blob_cid(i.get("image"))?;
                        let url = self.blob_url(did, &cid);
                        let mut v = json!({ "thumb": url, "fullsize": url, "alt": i.get("alt").and_then(Value::as_str).unwrap_or("") });
                        if let Some(a) = i.get("aspectRatio") {
                            v["aspectRatio"] = a.clone();
                        }
                        Some(v)
                    })
                    .collect();
                Some(json!({ "$type": "app.bsky.embed.images#view", "images": images }))
            }
            Some("app.bsky.embed.external") => {
                let x = e.get("external").cloned().unwrap_or(Value::Null);
                let mut ext = json!({
                    "uri": x.get("uri").and_then(Value::as_str).unwrap_or(""),
                    "title": x.get("title").and_then(Value::as_str).unwrap_or(""),
                    "description": x.get("description").and_then(Value::as_str).unwrap_or(""),
                });
                if let Some(cid) = records::blob_cid(x.get("thumb")) {
                    ext["thumb"] = Value::String(self.blob_url(did, &cid));
                }
                Some(json!({ "$type": "app.bsky.embed.external#view", "external": ext }))
            }
            Some("app.bsky.embed.video") => {
                let cid = records::blob_cid(e.get("video")).unwrap_or_default();
                let mut v =
                    json!({ "$type": "app.bsky.embed.video#view", "cid": cid, "playlist": self.blob_url(did, &cid) });
                if let Some(alt) = e.get("alt") {
                    v["alt"] = alt.clone();
                }
                if let Some(a) = e.get("aspectRatio") {
                    v["aspectRatio"] = a.clone();
                }
                Some(v)
            }
            Some("app.bsky.embed.record") => {
                let target = e.pointer("/record/uri").and_then(Value::as_str).unwrap_or("");
                Some(json!({ "$type": "app.bsky.embed.record#view", "record": self.embedded_record(target, depth)? }))
            }
            Some("app.bsky.embed.recordWithMedia") => {
                let target = e.pointer("/record/record/uri").and_then(Value::as_str).unwrap_or("");
                let media = match e.get("media") {
                    Some(m) => self.embed_view(did, m, depth)?,
                    None => None,
                };
                let mut v = json!({
                    "$type": "app.bsky.embed.recordWithMedia#view",
                    "record": { "$type": "app.bsky.embed.record#view", "record": self.embedded_record(target, depth)? },
                });
                if let Some(m) = media {
                    v["media"] = m;
                }
                Some(v)
            }
            _ => None,
        })
    }

    /// `app.bsky.embed.record#viewRecord`, `#viewNotFound` or `#viewBlocked`.
    fn embedded_record(&self, at: &str, depth: u8) -> rusqlite::Result<Value> {
        let not_found = json!({ "$type": "app.bsky.embed.record#viewNotFound", "uri": at, "notFound": true });
        let Some((_, author, cid, record, indexed_at)) = self.post_row(at)? else { return Ok(not_found) };
        let Some(author_view) = self.profile_basic(author)? else { return Ok(not_found) };
        if self.blocked(author) {
            return Ok(json!({
                "$type": "app.bsky.embed.record#viewBlocked", "uri": at, "blocked": true,
                "author": { "did": author_view["did"], "viewer": author_view["viewer"] },
            }));
        }
        let value: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
        let (likes, reposts, replies, quotes) = self.counts(at)?;
        let mut v = json!({
            "$type": "app.bsky.embed.record#viewRecord", "uri": at, "cid": cid, "author": author_view,
            "value": value, "labels": [], "likeCount": likes, "repostCount": reposts, "replyCount": replies,
            "quoteCount": quotes, "indexedAt": iso_from_millis(indexed_at),
        });
        // One level of embeds inside an embedded record, as Bluesky shows them.
        if depth == 0
            && let Some(e) = value.get("embed")
            && let Some(ev) = self.embed_view(author_view["did"].as_str().unwrap_or_default(), e, depth + 1)?
        {
            v["embeds"] = json!([ev]);
        }
        Ok(v)
    }

    /// A post in a union (`#postView`, `#notFoundPost`, `#blockedPost`).
    fn post_or_gap(&self, at: &str) -> rusqlite::Result<Value> {
        if let Some((_, author, ..)) = self.post_row(at)? {
            if self.blocked(author) {
                return self.blocked_post(at, author);
            }
            if let Some(v) = self.post_view(at)? {
                return Ok(v);
            }
        }
        Ok(json!({ "$type": "app.bsky.feed.defs#notFoundPost", "uri": at, "notFound": true }))
    }

    fn blocked_post(&self, at: &str, author: i64) -> rusqlite::Result<Value> {
        let did = self.actor(author)?.map(|a| a.did).unwrap_or_default();
        let viewer = self.viewer_state(author)?;
        Ok(json!({
            "$type": "app.bsky.feed.defs#blockedPost", "uri": at, "blocked": true,
            "author": { "did": did, "viewer": viewer },
        }))
    }

    /// `#replyRef` of a reply (root, parent, the parent's parent's author).
    fn reply_ref(&self, record: &Value) -> rusqlite::Result<Option<Value>> {
        let (Some(root), Some(parent)) = (
            record.pointer("/reply/root/uri").and_then(Value::as_str),
            record.pointer("/reply/parent/uri").and_then(Value::as_str),
        ) else {
            return Ok(None);
        };
        let parent_view = self.post_or_gap(parent)?;
        let mut v = json!({ "root": self.post_or_gap(root)?, "parent": parent_view });
        if let Some(gp) = parent_view.pointer("/record/reply/parent/uri").and_then(Value::as_str)
            && let Some((gd, _, _)) = split_uri(gp)
            && let Some(id) = self.actor_id(gd)?
            && let Some(author) = self.profile_basic(id)?
        {
            v["grandparentAuthor"] = author;
        }
        Ok(Some(v))
    }

    /// A `#feedViewPost` of an item (`None`: its post is gone, or by someone blocked).
    fn feed_view_post(&self, item: &Item) -> rusqlite::Result<Option<Value>> {
        let Some((_, author, ..)) = self.post_row(&item.post_uri)? else { return Ok(None) };
        if self.blocked(author) || self.blocked(item.actor) {
            return Ok(None);
        }
        let Some(post) = self.post_view(&item.post_uri)? else { return Ok(None) };
        let mut v = Map::new();
        if let Some(reply) = self.reply_ref(&post["record"])? {
            v.insert("reply".into(), reply);
        }
        v.insert("post".into(), post);
        if item.kind == ITEM_REPOST {
            let Some(by) = self.profile_basic(item.actor)? else { return Ok(None) };
            let (cid, indexed_at): (String, i64) = self
                .conn
                .prepare_cached("SELECT cid, indexed_at FROM feed_repost WHERE actor_id = ?1 AND rkey = ?2")?
                .query_row(params![item.actor, item.rkey], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let at = uri(by["did"].as_str().unwrap_or_default(), records::REPOST, &item.rkey);
            v.insert(
                "reason".into(),
                json!({ "$type": "app.bsky.feed.defs#reasonRepost", "by": by, "uri": at, "cid": cid, "indexedAt": iso_from_millis(indexed_at) }),
            );
        }
        Ok(Some(Value::Object(v)))
    }
}

/// A post's row, author, CID, record JSON and indexing time.
type PostRow = (i64, i64, String, String, i64);

/// Profiles with `createdAt` and indexing time, and the page's cursor.
type Listed = (Vec<(Value, String, i64)>, Map<String, Value>);

/// A row of `feed_item`.
struct Item {
    id: i64,
    actor: i64,
    kind: i64,
    rkey: String,
    post_uri: String,
    sort_at: i64,
    flags: i64,
}

fn item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        id: r.get(0)?,
        actor: r.get(1)?,
        kind: r.get(2)?,
        rkey: r.get(3)?,
        post_uri: r.get(4)?,
        sort_at: r.get(5)?,
        flags: r.get(6)?,
    })
}

const ITEM_COLUMNS: &str = "id, actor_id, kind, rkey, post_uri, sort_at, flags";

// ---- actors ----

fn known(ctx: &Ctx<'_>, ident: &str) -> Result<i64, NodeError> {
    ctx.resolve(ident).map_err(internal)?.ok_or_else(|| NodeError::invalid("Profile not found"))
}

fn get_profile(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    ctx.profile(id, 2).map_err(internal)?.ok_or_else(|| NodeError::invalid("Profile not found"))
}

fn get_profiles(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let mut profiles = Vec::new();
    for a in all(p, "actors").into_iter().take(25) {
        if let Some(id) = ctx.resolve(a).map_err(internal)?
            && let Some(v) = ctx.profile(id, 2).map_err(internal)?
        {
            profiles.push(v);
        }
    }
    Ok(json!({ "profiles": profiles }))
}

/// FTS5 query from free text: each word a quoted term (a prefix for typeahead).
fn fts_query(text: &str, prefix: bool) -> Option<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '.' && c != '_' && c != '-')
        .filter(|w| !w.is_empty())
        .take(16)
        .map(|w| format!("\"{}\"{}", w.replace('"', ""), if prefix { "*" } else { "" }))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn search_actor_ids(ctx: &Ctx<'_>, q: &str, prefix: bool, offset: i64, n: i64) -> Result<Vec<i64>, NodeError> {
    let Some(fts) = fts_query(q, prefix) else { return Ok(Vec::new()) };
    let mut s = ctx
        .conn
        .prepare_cached(
            "SELECT f.rowid FROM feed_actor_fts f JOIN feed_actor a ON a.id = f.rowid
             WHERE feed_actor_fts MATCH ?1 AND a.status = 'active' ORDER BY bm25(feed_actor_fts), f.rowid LIMIT ?2 OFFSET ?3",
        )
        .map_err(internal)?;
    let ids = s.query_map(params![fts, n, offset], |r| r.get(0)).map_err(internal)?;
    ids.collect::<rusqlite::Result<Vec<i64>>>().map_err(internal)
}

fn search_actors(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let n = limit(p, 25, 100);
    let q = one(p, "q").or_else(|| one(p, "term")).unwrap_or("");
    let offset: i64 =
        one(p, "cursor").map_or(Ok(0), |c| c.parse().map_err(|_| NodeError::invalid("Malformed cursor")))?;
    let ids = search_actor_ids(ctx, q, false, offset, n)?;
    let mut actors = Vec::new();
    for id in &ids {
        if !ctx.blocked_by.contains(id)
            && let Some(v) = ctx.profile(*id, 1).map_err(internal)?
        {
            actors.push(v);
        }
    }
    let mut out = Map::new();
    out.insert("actors".into(), Value::Array(actors));
    if ids.len() as i64 >= n {
        out.insert("cursor".into(), Value::String((offset + n).to_string()));
    }
    Ok(Value::Object(out))
}

fn search_actors_typeahead(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let n = limit(p, 10, 100);
    let q = one(p, "q").or_else(|| one(p, "term")).unwrap_or("");
    let mut actors = Vec::new();
    for id in search_actor_ids(ctx, q, true, 0, n)? {
        if !ctx.blocked_by.contains(&id)
            && let Some(v) = ctx.profile_basic(id).map_err(internal)?
        {
            actors.push(v);
        }
    }
    Ok(json!({ "actors": actors }))
}

// ---- feeds ----

/// Walks items newest first from the cursor, keeping those `keep` takes, until `n` are kept or
/// `n` rows... examined; returns the views and the last row examined.
fn page_items(
    ctx: &Ctx<'_>,
    sql_where: &str,
    args: &[&dyn rusqlite::ToSql],
    p: &Params,
    n: i64,
    keep: &dyn Fn(&Item) -> rusqlite::Result<bool>,
    windowed: bool,
) -> Result<Value, NodeError> {
    let (cs, ci) = cursor(p)?;
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM feed_item WHERE {sql_where} AND (sort_at < ?90 OR (sort_at = ?90 AND id < ?91))
         AND sort_at >= ?93 ORDER BY sort_at DESC, id DESC LIMIT ?92"
    );
    let mut s = ctx.conn.prepare_cached(&sql).map_err(internal)?;
    // Over many authors, the rows are read in time windows going back from the cursor (a
    // quarter of an hour, then twice as long each time), so that a page reads the rows near
    // it, not every row of every author followed; the windows do not overlap.
    let top = cs.min(super::now_ms() + 60_000);
    let mut span: i64 = 15 * 60 * 1000;
    let (mut upper_s, mut upper_i) = (cs, ci);
    let mut items = Vec::new();
    for round in 0.. {
        let floor = if !windowed || round >= 40 { i64::MIN } else { top.saturating_sub(span) };
        for (i, a) in args.iter().enumerate() {
            s.raw_bind_parameter(i + 1, a).map_err(internal)?;
        }
        s.raw_bind_parameter(90, upper_s).map_err(internal)?;
        s.raw_bind_parameter(91, upper_i).map_err(internal)?;
        s.raw_bind_parameter(92, n - items.len() as i64).map_err(internal)?;
        s.raw_bind_parameter(93, floor).map_err(internal)?;
        let mut rows = s.raw_query();
        while let Some(r) = rows.next().map_err(internal)? {
            items.push(item(r).map_err(internal)?);
        }
        drop(rows);
        if items.len() as i64 >= n || floor == i64::MIN {
            break;
        }
        // Everything at or above the floor was read: go on below it.
        (upper_s, upper_i) = (floor, i64::MIN);
        span = span.saturating_mul(2);
    }
    let mut feed = Vec::new();
    for it in &items {
        if keep(it).map_err(internal)?
            && let Some(v) = ctx.feed_view_post(it).map_err(internal)?
        {
            feed.push(v);
        }
    }
    let mut out = Map::new();
    out.insert("feed".into(), Value::Array(feed));
    next_cursor(&mut out, items.len(), n, items.last().map(|i| (i.sort_at, i.id)));
    Ok(Value::Object(out))
}

fn get_timeline(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let me = ctx.viewer()?;
    let n = limit(p, 50, 100);
    page_items(
        ctx,
        "actor_id IN (SELECT subject_id FROM feed_follow WHERE actor_id = ?1 UNION SELECT ?1)",
        &[&me],
        p,
        n,
        &|_| Ok(true),
        true,
    )
}

fn author_blocks(ctx: &Ctx<'_>, id: i64) -> Result<(), NodeError> {
    if ctx.blocking.contains(&id) {
        return Err(NodeError::new(StatusCode::BAD_REQUEST, "BlockedActor", "Profile is blocked by the viewer"));
    }
    if ctx.blocked_by.contains(&id) {
        return Err(NodeError::new(StatusCode::BAD_REQUEST, "BlockedByActor", "The viewer is blocked by the profile"));
    }
    Ok(())
}

fn get_author_feed(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    author_blocks(ctx, id)?;
    let n = limit(p, 50, 100);
    let filter = one(p, "filter").unwrap_or("posts_with_replies");
    let cond = match filter {
        "posts_no_replies" => format!("actor_id = ?1 AND (kind = {ITEM_REPOST} OR flags & {FLAG_REPLY} = 0)"),
        "posts_with_media" => format!("actor_id = ?1 AND kind = 0 AND flags & {} != 0", FLAG_IMAGES | FLAG_VIDEO),
        "posts_with_video" => format!("actor_id = ?1 AND kind = 0 AND flags & {FLAG_VIDEO} != 0"),
        "posts_and_author_threads" => {
            format!(
                "actor_id = ?1 AND (kind = {ITEM_REPOST} OR flags & {FLAG_REPLY} = 0 OR flags & {FLAG_SELF_ROOT} != 0)"
            )
        }
        _ => "actor_id = ?1".to_string(),
    };
    let did = ctx.actor(id).map_err(internal)?.map(|a| a.did).unwrap_or_default();
    let self_thread = |it: &Item| -> rusqlite::Result<bool> {
        if filter != "posts_and_author_threads" || it.kind == ITEM_REPOST || it.flags & FLAG_REPLY == 0 {
            return Ok(true);
        }
        // Every ancestor up to the root is the author's own.
        let mut at = it.post_uri.clone();
        for _ in 0..MAX_DEPTH {
            let Some((_, _, _, record, _)) = ctx.post_row(&at)? else { return Ok(false) };
            let record: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
            let Some(parent) = record.pointer("/reply/parent/uri").and_then(Value::as_str) else { return Ok(true) };
            if split_uri(parent).is_none_or(|(d, _, _)| d != did) {
                return Ok(false);
            }
            at = parent.to_string();
        }
        Ok(false)
    };
    let mut out = page_items(ctx, &cond, &[&id], p, n, &self_thread, false)?;
    // The pinned post first on the first page, when asked.
    if one(p, "includePins") == Some("true")
        && one(p, "cursor").is_none()
        && let Some(pinned) = ctx
            .conn
            .query_row("SELECT pinned_uri FROM feed_profile WHERE actor_id = ?1", [id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(internal)?
            .flatten()
        && let Some(post) = ctx.post_view(&pinned).map_err(internal)?
    {
        let feed = out["feed"].as_array_mut().expect("a feed");
        feed.retain(|f| f["post"]["uri"] != pinned.as_str() || f.get("reason").is_some());
        feed.insert(0, json!({ "post": post, "reason": { "$type": "app.bsky.feed.defs#reasonPin" } }));
    }
    Ok(out)
}

fn get_posts(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let mut posts = Vec::new();
    for at in all(p, "uris").into_iter().take(25) {
        if let Some(v) = ctx.post_view(at).map_err(internal)? {
            posts.push(v);
        }
    }
    Ok(json!({ "posts": posts }))
}

fn get_post_thread(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "uri")?;
    let depth: i64 = one(p, "depth").and_then(|d| d.parse().ok()).unwrap_or(6).clamp(0, MAX_DEPTH);
    let height: i64 = one(p, "parentHeight").and_then(|d| d.parse().ok()).unwrap_or(80).clamp(0, MAX_DEPTH);
    let Some((_, author, ..)) = ctx.post_row(at).map_err(internal)? else {
        return Err(NodeError::new(StatusCode::BAD_REQUEST, "NotFound", format!("Post not found: {at}")));
    };
    if ctx.blocked(author) {
        return Ok(json!({ "thread": ctx.blocked_post(at, author).map_err(internal)? }));
    }
    let mut budget = MAX_THREAD_POSTS;
    let mut thread = thread_view(ctx, at, depth, &mut budget).map_err(internal)?;
    // Parents, up to `parentHeight`; a missing or blocked one ends the walk.
    let mut node = &mut thread;
    let mut current = at.to_string();
    for _ in 0..height {
        let record = node["post"]["record"].clone();
        let Some(parent) = record.pointer("/reply/parent/uri").and_then(Value::as_str) else { break };
        let view = ctx.post_or_gap(parent).map_err(internal)?;
        let up = if view["$type"] == "app.bsky.feed.defs#postView" {
            json!({ "$type": "app.bsky.feed.defs#threadViewPost", "post": view })
        } else {
            view
        };
        node["parent"] = up;
        if node["parent"]["$type"] != "app.bsky.feed.defs#threadViewPost" {
            break;
        }
        current = parent.to_string();
        node = &mut node["parent"];
    }
    let _ = current;
    Ok(json!({ "thread": thread }))
}

/// A `#threadViewPost` with its replies down to `depth` levels (the key left out below that).
fn thread_view(ctx: &Ctx<'_>, at: &str, depth: i64, budget: &mut i64) -> rusqlite::Result<Value> {
    let Some(post) = ctx.post_view(at)? else {
        return Ok(json!({ "$type": "app.bsky.feed.defs#notFoundPost", "uri": at, "notFound": true }));
    };
    let mut v = json!({ "$type": "app.bsky.feed.defs#threadViewPost", "post": post });
    if depth > 0 {
        let children: Vec<(String, i64)> = {
            let mut s = ctx.conn.prepare_cached(
                "SELECT a.did, p.rkey, p.author_id FROM feed_post p JOIN feed_actor a ON a.id = p.author_id
                 WHERE p.parent_uri = ?1 ORDER BY p.sort_at DESC, p.id DESC LIMIT 1000",
            )?;
            let rows =
                s.query_map([at], |r| Ok((uri(&r.get::<_, String>(0)?, POST, &r.get::<_, String>(1)?), r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut replies = Vec::new();
        for (child, author) in children {
            if *budget <= 0 {
                break;
            }
            *budget -= 1;
            if ctx.blocked(author) {
                replies.push(ctx.blocked_post(&child, author)?);
            } else {
                replies.push(thread_view(ctx, &child, depth - 1, budget)?);
            }
        }
        v["replies"] = Value::Array(replies);
    }
    Ok(v)
}

/// Rows of `table` about `subject_uri`, newest first, with their authors' profiles.
fn subject_page(ctx: &Ctx<'_>, table: &str, at: &str, p: &Params) -> Result<Listed, NodeError> {
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let sql = format!(
        "SELECT id, actor_id, created_at, indexed_at, sort_at FROM {table} WHERE subject_uri = ?1
         AND (sort_at < ?2 OR (sort_at = ?2 AND id < ?3)) ORDER BY sort_at DESC, id DESC LIMIT ?4"
    );
    let mut s = ctx.conn.prepare_cached(&sql).map_err(internal)?;
    let rows: Vec<(i64, i64, Option<String>, i64, i64)> = s
        .query_map(params![at, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.4, r.0)));
    let mut kept = Vec::new();
    for (_, actor, created_at, indexed_at, _) in rows {
        if ctx.blocked(actor) {
            continue;
        }
        if let Some(v) = ctx.profile(actor, 1).map_err(internal)? {
            let created =
                created_at.filter(|c| Datetime::new(c.as_str()).is_ok()).unwrap_or_else(|| iso_from_millis(indexed_at));
            kept.push((v, created, indexed_at));
        }
    }
    Ok((kept, out))
}

fn get_likes(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "uri")?;
    let (rows, mut out) = subject_page(ctx, "feed_like", at, p)?;
    let likes: Vec<Value> = rows
        .into_iter()
        .map(|(actor, created, indexed)| json!({ "actor": actor, "createdAt": created, "indexedAt": iso_from_millis(indexed) }))
        .collect();
    out.insert("uri".into(), Value::String(at.to_string()));
    if let Some(c) = one(p, "cid") {
        out.insert("cid".into(), Value::String(c.to_string()));
    }
    out.insert("likes".into(), Value::Array(likes));
    Ok(Value::Object(out))
}

fn get_reposted_by(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "uri")?;
    let (rows, mut out) = subject_page(ctx, "feed_repost", at, p)?;
    out.insert("uri".into(), Value::String(at.to_string()));
    if let Some(c) = one(p, "cid") {
        out.insert("cid".into(), Value::String(c.to_string()));
    }
    out.insert("repostedBy".into(), Value::Array(rows.into_iter().map(|r| r.0).collect()));
    Ok(Value::Object(out))
}

/// Posts by row ids, in that order, those by blocked accounts left out.
fn posts_by_rows(ctx: &Ctx<'_>, rows: &[(i64, i64, String, i64)]) -> Result<Vec<Value>, NodeError> {
    let mut posts = Vec::new();
    for (_, author, at, _) in rows {
        if ctx.blocked(*author) {
            continue;
        }
        if let Some(v) = ctx.post_view(at).map_err(internal)? {
            posts.push(v);
        }
    }
    Ok(posts)
}

fn get_quotes(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "uri")?;
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let mut s = ctx
        .conn
        .prepare_cached(
            "SELECT p.id, p.author_id, a.did, p.rkey, p.sort_at FROM feed_post p JOIN feed_actor a ON a.id = p.author_id
             WHERE p.quote_uri = ?1 AND (p.sort_at < ?2 OR (p.sort_at = ?2 AND p.id < ?3)) ORDER BY p.sort_at DESC, p.id DESC LIMIT ?4",
        )
        .map_err(internal)?;
    let rows: Vec<(i64, i64, String, i64)> = s
        .query_map(params![at, cs, ci, n], |r| {
            Ok((r.get(0)?, r.get(1)?, uri(&r.get::<_, String>(2)?, POST, &r.get::<_, String>(3)?), r.get(4)?))
        })
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.3, r.0)));
    out.insert("uri".into(), Value::String(at.to_string()));
    if let Some(c) = one(p, "cid") {
        out.insert("cid".into(), Value::String(c.to_string()));
    }
    out.insert("posts".into(), Value::Array(posts_by_rows(ctx, &rows)?));
    Ok(Value::Object(out))
}

fn get_actor_likes(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    if ctx.viewer != Some(id) {
        return Err(NodeError::invalid("Profile not found"));
    }
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let mut s = ctx
        .conn
        .prepare_cached(
            "SELECT id, subject_uri, sort_at FROM feed_like WHERE actor_id = ?1 AND (sort_at < ?2 OR (sort_at = ?2 AND id < ?3))
             ORDER BY sort_at DESC, id DESC LIMIT ?4",
        )
        .map_err(internal)?;
    let rows: Vec<(i64, String, i64)> = s
        .query_map(params![id, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    let mut feed = Vec::new();
    for (_, subject, _) in &rows {
        let it =
            Item { id: 0, actor: id, kind: 0, rkey: String::new(), post_uri: subject.clone(), sort_at: 0, flags: 0 };
        if let Some(v) = ctx.feed_view_post(&it).map_err(internal)? {
            feed.push(v);
        }
    }
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.2, r.0)));
    out.insert("feed".into(), Value::Array(feed));
    Ok(Value::Object(out))
}

fn search_posts(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let q = required(p, "q")?;
    let n = limit(p, 25, 100);
    let Some(fts) = fts_query(q, false) else {
        return Err(NodeError::new(StatusCode::BAD_REQUEST, "BadQueryString", "the query has no words"));
    };
    let author = match one(p, "author") {
        Some(a) => Some(ctx.resolve(a).map_err(internal)?.unwrap_or(-1)),
        None => None,
    };
    let (cs, ci) = cursor(p)?;
    let mut s = ctx
        .conn
        .prepare_cached(
            "SELECT p.id, p.author_id, a.did, p.rkey, p.sort_at FROM feed_post_fts f JOIN feed_post p ON p.id = f.rowid
             JOIN feed_actor a ON a.id = p.author_id
             WHERE feed_post_fts MATCH ?1 AND (?2 IS NULL OR p.author_id = ?2) AND a.status = 'active'
             AND (p.sort_at < ?3 OR (p.sort_at = ?3 AND p.id < ?4)) ORDER BY p.sort_at DESC, p.id DESC LIMIT ?5",
        )
        .map_err(internal)?;
    let rows: Vec<(i64, i64, String, i64)> = s
        .query_map(params![fts, author, cs, ci, n], |r| {
            Ok((r.get(0)?, r.get(1)?, uri(&r.get::<_, String>(2)?, POST, &r.get::<_, String>(3)?), r.get(4)?))
        })
        .map_err(|_| NodeError::new(StatusCode::BAD_REQUEST, "BadQueryString", "the query could not be read"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.3, r.0)));
    out.insert("posts".into(), Value::Array(posts_by_rows(ctx, &rows)?));
    Ok(Value::Object(out))
}

// ---- graph ----

/// A page of `feed_follow`/`feed_block` rows by `column`, with the profiles of `other`.
fn graph_page(
    ctx: &Ctx<'_>,
    table: &str,
    column: &str,
    other: &str,
    id: i64,
    p: &Params,
) -> Result<(Vec<Value>, Map<String, Value>), NodeError> {
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let sql = format!(
        "SELECT id, {other}, sort_at FROM {table} WHERE {column} = ?1 AND (sort_at < ?2 OR (sort_at = ?2 AND id < ?3))
         ORDER BY sort_at DESC, id DESC LIMIT ?4"
    );
    let mut s = ctx.conn.prepare_cached(&sql).map_err(internal)?;
    let rows: Vec<(i64, i64, i64)> = s
        .query_map(params![id, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.2, r.0)));
    let mut views = Vec::new();
    for (_, who, _) in rows {
        if table == "feed_follow" && ctx.blocked(who) {
            continue;
        }
        if let Some(v) = ctx.profile(who, 1).map_err(internal)? {
            views.push(v);
        }
    }
    Ok((views, out))
}

fn get_follows(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    let (views, mut out) = graph_page(ctx, "feed_follow", "actor_id", "subject_id", id, p)?;
    out.insert("subject".into(), ctx.profile(id, 1).map_err(internal)?.unwrap_or(Value::Null));
    out.insert("follows".into(), Value::Array(views));
    Ok(Value::Object(out))
}

fn get_followers(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    let (views, mut out) = graph_page(ctx, "feed_follow", "subject_id", "actor_id", id, p)?;
    out.insert("subject".into(), ctx.profile(id, 1).map_err(internal)?.unwrap_or(Value::Null));
    out.insert("followers".into(), Value::Array(views));
    Ok(Value::Object(out))
}

fn get_blocks(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let me = ctx.viewer()?;
    let (views, mut out) = graph_page(ctx, "feed_block", "actor_id", "subject_id", me, p)?;
    out.insert("blocks".into(), Value::Array(views));
    Ok(Value::Object(out))
}

// ---- lists ----

/// `app.bsky.graph.defs#listView` of the list at `at` (`None`: not indexed).
fn list_view(ctx: &Ctx<'_>, at: &str) -> Result<Option<Value>, NodeError> {
    let Some((did, coll, rkey)) = split_uri(at) else { return Ok(None) };
    if coll != records::LIST {
        return Ok(None);
    }
    let row: Option<(i64, String, String, String, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT l.actor_id, l.cid, l.record, l.purpose, l.indexed_at FROM feed_list l JOIN feed_actor a ON a.id = l.actor_id
             WHERE a.did = ?1 AND l.rkey = ?2",
        )
        .and_then(|mut s| s.query_row([did, rkey], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional())
        .map_err(internal)?;
    let Some((actor, cid, record, purpose, indexed_at)) = row else { return Ok(None) };
    let Some(creator) = ctx.profile(actor, 1).map_err(internal)? else { return Ok(None) };
    let record: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
    let items: i64 = ctx
        .conn
        .prepare_cached("SELECT count(*) FROM feed_list_item WHERE list_uri = ?1")
        .and_then(|mut s| s.query_row([at], |r| r.get(0)))
        .map_err(internal)?;
    let mut v = json!({
        "uri": at, "cid": cid, "creator": creator, "name": record["name"], "purpose": purpose,
        "listItemCount": items, "indexedAt": iso_from_millis(indexed_at), "labels": [],
        "viewer": { "muted": false },
    });
    if let Some(d) = record.get("description").and_then(Value::as_str) {
        v["description"] = Value::String(d.to_string());
    }
    if let Some(cid) = records::blob_cid(record.get("avatar")) {
        v["avatar"] = Value::String(ctx.blob_url(did, &cid));
    }
    Ok(Some(v))
}

fn get_lists(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let id = known(ctx, required(p, "actor")?)?;
    let did = ctx.actor(id).map_err(internal)?.map(|a| a.did).unwrap_or_default();
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let purposes: Vec<&str> = all(p, "purposes")
        .into_iter()
        .map(|x| match x {
            "modlist" => "app.bsky.graph.defs#modlist",
            "curatelist" => "app.bsky.graph.defs#curatelist",
            other => other,
        })
        .collect();
    let rows: Vec<(i64, String, String, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, rkey, purpose, sort_at FROM feed_list WHERE actor_id = ?1 AND (sort_at < ?2 OR (sort_at = ?2 AND id < ?3))
             ORDER BY sort_at DESC, id DESC LIMIT ?4",
        )
        .and_then(|mut s| {
            s.query_map(params![id, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect()
        })
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.3, r.0)));
    let mut lists = Vec::new();
    for (_, rkey, purpose, _) in &rows {
        if !purposes.is_empty() && !purposes.contains(&purpose.as_str()) {
            continue;
        }
        if let Some(v) = list_view(ctx, &uri(&did, records::LIST, rkey))? {
            lists.push(v);
        }
    }
    out.insert("lists".into(), Value::Array(lists));
    Ok(Value::Object(out))
}

fn get_list(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "list")?;
    let Some(list) = list_view(ctx, at)? else {
        return Err(NodeError::invalid("List not found"));
    };
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let rows: Vec<(i64, i64, String, String, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT i.id, i.subject_id, a.did, i.rkey, i.sort_at FROM feed_list_item i JOIN feed_actor a ON a.id = i.actor_id
             WHERE i.list_uri = ?1 AND (i.sort_at < ?2 OR (i.sort_at = ?2 AND i.id < ?3)) ORDER BY i.sort_at DESC, i.id DESC LIMIT ?4",
        )
        .and_then(|mut s| {
            s.query_map(params![at, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect()
        })
        .map_err(internal)?;
    let mut out = Map::new();
    next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.4, r.0)));
    let mut items = Vec::new();
    for (_, subject, did, rkey, _) in rows {
        if let Some(v) = ctx.profile(subject, 1).map_err(internal)? {
            items.push(json!({ "uri": uri(&did, records::LIST_ITEM, &rkey), "subject": v }));
        }
    }
    out.insert("list".into(), list);
    out.insert("items".into(), Value::Array(items));
    Ok(Value::Object(out))
}

// ---- feed generators ----

/// A feed this node computes, as its generator record names it (`dev.ues.feed.algorithm`).
enum Algorithm {
    /// Posts by the viewer and the accounts it follows that match a full-text query.
    FollowsSearch(String),
    /// Posts liked most in the last hours by the viewer and the accounts it follows.
    FollowsTopLiked(i64),
    /// The `uri` column of a live view (`dev.ues.lens`): its URI, or the name of one of the
    /// generator's account's views.
    View(String),
}

fn algorithm(record: &Value) -> Option<Algorithm> {
    let a = record.get("dev.ues.feed.algorithm")?;
    match a.get("kind")?.as_str()? {
        "followsSearch" => Some(Algorithm::FollowsSearch(a.get("q")?.as_str()?.to_string())),
        "followsTopLiked" => {
            Some(Algorithm::FollowsTopLiked(a.get("hours").and_then(Value::as_i64).unwrap_or(24).clamp(1, 24 * 30)))
        }
        "view" => Some(Algorithm::View(a.get("view")?.as_str()?.to_string())),
        _ => None,
    }
}

/// A generator's view and whether this node computes it (`None`: not indexed).
fn generator_view(ctx: &Ctx<'_>, at: &str) -> Result<Option<(Value, Option<Algorithm>)>, NodeError> {
    let Some((did, coll, rkey)) = split_uri(at) else { return Ok(None) };
    if coll != records::GENERATOR {
        return Ok(None);
    }
    let row: Option<(i64, String, String, String, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT g.actor_id, g.cid, g.record, g.service_did, g.indexed_at FROM feed_generator g JOIN feed_actor a ON a.id = g.actor_id
             WHERE a.did = ?1 AND g.rkey = ?2",
        )
        .and_then(|mut s| s.query_row([did, rkey], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional())
        .map_err(internal)?;
    let Some((actor, cid, record, service, indexed_at)) = row else { return Ok(None) };
    let Some(creator) = ctx.profile(actor, 1).map_err(internal)? else { return Ok(None) };
    let record: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
    let ((likes, ..), my_like, _) = ctx.counts_and_mine(at, ctx.viewer.unwrap_or(-1)).map_err(internal)?;
    let mut v = json!({
        "uri": at, "cid": cid, "did": service, "creator": creator, "displayName": record["displayName"],
        "likeCount": likes, "indexedAt": iso_from_millis(indexed_at), "labels": [], "viewer": {},
    });
    if let Some(k) = my_like {
        v["viewer"]["like"] = Value::String(uri(&ctx.viewer_did, records::LIKE, &k));
    }
    if let Some(d) = record.get("description").and_then(Value::as_str) {
        v["description"] = Value::String(d.to_string());
    }
    if let Some(cid) = records::blob_cid(record.get("avatar")) {
        v["avatar"] = Value::String(ctx.blob_url(did, &cid));
    }
    if let Some(b) = record.get("acceptsInteractions").and_then(Value::as_bool) {
        v["acceptsInteractions"] = Value::Bool(b);
    }
    let hosted = (service == ctx.node.cfg.service_did).then(|| algorithm(&record)).flatten();
    Ok(Some((v, hosted)))
}

fn get_feed_generator(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "feed")?;
    let Some((view, hosted)) = generator_view(ctx, at)? else {
        return Err(NodeError::invalid("could not find feed"));
    };
    let here = hosted.is_some();
    Ok(json!({ "view": view, "isOnline": here, "isValid": here }))
}

fn get_feed_generators(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let mut feeds = Vec::new();
    for at in all(p, "feeds").into_iter().take(25) {
        if let Some((v, _)) = generator_view(ctx, at)? {
            feeds.push(v);
        }
    }
    Ok(json!({ "feeds": feeds }))
}

fn get_feed(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let at = required(p, "feed")?;
    let unknown = || NodeError::new(StatusCode::BAD_REQUEST, "UnknownFeed", format!("Unknown feed: {at}"));
    let Some((_, Some(algo))) = generator_view(ctx, at)? else { return Err(unknown()) };
    let me = ctx.viewer()?;
    let n = limit(p, 50, 100);
    let mut out = Map::new();
    let posts: Vec<String> = match algo {
        Algorithm::FollowsSearch(q) => {
            let Some(fts) = fts_query(&q, false) else { return Err(unknown()) };
            let (cs, ci) = cursor(p)?;
            let rows: Vec<(i64, String, String, i64)> = ctx
                .conn
                .prepare_cached(
                    "SELECT p.id, a.did, p.rkey, p.sort_at FROM feed_post_fts f JOIN feed_post p ON p.id = f.rowid
                     JOIN feed_actor a ON a.id = p.author_id
                     WHERE feed_post_fts MATCH ?1 AND p.author_id IN (SELECT subject_id FROM feed_follow WHERE actor_id = ?2 UNION SELECT ?2)
                     AND (p.sort_at < ?3 OR (p.sort_at = ?3 AND p.id < ?4)) ORDER BY p.sort_at DESC, p.id DESC LIMIT ?5",
                )
                .and_then(|mut s| {
                    s.query_map(params![fts, me, cs, ci, n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect()
                })
                .map_err(internal)?;
            next_cursor(&mut out, rows.len(), n, rows.last().map(|r| (r.3, r.0)));
            rows.into_iter().map(|(_, did, rkey, _)| uri(&did, POST, &rkey)).collect()
        }
        Algorithm::FollowsTopLiked(hours) => {
            // Ranked: the cursor is the place in the ranking (the first 1,000 posts).
            let offset: i64 = match one(p, "cursor") {
                None | Some("") => 0,
                Some(c) => c
                    .strip_prefix("r:")
                    .and_then(|o| o.parse().ok())
                    .ok_or_else(|| NodeError::invalid("Malformed cursor"))?,
            };
            let since = super::now_ms() - hours * 3_600_000;
            let rows: Vec<String> = ctx
                .conn
                .prepare_cached(
                    "SELECT subject_uri FROM feed_like WHERE actor_id IN (SELECT subject_id FROM feed_follow WHERE actor_id = ?1 UNION SELECT ?1)
                     AND sort_at >= ?2 AND subject_uri LIKE 'at://%/app.bsky.feed.post/%'
                     GROUP BY subject_uri ORDER BY count(*) DESC, max(sort_at) DESC, subject_uri LIMIT ?3 OFFSET ?4",
                )
                .and_then(|mut s| s.query_map(params![me, since, n.min(1000 - offset).max(0), offset], |r| r.get(0))?.collect())
                .map_err(internal)?;
            if rows.len() as i64 >= n && offset + n < 1000 {
                out.insert("cursor".into(), Value::String(format!("r:{}", offset + n)));
            }
            rows
        }
        Algorithm::View(view) => {
            let view = match split_uri(at) {
                Some((did, ..)) if !view.starts_with("at://") => format!("at://{did}/{}/{view}", crate::lens::VIEW),
                _ => view,
            };
            let (posts, next) =
                crate::lens::feed_posts(ctx.conn, &view, n as usize, one(p, "cursor"))?.ok_or_else(unknown)?;
            if let Some(c) = next {
                out.insert("cursor".into(), Value::String(c));
            }
            posts
        }
    };
    let mut feed = Vec::new();
    for post in posts {
        let it = Item { id: 0, actor: -1, kind: 0, rkey: String::new(), post_uri: post, sort_at: 0, flags: 0 };
        if let Some(v) = ctx.feed_view_post(&it).map_err(internal)? {
            feed.push(v);
        }
    }
    out.insert("feed".into(), Value::Array(feed));
    Ok(Value::Object(out))
}

// ---- notifications ----

fn seen_at(ctx: &Ctx<'_>, me: i64) -> Result<Option<(i64, String)>, NodeError> {
    ctx.conn
        .prepare_cached("SELECT seen_at, seen_at_text FROM feed_seen WHERE actor_id = ?1")
        .and_then(|mut s| s.query_row([me], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(internal)
}

fn list_notifications(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let me = ctx.viewer()?;
    let n = limit(p, 50, 100);
    let (cs, ci) = cursor(p)?;
    let reasons: Vec<i64> = all(p, "reasons").into_iter().filter_map(Reason::from_name).collect();
    let seen = seen_at(ctx, me)?;
    let seen_ms = match one(p, "seenAt") {
        Some(s) => Datetime::new(s).ok().and_then(|d| d.unix_millis()),
        None => seen.as_ref().map(|s| s.0),
    };
    let mut s = ctx
        .conn
        .prepare_cached(
            "SELECT id, author_id, reason, uri, cid, record, subject_uri, indexed_at, sort_at FROM feed_notif
             WHERE recipient_id = ?1 AND (sort_at < ?2 OR (sort_at = ?2 AND id < ?3)) ORDER BY sort_at DESC, id DESC LIMIT ?4",
        )
        .map_err(internal)?;
    type Row = (i64, i64, i64, String, String, String, Option<String>, i64, i64);
    let mut rows: Vec<Row> = Vec::new();
    let mut examined = 0usize;
    let mut last = None;
    // Rows of other reasons are passed over (up to ten pages of them) to fill this one.
    let (mut c_s, mut c_i) = (cs, ci);
    for _ in 0..10 {
        let batch: Vec<Row> = s
            .query_map(params![me, c_s, c_i, n], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
            })
            .map_err(internal)?
            .collect::<rusqlite::Result<_>>()
            .map_err(internal)?;
        let full = batch.len() as i64 >= n;
        for r in batch {
            if rows.len() as i64 >= n {
                break;
            }
            examined += 1;
            last = Some((r.8, r.0));
            (c_s, c_i) = (r.8, r.0);
            if reasons.is_empty() || reasons.contains(&r.2) {
                rows.push(r);
            }
        }
        if !full || rows.len() as i64 >= n || reasons.is_empty() {
            break;
        }
    }
    let mut notifications = Vec::new();
    for row in rows {
        if let Some(v) = notification_view(ctx, row, seen_ms).map_err(internal)? {
            notifications.push(v);
        }
    }
    let mut out = Map::new();
    next_cursor(&mut out, examined, n, last);
    out.insert("notifications".into(), Value::Array(notifications));
    out.insert("priority".into(), Value::Bool(false));
    if let Some((_, text)) = seen {
        out.insert("seenAt".into(), Value::String(text));
    }
    Ok(Value::Object(out))
}

/// A notification row: id, author, reason, source URI, CID, record, subject, indexed, sort time.
pub(super) type NotifRow = (i64, i64, i64, String, String, String, Option<String>, i64, i64);

/// `listNotifications#notification` (`None`: its author is blocked or gone).
fn notification_view(ctx: &Ctx<'_>, row: NotifRow, seen_ms: Option<i64>) -> rusqlite::Result<Option<Value>> {
    let (_, author, reason, at, cid, record, subject, indexed_at, sort_at) = row;
    if ctx.blocked(author) {
        return Ok(None);
    }
    let Some(author_view) = ctx.profile(author, 1)? else { return Ok(None) };
    let mut v = json!({
        "uri": at, "cid": cid, "author": author_view, "reason": Reason::name(reason),
        "record": serde_json::from_str::<Value>(&record).unwrap_or(Value::Null),
        "isRead": seen_ms.is_some_and(|s| s > sort_at),
        "indexedAt": iso_from_millis(indexed_at), "labels": [],
    });
    if let Some(s) = subject {
        v["reasonSubject"] = Value::String(s);
    }
    Ok(Some(v))
}

/// What a batch of events shows the signed-in accounts in `watching`, live: each new post or
/// repost to its author and the author's followers (`{"type": "timeline", "item":
/// feedViewPost}`), each notification a new record made to its recipient (`{"type":
/// "notification", "notification": ...}`), as each of them sees it.
pub(super) fn live_messages(
    conn: &Connection,
    node: &Node,
    watching: &HashSet<String>,
    events: &[super::LogEvent],
) -> rusqlite::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut ctxs: HashMap<String, Ctx<'_>> = HashMap::new();
    for e in events {
        let super::Happened::Commit(ops) = &e.what else { continue };
        for op in ops.iter().filter(|o| o.action == "create") {
            let at = uri(&e.did, &op.collection, &op.rkey);
            // Timeline items.
            if op.collection == POST || op.collection == records::REPOST {
                let mut to: Vec<String> = watching.contains(&e.did).then(|| e.did.clone()).into_iter().collect();
                let mut s = conn.prepare_cached(
                    "SELECT a.did FROM feed_follow f JOIN feed_actor a ON a.id = f.actor_id JOIN feed_actor s ON s.id = f.subject_id
                     WHERE s.did = ?1 LIMIT 100000",
                )?;
                for d in s.query_map([&e.did], |r| r.get::<_, String>(0))? {
                    let d = d?;
                    if watching.contains(&d) && !to.contains(&d) {
                        to.push(d);
                    }
                }
                let kind = if op.collection == POST { 0 } else { ITEM_REPOST };
                let row = conn
                    .prepare_cached(&format!(
                        "SELECT {ITEM_COLUMNS} FROM feed_item WHERE actor_id = (SELECT id FROM feed_actor WHERE did = ?1) AND kind = ?2 AND rkey = ?3"
                    ))?
                    .query_row(params![e.did, kind, op.rkey], item)
                    .optional()?;
                if let Some(it) = row {
                    for d in to {
                        if !ctxs.contains_key(&d) {
                            ctxs.insert(d.clone(), Ctx::new(conn, node, Some(&d))?);
                        }
                        if let Some(v) = ctxs[&d].feed_view_post(&it)? {
                            out.push((d, json!({ "type": "timeline", "item": v })));
                        }
                    }
                }
            }
            // Notifications this record made.
            let mut s = conn.prepare_cached(
                "SELECT n.id, n.author_id, n.reason, n.uri, n.cid, n.record, n.subject_uri, n.indexed_at, n.sort_at, a.did
                 FROM feed_notif n JOIN feed_actor a ON a.id = n.recipient_id WHERE n.uri = ?1",
            )?;
            let rows: Vec<(NotifRow, String)> = s
                .query_map([&at], |r| {
                    Ok((
                        (
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        ),
                        r.get(9)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            for (row, d) in rows {
                if !watching.contains(&d) {
                    continue;
                }
                if !ctxs.contains_key(&d) {
                    ctxs.insert(d.clone(), Ctx::new(conn, node, Some(&d))?);
                }
                if let Some(v) = notification_view(&ctxs[&d], row, None)? {
                    out.push((d, json!({ "type": "notification", "notification": v })));
                }
            }
        }
    }
    Ok(out)
}

fn get_unread_count(ctx: &Ctx<'_>, p: &Params) -> Result<Value, NodeError> {
    let me = ctx.viewer()?;
    let seen_ms = match one(p, "seenAt") {
        Some(s) => Datetime::new(s).ok().and_then(|d| d.unix_millis()),
        None => seen_at(ctx, me)?.map(|s| s.0),
    }
    .unwrap_or(i64::MIN);
    let mut s = ctx
        .conn
        .prepare_cached("SELECT author_id FROM feed_notif WHERE recipient_id = ?1 AND sort_at >= ?2 LIMIT 10000")
        .map_err(internal)?;
    let authors: Vec<i64> = s
        .query_map(params![me, seen_ms], |r| r.get(0))
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    Ok(json!({ "count": authors.iter().filter(|a| !ctx.blocked(**a)).count() }))
}
