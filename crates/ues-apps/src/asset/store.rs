//! The ledgers' projection in SQLite: each class record makes a ledger, each tx record is
//! replayed on it in sequence (its operation checked, its state hash compared), the same way
//! whether the record was written here a moment ago or arrived from the event log (written on
//! another device, or replayed after a restart). A record that does not check stops its ledger
//! at that transaction (reported by `verifyLedger` and `getClass`); nothing after it applies.

use serde_json::Value;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection, OptionalExtension, Transaction, params};

use super::hash::LtHash;
use super::ledger::{self, Class, Entries, LedgerError, Op};

/// The class collection.
pub const CLASS: &str = "dev.ues.asset.class";
/// The transaction collection.
pub const TX: &str = "dev.ues.asset.tx";
/// The contract instance collection (each instance is a ledger of its state).
pub const INSTANCE: &str = "dev.ues.contract.instance";

/// A ledger's row.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    /// Its AT-URI.
    pub uri: String,
    /// The issuer.
    pub did: String,
    /// The class record's key.
    pub rkey: String,
    /// The class record's CID.
    pub cid: String,
    /// The class record.
    pub class: Value,
    /// The last transaction applied.
    pub seq: i64,
    /// The state's lattice hash.
    pub lthash: LtHash,
    /// The state hash after `seq`.
    pub state_hash: String,
    /// The first transaction that did not check, and why.
    pub bad: Option<(i64, String)>,
}

/// A ledger's AT-URI.
pub fn ledger_uri(did: &str, rkey: &str) -> String {
    format!("at://{did}/{CLASS}/{rkey}")
}

/// A contract instance's ledger URI.
pub fn instance_uri(did: &str, rkey: &str) -> String {
    format!("at://{did}/{INSTANCE}/{rkey}")
}

/// The (issuer, collection, record key) of a ledger URI: a class's or a contract instance's.
pub fn parse_any(uri: &str) -> Option<(&str, &'static str, &str)> {
    let rest = uri.strip_prefix("at://")?;
    let (did, rest) = rest.split_once('/')?;
    let (collection, rkey) = rest.split_once('/')?;
    let collection = [CLASS, INSTANCE].into_iter().find(|c| *c == collection)?;
    (!rkey.is_empty() && !rkey.contains('/')).then_some((did, collection, rkey))
}

/// The (issuer, record key) of a ledger URI.
pub fn parse_ledger_uri(uri: &str) -> Option<(&str, &str)> {
    parse_any(uri).map(|(d, _, r)| (d, r))
}

/// The record key of a ledger's transaction `seq`: one ledger's transactions are one range of
/// keys, in order.
pub fn tx_rkey(class_rkey: &str, seq: i64) -> String {
    format!("{class_rkey}-{seq:016}")
}

/// Reads a ledger's row.
pub fn ledger(c: &Connection, uri: &str) -> rusqlite::Result<Option<LedgerRow>> {
    c.prepare_cached(
        "SELECT uri, did, rkey, cid, class, seq, lthash, state_hash, bad_seq, bad_reason FROM asset_ledger WHERE uri = ?1",
    )?
    .query_row([uri], |r| {
        let class: String = r.get(4)?;
        let lthash: Vec<u8> = r.get(6)?;
        let bad_seq: Option<i64> = r.get(8)?;
        let bad_reason: Option<String> = r.get(9)?;
        Ok(LedgerRow {
            uri: r.get(0)?,
            did: r.get(1)?,
            rkey: r.get(2)?,
            cid: r.get(3)?,
            class: serde_json::from_str(&class).unwrap_or(Value::Null),
            seq: r.get(5)?,
            lthash: LtHash::from_bytes(&lthash).unwrap_or_default(),
            state_hash: r.get(7)?,
            bad: bad_seq.map(|s| (s, bad_reason.unwrap_or_default())),
        })
    })
    .optional()
}

/// A ledger's entries in SQLite.
pub struct Stored<'c> {
    /// The connection.
    pub conn: &'c Connection,
    /// The ledger.
    pub ledger: &'c str,
}

impl Entries for Stored<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        self.conn
            .prepare_cached("SELECT value FROM asset_entry WHERE ledger = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row(params![self.ledger, key], |r| r.get(0)).optional())
            .map_err(|e| LedgerError::Store(e.to_string()))
    }
}

/// A ledger made from its record, a class's or a contract instance's (nothing when it is there
/// already).
pub fn put_ledger(
    tx: &Transaction<'_>,
    collection: &str,
    did: &str,
    rkey: &str,
    cid: &str,
    record: &Value,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let uri = if collection == INSTANCE { instance_uri(did, rkey) } else { ledger_uri(did, rkey) };
    let empty = LtHash::default();
    let bad = Class::from_record(did, record).err().map(|e| e.to_string());
    tx.prepare_cached(
        "INSERT INTO asset_ledger (uri, did, rkey, cid, class, seq, lthash, state_hash, bad_seq, bad_reason, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (uri) DO NOTHING",
    )?
    .execute(params![
        uri,
        did,
        rkey,
        cid,
        record.to_string(),
        empty.to_bytes(),
        empty.digest(),
        bad.as_ref().map(|_| 0i64),
        bad,
        now_ms
    ])?;
    Ok(())
}

/// Marks a ledger stopped at transaction `seq`.
pub fn mark_bad(tx: &Transaction<'_>, uri: &str, seq: i64, reason: &str) -> rusqlite::Result<()> {
    let n = tx.execute(
        "UPDATE asset_ledger SET bad_seq = ?2, bad_reason = ?3 WHERE uri = ?1 AND bad_seq IS NULL",
        params![uri, seq, reason],
    )?;
    if n > 0 {
        tracing::warn!(app = super::NAME, ledger = %uri, seq, reason, "a ledger transaction does not check: the ledger stops there");
    }
    Ok(())
}

