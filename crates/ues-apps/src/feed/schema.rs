//! The feed's tables. Accounts are numbered (`feed_actor.id`); a post is its author's number
//! and record key; references between records (a reply's parent, a like's subject) are kept
//! as the AT URIs the records hold, so a reference to something not indexed (yet) is kept too.
//! Times are Unix milliseconds; `sort_at` is `min(createdAt, indexed_at)`, the order Bluesky's
//! AppView shows items in (a record claiming a future time cannot jump ahead of newer ones).

use ues_protocol::sync::repo::ipld::storage::Migration;

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "dev.ues.feed/0001_index",
    sql: "
CREATE TABLE feed_actor (
    id INTEGER PRIMARY KEY,
    did TEXT NOT NULL UNIQUE,
    handle TEXT,
    local INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active'
);
CREATE INDEX feed_actor_by_handle ON feed_actor (handle COLLATE NOCASE);
CREATE TABLE feed_profile (
    actor_id INTEGER PRIMARY KEY,
    cid TEXT NOT NULL,
    record TEXT NOT NULL,
    display_name TEXT,
    description TEXT,
    avatar TEXT,
    banner TEXT,
    pinned_uri TEXT,
    pinned_cid TEXT,
    created_at TEXT,
    indexed_at INTEGER NOT NULL
);
CREATE VIRTUAL TABLE feed_actor_fts USING fts5(handle, display_name, description, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE feed_post (
    id INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    parent_uri TEXT,
    root_uri TEXT,
    quote_uri TEXT,
    media INTEGER NOT NULL DEFAULT 0,
    UNIQUE (author_id, rkey)
);
CREATE INDEX feed_post_by_parent ON feed_post (parent_uri, sort_at, id) WHERE parent_uri IS NOT NULL;
CREATE INDEX feed_post_by_quote ON feed_post (quote_uri, sort_at, id) WHERE quote_uri IS NOT NULL;
CREATE VIRTUAL TABLE feed_post_fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE feed_item (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    post_uri TEXT NOT NULL,
    sort_at INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    UNIQUE (actor_id, kind, rkey)
);
CREATE INDEX feed_item_by_actor ON feed_item (actor_id, sort_at, id);
CREATE TABLE feed_like (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    subject_uri TEXT NOT NULL,
    subject_cid TEXT,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_like_by_subject ON feed_like (subject_uri, sort_at, id);
CREATE INDEX feed_like_by_viewer ON feed_like (actor_id, subject_uri);
CREATE INDEX feed_like_by_time ON feed_like (actor_id, sort_at, id);
CREATE TABLE feed_repost (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    subject_uri TEXT NOT NULL,
    subject_cid TEXT,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_repost_by_subject ON feed_repost (subject_uri, sort_at, id);
CREATE INDEX feed_repost_by_viewer ON feed_repost (actor_id, subject_uri);
CREATE TABLE feed_follow (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    subject_id INTEGER NOT NULL,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_follow_by_pair ON feed_follow (actor_id, subject_id);
CREATE INDEX feed_follow_by_time ON feed_follow (actor_id, sort_at, id);
CREATE INDEX feed_follow_by_subject ON feed_follow (subject_id, sort_at, id);
CREATE TABLE feed_block (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    subject_id INTEGER NOT NULL,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_block_by_pair ON feed_block (actor_id, subject_id);
CREATE INDEX feed_block_by_subject ON feed_block (subject_id, actor_id);
CREATE INDEX feed_block_by_time ON feed_block (actor_id, sort_at, id);
CREATE TABLE feed_post_count (
    uri TEXT PRIMARY KEY,
    likes INTEGER NOT NULL DEFAULT 0,
    reposts INTEGER NOT NULL DEFAULT 0,
    replies INTEGER NOT NULL DEFAULT 0,
    quotes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE feed_actor_count (
    actor_id INTEGER PRIMARY KEY,
    followers INTEGER NOT NULL DEFAULT 0,
    follows INTEGER NOT NULL DEFAULT 0,
    posts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE feed_notif (
    id INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL,
    author_id INTEGER NOT NULL,
    reason INTEGER NOT NULL,
    uri TEXT NOT NULL,
    cid TEXT NOT NULL,
    record TEXT NOT NULL,
    subject_uri TEXT,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL
);
CREATE INDEX feed_notif_by_recipient ON feed_notif (recipient_id, sort_at, id);
CREATE INDEX feed_notif_by_source ON feed_notif (uri);
CREATE INDEX feed_notif_by_subject ON feed_notif (subject_uri) WHERE subject_uri IS NOT NULL;
CREATE TABLE feed_seen (actor_id INTEGER PRIMARY KEY, seen_at INTEGER NOT NULL, seen_at_text TEXT NOT NULL);
CREATE TABLE feed_horizon (actor_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
",
    },
    Migration {
        id: "dev.ues.feed/0002_remote",
        sql: "
CREATE TABLE feed_remote (
    actor_id INTEGER PRIMARY KEY,
    pds TEXT,
    state INTEGER NOT NULL DEFAULT 0,
    rev TEXT,
    data_cid TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    unfollowed_at INTEGER
);
CREATE INDEX feed_remote_by_pds ON feed_remote (pds);
CREATE TABLE feed_upstream (url TEXT PRIMARY KEY, cursor INTEGER);
",
    },
    Migration {
        id: "dev.ues.feed/0003_lists_generators",
        sql: "
CREATE TABLE feed_list (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    record TEXT NOT NULL,
    purpose TEXT NOT NULL,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_list_by_actor ON feed_list (actor_id, sort_at, id);
CREATE TABLE feed_list_item (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    list_uri TEXT NOT NULL,
    subject_id INTEGER NOT NULL,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_list_item_by_list ON feed_list_item (list_uri, sort_at, id);
CREATE TABLE feed_generator (
    id INTEGER PRIMARY KEY,
    actor_id INTEGER NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    record TEXT NOT NULL,
    service_did TEXT NOT NULL,
    indexed_at INTEGER NOT NULL,
    sort_at INTEGER NOT NULL,
    UNIQUE (actor_id, rkey)
);
CREATE INDEX feed_generator_by_actor ON feed_generator (actor_id, sort_at, id);
",
    },
];
