//! Blobs travel with a replicated account, over `/ues/blob/1`.
//!
//! Records reach a device through the replica; the blobs they reference follow them. Every
//! second the node looks for blobs its replicated accounts' records name and it does not hold
//! ([`BlobStore::missing`](ues_sync::repo::blobs::BlobStore::missing)) and copies them from a
//! connected peer that is an authorized device of the account, one piece at a time:
//!
//! - **Pulled, never pushed**: only what is missing is asked for, so nothing already held is
//!   sent again; content held for another account is taken without its bytes travelling.
//! - **Verified**: the copy becomes a blob only when the sha2-256 of all its bytes is the CID
//!   the record names ([`BlobStore::finish_copy`](ues_sync::repo::blobs::BlobStore::finish_copy));
//!   a device that sends other bytes, or sizes that disagree, is banned.
//! - **Resumable**: the storage chunks a copy has written are listed in the key-value store as
//!   they complete; a copy cut off (the sender killed, the connection lost, this node
//!   restarted) goes on from them, from the same device or another.
//! - **Bounded**: at most [`MAX_COPIES`] copies at once, one piece ([`PIECE`] bytes) each in
//!   flight, paced to `[p2p] blob_bytes_per_sec`; the account's blob quota and the node's size
//!   limit bound what a copy may hold. Serving is bounded by the per-peer request rate.
//!
//! Both directions work alike: every device that replicates the account copies from the
//! others what its records name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};
use serde_json::json;
use ues_sync::blobcopy::{Answer, MAX_PIECE, PieceRequest};
use ues_sync::repo::blobs::BlobError;
use ues_sync::repo::ipld::storage::{BlobUpload, CHUNK_SIZE, Cid};
use ues_sync::repo::syntax::Did;

use super::{Task, blocking};
use crate::node::peers::BlobCopy;

/// Bytes of blob per piece: two storage chunks, well inside a frame.
pub const PIECE: usize = 2 * CHUNK_SIZE;
const _: () = assert!(PIECE <= MAX_PIECE);
/// Blobs copied at once.
pub const MAX_COPIES: usize = 2;
/// How often missing blobs are looked for.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait before a failed copy is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failed copies remembered at once.
const MAX_BACKOFF_ENTRIES: usize = 10_000;
/// Missing blobs looked at per account and round.
const SCAN: usize = 256;
/// Key-value prefix of the chunks a copy has written (`p2p/blobcopy/<did> <cid>`).
const PROGRESS: &str = "p2p/blobcopy/";

/// One blob being copied.
struct Copy {
    did: Did,
    cid: Cid,
    peer: PeerId,
    /// `None`: the content is here already; only its MIME type is asked for.
    upload: Option<BlobUpload>,
    size: Option<u64>,
    /// Chunks listed in the key-value store.
    saved: usize,
}

impl Copy {
    fn offset(&self) -> u64 {
        self.upload.as_ref().map_or(0, BlobUpload::size)
    }

    fn status(&self) -> BlobCopy {
        BlobCopy {
            did: self.did.to_string(),
            cid: self.cid.to_string(),
            received: self.offset(),
            size: self.size,
            peer: self.peer.to_string(),
        }
    }
}

/// The swarm task's blob copies, and its count of the pieces peers ask of it.
#[derive(Default)]
pub(super) struct Copies {
    inflight: HashMap<OutboundRequestId, Copy>,
    /// Copies whose next piece waits for the pace (or for the next round).
    ready: Vec<Copy>,
    backoff: HashMap<(Did, Cid), (Instant, u32)>,
    /// When the next piece may be asked for.
    pace: Option<Instant>,
    last_round: Option<Instant>,
    swept: bool,
    /// Piece requests per peer in the current second.
    served: HashMap<PeerId, (Instant, u32)>,
}

fn progress_key(did: &Did, cid: &Cid) -> Vec<u8> {
    format!("{PROGRESS}{did} {cid}").into_bytes()
}

fn encode_chunks(chunks: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 37);
    for c in chunks {
        let b = c.to_bytes();
        out.push(b.len() as u8);
        out.extend_from_slice(&b);
    }
    out
}

fn decode_chunks(mut b: &[u8]) -> Option<Vec<Cid>> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = b.split_first() {
        out.push(Cid::try_from(rest.get(..n as usize)?).ok()?);
        b = &rest[n as usize..];
    }
    Some(out)
}

