//! The index, kept from the node's event log inside the host's transaction: every created,
//! updated or deleted record of the collections the feed reads changes its rows, the counts
//! they feed and the notifications they cause, so reads never count or scan.

use std::collections::HashMap;

use serde_json::Value;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, OptionalExtension, Transaction, params};

use super::records::{self, BLOCK, FOLLOW, GENERATOR, LIKE, LIST, LIST_ITEM, POST, PROFILE, REPOST};

/// Why a notification was made (stored as its number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Like = 1,
    Repost = 2,
    Follow = 3,
    Mention = 4,
    Reply = 5,
    Quote = 6,
}

impl Reason {
    pub(super) fn name(n: i64) -> &'static str {
        match n {
            1 => "like",
            2 => "repost",
            3 => "follow",
            4 => "mention",
            5 => "reply",
            _ => "quote",
        }
    }

    pub(super) fn from_name(s: &str) -> Option<i64> {
        Some(match s {
            "like" => 1,
            "repost" => 2,
            "follow" => 3,
            "mention" => 4,
            "reply" => 5,
            "quote" => 6,
            _ => return None,
        })
    }
}

/// `feed_item.kind` of a post and of a repost.
pub(super) const ITEM_POST: i64 = 0;
pub(super) const ITEM_REPOST: i64 = 1;
/// `feed_item.flags`: a reply; with images; with a video; in a thread whose root is its author's.
pub(super) const FLAG_REPLY: i64 = 1;
pub(super) const FLAG_IMAGES: i64 = 2;
pub(super) const FLAG_VIDEO: i64 = 4;
pub(super) const FLAG_SELF_ROOT: i64 = 8;

/// Ancestors a reply notifies at most (a longer chain is cut, not walked).
const MAX_ANCESTORS: usize = 1000;

/// Writes to the index inside one transaction, with the actors it met numbered once.
pub(super) struct Indexer<'a, 't> {
    pub(super) tx: &'a Transaction<'t>,
    ids: HashMap<String, i64>,
}

pub(super) fn uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

impl<'a, 't> Indexer<'a, 't> {
    pub(super) fn new(tx: &'a Transaction<'t>) -> Self {
        Self { tx, ids: HashMap::new() }
    }

    /// The actor's number, made on first sight.
    pub(super) fn actor(&mut self, did: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.ids.get(did) {
            return Ok(*id);
        }
        self.tx.execute("INSERT OR IGNORE INTO feed_actor (did) VALUES (?1)", [did])?;
        let id = self.tx.query_row("SELECT id FROM feed_actor WHERE did = ?1", [did], |r| r.get(0))?;
        if self.ids.len() > 100_000 {
            self.ids.clear();
        }
        self.ids.insert(did.to_string(), id);
        Ok(id)
    }

    /// Marks an account hosted or replicated here, with its handle and status.
    pub(super) fn local(&mut self, did: &str, handle: Option<&str>, status: &str) -> rusqlite::Result<i64> {
        let id = self.actor(did)?;
        self.tx.execute(
            "UPDATE feed_actor SET local = 1, handle = coalesce(?2, handle), status = ?3 WHERE id = ?1",
            params![id, handle, status],
        )?;
        self.refresh_actor_text(id)?;
        Ok(id)
    }

    /// The events up to which an account's rows already reflect its records.
    pub(super) fn horizon(&mut self, actor: i64) -> rusqlite::Result<i64> {
        Ok(self
            .tx
            .query_row("SELECT seq FROM feed_horizon WHERE actor_id = ?1", [actor], |r| r.get(0))
            .optional()?
            .unwrap_or(i64::MIN))
    }

    pub(super) fn set_horizon(&mut self, actor: i64, seq: i64) -> rusqlite::Result<()> {
        self.tx.execute(
            "INSERT INTO feed_horizon (actor_id, seq) VALUES (?1, ?2) ON CONFLICT (actor_id) DO UPDATE SET seq = excluded.seq",
            params![actor, seq],
        )?;
        Ok(())
    }

