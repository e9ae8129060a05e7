//! `dev.ues.asset`: a registry of digital assets without a blockchain. An account issues an
//! asset class (a `dev.ues.asset.class` record in its repository) and its node keeps the
//! class's ledger; every change of state is a `dev.ues.asset.tx` record in the same repository,
//! carrying its sequence number and the hash of the ledger's state after it, written in one
//! signed commit. Anyone holding the repository replays the records and checks every hash
//! (`verifyLedger`), here or on another node.
//!
//! Holders on other nodes act through their own node, which calls the issuer's with a
//! service-auth token signed by the holder's repository key; reads are public.
//!
//! The SQLite tables are a projection of the records ([`store`]), rebuilt from them.

pub mod amount;
mod contracts;
pub mod hash;
pub mod ledger;
mod market;
pub mod replay;
mod rest;
mod schema;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use ues_protocol::node::extract::XJson;
use ues_protocol::node::sequencer::{Happened, LogEvent};
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::accounts::{account_dids, records_in};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Transaction, params};
use ues_protocol::sync::repo::ipld::storage::{Error as StoreError, Migration};
use ues_protocol::sync::repo::ipld::{dagcbor, json as ipld_json};
use ues_protocol::sync::repo::repo::Write;
use ues_protocol::sync::repo::syntax::{Did, Nsid, RecordKey};

use crate::App;
use crate::mirror::Answer;
use ledger::{Class, LedgerError, Op};
use store::{CLASS, INSTANCE, LedgerRow, Projected, TX};

/// The application's name.
pub const NAME: &str = "dev.ues.asset";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How the registry is set up (`[asset]` in `node.toml`).
#[derive(Debug, Clone)]
pub struct AssetConfig {
    /// The largest repository fetched from another node to replay a ledger.
    pub max_remote_repo_bytes: u64,
    /// Fuel one contract call may burn (about one per instruction).
    pub contract_fuel: u64,
    /// The largest contract module accepted.
    pub max_module_bytes: usize,
}

impl Default for AssetConfig {
    fn default() -> Self {
        let limits = crate::contract::Limits::default();
        Self { max_remote_repo_bytes: 256 << 20, contract_fuel: limits.fuel, max_module_bytes: limits.max_module_bytes }
    }
}

/// The application.
pub struct Asset {
    cfg: AssetConfig,
    /// Contracts' sandbox (compiled modules cached by their code's SHA-256).
    sandbox: crate::contract::Sandbox,
    node: OnceLock<Arc<Node>>,
    /// One writer per issuer at a time: a ledger's next transaction is made from its last.
    writers: parking_lot::Mutex<HashMap<String, Arc<parking_lot::Mutex<()>>>>,
}

impl Asset {
    /// The application, set up by `cfg`.
    pub fn new(cfg: AssetConfig) -> Self {
        let limits = crate::contract::Limits {
            fuel: cfg.contract_fuel,
            max_module_bytes: cfg.max_module_bytes,
            ..crate::contract::Limits::default()
        };
        Self {
            cfg,
            sandbox: crate::contract::Sandbox::new(limits),
            node: OnceLock::new(),
            writers: parking_lot::Mutex::default(),
        }
    }

    fn node(&self) -> &Arc<Node> {
        self.node.get().expect("the host attaches the node before any call")
    }

    fn writer(&self, issuer: &str) -> Arc<parking_lot::Mutex<()>> {
        let mut w = self.writers.lock();
        if w.len() > 10_000 {
            w.retain(|_, m| Arc::strong_count(m) > 1);
        }
        w.entry(issuer.to_string()).or_default().clone()
    }
}

fn ledger_error(e: LedgerError) -> NodeError {
    match e {
        LedgerError::Refused { name: "NotAuthorized", message } => {
            NodeError::new(StatusCode::FORBIDDEN, "NotAuthorized", message)
        }
        LedgerError::Refused { name, message } => NodeError::bad(name, message),
        LedgerError::Store(e) => NodeError::internal(e),
    }
}

fn class_not_found(uri: &str) -> NodeError {
    NodeError::bad("ClassNotFound", format!("no asset class {uri}"))
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, NodeError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| NodeError::invalid(format!("{name} is required")))
}

fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn read<T>(node: &Node, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T, NodeError> {
    node.accounts.db().read(f).map_err(NodeError::internal)
}

fn write<T>(node: &Node, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T, NodeError> {
    node.accounts.db().write(|tx| f(tx).map_err(StoreError::from)).map_err(NodeError::internal)
}

/// The issuer and class key a ledger URI names.
fn split_ledger(uri: &str) -> Result<(String, String), NodeError> {
    store::parse_ledger_uri(uri)
        .filter(|(d, r)| Did::new(*d).is_ok() && RecordKey::new(*r).is_ok())
        .map(|(d, r)| (d.to_string(), r.to_string()))
        .ok_or_else(|| NodeError::invalid(format!("{uri:?} is not an asset class's AT-URI")))
}

fn record_json(bytes: &[u8]) -> Option<Value> {
    let ipld = dagcbor::decode_atproto(bytes).ok()?;
    let v = ipld_json::to_json(&ipld);
    v.is_object().then_some(v)
}

/// Answers another node's answer as this node's: its JSON with its status.
fn relay(status: u16, v: Value) -> Answer {
    if status == 200 {
        return Ok(Json(v));
    }
    let name = v["error"].as_str().unwrap_or("UpstreamFailure");
    let message = v["message"].as_str().unwrap_or("the issuer's node refused");
    Err(NodeError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), name, message))
}

async fn create_class(app: Arc<Asset>, headers: HeaderMap, body: Value) -> Answer {
    let did = crate::peer::caller(app.node(), &headers, "dev.ues.asset.createClass")?;
    blocking(move || {
        let node = app.node();
        let mut record =
            json!({ "$type": CLASS, "createdAt": ues_protocol::node::sequencer::iso_from_millis(now_ms()) });
        for k in ["kind", "name", "symbol", "decimals", "maxSupply", "metadataUri", "royalty", "contract"] {
            if let Some(v) = body.get(k) {
                record[k] = v.clone();
            }
        }
        let class = Class::from_record(&did, &record).map_err(ledger_error)?;
        if let Some(instance) = &class.contract {
            let row = read(node, |c| store::ledger(c, instance))?;
            if !row.is_some_and(|r| r.class["$type"] == INSTANCE) {
                return Err(NodeError::bad("InvalidClass", format!("{instance} is not a contract instance held here")));
            }
        }
        let collection = Nsid::new(CLASS).map_err(NodeError::internal)?;
        let rkey = node.rkey_or_new(None)?;
        let (ipld, _) = node.prepare_record(&collection, rkey.as_str(), record.clone(), Some(true))?;
        let did = node.served_did(&did)?;
        let res = node.commit(None, &did, &[Write::Create { collection, rkey: rkey.clone(), record: ipld }], None)?;
        let cid = res.ops.first().and_then(|o| o.cid).map(|c| c.to_string()).unwrap_or_default();
        write(node, |tx| store::put_ledger(tx, CLASS, did.as_str(), rkey.as_str(), &cid, &record, now_ms()))?;
        tracing::info!(app = NAME, issuer = %did, class = %rkey, "an asset class was created");
        Ok(Json(json!({ "uri": store::ledger_uri(did.as_str(), rkey.as_str()), "cid": cid })))
    })
    .await
}

/// The operation a method's input asks for, done by `actor`, in its record form.
fn op_json(nsid: &str, actor: &str, body: &Value) -> Result<Value, NodeError> {
    let mut op = serde_json::Map::new();
    let copy = |op: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = body.get(from) {
            op.insert(to.to_string(), v.clone());
        }
    };
    let kind = nsid.rsplit('.').next().unwrap_or_default();
    op.insert("$type".into(), Value::String(format!("{TX}#{kind}")));
    match kind {
        "mint" => {
            for k in ["to", "amount", "tokenId", "metadata", "unique"] {
                copy(&mut op, k, k);
            }
        }
        "transfer" | "burn" => {
            op.insert("from".into(), body.get("from").cloned().unwrap_or_else(|| Value::String(actor.to_string())));
            for k in ["to", "amount", "tokenId"] {
                copy(&mut op, k, k);
            }
        }
        "approve" => {
            op.insert("owner".into(), Value::String(actor.to_string()));
            for k in ["spender", "amount", "tokenId", "all"] {
                copy(&mut op, k, k);
            }
        }
        _ => return Err(NodeError::invalid(format!("{nsid} is not a ledger operation"))),
    }
    if kind == "burn" {
        op.remove("to");
    }
    Ok(Value::Object(op))
}

