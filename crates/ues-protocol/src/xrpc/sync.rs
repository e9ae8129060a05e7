//! com.atproto.sync.*: repository export, latest commit, records with proofs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use ues_sync::repo::ipld::car::CarWriter;
use ues_sync::repo::ipld::mst::covering_proof;
use ues_sync::repo::ipld::storage::Blockstore;
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};

use super::extract::XQuery;
use super::{XrpcError, XrpcState};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, XrpcError> + Send + 'static,
) -> Result<T, XrpcError> {
    tokio::task::spawn_blocking(f).await.map_err(XrpcError::internal)?
}

fn car_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/vnd.ipld.car")], Body::from(bytes)).into_response()
}

fn did_param(st: &XrpcState, did: &str) -> Result<Did, XrpcError> {
    let did = Did::new(did).map_err(|e| XrpcError::invalid(e.to_string()))?;
    if st.accounts.get(&did)?.is_none() {
        return Err(XrpcError::bad("RepoNotFound", format!("Could not find repo for DID: {did}")));
    }
    Ok(did)
}

#[derive(Deserialize)]
pub(crate) struct GetRepo {
    did: String,
    since: Option<String>,
}

/// The repository as a CAR (whole, or what commits after `since` added).
pub(crate) async fn get_repo(
    State(st): State<Arc<XrpcState>>,
    XQuery(q): XQuery<GetRepo>,
) -> Result<Response, XrpcError> {
    blocking(move || {
        let did = did_param(&st, &q.did)?;
        let bytes = st.accounts.export_car(&did, q.since.as_deref(), Vec::new())?;
        Ok(car_response(bytes))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct DidOnly {
    did: String,
}

pub(crate) async fn get_latest_commit(
    State(st): State<Arc<XrpcState>>,
    XQuery(q): XQuery<DidOnly>,
) -> Result<Response, XrpcError> {
    blocking(move || {
        let did = did_param(&st, &q.did)?;
        let account = st.accounts.get(&did)?.ok_or_else(|| XrpcError::bad("RepoNotFound", "no such repo"))?;
        Ok(axum::Json(json!({ "cid": account.head.to_string(), "rev": account.rev })).into_response())
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct GetRecord {
    did: String,
    collection: String,
    rkey: String,
}

/// A record with the proof of its presence (or absence): the head commit, the covering proof
/// nodes, and the record block, as a CAR rooted at the commit.
pub(crate) async fn get_record(
    State(st): State<Arc<XrpcState>>,
    XQuery(q): XQuery<GetRecord>,
) -> Result<Response, XrpcError> {
    blocking(move || {
        let did = did_param(&st, &q.did)?;
        let collection = Nsid::new(&q.collection).map_err(|e| XrpcError::invalid(e.to_string()))?;
        let rkey = RecordKey::new(&q.rkey).map_err(|e| XrpcError::invalid(e.to_string()))?;
        let repo = st.accounts.repo(&did)?;
        let path = format!("{collection}/{rkey}");
        let store = repo.store();
        let proof = covering_proof(store, repo.commit().data, [path.as_str()]).map_err(XrpcError::internal)?;
        let record = repo.get_record(&collection, &rkey)?;
        let mut car = CarWriter::new(Vec::new(), &[repo.head()]).map_err(XrpcError::internal)?;
        let head = repo.head();
        let mut put = |cid: &cid::Cid| -> Result<(), XrpcError> {
            let bytes =
                store.get(cid).map_err(XrpcError::internal)?.ok_or_else(|| XrpcError::internal("missing block"))?;
            car.write_block(cid, &bytes).map_err(XrpcError::internal)
        };
        put(&head)?;
        for c in &proof {
            put(c)?;
        }
        if let Some((cid, _)) = &record {
            put(cid)?;
        }
        Ok(car_response(car.finish().map_err(XrpcError::internal)?))
    })
    .await
}
