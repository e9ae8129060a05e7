//! Blobs over XRPC: uploadBlob (raw body, streamed into chunked storage), sync.getBlob,
//! sync.listBlobs, repo.listMissingBlobs.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};
use ues_sync::repo::blobs::BlobError;
use ues_sync::repo::syntax::Did;

use super::extract::XQuery;
use super::{XrpcError, XrpcState};

pub(crate) fn blob_error(e: BlobError) -> XrpcError {
    match e {
        BlobError::TooLarge { limit } => {
            XrpcError::new(StatusCode::PAYLOAD_TOO_LARGE, "BlobTooLarge", format!("Blob is larger than {limit} bytes"))
        }
        BlobError::MimeType(m) => XrpcError::invalid(format!("MIME type not accepted: {m}")),
        BlobError::QuotaExceeded { quota } => XrpcError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "QuotaExceeded",
            format!("The account's blobs would exceed its quota of {quota} bytes"),
        ),
        other => XrpcError::internal(other),
    }
}

/// `uploadBlob`: the raw body, MIME type from `Content-Type`, streamed (never whole in memory).
pub(crate) async fn upload_blob(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, XrpcError> {
    let blob = upload(st, &headers, req.into_body()).await?;
    Ok(axum::Json(json!({ "blob": ues_sync::repo::ipld::json::to_json(&blob.to_ipld()) })).into_response())
}

/// Stores a request body as a blob of the caller's account (the session in `headers`); the
/// MIME type is `Content-Type`'s. Shared by XRPC's uploadBlob and REST's `POST /api/v1/blobs`.
pub(crate) async fn upload(
    st: Arc<XrpcState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<ues_sync::repo::ipld::json::BlobRef, XrpcError> {
    let claims = st.access(headers)?;
    let did = Did::new(claims.sub).map_err(XrpcError::internal)?;
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    let blob = tokio::task::spawn_blocking(move || {
        let mut sync = SyncIoBridge::new(reader);
        st.blobs.upload(&did, &mime, &mut sync)
    })
    .await
    .map_err(XrpcError::internal)?;
    match blob {
        Ok(b) => Ok(b),
        // The body limit cuts the stream: report it as the size limit it is.
        Err(BlobError::Storage(ues_sync::repo::ipld::storage::Error::Io(e)))
            if e.to_string().contains("length limit") =>
        {
            Err(XrpcError::new(StatusCode::PAYLOAD_TOO_LARGE, "BlobTooLarge", "Blob is larger than the limit"))
        }
        Err(e) => Err(blob_error(e)),
    }
}

#[derive(Deserialize)]
pub(crate) struct GetBlob {
    did: String,
    cid: String,
}

pub(crate) async fn get_blob(
    State(st): State<Arc<XrpcState>>,
    XQuery(q): XQuery<GetBlob>,
) -> Result<Response, XrpcError> {
    tokio::task::spawn_blocking(move || {
        let did = super::sync::served_did(&st, &q.did)?;
        let cid: cid::Cid = q.cid.parse().map_err(|e| XrpcError::invalid(format!("bad CID: {e}")))?;
        let Some((mime, mut reader)) = st.blobs.open(&did, &cid).map_err(blob_error)? else {
            return Err(XrpcError::bad("BlobNotFound", "Blob not found"));
        };
        let mut bytes = Vec::with_capacity(reader.size() as usize);
        reader.read_to_end(&mut bytes).map_err(XrpcError::internal)?;
        Ok((
            [
                (header::CONTENT_TYPE, mime),
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox".to_string()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            Body::from(bytes),
        )
            .into_response())
    })
    .await
    .map_err(XrpcError::internal)?
}

#[derive(Deserialize)]
pub(crate) struct ListBlobs {
    did: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) async fn list_blobs(
    State(st): State<Arc<XrpcState>>,
    XQuery(q): XQuery<ListBlobs>,
) -> Result<axum::Json<Value>, XrpcError> {
    let did = super::sync::served_did(&st, &q.did)?;
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ListMissing>,
) -> Result<axum::Json<Value>, XrpcError> {
    let claims = st.access(&headers)?;
    let did = Did::new(claims.sub).map_err(XrpcError::internal)?;
    let missing = st.blobs.missing(&did, q.limit.unwrap_or(500).clamp(1, 1000)).map_err(blob_error)?;
    let blobs: Vec<Value> = missing
        .into_iter()
        .map(|(cid, path)| json!({ "cid": cid, "recordUri": format!("at://{did}/{path}") }))
        .collect();
    Ok(axum::Json(json!({ "blobs": blobs })))
}
