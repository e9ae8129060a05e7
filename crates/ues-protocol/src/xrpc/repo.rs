//! com.atproto.repo.*: records.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::accounts::Account;
use ues_sync::repo::ipld::{Ipld, json as atjson};
use ues_sync::repo::lexicon::ValidationStatus;
use ues_sync::repo::repo::{CommitResult, Write};
use ues_sync::repo::syntax::{AtIdentifier, Nsid, RecordKey};

use super::extract::{XJson, XQuery};
use super::{XrpcError, XrpcState, blocking, write_blocking};

type Res = Result<Json<Value>, XrpcError>;

pub(crate) fn find_repo(st: &XrpcState, repo: &str) -> Result<Account, XrpcError> {
    let id: AtIdentifier =
        repo.parse().map_err(|e: ues_sync::repo::syntax::SyntaxError| XrpcError::invalid(e.to_string()))?;
    let found = match &id {
        AtIdentifier::Did(d) => st.accounts.get(d)?,
        AtIdentifier::Handle(h) => st.accounts.by_handle(h)?,
    };
    found.ok_or_else(|| XrpcError::bad("RepoNotFound", format!("Could not find repo: {repo}")))
}

/// A repository whose records may be read by anyone: a taken-down or suspended account's records
/// are hidden from every read, as its sync data is (`RepoTakendown`, `RepoSuspended`).
pub(crate) fn readable_repo(st: &XrpcState, repo: &str) -> Result<Account, XrpcError> {
    let account = find_repo(st, repo)?;
    match account.status.as_str() {
        "takendown" => Err(XrpcError::bad("RepoTakendown", format!("Repo has been taken down: {repo}"))),
        "suspended" => Err(XrpcError::bad("RepoSuspended", format!("Repo has been suspended: {repo}"))),
        _ => Ok(account),
    }
}

/// The account an authenticated write targets; it must be the token's own.
fn writable(st: &XrpcState, headers: &HeaderMap, repo: &str) -> Result<Account, XrpcError> {
    let claims = st.access(headers)?;
    let account = find_repo(st, repo)?;
    if account.did.as_str() != claims.sub {
        return Err(XrpcError::new(
            StatusCode::FORBIDDEN,
            "InvalidRequest",
            "Token does not grant access to this repository",
        ));
    }
    match account.status.as_str() {
        "active" => Ok(account),
        "takendown" => Err(XrpcError::bad("AccountTakedown", "Account has been taken down")),
        _ => Err(XrpcError::bad("AccountDeactivated", "Account is deactivated")),
    }
}

fn nsid(s: &str) -> Result<Nsid, XrpcError> {
    Nsid::new(s).map_err(|e| XrpcError::invalid(e.to_string()))
}

fn rkey(s: &str) -> Result<RecordKey, XrpcError> {
    RecordKey::new(s).map_err(|e| XrpcError::invalid(e.to_string()))
}

/// The record key a client chose, or a fresh TID when it chose none.
fn rkey_or_new(st: &XrpcState, chosen: Option<&str>) -> Result<RecordKey, XrpcError> {
    match chosen {
        Some(r) => rkey(r),
        None => RecordKey::new(st.tids.next().to_string()).map_err(XrpcError::internal),
    }
}

fn cid_param(s: &Option<String>) -> Result<Option<cid::Cid>, XrpcError> {
    s.as_deref().map(|c| c.parse::<cid::Cid>().map_err(|e| XrpcError::invalid(format!("bad CID {c}: {e}")))).transpose()
}

/// Converts and validates a record: `$type` set to the collection when absent, refused when it
/// names another; validated against the collection's lexicon when one is known.
fn prepare_record(
    st: &XrpcState,
    collection: &Nsid,
    rkey: &str,
    record: Value,
    validate: Option<bool>,
) -> Result<(Ipld, ValidationStatus), XrpcError> {
    let mut record = record;
    let obj = record.as_object_mut().ok_or_else(|| XrpcError::invalid("Record must be an object"))?;
    match obj.get("$type").and_then(Value::as_str) {
        None => {
            obj.insert("$type".into(), Value::String(collection.to_string()));
        }
        Some(t) if t != collection.as_str() => {
            return Err(XrpcError::invalid(format!("Invalid $type: expected {collection}, got {t}")));
        }
        Some(_) => {}
    }
    let ipld = atjson::record_from_json(&record).map_err(|e| XrpcError::invalid(format!("Invalid record: {e}")))?;
    if validate == Some(false) {
        return Ok((ipld, ValidationStatus::Unknown));
    }
    let status = st
        .lexicons
        .validate_record(collection.as_str(), rkey, &ipld)
        .map_err(|e| XrpcError::invalid(format!("Invalid {collection} record: {e}")))?;
    if status == ValidationStatus::Unknown && validate == Some(true) {
        return Err(XrpcError::invalid(format!("Lexicon not found: {collection}")));
    }
    Ok((ipld, status))
}