impl Task {
    /// Every flush: a round of scheduling once a second, and the pieces whose pace has come.
    pub(super) fn copy_blobs(&mut self) {
        if self.copies.last_round.is_none_or(|t| t.elapsed() >= SCHEDULE_EVERY) {
            self.copies.last_round = Some(Instant::now());
            if !self.copies.swept {
                self.copies.swept = true;
                blocking(|| self.sweep_copies());
            }
            self.schedule_copies();
        }
        self.pump_copies();
    }

    /// Copies cut off in an earlier run whose blob is no longer missing release their chunks.
    fn sweep_copies(&self) {
        let Ok(rows) = self.st.kv.scan_prefix(PROGRESS.as_bytes(), 10_000) else { return };
        for (k, v) in rows {
            let key = String::from_utf8_lossy(&k[PROGRESS.len()..]).into_owned();
            let Some((did, cid)) = key.split_once(' ') else { continue };
            let (Ok(did), Ok(cid)) = (Did::new(did), cid.parse::<Cid>()) else { continue };
            let wanted = self.rep.is_tracked(&did)
                && self.st.blobs.missing(&did, usize::MAX).is_ok_and(|m| m.iter().any(|(c, _)| *c == cid.to_string()));
            if !wanted {
                if let Some(chunks) = decode_chunks(&v) {
                    let _ = self.st.blobs.drop_copy(&chunks);
                }
                let _ = self.st.kv.delete(&k);
                tracing::info!(%did, %cid, "a cut-off blob copy no longer needed was released");
            }
        }
    }

    /// Starts copies of missing blobs, from connected devices of their accounts.
    fn schedule_copies(&mut self) {
        let mut pending = BTreeMap::new();
        let mut busy: HashSet<(Did, Cid)> =
            self.copies.inflight.values().chain(&self.copies.ready).map(|c| (c.did.clone(), c.cid)).collect();
        let now = Instant::now();
        for did in self.rep.tracked() {
            let n = blocking(|| self.st.blobs.missing_count(&did)).unwrap_or(0);
            pending.insert(did.to_string(), n);
            if n == 0 || busy.len() >= MAX_COPIES {
                continue;
            }
            let peers: Vec<PeerId> = self
                .swarm
                .connected_peers()
                .copied()
                .filter(|p| self.allowed(p) && self.rep.may_sync(p, &did))
                .collect();
            if peers.is_empty() {
                continue;
            }
            let missing = blocking(|| self.st.blobs.missing(&did, SCAN)).unwrap_or_default();
            for (cid, _) in missing {
                if busy.len() >= MAX_COPIES {
                    break;
                }
                let Ok(cid) = cid.parse::<Cid>() else { continue };
                let key = (did.clone(), cid);
                let tries = match self.copies.backoff.get(&key) {
                    Some((until, _)) if *until > now => continue,
                    Some((_, n)) => *n,
                    None => 0,
                };
                if busy.contains(&key) {
                    continue;
                }
                // Each retry asks the next device.
                let peer = peers[tries as usize % peers.len()];
                if let Some(copy) = blocking(|| self.begin_copy(&did, cid, peer)) {
                    busy.insert(key);
                    self.copies.ready.push(copy);
                }
            }
        }
        let copying = self.copies.inflight.values().chain(&self.copies.ready).map(Copy::status).collect();
        let mut s = self.rep.status.lock();
        s.blobs.pending = pending;
        s.blobs.copying = copying;
    }