/// A ledger operation: made here when the ledger's issuer is held here, else passed to the
/// issuer's node as the caller.
async fn operate(app: Arc<Asset>, headers: HeaderMap, nsid: &'static str, body: Value) -> Answer {
    let field = if nsid == "dev.ues.contract.execute" { "instance" } else { "ledger" };
    let uri = str_field(&body, field)?.to_string();
    let (issuer, _) = split_ledger(&uri)?;
    blocking(move || {
        let node = app.node();
        if !crate::peer::hosted(node, &issuer)? {
            let me = crate::peer::caller(node, &headers, nsid)?;
            let (status, v) = crate::peer::call(node, Some(&me), &issuer, nsid, "", Some(&body))?;
            return relay(status, v);
        }
        let (actor, via) = crate::peer::caller_or_service(node, &headers, nsid, |aud| aud == issuer)?;
        if via.is_some() {
            tracing::debug!(app = NAME, %actor, %nsid, "a ledger operation from another node");
        }
        let nonce = body.get("nonce").and_then(Value::as_str).map(str::to_string);
        match nsid {
            "dev.ues.asset.createListing" => market::create_listing(&app, &uri, &actor, &body, nonce.as_deref()),
            "dev.ues.asset.cancelListing" => market::cancel_listing(&app, &uri, &actor, &body, nonce.as_deref()),
            "dev.ues.asset.buyListing" => market::buy_listing(&app, &uri, &actor, &body, nonce.as_deref()),
            "dev.ues.asset.transfer" => {
                contracts::transfer(&app, &uri, &actor, op_json(nsid, &actor, &body)?, nonce.as_deref())
            }
            "dev.ues.contract.execute" => contracts::execute(&app, &uri, &actor, &body, nonce.as_deref()),
            _ => submit(&app, &uri, &actor, &op_json(nsid, &actor, &body)?, nonce.as_deref()),
        }
        .map(|mut v| {
            if !matches!(nsid, "dev.ues.asset.buyListing" | "dev.ues.asset.transfer") {
                v.as_object_mut().map(|m| m.remove("txs"));
            }
            Json(v)
        })
    })
    .await
}

/// The operations of one commit, given the sequence number each of its ledgers takes next.
type Build<'a> = Box<dyn FnOnce(&[i64]) -> Result<Vec<Value>, NodeError> + 'a>;

/// Makes one transaction on a ledger held here: checked against its state, written as a
/// record in one commit, then projected. A repeated nonce answers the first result.
fn submit(app: &Asset, uri: &str, actor: &str, op: &Value, nonce: Option<&str>) -> Result<Value, NodeError> {
    let op = op.clone();
    submit_all(app, &[uri.to_string()], actor, Box::new(move |_| Ok(vec![op])), nonce)
}