/// What projecting a transaction record did.
#[derive(Debug, PartialEq, Eq)]
pub enum Projected {
    /// Applied: the state hash after it.
    Applied(String),
    /// Applied before.
    Already,
    /// Not applied (the ledger is unknown here, or stopped before it).
    Skipped,
    /// It does not check: the ledger stops here.
    Bad(String),
}

/// Replays transaction record `record` (as JSON) of `did`'s repository, key `rkey`, CID `cid`.
pub fn put_tx(tx: &Transaction<'_>, did: &str, rkey: &str, cid: &str, record: &Value) -> rusqlite::Result<Projected> {
    let Some(uri) = record["ledger"].as_str() else { return Ok(Projected::Skipped) };
    // A ledger's transactions are in its issuer's repository.
    if parse_ledger_uri(uri).is_none_or(|(d, _)| d != did) {
        return Ok(Projected::Skipped);
    }
    let Some(row) = ledger(tx, uri)? else { return Ok(Projected::Skipped) };
    if row.bad.is_some() {
        return Ok(Projected::Skipped);
    }
    let seq = record["seq"].as_i64().unwrap_or(0);
    if seq >= 1 && seq <= row.seq {
        return Ok(Projected::Already);
    }
    let bad = |reason: String| -> rusqlite::Result<Projected> {
        mark_bad(tx, uri, seq.max(row.seq + 1), &reason)?;
        Ok(Projected::Bad(reason))
    };
    if seq != row.seq + 1 {
        return bad(format!("transaction {seq} follows {}", row.seq));
    }
    if rkey != tx_rkey(&row.rkey, seq) {
        return bad(format!("transaction {seq} is at key {rkey}, not {}", tx_rkey(&row.rkey, seq)));
    }
    let check = || -> Result<(Vec<ledger::Delta>, LtHash), LedgerError> {
        let class = Class::from_record(did, &row.class)?;
        let actor = record["actor"].as_str().unwrap_or_default();
        let op = Op::from_json(&record["op"])?;
        let deltas = ledger::step(&class, actor, &op, &Stored { conn: tx, ledger: uri })?;
        let mut hash = row.lthash.clone();
        ledger::rehash(&mut hash, &deltas);
        Ok((deltas, hash))
    };
    let (deltas, hash) = match check() {
        Ok(x) => x,
        Err(LedgerError::Store(e)) => return Err(rusqlite::Error::ToSqlConversionFailure(e.into())),
        Err(e) => return bad(format!("transaction {seq} is refused: {e}")),
    };
    let digest = hash.digest();
    if record["stateHash"].as_str() != Some(digest.as_str()) {
        return bad(format!("transaction {seq} says state hash {}, the replay gives {digest}", record["stateHash"]));
    }
    for d in &deltas {
        match &d.new {
            Some(v) => tx
                .prepare_cached(
                    "INSERT INTO asset_entry (ledger, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ledger, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![uri, d.key, v])?,
            None => tx
                .prepare_cached("DELETE FROM asset_entry WHERE ledger = ?1 AND key = ?2")?
                .execute(params![uri, d.key])?,
        };
    }
    tx.prepare_cached("UPDATE asset_ledger SET seq = ?2, lthash = ?3, state_hash = ?4 WHERE uri = ?1")?
        .execute(params![uri, seq, hash.to_bytes(), digest])?;
    let nonce = record["nonce"].as_str();
    tx.prepare_cached(
        "INSERT INTO asset_tx (ledger, seq, rkey, cid, actor, nonce, tx) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        uri,
        seq,
        rkey,
        cid,
        record["actor"].as_str().unwrap_or_default(),
        nonce,
        record.to_string()
    ])?;
    Ok(Projected::Applied(digest))
}

/// A transaction record changed or deleted after it applied: its ledger's history is not the
/// one replayed, so the ledger stops there.
pub fn tx_changed(tx: &Transaction<'_>, did: &str, rkey: &str) -> rusqlite::Result<()> {
    let Some((class_rkey, seq)) = rkey.rsplit_once('-') else { return Ok(()) };
    let Ok(seq) = seq.parse::<i64>() else { return Ok(()) };
    for uri in [ledger_uri(did, class_rkey), instance_uri(did, class_rkey)] {
        if ledger(tx, &uri)?.is_some_and(|r| seq <= r.seq) {
            mark_bad(tx, &uri, seq, &format!("transaction {seq}'s record was changed or deleted"))?;
        }
    }
    Ok(())
}

/// A class or instance record changed or deleted: its ledger stops.
pub fn class_changed(tx: &Transaction<'_>, collection: &str, did: &str, rkey: &str) -> rusqlite::Result<()> {
    let uri = if collection == INSTANCE { instance_uri(did, rkey) } else { ledger_uri(did, rkey) };
    if let Some(r) = ledger(tx, &uri)? {
        mark_bad(tx, &uri, r.seq + 1, "the class record was changed or deleted")?;
    }
    Ok(())
}

/// A transaction already made with this nonce by this actor: (seq, rkey, cid, state hash).
pub fn by_nonce(
    c: &Connection,
    ledger: &str,
    actor: &str,
    nonce: &str,
) -> rusqlite::Result<Option<(i64, String, String, String)>> {
    c.prepare_cached("SELECT seq, rkey, cid, tx FROM asset_tx WHERE ledger = ?1 AND actor = ?2 AND nonce = ?3")?
        .query_row(params![ledger, actor, nonce], |r| {
            let tx: String = r.get(3)?;
            let hash =
                serde_json::from_str::<Value>(&tx).ok().and_then(|v| v["stateHash"].as_str().map(str::to_string));
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, hash.unwrap_or_default()))
        })
        .optional()
}
