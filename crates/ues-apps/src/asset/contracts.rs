//! Contracts on the registry: WebAssembly modules (the [`crate::contract`] sandbox) uploaded as
//! blobs of the uploader's account with a `dev.ues.contract.code` record, instantiated as a
//! `dev.ues.contract.instance` record whose state is a ledger of its own: every call that
//! changes it (`instantiate`, `execute`, a class's `on_transfer` hook) is a `#contract`
//! transaction carrying the write set, so a replay applies write sets and never runs code. A
//! call that runs out of fuel, traps, or passes a bound commits nothing and answers a typed
//! error.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ues_protocol::node::{NodeError, blocking};
use ues_protocol::sync::repo::ipld::json as ipld_json;
use ues_protocol::sync::repo::ipld::storage::rusqlite::Connection;
use ues_protocol::sync::repo::repo::Write;
use ues_protocol::sync::repo::syntax::{Did, Nsid, RecordKey};

use super::ledger::{self, Class, Entries as _};
use super::store::{self, INSTANCE, TX};
use super::{Asset, NAME, class_not_found, ledger_error, now_ms, read, split_ledger, submit, submit_all, write};
use crate::contract::{ContractError, Entry, State};
use crate::mirror::Answer;

/// The code record collection.
pub(super) const CODE: &str = "dev.ues.contract.code";

fn contract_error(e: ContractError) -> NodeError {
    match e {
        ContractError::ModuleTooLarge { .. } => NodeError::new(StatusCode::PAYLOAD_TOO_LARGE, e.name(), e.to_string()),
        ContractError::Refused(reason) => NodeError::bad("ContractRefused", reason),
        other => {
            tracing::info!(app = NAME, error = %other, "a contract call failed: nothing committed");
            NodeError::bad(other.name(), other.to_string())
        }
    }
}

/// A contract instance's state as the sandbox reads it.
struct InstanceState<'c> {
    conn: &'c Connection,
    ledger: &'c str,
}

impl State for InstanceState<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        store::Stored { conn: self.conn, ledger: self.ledger }.get(&ledger::key::contract(key)).ok().flatten()
    }
}

/// The module an instance runs: its SHA-256 and bytes, from the code record and its blob.
fn code_of(app: &Asset, instance: &Value) -> Result<([u8; 32], Vec<u8>), NodeError> {
    let node = app.node();
    let code_uri = instance["code"].as_str().unwrap_or_default();
    let (did, rkey) = code_uri
        .strip_prefix("at://")
        .and_then(|r| r.split_once(&format!("/{CODE}/")))
        .ok_or_else(|| NodeError::invalid(format!("{code_uri:?} is not a contract code record")))?;
    let did = Did::new(did).map_err(|e| NodeError::invalid(e.to_string()))?;
    let repo = node.accounts.repo(&did)?;
    let nsid = Nsid::new(CODE).map_err(NodeError::internal)?;
    let key = RecordKey::new(rkey).map_err(|e| NodeError::invalid(e.to_string()))?;
    let (_, record) = repo
        .get_record(&nsid, &key)?
        .ok_or_else(|| NodeError::bad("CodeNotFound", format!("no contract code {code_uri}")))?;
    let code = match &record {
        ues_protocol::sync::repo::ipld::Ipld::Map(m) => m.get("code"),
        _ => None,
    };
    let blob = code
        .and_then(ipld_json::BlobRef::from_ipld)
        .ok_or_else(|| NodeError::bad("CodeNotFound", "the code record names no module"))?;
    let max = app.sandbox.limits().max_module_bytes as u64;
    let (_, mut reader) = node
        .blobs
        .open(&did, &blob.cid)
        .map_err(NodeError::internal)?
        .ok_or_else(|| NodeError::bad("CodeNotFound", format!("the module of {code_uri} is not held here")))?;
    let mut bytes = Vec::new();
    (&mut reader).take(max + 1).read_to_end(&mut bytes).map_err(NodeError::internal)?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    Ok((hash, bytes))
}

/// The host's `env` for a call on `instance` at its transaction `seq`.
fn env(app: &Asset, instance: &str, seq: i64) -> Value {
    json!({
        "ledger": instance, "contract": instance, "seq": seq,
        "time": now_ms() / 1000, "node": app.node().cfg.service_did,
    })
}

