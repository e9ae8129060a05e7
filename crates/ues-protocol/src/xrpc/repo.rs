//! com.atproto.repo.*: records.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::repo::Write;

use crate::node::extract::{XJson, XQuery};
use crate::node::records::{self, RecordWrite};
use crate::node::scopes::Action;
use crate::node::{Node, NodeError, blocking, write_blocking, ws_session};

type Res = Result<Json<Value>, NodeError>;

/// A CID parameter (`swapCommit`, `swapRecord`, `cid`).
fn cid_param(s: &Option<String>) -> Result<Option<cid::Cid>, NodeError> {
    records::cid_param(s.as_deref())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateRecord {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) rkey: Option<String>,
    pub(crate) validate: Option<bool>,
    pub(crate) record: Value,
    pub(crate) swap_commit: Option<String>,
}

pub(crate) async fn create_record(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateRecord>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        let w = RecordWrite {
            repo: b.repo,
            collection: b.collection,
            rkey: b.rkey,
            record: b.record,
            validate: b.validate,
            swap_record: None,
            swap_commit: cid_param(&b.swap_commit)?,
        };
        Ok(Json(json!(st.create_record(&caller, ws_session(&headers), w)?)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PutRecord {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) rkey: String,
    pub(crate) validate: Option<bool>,
    pub(crate) record: Value,
    pub(crate) swap_record: Option<Value>,
    pub(crate) swap_commit: Option<String>,
}

pub(crate) async fn put_record(State(st): State<Arc<Node>>, headers: HeaderMap, XJson(b): XJson<PutRecord>) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        // swapRecord: absent = no check; null = must not exist; a CID = must be that.
        let swap_record = match &b.swap_record {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(c)) => Some(Some(c.parse::<cid::Cid>().map_err(|e| NodeError::invalid(e.to_string()))?)),
            Some(_) => return Err(NodeError::invalid("swapRecord must be a CID or null")),
        };
        let w = RecordWrite {
            repo: b.repo,
            collection: b.collection,
            rkey: Some(b.rkey),
            record: b.record,
            validate: b.validate,
            swap_record,
            swap_commit: cid_param(&b.swap_commit)?,
        };
        Ok(Json(json!(st.put_record(&caller, ws_session(&headers), w)?)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeleteRecord {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) rkey: String,
    pub(crate) swap_record: Option<String>,
    pub(crate) swap_commit: Option<String>,
}

pub(crate) async fn delete_record(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<DeleteRecord>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        let path = (b.repo.as_str(), b.collection.as_str(), b.rkey.as_str());
        let swaps = (cid_param(&b.swap_record)?, cid_param(&b.swap_commit)?);
        // Deleting what is not there is not an error to the reference PDS: no commit.
        Ok(Json(match st.delete_record(&caller, ws_session(&headers), path, swaps.0, swaps.1)? {
            Some(commit) => json!({ "commit": commit }),
            None => json!({}),
        }))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct GetRecord {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) rkey: String,
    pub(crate) cid: Option<String>,
}

pub(crate) async fn get_record(State(st): State<Arc<Node>>, XQuery(q): XQuery<GetRecord>) -> Res {
    blocking(move || Ok(Json(json!(st.get_record(&q.repo, &q.collection, &q.rkey, cid_param(&q.cid)?)?)))).await
}

#[derive(Deserialize)]
pub(crate) struct ListRecords {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) limit: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) reverse: Option<String>,
}

