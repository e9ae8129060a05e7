//! The asset registry's tables: a projection of the ledgers' records (rebuilt from them).

use ues_protocol::sync::repo::ipld::storage::Migration;

/// Migrations, in order.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    id: "dev.ues.asset/0001_ledgers",
    sql: "
        -- A ledger: an asset class (its record) and where its replay stands.
        CREATE TABLE asset_ledger (
            uri TEXT PRIMARY KEY,
            did TEXT NOT NULL,
            rkey TEXT NOT NULL,
            cid TEXT NOT NULL,
            class TEXT NOT NULL,
            seq INTEGER NOT NULL DEFAULT 0,
            lthash BLOB NOT NULL,
            state_hash TEXT NOT NULL,
            bad_seq INTEGER,
            bad_reason TEXT,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX asset_ledger_did ON asset_ledger (did);
        -- The ledger's state: its entries (balances, supplies, tokens, approvals).
        CREATE TABLE asset_entry (
            ledger TEXT NOT NULL,
            key BLOB NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (ledger, key)
        ) WITHOUT ROWID;
        -- Its transactions, for history and for repeated nonces.
        CREATE TABLE asset_tx (
            ledger TEXT NOT NULL,
            seq INTEGER NOT NULL,
            rkey TEXT NOT NULL,
            cid TEXT NOT NULL,
            actor TEXT NOT NULL,
            nonce TEXT,
            tx TEXT NOT NULL,
            PRIMARY KEY (ledger, seq)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX asset_tx_nonce ON asset_tx (ledger, actor, nonce) WHERE nonce IS NOT NULL;
    ",
}];