    fn begin_copy(&mut self, did: &Did, cid: Cid, peer: PeerId) -> Option<Copy> {
        let st = self.st.clone();
        let blobs = &st.blobs;
        let held = match blobs.holds_content(&cid) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%did, %cid, error = %e, "blob store unreadable");
                return None;
            }
        };
        if held {
            return Some(Copy { did: did.clone(), cid, peer, upload: None, size: None, saved: 0 });
        }
        let key = progress_key(did, &cid);
        let chunks = self.st.kv.get(&key).ok().flatten().and_then(|v| decode_chunks(&v)).unwrap_or_default();
        match blobs.begin_copy(did, &chunks) {
            Ok(up) => {
                let saved = up.chunks().len();
                if saved != chunks.len() {
                    let _ = self.st.kv.delete(&key);
                }
                if saved > 0 {
                    tracing::info!(%did, %cid, %peer, from = up.size(), "blob copy resumed");
                }
                Some(Copy { did: did.clone(), cid, peer, upload: Some(up), size: None, saved })
            }
            Err(e) => {
                tracing::warn!(%did, %cid, error = %e, "blob not copied");
                self.back_off(did, cid);
                None
            }
        }
    }

    /// Asks for the next piece of every ready copy, as the pace allows.
    fn pump_copies(&mut self) {
        let now = Instant::now();
        while self.copies.pace.is_none_or(|t| t <= now) {
            let Some(copy) = self.copies.ready.pop() else { break };
            if !self.swarm.is_connected(&copy.peer) || !self.rep.may_sync(&copy.peer, &copy.did) {
                self.give_up(copy, "the device is gone");
                continue;
            }
            let len = if copy.upload.is_some() { PIECE as u32 } else { 0 };
            let req = PieceRequest { did: copy.did.clone(), cid: copy.cid, offset: copy.offset(), len };
            let id = self.swarm.behaviour_mut().blob.send_request(&copy.peer, req.encode());
            self.copies.inflight.insert(id, copy);
        }
    }

    fn back_off(&mut self, did: &Did, cid: Cid) {
        let b = &mut self.copies.backoff;
        if b.len() >= MAX_BACKOFF_ENTRIES {
            let now = Instant::now();
            b.retain(|_, (until, _)| *until > now);
            if b.len() >= MAX_BACKOFF_ENTRIES {
                b.clear();
            }
        }
        let e = b.entry((did.clone(), cid)).or_insert((Instant::now(), 0));
        e.1 = e.1.saturating_add(1);
        e.0 = Instant::now() + Duration::from_secs(1 << e.1.min(6)).min(MAX_BACKOFF);
    }

    /// Stops a copy for now: the chunks it wrote stay listed, so the next try goes on from them.
    fn give_up(&mut self, copy: Copy, why: &str) {
        tracing::info!(did = %copy.did, cid = %copy.cid, peer = %copy.peer, held = copy.offset(), reason = why, "blob copy paused");
        self.ended(&copy, false);
        self.back_off(&copy.did, copy.cid);
    }

    /// The status after a copy ended (the next round recounts everything).
    fn ended(&self, copy: &Copy, done: bool) {
        let cid = copy.cid.to_string();
        let mut s = self.rep.status.lock();
        s.blobs.copying.retain(|c| c.cid != cid || c.did != copy.did.as_str());
        if !done {
            s.blobs.failed += 1;
        } else if let Some(n) = s.blobs.pending.get_mut(copy.did.as_str()) {
            *n = n.saturating_sub(1);
        }
    }

    /// Stops a copy whose sender broke the protocol or sent other bytes, and bans the sender.
    fn refuse_copy(&mut self, copy: Copy, why: &str) {
        let peer = copy.peer;
        self.give_up(copy, why);
        self.ban(peer, &format!("blob copy: {why}"));
    }

    pub(super) fn on_blob(&mut self, e: request_response::Event<Vec<u8>, Vec<u8>>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    if !self.admit_piece(peer) || !self.allowed(&peer) {
                        return;
                    }
                    let answer = blocking(|| self.serve_piece(peer, &request));
                    if let Answer::Refused(why) = &answer {
                        tracing::info!(%peer, reason = %why, "blob piece refused");
                        if self.rep.peer.lock().refused(peer, why) {
                            self.rep.status.lock().bans += 1;
                            let _ = self.swarm.disconnect_peer_id(peer);
                            return;
                        }
                    } else {
                        self.rep.status.lock().blobs.pieces_served += 1;
                    }
                    let _ = self.swarm.behaviour_mut().blob.send_response(channel, answer.encode());
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(copy) = self.copies.inflight.remove(&request_id) {
                        blocking(|| self.on_piece(copy, &response));
                        self.pump_copies();
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(copy) = self.copies.inflight.remove(&request_id) {
                    self.give_up(copy, &error.to_string());
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound blob request failed");
            }
            _ => {}
        }
    }

    /// Counts a piece request from `peer` (apart from sync requests: a copy asks for many);
    /// past `[p2p] max_requests_per_sec` the peer is banned as a flood.
    fn admit_piece(&mut self, peer: PeerId) -> bool {
        if self.copies.served.len() >= 4_096 {
            let now = Instant::now();
            self.copies.served.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        if super::over_rate(&mut self.copies.served, peer, self.cfg.max_requests_per_sec) {
            self.ban(peer, "blob request flood");
            return false;
        }
        !self.rep.peer.lock().is_banned(&peer)
    }

    /// The answer to a piece request: only for an authorized device of the account, only
    /// blobs the account holds here.
    fn serve_piece(&self, peer: PeerId, request: &[u8]) -> Answer {
        let req = match PieceRequest::decode(request) {
            Ok(r) => r,
            Err(e) => return Answer::Refused(e),
        };
        let (did, cid) = (&req.did, &req.cid);
        if !self.rep.may_sync(&peer, did) {
            return Answer::Refused(format!("NotAuthorized: not a device of {did}"));
        }
        let len = (req.len as usize).min(PIECE);
        match self.st.blobs.read_piece(did, cid, req.offset, len) {
            Ok(Some((mime, size, data))) if req.offset <= size => Answer::Piece { size, mime, data },
            Ok(Some((_, size, _))) => Answer::Refused(format!("offset {} past the end ({size} bytes)", req.offset)),
            Ok(None) => Answer::NotFound,
            Err(e) => {
                tracing::warn!(%did, %cid, error = %e, "a blob asked for is unreadable");
                Answer::NotFound
            }
        }
    }

    /// A piece arrived: checked, stored, then the copy goes on, completes or stops.
    fn on_piece(&mut self, mut copy: Copy, response: &[u8]) {
        let (size, mime, data) = match Answer::decode(response) {
            Err(e) => return self.refuse_copy(copy, &format!("a malformed answer: {e}")),
            Ok(Answer::NotFound) => return self.give_up(copy, "the device does not hold it"),
            Ok(Answer::Refused(why)) => return self.give_up(copy, &format!("refused: {why}")),
            Ok(Answer::Piece { size, mime, data }) => (size, mime, data),
        };
        if copy.size.is_some_and(|s| s != size) {
            return self.refuse_copy(copy, "the blob's size changed between pieces");
        }
        copy.size = Some(size);
        let st = self.st.clone();
        let blobs = &st.blobs;
        let Some(upload) = copy.upload.as_mut() else {
            // The content is here already: only the account's reference to it was missing.
            return match blobs.adopt(&copy.did, &mime, &copy.cid) {
                Ok(true) => {
                    tracing::info!(did = %copy.did, cid = %copy.cid, "blob taken from content held here");
                    self.rep.status.lock().blobs.adopted += 1;
                    self.ended(&copy, true);
                }
                Ok(false) => self.give_up(copy, "the content held here went"),
                Err(e) => self.give_up(copy, &e.to_string()),
            };
        };
        let offset = upload.size();
        if size > upload.limit() {
            return self.give_up(copy, &format!("{size} bytes: over the size limit or the account's quota"));
        }
        let want = size.saturating_sub(offset).min(PIECE as u64);
        if offset > size || data.len() as u64 != want {
            return self.refuse_copy(copy, &format!("{} bytes where {want} were due", data.len()));
        }
        if let Err(e) = blobs.append(upload, &data) {
            return self.give_up(copy, &e.to_string());
        }
        if upload.chunks().len() > copy.saved {
            copy.saved = upload.chunks().len();
            if let Err(e) = self.st.kv.put(&progress_key(&copy.did, &copy.cid), &encode_chunks(upload.chunks()), None) {
                tracing::warn!(error = %e, "blob copy progress not saved");
            }
        }
        self.rep.status.lock().blobs.bytes_received += data.len() as u64;
        let rate = self.cfg.blob_bytes_per_sec.max(1);
        let now = Instant::now();
        let start = self.copies.pace.filter(|t| *t > now).unwrap_or(now);
        self.copies.pace = Some(start + Duration::from_secs_f64(data.len() as f64 / rate as f64));
        if upload.size() < size {
            self.copies.ready.push(copy);
            return;
        }
        let upload = copy.upload.take().expect("present");
        let key = progress_key(&copy.did, &copy.cid);
        let res = blobs.finish_copy(&copy.did, &mime, upload, &copy.cid);
        // Finished or refused, the listed chunks are the blob's now or released.
        let _ = self.st.kv.delete(&key);
        match res {
            Ok(_) => {
                tracing::info!(did = %copy.did, cid = %copy.cid, peer = %copy.peer, size, "blob copied from a device of the account");
                self.rep.status.lock().blobs.copied += 1;
                self.ended(&copy, true);
                self.copies.backoff.remove(&(copy.did.clone(), copy.cid));
                self.rep.emit(json!({"topic": "sync", "event": "blob", "did": copy.did.to_string(), "cid": copy.cid.to_string(), "size": size}));
            }
            Err(BlobError::ContentMismatch(_)) => self.refuse_copy(copy, "bytes of another hash than the blob's CID"),
            Err(e) => self.give_up(copy, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip() {
        let chunks = vec![ues_sync::repo::ipld::storage::cid_for(0x55, 0x1e, b"a").unwrap(); 3];
        assert_eq!(decode_chunks(&encode_chunks(&chunks)).unwrap(), chunks);
        assert!(decode_chunks(&[40, 1, 2]).is_none());
    }
}