fn commit_json(res: &CommitResult) -> Value {
    json!({ "cid": res.cid.to_string(), "rev": res.commit.rev.as_str() })
}

/// The answer to a single-record write (createRecord, putRecord).
fn written(
    account: &Account,
    collection: &Nsid,
    rkey: &RecordKey,
    res: &CommitResult,
    status: ValidationStatus,
) -> Json<Value> {
    Json(json!({
        "uri": format!("at://{}/{collection}/{rkey}", account.did),
        "cid": res.ops[0].cid.map(|c| c.to_string()),
        "commit": commit_json(res),
        "validationStatus": status.as_str(),
    }))
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateRecord>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let account = writable(&st, &headers, &b.repo)?;
        let collection = nsid(&b.collection)?;
        let rkey = rkey_or_new(&st, b.rkey.as_deref())?;
        let (record, status) = prepare_record(&st, &collection, rkey.as_str(), b.record, b.validate)?;
        let write = Write::Create { collection: collection.clone(), rkey: rkey.clone(), record };
        let res = st.commit(&headers, &account.did, &[write], cid_param(&b.swap_commit)?)?;
        st.firehose.notify();
        Ok(written(&account, &collection, &rkey, &res, status))
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

pub(crate) async fn put_record(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<PutRecord>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let account = writable(&st, &headers, &b.repo)?;
        let collection = nsid(&b.collection)?;
        let rkey = rkey(&b.rkey)?;
        let (record, status) = prepare_record(&st, &collection, rkey.as_str(), b.record, b.validate)?;
        // swapRecord: absent = no check; null = must not exist; a CID = must be that.
        let swap = match &b.swap_record {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(c)) => Some(Some(c.parse::<cid::Cid>().map_err(|e| XrpcError::invalid(e.to_string()))?)),
            Some(_) => return Err(XrpcError::invalid("swapRecord must be a CID or null")),
        };
        let write = Write::Update { collection: collection.clone(), rkey: rkey.clone(), record, swap };
        let res = st.commit(&headers, &account.did, &[write], cid_param(&b.swap_commit)?)?;
        st.firehose.notify();
        Ok(written(&account, &collection, &rkey, &res, status))
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<DeleteRecord>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let account = writable(&st, &headers, &b.repo)?;
        let write =
            Write::Delete { collection: nsid(&b.collection)?, rkey: rkey(&b.rkey)?, swap: cid_param(&b.swap_record)? };
        let outcome = st.commit(&headers, &account.did, &[write], cid_param(&b.swap_commit)?);
        st.firehose.notify();
        match outcome {
            Ok(res) => Ok(Json(json!({ "commit": commit_json(&res) }))),
            // Deleting what is not there is not an error to the reference PDS: no commit.
            Err(ues_sync::repo::accounts::AccountError::Repo(e))
                if matches!(*e, ues_sync::repo::repo::RepoError::RecordNotFound(_)) =>
            {
                Ok(Json(json!({})))
            }
            Err(e) => Err(e.into()),
        }
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

pub(crate) async fn get_record(State(st): State<Arc<XrpcState>>, XQuery(q): XQuery<GetRecord>) -> Res {
    blocking(move || {
        let account = readable_repo(&st, &q.repo)?;
        let (collection, rk) = (nsid(&q.collection)?, rkey(&q.rkey)?);
        let repo = st.accounts.repo(&account.did)?;
        let found = repo.get_record(&collection, &rk)?;
        let wanted = cid_param(&q.cid)?;
        match found {
            Some((cid, value)) if wanted.is_none_or(|w| w == cid) => Ok(Json(json!({
                "uri": format!("at://{}/{collection}/{rk}", account.did),
                "cid": cid.to_string(),
                "value": atjson::to_json(&value),
            }))),
            _ => Err(XrpcError::bad(
                "RecordNotFound",
                format!("Could not locate record: at://{}/{collection}/{rk}", account.did),
            )),
        }
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ListRecords {
    pub(crate) repo: String,
    pub(crate) collection: String,
    pub(crate) limit: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) reverse: Option<String>,
}

pub(crate) async fn list_records(State(st): State<Arc<XrpcState>>, XQuery(q): XQuery<ListRecords>) -> Res {
    blocking(move || {
        let limit: usize = match q.limit.as_deref() {
            None => 50,
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| XrpcError::invalid("limit must be an integer from 1 to 100"))?,
        };
        let reverse = matches!(q.reverse.as_deref(), Some("true"));
        let account = readable_repo(&st, &q.repo)?;
        let collection = nsid(&q.collection)?;
        let cursor = q.cursor.as_deref().filter(|c| !c.is_empty()).map(rkey).transpose()?; // `cursor=` is no cursor
        // Newest first by default, as the reference PDS lists (record keys are TIDs).
        let rows = st.accounts.list_records(&account.did, &collection, cursor.as_ref(), limit, !reverse)?;
        let mut out = json!({ "records": super::index::records_json(&st, &rows)? });
        // An absent cursor is omitted, never null: clients validate `cursor` as a string.
        if rows.len() == limit
            && let Some(last) = rows.last()
        {
            out["cursor"] = Value::String(last.rkey.clone());
        }
        Ok(Json(out))
    })
    .await
}

/// The collections a repository has records in, in order.
pub(crate) fn collections(st: &XrpcState, did: &ues_sync::repo::syntax::Did) -> Result<Vec<String>, XrpcError> {
    Ok(st.accounts.collections(did)?)
}

#[derive(Deserialize)]
pub(crate) struct DescribeRepo {
    repo: String,
}

pub(crate) async fn describe_repo(State(st): State<Arc<XrpcState>>, XQuery(q): XQuery<DescribeRepo>) -> Res {
    blocking(move || {
        let account = readable_repo(&st, &q.repo)?;
        let key = st.accounts.signing_key(&account.did)?;
        let collections = collections(&st, &account.did)?;
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

pub(crate) async fn apply_writes(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<ApplyWrites>,
) -> Res {
    write_blocking(st.writes_in_flight.clone(), move || {
        let account = writable(&st, &headers, &b.repo)?;
        if b.writes.len() > MAX_WRITES {
            return Err(XrpcError::invalid(format!("Too many writes. Max: {MAX_WRITES}")));
        }
        let mut writes = Vec::with_capacity(b.writes.len());
        let mut statuses = Vec::with_capacity(b.writes.len());
        for (i, w) in b.writes.iter().enumerate() {
            let ty = w.get("$type").and_then(Value::as_str).unwrap_or("");
            let field = |k: &str| w.get(k).and_then(Value::as_str).ok_or_else(|| XrpcError::invalid(format!("writes[{i}].{k} is required")));
            let collection = nsid(field("collection")?)?;
            match ty {
                "com.atproto.repo.applyWrites#create" => {
                    let rkey = rkey_or_new(&st, w.get("rkey").and_then(Value::as_str))?;
                    let value = w.get("value").cloned().ok_or_else(|| XrpcError::invalid(format!("writes[{i}].value is required")))?;
                    let (record, status) = prepare_record(&st, &collection, rkey.as_str(), value, b.validate)?;
                    statuses.push(Some(status));
                    writes.push(Write::Create { collection, rkey, record });
                }
                "com.atproto.repo.applyWrites#update" => {
                    let rkey = rkey(field("rkey")?)?;
                    let value = w.get("value").cloned().ok_or_else(|| XrpcError::invalid(format!("writes[{i}].value is required")))?;
                    let (record, status) = prepare_record(&st, &collection, rkey.as_str(), value, b.validate)?;
                    statuses.push(Some(status));
                    writes.push(Write::Update { collection, rkey, record, swap: None });
                }
                "com.atproto.repo.applyWrites#delete" => {
                    statuses.push(None);
                    writes.push(Write::Delete { collection, rkey: rkey(field("rkey")?)?, swap: None });
                }
                other => return Err(XrpcError::invalid(format!("writes[{i}]: unknown write type {other:?}"))),
            }
        }
        let res = st.commit(&headers, &account.did, &writes, cid_param(&b.swap_commit)?)?;
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
        Ok(Json(json!({ "commit": commit_json(&res), "results": results })))
    })
    .await
}

/// `importRepo`: replaces the authenticated account's repository with a CAR (the body), after
/// verifying it completely; a refused CAR changes nothing.
pub(crate) async fn import_repo(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, XrpcError> {
    let claims = st.access(&headers)?;
    if claims.scope != "com.atproto.access" {
        return Err(XrpcError::bad("InvalidToken", "App passwords cannot import repositories"));
    }
    blocking(move || {
        let did = ues_sync::repo::syntax::Did::new(claims.sub).map_err(XrpcError::internal)?;
        match st.accounts.import_repo(&did, &body[..]) {
            Ok(_) => {
                st.firehose.notify();
                Ok(StatusCode::OK)
            }
            Err(ues_sync::repo::accounts::AccountError::Repo(e)) => {
                Err(XrpcError::invalid(format!("Could not import repository: {e}")))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}