/// `dev.ues.contract.upload`: a module checked (size, validation without floats, imports the
/// host offers, required exports, no start function), stored as a blob of the caller's account,
/// and named by a code record.
pub(super) async fn upload(app: Arc<Asset>, headers: HeaderMap, body: Bytes) -> Answer {
    let did = crate::peer::caller(app.node(), &headers, "dev.ues.contract.upload")?;
    let max = app.sandbox.limits().max_module_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if body.len() > max || declared.is_some_and(|n| n > max) {
        tracing::info!(app = NAME, %did, size = body.len(), "a contract module past the bound was refused");
        return Err(contract_error(ContractError::ModuleTooLarge { size: body.len(), max }));
    }
    blocking(move || {
        let node = app.node();
        let info = app.sandbox.check(&body).map_err(|e| {
            tracing::info!(app = NAME, %did, error = %e, "a contract module was refused at upload");
            contract_error(e)
        })?;
        let parsed = node.served_did(&did)?;
        let blob = node.blobs.upload(&parsed, "application/wasm", &mut &body[..]).map_err(NodeError::internal)?;
        let sha = data_encoding::HEXLOWER.encode(&Sha256::digest(&body));
        let record = json!({
            "$type": CODE,
            "code": ipld_json::to_json(&blob.to_ipld()),
            "sha256": sha,
            "size": body.len(),
            "abi": "ues-1",
            "imports": info.imports,
            "exports": info.exports,
            "createdAt": ues_protocol::node::sequencer::iso_from_millis(now_ms()),
        });
        let collection = Nsid::new(CODE).map_err(NodeError::internal)?;
        let rkey = node.rkey_or_new(None)?;
        let (ipld, _) = node.prepare_record(&collection, rkey.as_str(), record, Some(true))?;
        let res =
            node.commit(None, &parsed, &[Write::Create { collection, rkey: rkey.clone(), record: ipld }], None)?;
        let cid = res.ops.first().and_then(|o| o.cid).map(|c| c.to_string()).unwrap_or_default();
        Ok(Json(json!({
            "uri": format!("at://{did}/{CODE}/{rkey}"), "cid": cid, "sha256": sha, "size": body.len(),
            "imports": info.imports, "exports": info.exports,
        })))
    })
    .await
}

/// `dev.ues.contract.instantiate`: runs the module's `instantiate` on an empty state, then
/// commits the instance record and its first transaction (the write set) together.
pub(super) fn instantiate(app: &Asset, actor: &str, body: &Value) -> Result<Value, NodeError> {
    let node = app.node();
    let code = body["code"].as_str().ok_or_else(|| NodeError::invalid("code is required"))?;
    let parsed = node.served_did(actor)?;
    let rkey = node.rkey_or_new(None)?;
    let uri = store::instance_uri(actor, rkey.as_str());
    let mut record = json!({
        "$type": INSTANCE, "code": code, "admin": actor,
        "createdAt": ues_protocol::node::sequencer::iso_from_millis(now_ms()),
    });
    if let Some(l) = body["label"].as_str() {
        record["label"] = Value::String(l.to_string());
    }
    let (hash, bytes) = code_of(app, &record)?;
    let msg = body.get("msg").cloned().unwrap_or(Value::Null);
    let info = json!({ "sender": actor });
    let empty = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let out = app
        .sandbox
        .call(hash, &bytes, Entry::Instantiate, &env(app, &uri, 1), Some(&info), &msg, &empty)
        .map_err(contract_error)?;
    let op = ledger::Op::Contract {
        call: "instantiate".into(),
        sender: actor.to_string(),
        msg: msg.to_string(),
        writes: out.writes,
        fuel: out.fuel_used,
    };
    let class = Class::from_record(actor, &record).map_err(ledger_error)?;
    let mut state = ledger::Memory::default();
    let state_hash = state.apply(&class, actor, &op).map_err(ledger_error)?;
    let tx_rkey = store::tx_rkey(rkey.as_str(), 1);
    let tx = json!({
        "$type": TX, "ledger": uri, "seq": 1, "actor": actor, "op": op.to_json(), "stateHash": state_hash,
        "createdAt": record["createdAt"],
    });
    let (instance_nsid, tx_nsid) =
        (Nsid::new(INSTANCE).map_err(NodeError::internal)?, Nsid::new(TX).map_err(NodeError::internal)?);
    let (instance_ipld, _) = node.prepare_record(&instance_nsid, rkey.as_str(), record.clone(), Some(true))?;
    let (tx_ipld, _) = node.prepare_record(&tx_nsid, &tx_rkey, tx.clone(), Some(true))?;
    let writer = app.writer(actor);
    let _one = writer.lock();
    let res = node.commit(
        None,
        &parsed,
        &[
            Write::Create { collection: instance_nsid, rkey: rkey.clone(), record: instance_ipld },
            Write::Create {
                collection: tx_nsid,
                rkey: RecordKey::new(&tx_rkey).map_err(NodeError::internal)?,
                record: tx_ipld,
            },
        ],
        None,
    )?;
    let cid_of = |path: String| {
        res.ops.iter().find(|o| o.path == path).and_then(|o| o.cid).map(|c| c.to_string()).unwrap_or_default()
    };
    let (instance_cid, tx_cid) = (cid_of(format!("{INSTANCE}/{rkey}")), cid_of(format!("{TX}/{tx_rkey}")));
    write(node, |t| {
        store::put_ledger(t, INSTANCE, actor, rkey.as_str(), &instance_cid, &record, now_ms())?;
        store::put_tx(t, actor, &tx_rkey, &tx_cid, &tx).map(|_| ())
    })?;
    Ok(json!({
        "uri": uri, "cid": instance_cid, "data": out.data, "fuelUsed": out.fuel_used,
        "tx": { "uri": format!("at://{actor}/{TX}/{tx_rkey}"), "cid": tx_cid, "seq": 1, "stateHash": state_hash },
    }))
}

