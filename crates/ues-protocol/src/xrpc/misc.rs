//! Per-account state served locally: `app.bsky.actor.getPreferences` / `putPreferences`, and
//! `com.atproto.moderation.createReport` (stored for the node's admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use ues_sync::repo::ipld::storage::Migration;
use ues_sync::repo::ipld::storage::rusqlite::{OptionalExtension, params};

use crate::node::extract::XJson;
use crate::node::{Node, NodeError, blocking};

/// Tables of this module.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    id: "protocol/0003_preferences_reports",
    sql: "CREATE TABLE preferences (did TEXT PRIMARY KEY, prefs TEXT NOT NULL);
          CREATE TABLE report (
              id INTEGER PRIMARY KEY AUTOINCREMENT,
              reported_by TEXT NOT NULL,
              reason_type TEXT NOT NULL,
              reason TEXT,
              subject TEXT NOT NULL,
              created_at TEXT NOT NULL
          );",
}];

/// Preferences larger than this are refused (the app stores a few KiB).
const MAX_PREFS_BYTES: usize = 256 * 1024;

pub(crate) async fn get_preferences(State(st): State<Arc<Node>>, headers: HeaderMap) -> Result<Json<Value>, NodeError> {
    let claims = st.access(&headers)?;
    blocking(move || {
        let stored: Option<String> = st
            .accounts
            .db()
            .read(|c| {
                c.query_row("SELECT prefs FROM preferences WHERE did = ?1", [&claims.sub], |r| r.get(0)).optional()
            })
            .map_err(NodeError::internal)?;
        let prefs: Value = stored.map_or(Ok(json!([])), |s| serde_json::from_str(&s)).map_err(NodeError::internal)?;
        Ok(Json(json!({ "preferences": prefs })))
    })
    .await
}

pub(crate) async fn put_preferences(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(body): XJson<Value>,
) -> Result<StatusCode, NodeError> {
    let claims = st.access(&headers)?;
    let prefs = body
        .get("preferences")
        .and_then(Value::as_array)
        .ok_or_else(|| NodeError::invalid("preferences must be an array"))?;
    if prefs
        .iter()
        .any(|p| p.get("$type").and_then(Value::as_str).is_none_or(|t| !t.starts_with("app.bsky.actor.defs#")))
    {
        return Err(NodeError::invalid("Some preferences are not in the app.bsky.actor namespace"));
    }
    let text = Value::Array(prefs.clone()).to_string();
    if text.len() > MAX_PREFS_BYTES {
        return Err(NodeError::invalid("Preferences too large"));
    }
    blocking(move || {
        st.accounts
            .db()
            .write(|tx| {
                tx.execute(
                    "INSERT INTO preferences (did, prefs) VALUES (?1, ?2) ON CONFLICT (did) DO UPDATE SET prefs = excluded.prefs",
                    params![claims.sub, text],
                )?;
                Ok::<_, ues_sync::repo::ipld::storage::Error>(())
            })
            .map_err(NodeError::internal)?;
        Ok(StatusCode::OK)
    })
    .await
}

/// A moderation report: sent on to the report service (`[xrpc] report_service_url`, or the
/// one `atproto-proxy` names) when there is one, else kept here for the operator.
pub(crate) async fn create_report(
    State(st): State<Arc<Node>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    XJson(body): XJson<Value>,
) -> Result<axum::response::Response, NodeError> {
    let nsid = "com.atproto.moderation.createReport";
    let found = {
        let (st, headers) = (st.clone(), headers.clone());
        blocking(move || super::proxy::target(&st, nsid, &headers)).await?
    };
    if let Some(target) = found {
        let bytes = axum::body::Bytes::from(serde_json::to_vec(&body).map_err(NodeError::internal)?);
        return super::proxy::forward(st, target, nsid, axum::http::Method::POST, &uri, &headers, bytes).await;
    }
    keep_report(st, headers, body).await.map(axum::response::IntoResponse::into_response)
}

async fn keep_report(st: Arc<Node>, headers: HeaderMap, body: Value) -> Result<Json<Value>, NodeError> {
    let claims = st.access(&headers)?;
    let reason_type = body
        .get("reasonType")
        .and_then(Value::as_str)
        .ok_or_else(|| NodeError::invalid("reasonType is required"))?
        .to_string();
    let subject =
        body.get("subject").filter(|s| s.is_object()).ok_or_else(|| NodeError::invalid("subject is required"))?.clone();
    let reason = body.get("reason").and_then(Value::as_str).map(str::to_string);
    if reason.as_ref().is_some_and(|r| r.len() > 20_000) {
        return Err(NodeError::invalid("reason too long"));
    }
    blocking(move || {
        let created_at = crate::node::firehose_time();
        let id = st
            .accounts
            .db()
            .write(|tx| {
                tx.execute(
                    "INSERT INTO report (reported_by, reason_type, reason, subject, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![claims.sub, reason_type, reason, subject.to_string(), created_at],
                )?;
                Ok::<_, ues_sync::repo::ipld::storage::Error>(tx.last_insert_rowid())
            })
            .map_err(NodeError::internal)?;
        tracing::info!(id, by = %claims.sub, reason_type = %reason_type, "moderation report stored");
        let mut out = json!({ "id": id, "reasonType": reason_type, "subject": subject, "reportedBy": claims.sub, "createdAt": created_at });
        if let Some(r) = reason {
            out["reason"] = Value::String(r);
        }
        Ok(Json(out))
    })
    .await
}