/// Makes one transaction on each of `ledgers` (all of one issuer held here), in one commit:
/// all of them or none. `build` makes the operations once their sequence numbers are known.
/// The answer is the first transaction's, with every transaction in `txs`.
fn submit_all(
    app: &Asset,
    ledgers: &[String],
    actor: &str,
    build: Build<'_>,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let node = app.node();
    let (issuer, _) = split_ledger(&ledgers[0])?;
    let writer = app.writer(&issuer);
    let _one = writer.lock();
    let answer = |seq: i64, rkey: &str, cid: &str, hash: &str| json!({ "uri": format!("at://{issuer}/{TX}/{rkey}"), "cid": cid, "seq": seq, "stateHash": hash });
    let mut rows = Vec::with_capacity(ledgers.len());
    for uri in ledgers {
        let (did, _) = split_ledger(uri)?;
        if did != issuer || rows.iter().any(|r: &LedgerRow| &r.uri == uri) {
            return Err(NodeError::invalid("the ledgers of one transaction are distinct and of one issuer"));
        }
        let row: LedgerRow = read(node, |c| store::ledger(c, uri))?.ok_or_else(|| class_not_found(uri))?;
        if let Some((seq, reason)) = &row.bad {
            return Err(NodeError::new(
                StatusCode::CONFLICT,
                "LedgerStopped",
                format!("the ledger {uri} stops at transaction {seq}: {reason}"),
            ));
        }
        rows.push(row);
    }
    if let Some(n) = nonce
        && let Some((seq, rkey, cid, hash)) = read(node, |c| store::by_nonce(c, &ledgers[0], actor, n))?
    {
        let mut v = answer(seq, &rkey, &cid, &hash);
        v["txs"] = json!([v.clone()]);
        return Ok(v);
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq + 1).collect();
    let ops = build(&seqs)?;
    if ops.len() != rows.len() {
        return Err(NodeError::internal("a transaction's operations do not match its ledgers"));
    }
    let collection = Nsid::new(TX).map_err(NodeError::internal)?;
    let created = ues_protocol::node::sequencer::iso_from_millis(now_ms());
    let mut records = Vec::with_capacity(rows.len());
    let mut writes = Vec::with_capacity(rows.len());
    for (i, (row, op)) in rows.iter().zip(&ops).enumerate() {
        let class = Class::from_record(&issuer, &row.class).map_err(ledger_error)?;
        let parsed = Op::from_json(op).map_err(ledger_error)?;
        let deltas =
            read(node, |c| Ok(ledger::step(&class, actor, &parsed, &store::Stored { conn: c, ledger: &row.uri })))?
                .map_err(ledger_error)?;
        let mut hash = row.lthash.clone();
        ledger::rehash(&mut hash, &deltas);
        let mut record = json!({
            "$type": TX,
            "ledger": row.uri,
            "seq": seqs[i],
            "actor": actor,
            "op": parsed.to_json(),
            "stateHash": hash.digest(),
            "createdAt": created,
        });
        if let (0, Some(n)) = (i, nonce) {
            record["nonce"] = Value::String(n.to_string());
        }
        let rkey = store::tx_rkey(&row.rkey, seqs[i]);
        let (ipld, _) = node.prepare_record(&collection, &rkey, record.clone(), Some(true))?;
        writes.push(Write::Create {
            collection: collection.clone(),
            rkey: RecordKey::new(&rkey).map_err(NodeError::internal)?,
            record: ipld,
        });
        records.push((rkey, record, hash.digest()));
    }
    let did = node.served_did(&issuer)?;
    let res = node.commit(None, &did, &writes, None)?;
    let mut txs = Vec::with_capacity(records.len());
    write(node, |tx| {
        for (rkey, record, hash) in &records {
            let path = format!("{TX}/{rkey}");
            let cid =
                res.ops.iter().find(|o| o.path == path).and_then(|o| o.cid).map(|c| c.to_string()).unwrap_or_default();
            if let Projected::Bad(reason) = store::put_tx(tx, &issuer, rkey, &cid, record)? {
                tracing::error!(app = NAME, %reason, "a transaction written here does not replay");
            }
            txs.push(answer(record["seq"].as_i64().unwrap_or(0), rkey, &cid, hash));
        }
        Ok(())
    })?;
    let mut v = txs[0].clone();
    v["txs"] = Value::Array(txs);
    Ok(v)
}

/// A ledger's row, from here when its projection is here, else `None` and the issuer's node
/// is asked (`remote` says whether the issuer is held elsewhere).
fn local_row(app: &Asset, uri: &str) -> Result<(Option<LedgerRow>, bool), NodeError> {
    let (issuer, _) = split_ledger(uri)?;
    let row = read(app.node(), |c| store::ledger(c, uri))?;
    let remote = row.is_none() && !crate::peer::hosted(app.node(), &issuer)?;
    if row.is_none() && !remote {
        return Err(class_not_found(uri));
    }
    Ok((row, remote))
}