/// `dev.ues.contract.execute`: runs `execute` over the instance's state and commits its write
/// set as the instance's next transaction.
pub(super) fn execute(
    app: &Asset,
    uri: &str,
    actor: &str,
    body: &Value,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let node = app.node();
    let row = read(node, |c| store::ledger(c, uri))?.ok_or_else(|| class_not_found(uri))?;
    let (hash, bytes) = code_of(app, &row.class)?;
    let msg = body.get("msg").cloned().unwrap_or(Value::Null);
    let reply = Arc::new(parking_lot::Mutex::new(Value::Null));
    let (reply2, actor2, uri2) = (reply.clone(), actor.to_string(), uri.to_string());
    let v = submit_all(
        app,
        &[uri.to_string()],
        actor,
        Box::new(move |seqs| {
            let info = json!({ "sender": actor2 });
            let env = env(app, &uri2, seqs[0]);
            let out = read(node, |c| {
                Ok(app.sandbox.call(
                    hash,
                    &bytes,
                    Entry::Execute,
                    &env,
                    Some(&info),
                    &msg,
                    &InstanceState { conn: c, ledger: &uri2 },
                ))
            })?
            .map_err(contract_error)?;
            *reply2.lock() = json!({ "data": out.data, "fuelUsed": out.fuel_used });
            let op = ledger::Op::Contract {
                call: "execute".into(),
                sender: actor2.clone(),
                msg: msg.to_string(),
                writes: out.writes,
                fuel: out.fuel_used,
            };
            Ok(vec![op.to_json()])
        }),
        nonce,
    )?;
    let mut answer = reply.lock().clone();
    for k in ["uri", "cid", "seq", "stateHash"] {
        answer[k] = v[k].clone();
    }
    Ok(answer)
}

/// `dev.ues.contract.query`: runs `query` over the instance's state; nothing is written.
pub(super) fn query(app: &Asset, uri: &str, msg: &Value) -> Result<Value, NodeError> {
    let node = app.node();
    let row = read(node, |c| store::ledger(c, uri))?.ok_or_else(|| class_not_found(uri))?;
    let (hash, bytes) = code_of(app, &row.class)?;
    let out = read(node, |c| {
        Ok(app.sandbox.call(
            hash,
            &bytes,
            Entry::Query,
            &env(app, uri, row.seq),
            None,
            msg,
            &InstanceState { conn: c, ledger: uri },
        ))
    })?
    .map_err(contract_error)?;
    Ok(json!({ "data": out.data, "fuelUsed": out.fuel_used }))
}

/// A transfer on a class that names a contract: its `on_transfer` hook allows it, refuses it
/// (400 `TransferRefused`, nothing written) or charges a fee (paid by the sender in the same
/// transaction); the hook's write set is the instance's transaction in the same commit.
pub(super) fn transfer(
    app: &Asset,
    uri: &str,
    actor: &str,
    op: Value,
    nonce: Option<&str>,
) -> Result<Value, NodeError> {
    let node = app.node();
    let (issuer, _) = split_ledger(uri)?;
    let row = read(node, |c| store::ledger(c, uri))?.ok_or_else(|| class_not_found(uri))?;
    let class = Class::from_record(&issuer, &row.class).map_err(ledger_error)?;
    let Some(instance) = class.contract else { return submit(app, uri, actor, &op, nonce) };
    let irow = read(node, |c| store::ledger(c, &instance))?.ok_or_else(|| class_not_found(&instance))?;
    let (hash, bytes) = code_of(app, &irow.class)?;
    let actor2 = actor.to_string();
    let instance2 = instance.clone();
    submit_all(
        app,
        &[uri.to_string(), instance.clone()],
        actor,
        Box::new(move |seqs| {
            let mut msg = json!({ "from": op["from"], "to": op["to"], "amount": op.get("amount").cloned().unwrap_or(json!("1")), "ledger": uri });
            if let Some(t) = op.get("tokenId") {
                msg["tokenId"] = t.clone();
            }
            let info = json!({ "sender": actor2 });
            let env = env(app, &instance2, seqs[1]);
            let out = read(node, |c| {
                Ok(app.sandbox.call(
                    hash,
                    &bytes,
                    Entry::OnTransfer,
                    &env,
                    Some(&info),
                    &msg,
                    &InstanceState { conn: c, ledger: &instance2 },
                ))
            })?
            .map_err(contract_error)?;
            if out.data["allow"] != true {
                let reason = out.data["reason"].as_str().unwrap_or("the class's contract refused the transfer");
                tracing::info!(app = NAME, ledger = %uri, reason, "a transfer was refused by its class's contract");
                return Err(NodeError::bad("TransferRefused", reason.to_string()));
            }
            let mut op = op;
            if let Some(fee) = out.data.get("fee").filter(|f| f.is_object()) {
                op["fee"] = json!({ "to": fee["to"], "amount": fee["amount"] });
            }
            let hook = ledger::Op::Contract {
                call: "onTransfer".into(),
                sender: actor2.clone(),
                msg: msg.to_string(),
                writes: out.writes,
                fuel: out.fuel_used,
            };
            Ok(vec![op, hook.to_json()])
        }),
        nonce,
    )
}
