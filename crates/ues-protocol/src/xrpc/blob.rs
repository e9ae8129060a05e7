//! Blobs over XRPC: uploadBlob (raw body, streamed into chunked storage), sync.getBlob,
//! sync.listBlobs, repo.listMissingBlobs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::syntax::Did;

use crate::node::blobs::{blob_error, serve_blob, upload};
use crate::node::extract::XQuery;
use crate::node::{Node, NodeError, blocking};

pub(crate) async fn upload_blob(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, NodeError> {
    let blob = upload(st, &headers, req.into_body()).await?;
    Ok(axum::Json(json!({ "blob": ues_sync::repo::ipld::json::to_json(&blob.to_ipld()) })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct GetBlob {
    did: String,
    cid: String,
}

/// `sync.getBlob`: the blob streamed a piece at a time (see [`blob_body`]); one byte range
/// when the request asks for it (`Range`, 206), as media players do.
pub(crate) async fn get_blob(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<GetBlob>,
) -> Result<Response, NodeError> {
    blocking(move || {
        let did = st.served_did(&q.did)?;
        let cid: cid::Cid = q.cid.parse().map_err(|e| NodeError::invalid(format!("bad CID: {e}")))?;
        let Some((mime, reader)) = st.blobs.open(&did, &cid).map_err(blob_error)? else {
            return Err(NodeError::not_found("BlobNotFound", "Blob not found"));
        };
        let size = reader.size();
        drop(reader);
        Ok(serve_blob(st.clone(), did, cid, &mime, size, &headers, []))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ListBlobs {
    did: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) async fn list_blobs(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<ListBlobs>,
) -> Result<axum::Json<Value>, NodeError> {
    let did = st.served_did(&q.did)?;
    let limit = q.limit.unwrap_or(500).clamp(1, 1000);
    let cids = st.blobs.list(&did, q.cursor.as_deref(), limit).map_err(blob_error)?;
    let mut out = json!({ "cids": cids });
    if cids.len() == limit
        && let Some(last) = cids.last()
    {
        out["cursor"] = Value::String(last.clone());
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
pub(crate) struct ListMissing {
    limit: Option<usize>,
}

pub(crate) async fn list_missing_blobs(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ListMissing>,
) -> Result<axum::Json<Value>, NodeError> {
    let claims = st.access(&headers)?;
    let did = Did::new(claims.sub).map_err(NodeError::internal)?;
    let missing = st.blobs.missing(&did, q.limit.unwrap_or(500).clamp(1, 1000)).map_err(blob_error)?;
    let blobs: Vec<Value> = missing
        .into_iter()
        .map(|(cid, path)| json!({ "cid": cid, "recordUri": format!("at://{did}/{path}") }))
        .collect();
    Ok(axum::Json(json!({ "blobs": blobs })))
}