/// A public query asked of the issuer's node.
fn ask_issuer(app: &Asset, nsid: &str, uri: &str, p: &[(String, String)]) -> Answer {
    let (issuer, _) = split_ledger(uri)?;
    let query: Vec<String> = p.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    let (status, v) = crate::peer::call(app.node(), None, &issuer, nsid, &format!("?{}", query.join("&")), None)?;
    relay(status, v)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn number(c: &rusqlite::Connection, uri: &str, key: &[u8]) -> rusqlite::Result<u128> {
    let v: Option<Vec<u8>> = store::Stored { conn: c, ledger: uri }
        .get(key)
        .map_err(|e| rusqlite::Error::InvalidParameterName(e.to_string()))?;
    Ok(v.and_then(|v| v.try_into().ok()).map_or(0, u128::from_be_bytes))
}

use ledger::Entries as _;

async fn get_class(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    blocking(move || {
        let (row, remote) = local_row(&app, &uri)?;
        let Some(row) = row else {
            debug_assert!(remote);
            return ask_issuer(&app, "dev.ues.asset.getClass", &uri, &p);
        };
        let supply = read(app.node(), |c| number(c, &uri, &ledger::key::supply("")))?;
        let mut v = json!({
            "uri": row.uri, "cid": row.cid, "class": row.class, "supply": supply.to_string(),
            "seq": row.seq, "stateHash": row.state_hash,
        });
        if let Some((seq, reason)) = row.bad {
            v["stopped"] = json!({ "seq": seq, "reason": reason });
        }
        Ok(Json(v))
    })
    .await
}

async fn get_balance(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    let holder = param(&p, "holder").unwrap_or_default().to_string();
    let token = param(&p, "tokenId").unwrap_or_default().to_string();
    blocking(move || {
        let (row, _) = local_row(&app, &uri)?;
        if row.is_none() {
            return ask_issuer(&app, "dev.ues.asset.getBalance", &uri, &p);
        }
        let n = read(app.node(), |c| number(c, &uri, &ledger::key::balance(&holder, &token)))?;
        Ok(Json(json!({ "amount": n.to_string() })))
    })
    .await
}

async fn list_tokens(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    let holder = param(&p, "holder").map(str::to_string);
    let cursor = param(&p, "cursor").unwrap_or_default().to_string();
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let (row, _) = local_row(&app, &uri)?;
        if row.is_none() {
            return ask_issuer(&app, "dev.ues.asset.listTokens", &uri, &p);
        }
        let node = app.node();
        // A holder's balances are the keys `b\0holder\0*`; a class's tokens the keys `t\0*`.
        let (prefix, tag) = match &holder {
            Some(h) => (ledger::key::balance(h, ""), 'b'),
            None => (ledger::key::token(""), 't'),
        };
        let mut tokens = Vec::new();
        let mut last = None;
        for (id, v) in page(node, &uri, &prefix, &cursor, limit)? {
            let mut t = json!({});
            if !id.is_empty() {
                t["tokenId"] = Value::String(id.clone());
            }
            if tag == 'b' {
                t["amount"] = Value::String(v.try_into().map(u128::from_be_bytes).unwrap_or(0).to_string());
            } else {
                let unique = v.first() == Some(&1);
                t["unique"] = Value::Bool(unique);
                if let Some(md) = v.get(1..).filter(|m| !m.is_empty()).and_then(record_json_any) {
                    t["metadata"] = md;
                }
                let (owner, supply) = read(node, |c| {
                    let owner = store::Stored { conn: c, ledger: &uri }
                        .get(&ledger::key::owner(&id))
                        .map_err(|e| rusqlite::Error::InvalidParameterName(e.to_string()))?;
                    Ok::<_, rusqlite::Error>((owner, number(c, &uri, &ledger::key::supply(&id))?))
                })?;
                if let Some(o) = owner {
                    t["owner"] = Value::String(String::from_utf8_lossy(&o).into_owned());
                }
                t["amount"] = Value::String(supply.to_string());
            }
            last = Some(id);
            tokens.push(t);
        }
        let mut v = json!({ "tokens": tokens });
        if tokens_full(&v, limit)
            && let Some(l) = last
        {
            v["cursor"] = Value::String(l);
        }
        Ok(Json(v))
    })
    .await
}

