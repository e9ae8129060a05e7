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

use crate::node::extract::XQuery;
use crate::node::{EXPORT_STALL, Node, NodeError, blocking};
use tokio::sync::mpsc::error::SendTimeoutError;

fn car_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/vnd.ipld.car")], Body::from(bytes)).into_response()
}

fn did_param(st: &Node, did: &str) -> Result<Did, NodeError> {
    let did = Did::new(did).map_err(|e| NodeError::invalid(e.to_string()))?;
    if st.accounts.get(&did)?.is_none() {
        return Err(NodeError::not_found("RepoNotFound", format!("Could not find repo for DID: {did}")));
    }
    Ok(did)
}

#[derive(Deserialize)]
pub(crate) struct GetRepo {
    did: String,
    since: Option<String>,
}

/// The repository as a CAR (whole, or what commits after `since` added), streamed: the export
/// runs on a blocking thread and hands 64 KiB chunks to the response through a channel of 8,
/// so memory stays flat whatever the repository's size and a slow client slows the export
/// instead of buffering it. A client that reads nothing for [`EXPORT_STALL`] loses its export
/// (the thread is freed), and at most [`MAX_EXPORTS`](crate::node::MAX_EXPORTS) run at once: the others wait for a turn
/// without holding a thread. An error after the first bytes ends the stream early (the
/// client's CAR reader sees a truncated file); it is logged.
pub(crate) async fn get_repo(State(st): State<Arc<Node>>, XQuery(q): XQuery<GetRepo>) -> Result<Response, NodeError> {
    // The turn comes first: a burst of exports must not become a burst of blocking threads.
    let turn = st.exports.clone().acquire_owned().await.map_err(NodeError::internal)?;
    let st2 = st.clone();
    let did = blocking(move || st2.served_did(&q.did)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK), rt: rt.clone() };
        match st.accounts.export_car(&did, q.since.as_deref(), out) {
            Ok(mut w) => {
                let _ = w.flush_chunk();
            }
            Err(e) => {
                tracing::warn!(%did, error = %e, "getRepo stream ended early");
                let _ = rt.block_on(tx.send_timeout(Err(std::io::Error::other(e.to_string())), EXPORT_STALL));
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car")], Body::from_stream(stream)).into_response())
}

const CHUNK: usize = 64 << 10;

/// A `Write` that sends full chunks down a bounded channel (blocking when it is full, for at
/// most [`EXPORT_STALL`]: then the client is taken to have stopped reading).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buf: Vec<u8>,
    rt: tokio::runtime::Handle,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.rt.block_on(self.tx.send_timeout(Ok(chunk.into()), EXPORT_STALL)).map_err(|e| match e {
            SendTimeoutError::Timeout(_) => {
                tracing::warn!("getRepo client read nothing for {EXPORT_STALL:?}; export abandoned");
                std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
            }
            SendTimeoutError::Closed(_) => std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"),
        })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Deserialize)]
pub(crate) struct DidOnly {
    did: String,
}

pub(crate) async fn get_latest_commit(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<DidOnly>,
) -> Result<Response, NodeError> {
    blocking(move || {
        let did = st.served_did(&q.did)?;
        let account = st.accounts.get(&did)?.ok_or_else(|| NodeError::not_found("RepoNotFound", "no such repo"))?;
        Ok(axum::Json(json!({ "cid": account.head.to_string(), "rev": account.rev })).into_response())
    })
    .await
}

