//! Live updates: an entry travels to connected peers as soon as it is written, as one small
//! message (uncompressed: a single entry does not shrink). A replica forwards only entries that
//! were new to it, never to the peer it got them from, so a write crosses each link at most
//! once per direction and floods stop by themselves.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

use prost::Message;
use ues_repo::syntax::Did;

use crate::entry::EntryId;
use crate::proto;
use crate::recon::{MAX_MESSAGE_BYTES, SyncError};
use crate::replica::{ApplyReport, Received, Replica, Signed};

/// Most entries in one live message.
pub const MAX_LIVE_ENTRIES: usize = 256;

/// Encodes entries for a live push.
pub fn encode(entries: &[Signed]) -> Vec<u8> {
    let mut batch = proto::OpBatch::default();
    for s in entries {
        batch.push(s.clone());
    }
    proto::SyncMessage { body: Some(proto::sync_message::Body::Live(proto::LiveOps { batch: Some(batch) })) }
        .encode_to_vec()
}

/// Whether a message is a live push (its first field is `live`), without decoding it, so a
/// receiver can tell pushes from session messages on one protocol.
pub fn is_live(bytes: &[u8]) -> bool {
    // Field 4 of SyncMessage, length-delimited: tag (4 << 3) | 2.
    bytes.first() == Some(&0x22)
}

/// Decodes a live push (each entry decoded once, record blocks attached).
pub fn decode(bytes: &[u8]) -> Result<Vec<Received>, SyncError> {
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
    Ok(batch.into_received())
}

/// Where a received live message should go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed<P> {
    /// What applying did.
    pub report: ApplyReport,
    /// The messages to forward (only the entries that were new here), each with the peers it
    /// goes to.
    pub forward: Vec<(Vec<u8>, Vec<P>)>,
}

/// Applies a live message from `from` and decides what to forward: to every one of `peers`
/// (this replica's connected peers) except `from`. Every peer may sync every account: see
/// [`receive_for`].
pub fn receive<P: Clone + Eq + Hash>(
    rep: &mut Replica,
    bytes: &[u8],
    from: &P,
    peers: &[P],
) -> Result<Relayed<P>, SyncError> {
    receive_for(rep, bytes, from, peers, &|_, _, _| true)
}

/// As [`receive`], where a peer may sync only the accounts `may_sync` allows it: a message
/// with any entry of an account its sender may not sync is refused whole
/// ([`SyncError::NotAuthorized`]) before anything of it is applied, and each entry is forwarded
/// only to the peers that may sync its account.
pub fn receive_for<P: Clone + Eq + Hash>(
    rep: &mut Replica,
    bytes: &[u8],
    from: &P,
    peers: &[P],
    may_sync: &dyn Fn(&Replica, &P, &Did) -> bool,
) -> Result<Relayed<P>, SyncError> {
    let entries = decode(bytes)?;
    if let Some(did) = entries.iter().filter_map(Received::did).find(|d| !may_sync(rep, from, d)) {
        return Err(SyncError::NotAuthorized(did.clone()));
    }
    let kept: Vec<(EntryId, Option<Did>, Signed)> =
        entries.iter().map(|r| (r.id, r.did().cloned(), r.signed.clone())).collect();
    let report = rep.apply_received(entries);
    let new: HashSet<&EntryId> = report.new_ids.iter().collect();
    let fresh: Vec<(Option<Did>, Signed)> =
        kept.into_iter().filter(|(id, _, _)| new.contains(id)).map(|(_, d, s)| (d, s)).collect();
    // Peers that may receive the same entries share one encoded message.
    let mut groups: BTreeMap<Vec<usize>, Vec<P>> = BTreeMap::new();
    for p in peers.iter().filter(|p| *p != from) {
        let mine: Vec<usize> = fresh
            .iter()
            .enumerate()
            .filter(|(_, (d, _))| d.as_ref().is_some_and(|d| may_sync(rep, p, d)))
            .map(|(i, _)| i)
            .collect();
        if !mine.is_empty() {
            groups.entry(mine).or_default().push(p.clone());
        }
    }
    let forward = groups
        .into_iter()
        .map(|(idx, targets)| {
            let chosen: Vec<Signed> = idx.into_iter().map(|i| fresh[i].1.clone()).collect();
            (encode(&chosen), targets)
        })
        .collect();
    Ok(Relayed { report, forward })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use ues_repo::crypto::{KeyType, Keypair};
    use ues_repo::ipld::Ipld;
    use ues_repo::syntax::{Did, Nsid, RecordKey};

    use super::*;
    use crate::hlc::Hlc;
    use crate::replica::Change;

    /// Three replicas all connected: one edit reaches the other two, each forwards it only to
    /// the peer it did not come from, and that peer, already holding it, forwards nothing.
    #[test]
    fn one_edit_crosses_each_link_without_echo() {
        let account = Keypair::generate(KeyType::K256);
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let keys = Arc::new(HashMap::from([(did.clone(), account.public())]));
        let mut reps: Vec<Replica> = (0..3u8)
            .map(|i| Replica::in_memory(keys.clone(), Hlc::new(60_000), Some(SigningKey::from_bytes(&[i + 1; 32]))))
            .collect();
        let dev = reps[0].device_id().unwrap();
        let auth = reps[0].authorize(&account, &did, dev, false).unwrap();
        reps[1].apply(vec![auth.clone()]);
        reps[2].apply(vec![auth]);
        let post = Ipld::Map(BTreeMap::from([
            ("$type".into(), Ipld::String("app.bsky.feed.post".into())),
            ("text".into(), Ipld::String("hi".into())),
        ]));
        let rkey = RecordKey::new("3kabcdefghijk").unwrap();
        let edit =
            reps[0].write(&did, Nsid::new("app.bsky.feed.post").unwrap(), rkey.clone(), Change::Put(post)).unwrap();
        let msg = encode(&[edit]);
        assert!(is_live(&msg));
        let (_, hello) = crate::recon::Session::initiate(
            &reps[0],
            crate::recon::Scope::new([did.clone()]),
            crate::recon::SyncConfig::default(),
            false,
        );
        assert!(!is_live(&hello), "a session's Hello is not a live push");
        assert!(msg.len() < 400, "a small put travels in {} bytes", msg.len());
        let counter = reps[0].write(&did, Nsid::new("dev.ues.test.counter").unwrap(), rkey, Change::Add(1)).unwrap();
        let counter = encode(&[counter]);
        assert!(counter.len() < 260, "a counter increment travels in {} bytes", counter.len());

        let mut deliveries = vec![(0usize, 1usize, msg.clone()), (0, 2, msg), (0, 1, counter.clone()), (0, 2, counter)];
        let mut hops = 0;
        while let Some((from, to, m)) = deliveries.pop() {
            hops += 1;
            assert!(hops < 20, "the flood stops");
            let peers: Vec<usize> = (0..3).filter(|p| *p != to).collect();
            let r = receive(&mut reps[to], &m, &from, &peers).unwrap();
            if r.forward.is_empty() {
                assert_eq!(r.report.duplicates, 1, "only a copy already held is not forwarded");
            }
            for (fwd, targets) in r.forward {
                assert!(!targets.contains(&from) && !targets.contains(&to));
                deliveries.extend(targets.into_iter().map(|t| (to, t, fwd.clone())));
            }
        }
        // Per edit: two first deliveries, then 1 and 2 each forward once to the other; the
        // second copy each receives is a duplicate and goes no further.
        assert_eq!(hops, 8);
        let root = reps[0].root(&did).unwrap();
        assert!(reps.iter_mut().all(|r| r.root(&did).unwrap() == root));
    }
}