/// Up to `limit` entries of a ledger whose keys start with `prefix`, after `prefix` + `cursor`,
/// in key order: each key's rest (after the prefix) and its value.
fn page(node: &Node, uri: &str, prefix: &[u8], cursor: &str, limit: i64) -> Result<Vec<(String, Vec<u8>)>, NodeError> {
    let mut after = prefix.to_vec();
    after.extend_from_slice(cursor.as_bytes());
    let rows: Vec<(Vec<u8>, Vec<u8>)> = read(node, |c| {
        c.prepare_cached(
            "SELECT key, value FROM asset_entry WHERE ledger = ?1 AND key >= ?2 AND key > ?3 ORDER BY key LIMIT ?4",
        )?
        .query_map(params![uri, prefix, after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    Ok(rows
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
        .collect())
}

fn tokens_full(v: &Value, limit: i64) -> bool {
    v["tokens"].as_array().is_some_and(|t| t.len() as i64 == limit)
}

fn record_json_any(bytes: &[u8]) -> Option<Value> {
    dagcbor::decode_atproto(bytes).ok().map(|i| ipld_json::to_json(&i))
}

async fn get_history(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    let cursor = match param(&p, "cursor") {
        None => 0,
        Some(c) => c.parse::<i64>().map_err(|_| NodeError::invalid("cursor is a sequence number"))?,
    };
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let (row, _) = local_row(&app, &uri)?;
        let Some(row) = row else { return ask_issuer(&app, "dev.ues.asset.getHistory", &uri, &p) };
        let txs: Vec<Value> = read(app.node(), |c| {
            c.prepare_cached(
                "SELECT seq, rkey, cid, tx FROM asset_tx WHERE ledger = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![uri, cursor, limit], |r| {
                let seq: i64 = r.get(0)?;
                let rkey: String = r.get(1)?;
                let tx: String = r.get(3)?;
                Ok(json!({
                    "seq": seq,
                    "uri": format!("at://{}/{TX}/{rkey}", row.did),
                    "cid": r.get::<_, String>(2)?,
                    "record": serde_json::from_str::<Value>(&tx).unwrap_or(Value::Null),
                }))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut v = json!({ "txs": txs });
        if txs.len() as i64 == limit
            && let Some(last) = txs.last()
        {
            v["cursor"] = Value::String(last["seq"].to_string());
        }
        Ok(Json(v))
    })
    .await
}

async fn instantiate(app: Arc<Asset>, headers: HeaderMap, body: Value) -> Answer {
    let actor = crate::peer::caller(app.node(), &headers, "dev.ues.contract.instantiate")?;
    blocking(move || contracts::instantiate(&app, &actor, &body).map(Json)).await
}

async fn contract_query(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "instance").unwrap_or_default().to_string();
    let msg: Value = serde_json::from_str(param(&p, "msg").unwrap_or("null"))
        .map_err(|e| NodeError::invalid(format!("msg is not JSON: {e}")))?;
    blocking(move || {
        let (row, _) = local_row(&app, &uri)?;
        if row.is_none() {
            return ask_issuer(&app, "dev.ues.contract.query", &uri, &p);
        }
        contracts::query(&app, &uri, &msg).map(Json)
    })
    .await
}

async fn get_listings(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    let cursor = param(&p, "cursor").unwrap_or_default().to_string();
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let (row, _) = local_row(&app, &uri)?;
        if row.is_none() {
            return ask_issuer(&app, "dev.ues.asset.getListings", &uri, &p);
        }
        let node = app.node();
        let mut listings = Vec::new();
        for (id, v) in page(node, &uri, &ledger::key::listing(""), &cursor, limit)? {
            let Ok(l) = ledger::Listing::decode(&v) else { continue };
            let mut view = l.view();
            view["listingId"] = Value::String(id);
            listings.push(view);
        }
        let mut v = json!({ "listings": listings });
        if listings.len() as i64 == limit
            && let Some(last) = listings.last()
        {
            v["cursor"] = last["listingId"].clone();
        }
        Ok(Json(v))
    })
    .await
}

async fn verify_ledger(app: Arc<Asset>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let uri = param(&p, "ledger").unwrap_or_default().to_string();
    let (issuer, class_rkey) = split_ledger(&uri)?;
    let collection = store::parse_any(&uri).map_or(CLASS, |(_, c, _)| c);
    blocking(move || {
        let node = app.node();
        let did = Did::new(&issuer).map_err(NodeError::internal)?;
        let report = if node.accounts.get(&did)?.is_some() {
            let repo = node.accounts.repo(&did)?;
            replay::replay(&repo, &issuer, collection, &class_rkey)?
        } else {
            replay::replay_remote(node, &issuer, collection, &class_rkey, app.cfg.max_remote_repo_bytes)?
        };
        let report = report.ok_or_else(|| class_not_found(&uri))?;
        Ok(Json(report.to_json()))
    })
    .await
}

impl App for Asset {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(node.clone());
    }

    fn migrations(&self) -> &'static [Migration] {
        schema::MIGRATIONS
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        macro_rules! operation {
            ($nsid:literal) => {{
                let app = self.clone();
                post(move |headers: HeaderMap, XJson(body): XJson<Value>| operate(app, headers, $nsid, body))
            }};
        }
        let app = self.clone();
        let r = Router::new()
            .route(
                "/xrpc/dev.ues.asset.createClass",
                post(move |headers: HeaderMap, XJson(body): XJson<Value>| create_class(app, headers, body)),
            )
            .route("/xrpc/dev.ues.asset.mint", operation!("dev.ues.asset.mint"))
            .route("/xrpc/dev.ues.asset.transfer", operation!("dev.ues.asset.transfer"))
            .route("/xrpc/dev.ues.asset.burn", operation!("dev.ues.asset.burn"))
            .route("/xrpc/dev.ues.asset.approve", operation!("dev.ues.asset.approve"))
            .route("/xrpc/dev.ues.asset.createListing", operation!("dev.ues.asset.createListing"))
            .route("/xrpc/dev.ues.asset.cancelListing", operation!("dev.ues.asset.cancelListing"))
            .route("/xrpc/dev.ues.asset.buyListing", operation!("dev.ues.asset.buyListing"))
            .route("/xrpc/dev.ues.contract.execute", operation!("dev.ues.contract.execute"))
            .route("/xrpc/dev.ues.contract.instantiate", {
                let app = self.clone();
                post(move |headers: HeaderMap, XJson(body): XJson<Value>| instantiate(app, headers, body))
            })
            .route("/xrpc/dev.ues.contract.upload", {
                let app = self.clone();
                post(move |headers: HeaderMap, body: axum::body::Bytes| contracts::upload(app, headers, body))
            });
        macro_rules! query {
            ($f:ident) => {{
                let app = self.clone();
                get(move |headers: HeaderMap, Query(p): Query<Vec<(String, String)>>| $f(app, headers, p))
            }};
        }
        r.route("/xrpc/dev.ues.asset.getClass", query!(get_class))
            .route("/xrpc/dev.ues.asset.getBalance", query!(get_balance))
            .route("/xrpc/dev.ues.asset.listTokens", query!(list_tokens))
            .route("/xrpc/dev.ues.asset.getHistory", query!(get_history))
            .route("/xrpc/dev.ues.asset.verifyLedger", query!(verify_ledger))
            .route("/xrpc/dev.ues.asset.getListings", query!(get_listings))
            .route("/xrpc/dev.ues.contract.query", query!(contract_query))
    }

    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        rest::routes(self, node)
    }

    fn openapi(&self) -> Value {
        rest::openapi()
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[LogEvent]) -> rusqlite::Result<()> {
        for e in events {
            let Happened::Commit(ops) = &e.what else { continue };
            // Ledgers first (a commit may hold an instance and its first transaction).
            let mut ordered: Vec<_> =
                ops.iter().filter(|o| [CLASS, INSTANCE, TX].contains(&o.collection.as_str())).collect();
            ordered.sort_by_key(|o| o.collection == TX);
            for op in ordered {
                let cid = op.cid.clone().unwrap_or_default();
                let value = op.record.as_deref().and_then(record_json);
                match (op.action.as_str(), op.collection.as_str(), value) {
                    ("create", TX, Some(v)) => {
                        store::put_tx(tx, &e.did, &op.rkey, &cid, &v)?;
                    }
                    (_, TX, _) => store::tx_changed(tx, &e.did, &op.rkey)?,
                    ("create", c, Some(v)) => {
                        store::put_ledger(tx, c, &e.did, &op.rkey, &cid, &v, e.time_ms.unwrap_or(0))?
                    }
                    (_, c, _) => store::class_changed(tx, c, &e.did, &op.rkey)?,
                }
            }
        }
        Ok(())
    }

    fn rebuild(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        for table in ["asset_ledger", "asset_entry", "asset_tx"] {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        let node = self.node();
        for (did, _, status) in account_dids(tx)? {
            if status == "deleted" {
                continue;
            }
            // Ledgers first, then transactions in key order (each ledger's in sequence).
            for collection in [CLASS, INSTANCE, TX] {
                for r in records_in(tx, &did, &[collection])? {
                    let value = r
                        .cid
                        .parse()
                        .ok()
                        .and_then(|cid| node.accounts.blocks().get(&cid).ok().flatten())
                        .and_then(|b| record_json(&b));
                    let Some(v) = value else { continue };
                    if collection == TX {
                        store::put_tx(tx, &did, &r.rkey, &r.cid, &v)?;
                    } else {
                        store::put_ledger(tx, collection, &did, &r.rkey, &r.cid, &v, r.indexed_at)?;
                    }
                }
            }
        }
        Ok(())
    }
}