/// `sync.getHead` (deprecated for `getLatestCommit`, still answered as the reference does):
/// the head commit's CID.
pub(crate) async fn get_head(State(st): State<Arc<Node>>, XQuery(q): XQuery<DidOnly>) -> Result<Response, NodeError> {
    blocking(move || {
        let did = st.served_did(&q.did)?;
        let account = st
            .accounts
            .get(&did)?
            .ok_or_else(|| NodeError::bad("HeadNotFound", format!("Could not find root for DID: {did}")))?;
        Ok(axum::Json(json!({ "root": account.head.to_string() })).into_response())
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ByCollection {
    collection: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `sync.listReposByCollection`: the accounts hosted here with records in a collection.
pub(crate) async fn list_repos_by_collection(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<ByCollection>,
) -> Result<Response, NodeError> {
    let limit = q.limit.unwrap_or(500).clamp(1, 2000);
    blocking(move || {
        let dids = st.accounts.dids_with_collection(&q.collection, q.cursor.as_deref(), limit)?;
        let mut out = json!({ "repos": dids.iter().map(|d| json!({ "did": d })).collect::<Vec<_>>() });
        if dids.len() == limit
            && let Some(last) = dids.last()
        {
            out["cursor"] = json!(last);
        }
        Ok(axum::Json(out).into_response())
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct HostName {
    hostname: String,
}

/// `sync.getHostStatus`: for this node's own host name, its event position and accounts
/// (a PDS consumes from no other host: any other name is `HostNotFound`).
pub(crate) async fn get_host_status(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<HostName>,
) -> Result<Response, NodeError> {
    blocking(move || {
        if q.hostname.to_ascii_lowercase() != st.host_name() {
            return Err(NodeError::bad(
                "HostNotFound",
                format!("{} is not a host this server consumes from", q.hostname),
            ));
        }
        let count = st.accounts.count()?;
        let seq = *st.firehose.latest();
        Ok(axum::Json(json!({ "hostname": st.host_name(), "seq": seq, "accountCount": count, "status": "active" }))
            .into_response())
    })
    .await
}

/// `sync.listHosts`: the upstream hosts this server consumes from, which for a PDS are none.
pub(crate) async fn list_hosts() -> Result<Response, NodeError> {
    Ok(axum::Json(json!({ "hosts": [] })).into_response())
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
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<GetRecord>,
) -> Result<Response, NodeError> {
    blocking(move || {
        let did = st.served_did(&q.did)?;
        let collection = Nsid::new(&q.collection).map_err(|e| NodeError::invalid(e.to_string()))?;
        let rkey = RecordKey::new(&q.rkey).map_err(|e| NodeError::invalid(e.to_string()))?;
        let repo = st.accounts.repo(&did)?;
        let path = format!("{collection}/{rkey}");
        let store = repo.store();
        let proof = covering_proof(store, repo.commit().data, [path.as_str()]).map_err(NodeError::internal)?;
        let record = repo.get_record(&collection, &rkey)?;
        let mut car = CarWriter::new(Vec::new(), &[repo.head()]).map_err(NodeError::internal)?;
        let head = repo.head();
        let mut put = |cid: &cid::Cid| -> Result<(), NodeError> {
            let bytes =
                store.get(cid).map_err(NodeError::internal)?.ok_or_else(|| NodeError::internal("missing block"))?;
            car.write_block(cid, &bytes).map_err(NodeError::internal)
        };
        put(&head)?;
        for c in &proof {
            put(c)?;
        }
        if let Some((cid, _)) = &record {
            put(cid)?;
        }
        Ok(car_response(car.finish().map_err(NodeError::internal)?))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ListRepos {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Every hosted repository with its head, in DID order.
pub(crate) async fn list_repos(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<ListRepos>,
) -> Result<Response, NodeError> {
    blocking(move || {
        let limit = q.limit.unwrap_or(500).clamp(1, 1000);
        let rows = st.accounts.list(q.cursor.as_deref(), limit)?;
        let repos: Vec<_> = rows
            .iter()
            .map(|a| {
                let mut r = json!({ "did": a.did.as_str(), "head": a.head.to_string(), "rev": a.rev, "active": a.status == "active" });
                if a.status != "active" {
                    r["status"] = json!(a.status);
                }
                r
            })
            .collect();
        let mut out = json!({ "repos": repos });
        if rows.len() == limit
            && let Some(last) = rows.last()
        {
            out["cursor"] = json!(last.did.as_str());
        }
        Ok(axum::Json(out).into_response())
    })
    .await
}

pub(crate) async fn get_repo_status(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<DidOnly>,
) -> Result<Response, NodeError> {
    blocking(move || {
        let did = did_param(&st, &q.did)?;
        let a = st.accounts.get(&did)?.ok_or_else(|| NodeError::not_found("RepoNotFound", "no such repo"))?;
        let mut out = json!({ "did": a.did.as_str(), "active": a.status == "active", "rev": a.rev });
        if a.status != "active" {
            out["status"] = json!(a.status);
        }
        Ok(axum::Json(out).into_response())
    })
    .await
}

struct GetBlocks {
    did: String,
    cids: Vec<String>,
}

/// Blocks of a repository by CID, as a CAR. Only blocks the repository holds are served.
pub(crate) async fn get_blocks(
    State(st): State<Arc<Node>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, NodeError> {
    // `cids` repeats (`?cids=a&cids=b`), which serde_urlencoded does not collect; parse by hand.
    let raw = raw.unwrap_or_default();
    let mut q = GetBlocks { did: String::new(), cids: Vec::new() };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "did" => q.did = v.into_owned(),
            "cids" => q.cids.push(v.into_owned()),
            _ => {}
        }
    }
    if q.cids.len() > 1000 {
        return Err(NodeError::invalid("at most 1000 cids"));
    }
    blocking(move || {
        let did = st.served_did(&q.did)?;
        let mut car = CarWriter::new(Vec::new(), &[]).map_err(NodeError::internal)?;
        for c in &q.cids {
            let cid: cid::Cid = c.parse().map_err(|e| NodeError::invalid(format!("bad CID {c}: {e}")))?;
            let held = st.accounts.owns_block(&did, &cid)?;
            let bytes = if held { st.accounts.blocks().get(&cid).map_err(NodeError::internal)? } else { None };
            let Some(bytes) = bytes else {
                return Err(NodeError::bad("BlockNotFound", format!("Could not find block: {c}")));
            };
            car.write_block(&cid, &bytes).map_err(NodeError::internal)?;
        }
        Ok(car_response(car.finish().map_err(NodeError::internal)?))
    })
    .await
}