pub(crate) async fn list_records(State(st): State<Arc<Node>>, XQuery(q): XQuery<ListRecords>) -> Res {
    blocking(move || {
        let limit: usize = match q.limit.as_deref() {
            None => 50,
            Some(l) => l.parse().map_err(|_| NodeError::invalid("limit must be an integer from 1 to 100"))?,
        };
        let reverse = matches!(q.reverse.as_deref(), Some("true"));
        // Newest first by default, as the reference PDS lists (record keys are TIDs).
        let page = st.list_records(&q.repo, &q.collection, limit, q.cursor.as_deref(), reverse)?;
        let mut out = json!({ "records": page.records });
        // An absent cursor is omitted, never null: clients validate `cursor` as a string.
        if let Some(c) = page.cursor {
            out["cursor"] = Value::String(c);
        }
        Ok(Json(out))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct DescribeRepo {
    repo: String,
}

pub(crate) async fn describe_repo(State(st): State<Arc<Node>>, XQuery(q): XQuery<DescribeRepo>) -> Res {
    blocking(move || {
        let account = st.readable_repo(&q.repo)?;
        let key = st.accounts.signing_key(&account.did)?;
        let collections = st.collections(&account.did)?;
        Ok(Json(json!({
            "handle": account.handle.as_str(),
            "did": account.did.as_str(),
            "didDoc": ues_sync::repo::identity::did_document(&account.did, &account.handle, &key.public(), &st.cfg.public_url),
            "collections": collections,
            "handleIsCorrect": true,
        })))
    })
    .await
}

/// Most writes one applyWrites call may carry (the reference PDS's limit).
pub(crate) const MAX_WRITES: usize = 200;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApplyWrites {
    repo: String,
    validate: Option<bool>,
    writes: Vec<Value>,
    swap_commit: Option<String>,
}

pub(crate) async fn apply_writes(State(st): State<Arc<Node>>, headers: HeaderMap, XJson(b): XJson<ApplyWrites>) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let caller = st.access(&headers)?;
        let account = st.writable(&caller, &b.repo)?;
        if b.writes.len() > MAX_WRITES {
            return Err(NodeError::invalid(format!("Too many writes. Max: {MAX_WRITES}")));
        }
        let mut writes = Vec::with_capacity(b.writes.len());
        let mut statuses = Vec::with_capacity(b.writes.len());
        for (i, w) in b.writes.iter().enumerate() {
            let ty = w.get("$type").and_then(Value::as_str).unwrap_or("");
            let field = |k: &str| w.get(k).and_then(Value::as_str).ok_or_else(|| NodeError::invalid(format!("writes[{i}].{k} is required")));
            let collection = records::nsid(field("collection")?)?;
            match ty {
                "com.atproto.repo.applyWrites#create" => {
                    caller.check_repo(collection.as_str(), Action::Create)?;
                    let rkey = st.rkey_or_new(w.get("rkey").and_then(Value::as_str))?;
                    let value = w.get("value").cloned().ok_or_else(|| NodeError::invalid(format!("writes[{i}].value is required")))?;
                    let (record, status) = st.prepare_record(&collection, rkey.as_str(), value, b.validate)?;
                    statuses.push(Some(status));
                    writes.push(Write::Create { collection, rkey, record });
                }
                "com.atproto.repo.applyWrites#update" => {
                    caller.check_repo(collection.as_str(), Action::Update)?;
                    let rkey = records::rkey(field("rkey")?)?;
                    let value = w.get("value").cloned().ok_or_else(|| NodeError::invalid(format!("writes[{i}].value is required")))?;
                    let (record, status) = st.prepare_record(&collection, rkey.as_str(), value, b.validate)?;
                    statuses.push(Some(status));
                    writes.push(Write::Update { collection, rkey, record, swap: None });
                }
                "com.atproto.repo.applyWrites#delete" => {
                    caller.check_repo(collection.as_str(), Action::Delete)?;
                    statuses.push(None);
                    writes.push(Write::Delete { collection, rkey: records::rkey(field("rkey")?)?, swap: None });
                }
                other => return Err(NodeError::invalid(format!("writes[{i}]: unknown write type {other:?}"))),
            }
        }
        let res = st.commit(ws_session(&headers), &account.did, &writes, cid_param(&b.swap_commit)?)?;
        st.firehose.notify();
        let results: Vec<Value> = res
            .ops
            .iter()
            .zip(&statuses)
            .map(|(op, status)| match (op.cid, status) {
                (Some(cid), Some(status)) => json!({
                    "$type": if op.prev.is_some() { "com.atproto.repo.applyWrites#updateResult" } else { "com.atproto.repo.applyWrites#createResult" },
                    "uri": format!("at://{}/{}", account.did, op.path),
                    "cid": cid.to_string(),
                    "validationStatus": status.as_str(),
                }),
                _ => json!({ "$type": "com.atproto.repo.applyWrites#deleteResult" }),
            })
            .collect();
        Ok(Json(json!({ "commit": { "cid": res.cid.to_string(), "rev": res.commit.rev.as_str() }, "results": results })))
    })
    .await
}

/// `importRepo`: replaces the authenticated account's repository with a CAR (the body), after
/// verifying it completely; a refused CAR changes nothing.
pub(crate) async fn import_repo(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, NodeError> {
    let claims = st.access(&headers)?;
    if claims.scope != "com.atproto.access" {
        return Err(NodeError::token("InvalidToken", "App passwords cannot import repositories"));
    }
    blocking(move || {
        let did = ues_sync::repo::syntax::Did::new(claims.sub).map_err(NodeError::internal)?;
        let own = st.accounts.signing_key(&did)?;
        // An account moving here (deactivated until it is activated) brings a repository its
        // old server signed: verified with the key its DID document names now, then signed
        // again with the account's own key here.
        let foreign = match st.accounts.get(&did)? {
            Some(a) if a.status == "deactivated" => st
                .dids
                .refresh(&did)
                .ok()
                .and_then(|doc| ues_sync::repo::identity::parse_did_document(&doc, &did).ok())
                .and_then(|id| id.signing_key)
                .filter(|k| *k != own.public()),
            _ => None,
        };
        let imported = match &foreign {
            Some(signer) => st.accounts.import_repo_signed_by(&did, &body[..], signer).and_then(|head| {
                st.accounts.set_signing_key(&did, &own)?;
                tracing::info!(%did, "repository of an account moving here imported and signed again with its key here");
                Ok(head)
            }),
            None => st.accounts.import_repo(&did, &body[..]),
        };
        match imported {
            Ok(_) => {
                st.firehose.notify();
                Ok(StatusCode::OK)
            }
            Err(ues_sync::repo::accounts::AccountError::Repo(e)) => {
                Err(NodeError::invalid(format!("Could not import repository: {e}")))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}
