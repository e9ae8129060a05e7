//! UES's own queries over the collection indexer (`dev.ues.repo.*`, lexicons in `lexicons/dev`):
//! declared secondary indexes, full-text search, backlinks, and records by time. They read
//! public repository data, so like `com.atproto.repo.listRecords` they need no session.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::accounts::{IndexedRecord, TimeCursor};
use ues_sync::repo::lexicon::IndexValue;
use ues_sync::repo::syntax::Datetime;

use crate::node::extract::XQuery;
use crate::node::{Node, NodeError, blocking};

type Res = Result<Json<Value>, NodeError>;

/// Index rows as `{uri, cid, value}` objects.
fn records_json(st: &Node, rows: &[IndexedRecord]) -> Result<Vec<Value>, NodeError> {
    Ok(st.record_views(rows)?.into_iter().map(|r| json!(r)).collect())
}

fn page(records: Vec<Value>, cursor: Option<String>) -> Json<Value> {
    let mut out = json!({ "records": records });
    if let Some(c) = cursor {
        out["cursor"] = Value::String(c);
    }
    Json(out)
}

#[derive(Deserialize)]
pub(crate) struct QueryIndex {
    collection: String,
    index: String,
    value: String,
    #[serde(rename = "valueType")]
    value_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `dev.ues.repo.queryIndex`: records whose declared index holds a value (likes of a post,
/// followers of an account, replies in a thread), across every account on the node.
pub(crate) async fn query_index(State(st): State<Arc<Node>>, XQuery(q): XQuery<QueryIndex>) -> Res {
    blocking(move || {
        let declared = st.lexicons.indexes().get(&q.collection).is_some_and(|s| s.iter().any(|i| i.name == q.index));
        if !declared {
            return Err(NodeError::invalid(format!("{} declares no index {:?}", q.collection, q.index)));
        }
        let value = match q.value_type.as_deref() {
            Some("integer") => {
                IndexValue::Integer(q.value.parse().map_err(|_| NodeError::invalid("Params/value must be an integer"))?)
            }
            _ => IndexValue::Text(q.value.clone()),
        };
        let cursor = match q.cursor.as_deref() {
            None => None,
            Some(c) => Some(c.split_once('/').ok_or_else(|| NodeError::invalid("malformed cursor"))?),
        };
        let limit = q.limit.unwrap_or(50);
        let rows = st.accounts.query_index(&q.collection, &q.index, &value, cursor, limit)?;
        let next = (rows.len() == limit).then(|| rows.last().map(|r| format!("{}/{}", r.did, r.rkey))).flatten();
        Ok(page(records_json(&st, &rows)?, next))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct Search {
    pub(crate) q: String,
    pub(crate) limit: Option<usize>,
}

/// `dev.ues.repo.searchRecords`: full-text search over every record's text, best match first.
pub(crate) async fn search_records(State(st): State<Arc<Node>>, XQuery(q): XQuery<Search>) -> Res {
    blocking(move || {
        let found = st.search_records(&q.q, q.limit.unwrap_or(25))?;
        Ok(page(found.into_iter().map(|r| json!(r)).collect(), None))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct Backlinks {
    target: String,
    limit: Option<usize>,
}

/// `dev.ues.repo.listBacklinks`: records that reference an AT-URI or a DID.
pub(crate) async fn list_backlinks(State(st): State<Arc<Node>>, XQuery(q): XQuery<Backlinks>) -> Res {
    blocking(move || {
        let rows = st.accounts.backlinks(&q.target, q.limit.unwrap_or(50))?;
        Ok(page(records_json(&st, &rows)?, None))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ByTime {
    repo: Option<String>,
    collection: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn datetime_ms(s: Option<&str>, default: i64) -> Result<i64, NodeError> {
    let Some(s) = s else { return Ok(default) };
    let dt = Datetime::new(s).map_err(|e| NodeError::invalid(e.to_string()))?;
    dt.unix_millis().ok_or_else(|| NodeError::invalid(format!("{s} is out of range")))
}

/// `dev.ues.repo.listRecordsByTime`: records newest first by when the node indexed them, of one
/// account and/or collection, within a time range.
pub(crate) async fn list_records_by_time(State(st): State<Arc<Node>>, XQuery(q): XQuery<ByTime>) -> Res {
    blocking(move || {
        let did = match q.repo.as_deref() {
            Some(r) => Some(st.readable_repo(r)?.did.to_string()),
            None => None,
        };
        let range = (datetime_ms(q.since.as_deref(), 0)?, datetime_ms(q.until.as_deref(), i64::MAX)?);
        let cursor: Option<TimeCursor> = match q.cursor.as_deref() {
            None => None,
            Some(c) => Some(c.parse().map_err(|()| NodeError::invalid("malformed cursor"))?),
        };
        let limit = q.limit.unwrap_or(50);
        let rows =
            st.accounts.records_by_time(did.as_deref(), q.collection.as_deref(), range, cursor.as_ref(), limit)?;
        let next = (rows.len() == limit).then(|| rows.last().map(|(_, c)| c.to_string())).flatten();
        let recs: Vec<IndexedRecord> = rows.into_iter().map(|(r, _)| r).collect();
        Ok(page(records_json(&st, &recs)?, next))
    })
    .await
}