    fn count_post(&self, uri: &str, column: &str, delta: i64) -> rusqlite::Result<()> {
        // `column` is one of four names written below, never input.
        let sql = format!(
            "INSERT INTO feed_post_count (uri, {column}) VALUES (?1, max(?2, 0))
             ON CONFLICT (uri) DO UPDATE SET {column} = max({column} + ?2, 0)"
        );
        self.tx.prepare_cached(&sql)?.execute(params![uri, delta])?;
        Ok(())
    }

    fn count_actor(&self, actor: i64, column: &str, delta: i64) -> rusqlite::Result<()> {
        let sql = format!(
            "INSERT INTO feed_actor_count (actor_id, {column}) VALUES (?1, max(?2, 0))
             ON CONFLICT (actor_id) DO UPDATE SET {column} = max({column} + ?2, 0)"
        );
        self.tx.prepare_cached(&sql)?.execute(params![actor, delta])?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        recipient_did: &str,
        author: i64,
        reason: Reason,
        src_uri: &str,
        cid: &str,
        record: &str,
        subject: Option<&str>,
        indexed_at: i64,
        sort_at: i64,
    ) -> rusqlite::Result<()> {
        let recipient = self.actor(recipient_did)?;
        if recipient == author {
            return Ok(());
        }
        self.tx
            .prepare_cached(
                "INSERT INTO feed_notif (recipient_id, author_id, reason, uri, cid, record, subject_uri, indexed_at, sort_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![recipient, author, reason as i64, src_uri, cid, record, subject, indexed_at, sort_at])?;
        Ok(())
    }

    /// Indexes a created or updated record (an update replaces what the old one indexed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put(
        &mut self,
        did: &str,
        collection: &str,
        rkey: &str,
        cid: &str,
        value: &Value,
        indexed_at: i64,
    ) -> rusqlite::Result<bool> {
        let actor = self.actor(did)?;
        self.remove(did, collection, rkey)?;
        let record = value.to_string();
        let me = uri(did, collection, rkey);
        match collection {
            POST => {
                let Some(p) = records::post(value) else { return Ok(false) };
                let sort_at = records::sort_at(p.created_at.as_deref(), indexed_at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO feed_post (author_id, rkey, cid, record, created_at, indexed_at, sort_at, parent_uri, root_uri, quote_uri, media)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )?
                    .execute(params![
                        actor, rkey, cid, record, p.created_at, indexed_at, sort_at, p.parent, p.root, p.quote, p.media
                    ])?;
                let id = self.tx.last_insert_rowid();
                self.tx
                    .prepare_cached("INSERT INTO feed_post_fts (rowid, text) VALUES (?1, ?2)")?
                    .execute(params![id, p.text])?;
                let mut flags = 0;
                if p.parent.is_some() {
                    flags |= FLAG_REPLY;
                }
                if p.media & records::MEDIA_IMAGES != 0 {
                    flags |= FLAG_IMAGES;
                }
                if p.media & records::MEDIA_VIDEO != 0 {
                    flags |= FLAG_VIDEO;
                }
                if p.root.as_deref().and_then(records::split_uri).is_some_and(|(d, _, _)| d == did) {
                    flags |= FLAG_SELF_ROOT;
                }
                self.tx
                    .prepare_cached(
                        "INSERT INTO feed_item (actor_id, kind, rkey, post_uri, sort_at, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![actor, ITEM_POST, rkey, me, sort_at, flags])?;
                self.count_actor(actor, "posts", 1)?;
                if let Some(parent) = &p.parent {
                    self.count_post(parent, "replies", 1)?;
                }
                if let Some(quote) = &p.quote {
                    self.count_post(quote, "quotes", 1)?;
                }
                // One notification per recipient: a mention over a quote over a reply.
                let mut told: Vec<String> = Vec::new();
                for m in &p.mentions {
                    self.notify(m, actor, Reason::Mention, &me, cid, &record, None, indexed_at, sort_at)?;
                    told.push(m.clone());
                }
                if let Some(q) = &p.quote
                    && let Some((qd, _, _)) = records::split_uri(q)
                    && !told.iter().any(|t| t == qd)
                {
                    self.notify(qd, actor, Reason::Quote, &me, cid, &record, Some(q), indexed_at, sort_at)?;
                    told.push(qd.to_string());
                }
                let mut next = p.parent.clone();
                let mut walked = 0;
                while let Some(up) = next.take() {
                    walked += 1;
                    if walked > MAX_ANCESTORS {
                        break;
                    }
                    let Some((ud, _, urk)) = records::split_uri(&up) else { break };
                    if !told.iter().any(|t| t == ud) {
                        self.notify(ud, actor, Reason::Reply, &me, cid, &record, Some(&up), indexed_at, sort_at)?;
                        told.push(ud.to_string());
                    }
                    next = self
                        .tx
                        .prepare_cached(
                            "SELECT p.parent_uri FROM feed_post p JOIN feed_actor a ON a.id = p.author_id WHERE a.did = ?1 AND p.rkey = ?2",
                        )?
                        .query_row(params![ud, urk], |r| r.get::<_, Option<String>>(0))
                        .optional()?
                        .flatten();
                }
            }
            LIKE | REPOST => {
                let Some((subject, subject_cid)) = records::subject_ref(value) else { return Ok(false) };
                let created = records::created_at(value);
                let sort_at = records::sort_at(created.as_deref(), indexed_at);
                let (table, column, reason) = if collection == LIKE {
                    ("feed_like", "likes", Reason::Like)
                } else {
                    ("feed_repost", "reposts", Reason::Repost)
                };
                let sql = format!(
                    "INSERT INTO {table} (actor_id, rkey, cid, subject_uri, subject_cid, created_at, indexed_at, sort_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                );
                self.tx.prepare_cached(&sql)?.execute(params![
                    actor,
                    rkey,
                    cid,
                    subject,
                    subject_cid,
                    created,
                    indexed_at,
                    sort_at
                ])?;
                self.count_post(&subject, column, 1)?;
                let (sd, sc, _) = records::split_uri(&subject).expect("checked by subject_ref");
                if collection == REPOST && sc == POST {
                    self.tx
                        .prepare_cached(
                            "INSERT INTO feed_item (actor_id, kind, rkey, post_uri, sort_at, flags) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                        )?
                        .execute(params![actor, ITEM_REPOST, rkey, subject, sort_at])?;
                }
                if sc == POST {
                    let sd = sd.to_string();
                    self.notify(&sd, actor, reason, &me, cid, &record, Some(&subject), indexed_at, sort_at)?;
                }
            }
            FOLLOW | BLOCK => {
                let Some(subject) = records::subject_did(value) else { return Ok(false) };
                let subject_id = self.actor(subject)?;
                let created = records::created_at(value);
                let sort_at = records::sort_at(created.as_deref(), indexed_at);
                let table = if collection == FOLLOW { "feed_follow" } else { "feed_block" };
                let sql = format!(
                    "INSERT INTO {table} (actor_id, rkey, subject_id, created_at, indexed_at, sort_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                );
                self.tx
                    .prepare_cached(&sql)?
                    .execute(params![actor, rkey, subject_id, created, indexed_at, sort_at])?;
                if collection == FOLLOW {
                    self.count_actor(actor, "follows", 1)?;
                    self.count_actor(subject_id, "followers", 1)?;
                    let subject = subject.to_string();
                    self.notify(
                        &subject,
                        actor,
                        Reason::Follow,
                        &me,
                        cid,
                        &record,
                        None,
                        indexed_at,
                        indexed_at.min(sort_at),
                    )?;
                }
            }
            LIST => {
                let Some(purpose) = value.get("purpose").and_then(Value::as_str) else { return Ok(false) };
                if value.get("name").and_then(Value::as_str).is_none() {
                    return Ok(false);
                }
                let sort_at = records::sort_at(records::created_at(value).as_deref(), indexed_at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO feed_list (actor_id, rkey, cid, record, purpose, indexed_at, sort_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![actor, rkey, cid, record, purpose, indexed_at, sort_at])?;
            }
            LIST_ITEM => {
                let (Some(list), Some(subject)) =
                    (value.get("list").and_then(Value::as_str), records::subject_did(value))
                else {
                    return Ok(false);
                };
                if records::split_uri(list).is_none() {
                    return Ok(false);
                }
                let subject_id = self.actor(subject)?;
                let sort_at = records::sort_at(records::created_at(value).as_deref(), indexed_at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO feed_list_item (actor_id, rkey, list_uri, subject_id, indexed_at, sort_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![actor, rkey, list, subject_id, indexed_at, sort_at])?;
            }
            GENERATOR => {
                let (Some(service), Some(_)) =
                    (value.get("did").and_then(Value::as_str), value.get("displayName").and_then(Value::as_str))
                else {
                    return Ok(false);
                };
                let sort_at = records::sort_at(records::created_at(value).as_deref(), indexed_at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO feed_generator (actor_id, rkey, cid, record, service_did, indexed_at, sort_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![actor, rkey, cid, record, service, indexed_at, sort_at])?;
            }
            PROFILE if rkey == "self" => {
                let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
                self.tx.execute(
                    "INSERT INTO feed_profile (actor_id, cid, record, display_name, description, avatar, banner, pinned_uri, pinned_cid, created_at, indexed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        actor,
                        cid,
                        record,
                        text("displayName"),
                        text("description"),
                        records::blob_cid(value.get("avatar")),
                        records::blob_cid(value.get("banner")),
                        value.pointer("/pinnedPost/uri").and_then(Value::as_str),
                        value.pointer("/pinnedPost/cid").and_then(Value::as_str),
                        text("createdAt"),
                        indexed_at
                    ],
                )?;
                self.refresh_actor_text(actor)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Undoes what a record indexed (nothing when it indexed nothing).
    pub(super) fn remove(&mut self, did: &str, collection: &str, rkey: &str) -> rusqlite::Result<()> {
        let actor = self.actor(did)?;
        let me = uri(did, collection, rkey);
        match collection {
            POST => {
                let row: Option<(i64, Option<String>, Option<String>)> = self
                    .tx
                    .prepare_cached(
                        "SELECT id, parent_uri, quote_uri FROM feed_post WHERE author_id = ?1 AND rkey = ?2",
                    )?
                    .query_row(params![actor, rkey], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((id, parent, quote)) = row else { return Ok(()) };
                self.tx.prepare_cached("DELETE FROM feed_post WHERE id = ?1")?.execute([id])?;
                self.tx.prepare_cached("DELETE FROM feed_post_fts WHERE rowid = ?1")?.execute([id])?;
                self.tx
                    .prepare_cached("DELETE FROM feed_item WHERE actor_id = ?1 AND kind = ?2 AND rkey = ?3")?
                    .execute(params![actor, ITEM_POST, rkey])?;
                self.count_actor(actor, "posts", -1)?;
                if let Some(parent) = parent {
                    self.count_post(&parent, "replies", -1)?;
                }
                if let Some(quote) = quote {
                    self.count_post(&quote, "quotes", -1)?;
                }
                self.tx.prepare_cached("DELETE FROM feed_notif WHERE uri = ?1")?.execute([&me])?;
                // A like or repost of a deleted post is not listed.
                self.tx
                    .prepare_cached("DELETE FROM feed_notif WHERE subject_uri = ?1 AND reason IN (1, 2)")?
                    .execute([&me])?;
            }
            LIKE | REPOST => {
                let (table, column) =
                    if collection == LIKE { ("feed_like", "likes") } else { ("feed_repost", "reposts") };
                let sql = format!("DELETE FROM {table} WHERE actor_id = ?1 AND rkey = ?2 RETURNING subject_uri");
                let subject: Option<String> =
                    self.tx.prepare_cached(&sql)?.query_row(params![actor, rkey], |r| r.get(0)).optional()?;
                let Some(subject) = subject else { return Ok(()) };
                self.count_post(&subject, column, -1)?;
                if collection == REPOST {
                    self.tx
                        .prepare_cached("DELETE FROM feed_item WHERE actor_id = ?1 AND kind = ?2 AND rkey = ?3")?
                        .execute(params![actor, ITEM_REPOST, rkey])?;
                }
                self.tx.prepare_cached("DELETE FROM feed_notif WHERE uri = ?1")?.execute([&me])?;
            }
            FOLLOW | BLOCK => {
                let table = if collection == FOLLOW { "feed_follow" } else { "feed_block" };
                let sql = format!("DELETE FROM {table} WHERE actor_id = ?1 AND rkey = ?2 RETURNING subject_id");
                let subject: Option<i64> =
                    self.tx.prepare_cached(&sql)?.query_row(params![actor, rkey], |r| r.get(0)).optional()?;
                let Some(subject) = subject else { return Ok(()) };
                if collection == FOLLOW {
                    self.count_actor(actor, "follows", -1)?;
                    self.count_actor(subject, "followers", -1)?;
                    self.tx.prepare_cached("DELETE FROM feed_notif WHERE uri = ?1")?.execute([&me])?;
                }
            }
            LIST | LIST_ITEM | GENERATOR => {
                let table = match collection {
                    LIST => "feed_list",
                    LIST_ITEM => "feed_list_item",
                    _ => "feed_generator",
                };
                self.tx
                    .prepare_cached(&format!("DELETE FROM {table} WHERE actor_id = ?1 AND rkey = ?2"))?
                    .execute(params![actor, rkey])?;
            }
            PROFILE
                if rkey == "self" && self.tx.execute("DELETE FROM feed_profile WHERE actor_id = ?1", [actor])? > 0 =>
            {
                self.refresh_actor_text(actor)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Everything an account indexed, gone (its rows, the counts they fed, the notifications
    /// to and from it); the actor stays numbered.
    pub(super) fn remove_actor(&mut self, did: &str) -> rusqlite::Result<()> {
        let actor = self.actor(did)?;
        for (table, collection) in [
            ("feed_post", POST),
            ("feed_like", LIKE),
            ("feed_repost", REPOST),
            ("feed_follow", FOLLOW),
            ("feed_block", BLOCK),
            ("feed_list", LIST),
            ("feed_list_item", LIST_ITEM),
            ("feed_generator", GENERATOR),
        ] {
            let sql = format!(
                "SELECT rkey FROM {table} WHERE {} = ?1",
                if table == "feed_post" { "author_id" } else { "actor_id" }
            );
            let rkeys: Vec<String> =
                self.tx.prepare(&sql)?.query_map([actor], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            for rkey in rkeys {
                self.remove(did, collection, &rkey)?;
            }
        }
        self.remove(did, PROFILE, "self")?;
        self.tx.execute("DELETE FROM feed_notif WHERE recipient_id = ?1", [actor])?;
        self.tx.execute("DELETE FROM feed_seen WHERE actor_id = ?1", [actor])?;
        self.tx.execute("DELETE FROM feed_horizon WHERE actor_id = ?1", [actor])?;
        Ok(())
    }

    /// Keeps the actor search row in step with the handle and profile.
    fn refresh_actor_text(&mut self, actor: i64) -> rusqlite::Result<()> {
        self.tx.prepare_cached("DELETE FROM feed_actor_fts WHERE rowid = ?1")?.execute([actor])?;
        self.tx
            .prepare_cached(
                "INSERT INTO feed_actor_fts (rowid, handle, display_name, description)
                 SELECT a.id, coalesce(a.handle, ''), coalesce(p.display_name, ''), coalesce(p.description, '')
                 FROM feed_actor a LEFT JOIN feed_profile p ON p.actor_id = a.id WHERE a.id = ?1",
            )?
            .execute([actor])?;
        Ok(())
    }
}
