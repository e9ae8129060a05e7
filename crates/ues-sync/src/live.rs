//! Live updates: an entry travels to connected peers as soon as it is written, as one small
//! message (uncompressed: a single entry does not shrink). A replica forwards only entries that
//! were new to it, never to the peer it got them from, so a write crosses each link at most
//! once per direction and floods stop by themselves.

use std::collections::HashMap;
use std::hash::Hash;

use prost::Message;

use crate::entry::{Entry, OpKind};
use crate::proto;
use crate::recon::{MAX_MESSAGE_BYTES, SyncError};
use crate::replica::{ApplyReport, Replica, Signed};

/// Most entries in one live message.
pub const MAX_LIVE_ENTRIES: usize = 256;

/// Encodes entries for a live push.
pub fn encode(entries: &[Signed]) -> Vec<u8> {
    let mut batch = proto::OpBatch::default();
    for s in entries {
        batch.entries.push(s.bytes.clone());
        if let Some((cid, data)) = &s.block {
            batch.blocks.push(proto::Block { cid: cid.to_bytes(), data: data.clone() });
        }
    }
    proto::SyncMessage { body: Some(proto::sync_message::Body::Live(proto::LiveOps { batch: Some(batch) })) }
        .encode_to_vec()
}

/// Decodes a live push.
pub fn decode(bytes: &[u8]) -> Result<Vec<Signed>, SyncError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(SyncError::Protocol("live message too large".into()));
    }
    let msg = proto::SyncMessage::decode(bytes).map_err(|e| SyncError::Protocol(e.to_string()))?;
    let Some(proto::sync_message::Body::Live(live)) = msg.body else {
        return Err(SyncError::Protocol("expected live entries".into()));
    };
    let batch = live.batch.unwrap_or_default();
    if batch.entries.len() > MAX_LIVE_ENTRIES {
        return Err(SyncError::Protocol("too many live entries".into()));
    }
    let mut blocks: HashMap<Vec<u8>, Vec<u8>> = batch.blocks.into_iter().map(|b| (b.cid, b.data)).collect();
    Ok(batch
        .entries
        .into_iter()
        .map(|bytes| {
            let block = match Entry::decode(&bytes) {
                Ok(Entry::Op(op)) => match op.kind {
                    OpKind::Put(cid) => blocks.remove(&cid.to_bytes()).map(|d| (cid, d)),
                    _ => None,
                },
                _ => None,
            };
            Signed { bytes, block }
        })
        .collect())
}

/// Where a received live message should go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed<P> {
    /// What applying did.
    pub report: ApplyReport,
    /// The message to forward (only the entries that were new here), and to whom.
    pub forward: Option<(Vec<u8>, Vec<P>)>,
}

/// Applies a live message from `from` and decides what to forward to the other `peers`.
pub fn receive<P: Clone + Eq + Hash>(
    rep: &mut Replica,
    bytes: &[u8],
    from: &P,
    peers: &[P],
) -> Result<Relayed<P>, SyncError> {
    let entries = decode(bytes)?;
    let ids: Vec<_> = entries.iter().map(|s| crate::entry::entry_id(&s.bytes)).collect();
    let report = rep.apply(entries.clone());
    let fresh: Vec<Signed> =
        entries.into_iter().zip(ids).filter(|(_, id)| report.new_ids.contains(id)).map(|(s, _)| s).collect();
    let targets: Vec<P> = peers.iter().filter(|p| *p != from).cloned().collect();
    let forward = (!fresh.is_empty() && !targets.is_empty()).then(|| (encode(&fresh), targets));
    Ok(Relayed { report, forward })
}
