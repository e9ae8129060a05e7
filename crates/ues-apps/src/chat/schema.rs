//! The chat's tables in the node's SQLite database. Nothing in them is derived from the event
//! log (a rebuild leaves them alone), and everything secret or private is sealed
//! (`seal_many` under the chat's key, bound to its table and row): Olm accounts and sessions,
//! and inbox envelopes. Public keys and signed key objects are stored as they were published.

use ues_protocol::sync::repo::ipld::storage::Migration;

pub(super) const MIGRATIONS: &[Migration] = &[KEYS_INBOX, CONVERSATIONS, FEDERATION];

const KEYS_INBOX: Migration = Migration {
    id: "dev.ues.chat/0001_keys_inbox",
    sql: "
-- Devices of the accounts held here: client devices (their published keys) and each account's
-- built-in device (the node's own Olm account for it).
CREATE TABLE chat_device (
    did TEXT NOT NULL,
    device_id TEXT NOT NULL,
    built_in INTEGER NOT NULL DEFAULT 0,
    -- The signed Matrix device_keys object, as published; NULL until a client uploads it.
    device_keys TEXT,
    curve25519 TEXT,
    ed25519 TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (did, device_id)
) WITHOUT ROWID;

-- Published one-time keys and fallback keys (signed key objects), handed out by claimKeys: a
-- one-time key once, a fallback key until replaced. Their ids are counted apart (a fallback key
-- may share its id with a one-time key).
CREATE TABLE chat_otk (
    did TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fallback INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (did, device_id, fallback, key_id)
) WITHOUT ROWID;

-- The built-in devices' Olm accounts (sealed pickles).
CREATE TABLE chat_olm_account (
    did TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    pickle BLOB NOT NULL
);

-- The built-in devices' Olm sessions with other devices (sealed pickles).
CREATE TABLE chat_olm_session (
    did TEXT NOT NULL,
    session_id TEXT NOT NULL,
    peer_key TEXT NOT NULL,
    pickle BLOB NOT NULL,
    used_at INTEGER NOT NULL,
    PRIMARY KEY (did, session_id)
);
CREATE INDEX chat_olm_session_peer ON chat_olm_session (did, peer_key, used_at);

-- Envelopes waiting for a device (sealed), until it acknowledges them. An acknowledged row
-- keeps only its digest for a while, so the same envelope sent again is not delivered twice.
CREATE TABLE chat_inbox (
    id INTEGER PRIMARY KEY,
    did TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    envelope BLOB NOT NULL,
    digest BLOB NOT NULL,
    size INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    acked_at INTEGER,
    UNIQUE (did, device_id, digest)
);
CREATE INDEX chat_inbox_waiting ON chat_inbox (did, device_id, acked_at, id);
CREATE INDEX chat_inbox_acked ON chat_inbox (acked_at) WHERE acked_at IS NOT NULL;
",
};

const CONVERSATIONS: Migration = Migration {
    id: "dev.ues.chat/0002_conversations",
    sql: "
-- Conversations as each account's built-in device knows them: the creator's last word on the
-- members (a higher epoch wins).
CREATE TABLE chat_convo (
    did TEXT NOT NULL,
    convo_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    name TEXT,
    members TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    left_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (did, convo_id)
);

-- Messages the built-in device sent or decrypted (their text sealed).
CREATE TABLE chat_message (
    id INTEGER PRIMARY KEY,
    did TEXT NOT NULL,
    convo_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE INDEX chat_message_convo ON chat_message (did, convo_id, id);

-- The built-in device's outbound Megolm session per group conversation (sealed), with the
-- member devices its key went to and the epoch it was made in.
CREATE TABLE chat_megolm_out (
    did TEXT NOT NULL,
    convo_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    pickle BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    shared_with TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (did, convo_id)
);

-- Inbound Megolm sessions (sealed), from room keys that came over Olm, and the message indexes
-- already read (a replayed Megolm message decrypts again: the index is what refuses it).
CREATE TABLE chat_megolm_in (
    did TEXT NOT NULL,
    session_id TEXT NOT NULL,
    convo_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    pickle BLOB NOT NULL,
    PRIMARY KEY (did, session_id)
);
CREATE TABLE chat_megolm_seen (
    did TEXT NOT NULL,
    session_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (did, session_id, idx)
) WITHOUT ROWID;
",
};

const FEDERATION: Migration = Migration {
    id: "dev.ues.chat/0003_federation",
    sql: "
-- Devices of accounts held on other nodes, as their node published them and as checked here.
CREATE TABLE chat_remote_device (
    did TEXT NOT NULL,
    device_id TEXT NOT NULL,
    device_keys TEXT NOT NULL,
    curve25519 TEXT NOT NULL,
    ed25519 TEXT NOT NULL,
    built_in INTEGER NOT NULL DEFAULT 0,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (did, device_id)
) WITHOUT ROWID;
CREATE INDEX chat_remote_device_curve ON chat_remote_device (did, curve25519);

-- Envelopes for devices of accounts held elsewhere (sealed), until their node takes them.
CREATE TABLE chat_outbox (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    did TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    envelope BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_try_at INTEGER NOT NULL
);
CREATE INDEX chat_outbox_due ON chat_outbox (next_try_at);
CREATE INDEX chat_outbox_pair ON chat_outbox (sender, did, id);
",
};
