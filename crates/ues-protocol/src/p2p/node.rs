//! The peer-to-peer service `ues run` starts: a libp2p swarm, the node's replica of the accounts
//! it replicates, and the bridge between that replica and the accounts' AT Protocol
//! repositories.
//!
//! - A local write through XRPC to a replicated account commits to the repository and, under
//!   the same lock, becomes signed operations of this node's device ([`Replication::local_commit`]),
//!   pushed live to connected peers and announced on `ues/repo/<did>`.
//! - Operations from peers (sessions, live pushes) change the replica; the bridge then commits
//!   the difference to the repository with the account's key ([`Replication::materialize`]),
//!   so the usual firehose events go out and every replica's repository has the replica's MST.
//! - `replicate DID --from PEER` asks that peer for the account over `/ues/account/1`; the peer
//!   hands over the account (handle, signing key, credentials, and the account's signed device
//!   authorizations) only when the asking node's key is an authorized device of the account,
//!   over the Noise-authenticated connection.
//! - A peer syncs an account with this node only while its peer id's key is an authorized
//!   device of the account here (now: a revoked device may not): sessions are scoped per peer,
//!   a scope naming another account is refused, live pushes go only to peers authorized for
//!   their accounts, and a push naming an account its sender may not sync is dropped whole.
//!   Strangers' refusals are strikes towards a ban; nothing of theirs is kept.
//! - The bridge removes a record from a repository only for a delete the replica holds, never
//!   because the replica lacks it; and a local write the replica would refuse is refused before
//!   it commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, identity};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use ues_sync::handover::{Handover, HandoverError};
use ues_sync::head::Head;
use ues_sync::recon::{Scope, SyncConfig};
use ues_sync::repo::accounts::AccountError;
use ues_sync::repo::crypto::{Keypair, PublicKey};
use ues_sync::repo::ipld::dagcbor;
use ues_sync::repo::ipld::storage::{Blockstore, Kv};
use ues_sync::repo::repo::RepoError;
use ues_sync::repo::repo::{CommitResult, Write};
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};
use ues_sync::rotation::RotationBody;
use ues_sync::vv::DeviceId;
use ues_sync::{AccountKeys, Change, Replica, ReplicaError, Signed, live};

use super::{Behaviour, BehaviourEvent, Next, SyncPeer, repo_topic};

mod blobs;
use crate::node::Node;
pub use crate::node::peers::{Command, PeerStatus, Status};
pub use blobs::{MAX_COPIES, PIECE};

/// The accounts type of a running node.
pub use crate::node::peers::NodeAccounts;

/// Largest live push (entries per message).
const LIVE_CHUNK: usize = ues_sync::live::MAX_LIVE_ENTRIES;
/// Commands queued for the swarm task before local writes stop being pushed live (the next
/// session carries them instead).
const COMMAND_QUEUE: usize = 4_096;
/// Peers whose addresses are remembered (replication sources, bootstrap peers).
const MAX_KNOWN_PEERS: usize = 256;
/// Largest account hand-over request.
const MAX_HANDOVER: usize = 16 * 1024;

/// Why an account could not be replicated from this node, or a device not authorized.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplicationError {
    /// A record of the account is one the replica refuses (over 1 MiB, nested too deeply, not
    /// AT Protocol data, or not fitting its collection's merge): nothing was replicated and
    /// the account is as it was.
    RecordRefused {
        /// The record's path (`collection/rkey`).
        path: String,
        /// Why.
        reason: String,
    },
    /// The peer id does not hold an Ed25519 key (so it is no device).
    NotAnEd25519Peer,
    /// The account store failed, or has no such account.
    Account(AccountError),
    /// The replica failed.
    Replica(ReplicaError),
    /// Bookkeeping (the key-value store) failed.
    Store(String),
}

// Written out rather than derived: this crate does not otherwise depend on thiserror.
impl std::fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicationError::RecordRefused { path, reason } => {
                write!(f, "record {path} cannot be replicated: {reason}")
            }
            ReplicationError::NotAnEd25519Peer => f.write_str("the peer id does not hold an Ed25519 key"),
            ReplicationError::Account(e) => e.fmt(f),
            ReplicationError::Replica(e) => e.fmt(f),
            ReplicationError::Store(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ReplicationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplicationError::Account(e) => Some(e),
            ReplicationError::Replica(e) => Some(e),
            _ => None,
        }
    }
}

impl From<AccountError> for ReplicationError {
    fn from(e: AccountError) -> Self {
        ReplicationError::Account(e)
    }
}

impl From<ReplicaError> for ReplicationError {
    fn from(e: ReplicaError) -> Self {
        ReplicationError::Replica(e)
    }
}

/// Reconciliation as nodes run it: entry batches and questions of at most 96 KiB each, so a
/// session message stays under 256 KiB (peers whose muxers buffer whole frames, as js-libp2p's
/// yamux does, never see more).
pub const NODE_SYNC: SyncConfig =
    SyncConfig { batch_bytes: 96 << 10, question_budget: 96 << 10, ..SyncConfig::DEFAULT };

/// `[p2p]` settings.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Listen addresses (`/ip4/0.0.0.0/tcp/4001`, ...).
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start and whenever the connection is lost (with `/p2p/<id>` or not).
    pub bootstrap: Vec<Multiaddr>,
    /// When not empty, the only peers this node syncs with and answers.
    pub allow_peers: Vec<PeerId>,
    /// How often each connected peer is reconciled with even without announcements.
    pub sync_interval: Duration,
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections per peer.
    pub max_connections_per_peer: u32,
    /// Requests a peer may send per second before it is banned as a flood.
    pub max_requests_per_sec: u32,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Relay other peers' connections (circuit relay v2 server).
    pub relay_server: bool,
    /// Relays to be reachable through (listening on their `/p2p-circuit` addresses), for a node
    /// behind NAT; direct connections are then attempted by hole punching (DCUtR).
    pub relays: Vec<Multiaddr>,
    /// Accounts to replicate from peers (fetched at start and retried until handed over).
    pub replicate: Vec<ReplicateFrom>,
    /// Reconciliation tuning.
    pub sync: SyncConfig,
    /// Bytes per second this node copies blobs from other devices at, at most.
    pub blob_bytes_per_sec: u64,
    /// How long a tombstone every device has acknowledged is kept before it is collected
    /// (for what was already on its way to arrive).
    pub tombstone_grace: Duration,
}

/// One account this node replicates from a peer (`[[p2p.replicate]]`).
#[derive(Debug, Clone)]
pub struct ReplicateFrom {
    /// The account.
    pub did: Did,
    /// The peer that hosts it (this node must be an authorized device of the account there).
    pub from: PeerId,
    /// Where the peer listens, when it is not found otherwise.
    pub addr: Option<Multiaddr>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().expect("valid"),
            ],
            bootstrap: Vec::new(),
            allow_peers: Vec::new(),
            sync_interval: Duration::from_secs(30),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_requests_per_sec: 200,
            mdns: true,
            relay_server: false,
            relays: Vec::new(),
            replicate: Vec::new(),
            sync: NODE_SYNC,
            blob_bytes_per_sec: 32 << 20,
            tombstone_grace: Duration::from_secs(60),
        }
    }
}

/// Account keys of the replicated accounts (from the accounts table), and the DIDs' PLC
/// operations (`plc/<did>` in the KV) that key rotations are checked against.
struct NodeKeys(RwLock<HashMap<Did, PublicKey>>, Arc<dyn Kv>);

impl AccountKeys for NodeKeys {
    fn key(&self, did: &Did) -> Option<PublicKey> {
        self.0.read().get(did).copied()
    }

    /// A did:plc whose last operation this node holds rotates only by the next operation,
    /// signed by one of its rotation keys and stating the new key (the PLC directory's own
    /// rule): a device holding the outgoing signing key cannot move the account to a key of
    /// its own. A DID without a stored operation (did:web, or one moved here without it)
    /// follows the outgoing key's signature alone.
    fn check_rotation(&self, did: &Did, body: &RotationBody) -> Result<(), String> {
        let Some(last) = self.1.get(format!("plc/{did}").as_bytes()).map_err(err)? else { return Ok(()) };
        let last: Value = serde_json::from_slice(&last).map_err(err)?;
        let op = body.plc.as_deref().ok_or("no PLC operation for a DID that has them")?;
        let op: Value = serde_json::from_str(op).map_err(err)?;
        let stated = ues_sync::repo::plc::verify_next(&last, &op).map_err(err)?;
        if stated != body.key.did_key() {
            return Err(format!("the PLC operation states {stated}, not the rotation's key"));
        }
        Ok(())
    }
}

/// The replica and its bridge to the accounts, shared by XRPC handlers and the swarm task.
pub struct Replication {
    peer: Mutex<SyncPeer>,
    /// Held while a replicated repository's commit and its replica state are brought together.
    bridge: Mutex<()>,
    keys: Arc<NodeKeys>,
    device_key: ed25519_dalek::SigningKey,
    device: DeviceId,
    tracked: RwLock<BTreeSet<Did>>,
    materialized: Mutex<HashMap<Did, cid::Cid>>,
    kv: Arc<dyn Kv>,
    tx: mpsc::Sender<Command>,
    status: Mutex<Status>,
    /// Peer and sync events for apps (`/ws` topics `peers` and `sync`); bounded, lossy for
    /// receivers that lag (they are told how much they missed).
    events: tokio::sync::broadcast::Sender<Value>,
}

fn tracked_key(did: &Did) -> Vec<u8> {
    format!("p2p/replicate/{did}").into_bytes()
}

fn peer_key(peer: &PeerId) -> Vec<u8> {
    format!("p2p/peer/{peer}").into_bytes()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Parses a DID (for configuration).
pub fn parse_did(s: &str) -> Result<Did, String> {
    Did::new(s).map_err(err)
}

/// The Ed25519 device key behind a peer id (UES nodes' peer ids are their device keys).
pub fn device_of(peer: &PeerId) -> Option<DeviceId> {
    let key = identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// The peer id of a device key.
pub fn peer_of(device: &DeviceId) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(device).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

impl Replication {
    /// Opens the replica over `blocks` (its own store: entries and the records they carry)
    /// for a node whose device key is `device_key`; returns the handle and the swarm task's
    /// command queue.
    pub fn open(
        blocks: Arc<dyn Blockstore>,
        device_key: ed25519_dalek::SigningKey,
        accounts: &NodeAccounts,
        kv: Arc<dyn Kv>,
        sync: SyncConfig,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Command>), String> {
        let keys = Arc::new(NodeKeys(RwLock::default(), kv.clone()));
        let mut tracked = BTreeSet::new();
        for (k, _) in kv.scan_prefix(b"p2p/replicate/", 100_000).map_err(err)? {
            let did = String::from_utf8_lossy(&k["p2p/replicate/".len()..]).to_string();
            let Ok(did) = Did::new(did.as_str()) else { continue };
            if let Ok(key) = accounts.signing_key(&did) {
                keys.0.write().insert(did.clone(), key.public());
                tracked.insert(did);
            }
        }
        let replica = Replica::open(blocks, keys.clone(), ues_sync::hlc::Hlc::new(60_000), Some(device_key.clone()))
            .map_err(err)?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let device = device_key.verifying_key().to_bytes();
        tracing::info!(accounts = tracked.len(), entries = replica.len(), "replica open");
        let rep = (
            Arc::new(Replication {
                peer: Mutex::new(SyncPeer::authorized(replica, sync)),
                bridge: Mutex::new(()),
                keys,
                device_key,
                device,
                tracked: RwLock::new(tracked),
                materialized: Mutex::new(HashMap::new()),
                kv,
                tx,
                status: Mutex::new(Status::default()),
                events: tokio::sync::broadcast::channel(1_024).0,
            }),
            rx,
        );
        // Rotations stored but not yet installed (the node stopped in between).
        rep.0.install_rotations(accounts);
        Ok(rep)
    }

    /// Whether this node replicates `did`.
    pub fn is_tracked(&self, did: &Did) -> bool {
        self.tracked.read().contains(did)
    }

    /// The replicated accounts.
    pub fn tracked(&self) -> Vec<Did> {
        self.tracked.read().iter().cloned().collect()
    }

    /// Peer and sync events as they happen (`{"topic": "peers"|"sync", ...}`).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    fn emit(&self, event: Value) {
        let _ = self.events.send(event);
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    fn track(&self, did: &Did, key: PublicKey) -> Result<(), String> {
        self.keys.0.write().insert(did.clone(), key);
        self.kv.put(&tracked_key(did), b"1", None).map_err(err)?;
        self.tracked.write().insert(did.clone());
        Ok(())
    }

    /// Commits writes from a client of this node. For a replicated account the commit and the
    /// operations that carry it to the other replicas are made under one lock, so the bridge
    /// never sees one without the other.
    pub fn local_commit(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        writes: &[Write],
        swap: Option<cid::Cid>,
    ) -> Result<CommitResult, AccountError> {
        if !self.is_tracked(did) {
            let res = accounts.apply_writes(did, writes, swap)?;
            let _ = self.tx.try_send(Command::Announce(did.clone()));
            return Ok(res);
        }
        let _bridge = self.bridge.lock();
        if !self.peer.lock().replica.is_authorized(did, &self.device) {
            return Err(AccountError::CommitFailed(format!(
                "this node is not yet an authorized device of {did}; it becomes one when it syncs with the node that authorized it"
            )));
        }
        let changes: Vec<(&Nsid, &RecordKey, Change)> = writes
            .iter()
            .map(|w| match w {
                Write::Create { collection, rkey, record } | Write::Update { collection, rkey, record, .. } => {
                    (collection, rkey, Change::Put(record.clone()))
                }
                Write::Delete { collection, rkey, .. } => (collection, rkey, Change::Delete),
            })
            .collect();
        // A write the replica would refuse is refused before it commits: the repository and
        // the replica never part silently.
        {
            let p = self.peer.lock();
            for (collection, rkey, change) in &changes {
                if let Err(e) = p.replica.check_write(did, collection, change) {
                    tracing::warn!(%did, %collection, %rkey, error = %e, "a write the replica refuses was not committed");
                    return Err(match e {
                        ReplicaError::NotAuthorized(_) => AccountError::CommitFailed(e.to_string()),
                        e => AccountError::from(RepoError::InvalidRecord {
                            path: format!("{collection}/{rkey}"),
                            reason: format!("it cannot be replicated: {}", refusal_reason(&e)),
                        }),
                    });
                }
            }
        }
        let res = accounts.apply_writes(did, writes, swap)?;
        let mut entries = Vec::with_capacity(writes.len());
        {
            let mut p = self.peer.lock();
            for (collection, rkey, change) in changes {
                match p.replica.write(did, collection.clone(), rkey.clone(), change) {
                    Ok(s) => entries.push(s),
                    Err(e) => {
                        tracing::error!(%did, %collection, %rkey, error = %e, "a committed write did not become an operation")
                    }
                }
            }
            if let Ok(root) = p.replica.root(did)
                && root == res.commit.data
            {
                self.materialized.lock().insert(did.clone(), root);
            }
        }
        let _ = self.tx.try_send(Command::Local(entries));
        let _ = self.tx.try_send(Command::Announce(did.clone()));
        Ok(res)
    }

    /// Makes this node's device a writer of a hosted account, with the account's records as
    /// its first operations (once), so the account can be replicated. All or nothing: every
    /// record is checked first, and the account is replicated only when each one becomes an
    /// operation; a record the replica refuses fails with [`ReplicationError::RecordRefused`]
    /// and leaves the account as it was (not replicated).
    pub fn enable(&self, accounts: &NodeAccounts, did: &Did) -> Result<(), ReplicationError> {
        let _bridge = self.bridge.lock();
        let key = accounts.signing_key(did)?;
        let repo = accounts.repo(did)?;
        let mut mst = repo.mst().map_err(AccountError::from)?;
        let entries = mst.list(None, usize::MAX).map_err(|e| AccountError::from(RepoError::from(e)))?;
        let mut p = self.peer.lock();
        let held = p.replica.records(did).cloned().unwrap_or_default();
        let mut seeds = Vec::new();
        for (path, cid) in entries {
            if held.get(&path) == Some(&cid) {
                continue;
            }
            let refused = |reason: String| ReplicationError::RecordRefused { path: path.clone(), reason };
            let bytes = accounts
                .blocks()
                .get(&cid)
                .map_err(|e| refused(e.to_string()))?
                .ok_or_else(|| refused("its block is missing".into()))?;
            ues_sync::check_record_block(&cid, &bytes).map_err(|e| refused(e.to_string()))?;
            let value = dagcbor::decode_atproto(&bytes).map_err(|e| refused(e.to_string()))?;
            let (c, r) = path.split_once('/').ok_or_else(|| refused("not collection/rkey".into()))?;
            let c = Nsid::new(c).map_err(|e| refused(e.to_string()))?;
            let r = RecordKey::new(r).map_err(|e| refused(e.to_string()))?;
            let change = Change::Put(value);
            p.replica.check_change(&c, &change).map_err(|e| refused(refusal_reason(&e)))?;
            seeds.push((c, r, change));
        }
        // Every record will become an operation: track the account and seed it.
        self.track(did, key.public()).map_err(ReplicationError::Store)?;
        if !p.replica.is_authorized(did, &self.device) {
            p.replica.authorize(&key, did, self.device, false)?;
        }
        let seeded = seeds.len();
        for (c, r, change) in seeds {
            let path = format!("{c}/{r}");
            p.replica
                .write(did, c, r, change)
                .map_err(|e| ReplicationError::RecordRefused { path, reason: refusal_reason(&e) })?;
        }
        // Seeded from the repository, the replica holds what it holds: from here on the bridge
        // compares only what changes.
        if p.replica.root(did).ok() == Some(repo.commit().data) {
            p.replica.clear_changed(did);
            self.materialized.lock().insert(did.clone(), repo.commit().data);
        }
        tracing::info!(%did, seeded, "account replicated from this node");
        Ok(())
    }

    /// Authorizes (or revokes) the device behind `peer` for a hosted account, signed with the
    /// account's key; the authorization travels to the other replicas like any entry.
    pub fn authorize_peer(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        peer: &PeerId,
        revoke: bool,
    ) -> Result<(), ReplicationError> {
        let device = device_of(peer).ok_or(ReplicationError::NotAnEd25519Peer)?;
        self.enable(accounts, did)?;
        let key = accounts.signing_key(did)?;
        let signed = self.peer.lock().replica.authorize(&key, did, device, revoke)?;
        let _ = self.tx.try_send(Command::Local(vec![signed]));
        let _ = self.tx.try_send(Command::Announce(did.clone()));
        Ok(())
    }

    /// Rotates a replicated account's signing key from `outgoing` to `new` (after a
    /// revocation): the rotation and the authorizations signed again go to the peers, and the
    /// new key is installed here. `plc`: the signed PLC operation publishing `new`.
    pub fn rotate(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        outgoing: &Keypair,
        new: &Keypair,
        plc: Option<String>,
    ) -> Result<(), ReplicationError> {
        let _bridge = self.bridge.lock();
        let signed = self.peer.lock().replica.rotate(outgoing, did, new, plc)?;
        self.install_rotations(accounts);
        let _ = self.tx.try_send(Command::Local(signed));
        let _ = self.tx.try_send(Command::Announce(did.clone()));
        Ok(())
    }

    /// Installs the key rotations the replica followed: the PLC operation that published the
    /// new key (what the next rotation is checked against), the new key as the account's
    /// signing key when it was sealed to this device, and the key the replica verifies with.
    fn install_rotations(&self, accounts: &NodeAccounts) {
        let rotations = self.peer.lock().replica.take_rotations();
        for r in rotations {
            let did = &r.did;
            if let Some(op) = &r.body.plc
                && let Err(e) = self.kv.put(format!("plc/{did}").as_bytes(), op.as_bytes(), None)
            {
                tracing::error!(%did, error = %e, "the PLC operation of a key rotation could not be stored");
            }
            self.keys.0.write().insert(did.clone(), r.body.key);
            match &r.key {
                Some(key) => {
                    let current = accounts.signing_key(did).map(|k| k.public());
                    if current.as_ref().ok() != Some(&key.public()) {
                        match accounts.set_signing_key(did, key) {
                            Ok(()) => {
                                tracing::info!(%did, key = %key.public().did_key(), "the account's new signing key installed")
                            }
                            Err(e) => {
                                tracing::error!(%did, error = %e, "the account's new signing key could not be stored")
                            }
                        }
                    }
                }
                None => {
                    tracing::warn!(%did, key = %r.body.key.did_key(), "the account's key rotated to a key not sealed to this device: it can no longer sign the account's commits")
                }
            }
            self.emit(
                json!({"topic": "sync", "event": "keyRotated", "did": did.to_string(), "key": r.body.key.did_key()}),
            );
        }
    }

    /// Commits to the account's repository whatever its replica holds that the repository does
    /// not (records put, changed or deleted by other devices). Returns the commit, if one was due.
    ///
    /// After the first time since the node started (a full comparison of the two record sets),
    /// only the paths the replica changed since are compared, each against the repository's
    /// tree: a batch of remote changes costs O(changes · log n), not O(records). Should the
    /// result not reach the replica's root, the next call compares in full again.
    pub fn materialize(&self, accounts: &NodeAccounts, did: &Did) -> Result<Option<CommitResult>, String> {
        let _bridge = self.bridge.lock();
        // A rotation that arrived comes first: what is committed next is signed by the new key.
        self.install_rotations(accounts);
        // Called every 50 ms: the cached root answers the common case without SQLite.
        let (root, changed) = {
            let mut p = self.peer.lock();
            let Ok(root) = p.replica.root(did) else { return Ok(None) };
            if self.materialized.lock().get(did) == Some(&root) {
                p.replica.clear_changed(did);
                return Ok(None);
            }
            (root, p.replica.take_changed(did))
        };
        let repo = match accounts.repo(did) {
            Ok(r) => r,
            // Not hosted here (yet): nothing to commit to.
            Err(AccountError::NotFound(_)) => {
                self.peer.lock().replica.restore_changed(did, changed);
                return Ok(None);
            }
            Err(e) => {
                self.peer.lock().replica.restore_changed(did, changed);
                return Err(e.to_string());
            }
        };
        if repo.commit().data == root {
            self.materialized.lock().insert(did.clone(), root);
            return Ok(None);
        }
        if self.materialized.lock().contains_key(did) {
            return self.materialize_changes(accounts, did, root, &repo, changed);
        }
        self.status.lock().materialized_full += 1;
        let want = self.peer.lock().replica.records(did).cloned().unwrap_or_default();
        let have: BTreeMap<String, cid::Cid> =
            repo.mst().map_err(err)?.list(None, usize::MAX).map_err(err)?.into_iter().collect();
        let mut writes = Vec::new();
        {
            let p = self.peer.lock();
            for (path, cid) in &want {
                if have.get(path) == Some(cid) {
                    continue;
                }
                let bytes =
                    p.replica.blocks().get(cid).map_err(err)?.ok_or_else(|| format!("record block {cid} missing"))?;
                let record = dagcbor::decode_atproto(&bytes).map_err(err)?;
                let (c, r) = path.split_once('/').ok_or("bad path")?;
                writes.push(Write::Update {
                    collection: Nsid::new(c).map_err(err)?,
                    rkey: RecordKey::new(r).map_err(err)?,
                    record,
                    swap: None,
                });
            }
        }
        // Only a delete the replica holds removes a record: one it merely lacks stays.
        let deleted: Vec<&String> = {
            let p = self.peer.lock();
            have.keys().filter(|path| !want.contains_key(*path) && p.replica.holds_delete(did, path)).collect()
        };
        let kept = have.keys().filter(|p| !want.contains_key(*p)).count() - deleted.len();
        for path in deleted {
            let (c, r) = path.split_once('/').ok_or("bad path")?;
            writes.push(Write::Delete {
                collection: Nsid::new(c).map_err(err)?,
                rkey: RecordKey::new(r).map_err(err)?,
                swap: None,
            });
        }
        if writes.is_empty() {
            if kept > 0 {
                // Nothing to commit until the replica moves again.
                tracing::warn!(%did, records = kept, "the repository holds records its replica lacks; they are kept");
                self.materialized.lock().insert(did.clone(), root);
            }
            return Ok(None);
        }
        let res = accounts.apply_replicated(did, &writes).map_err(err)?;
        if res.commit.data == root {
            self.materialized.lock().insert(did.clone(), root);
        } else {
            tracing::warn!(%did, replica = %root, repo = %res.commit.data, kept, "the repository differs from the replica after materializing");
            if kept > 0 {
                self.materialized.lock().insert(did.clone(), root);
            }
        }
        self.committed(did, &res, writes.len(), root);
        Ok(Some(res))
    }

    fn committed(&self, did: &Did, res: &CommitResult, writes: usize, root: cid::Cid) {
        self.status.lock().remote_commits += 1;
        tracing::info!(%did, writes, rev = %res.commit.rev, "committed operations from peers");
        self.emit(json!({"topic": "sync", "event": "committed", "did": did.to_string(), "rev": res.commit.rev.to_string(), "writes": writes, "root": root.to_string()}));
    }

    /// [`Replication::materialize`] for the paths the replica changed since the last time:
    /// each compared with the repository's tree, the differences committed.
    fn materialize_changes(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        root: cid::Cid,
        repo: &ues_sync::repo::repo::Repo<&Arc<dyn Blockstore>>,
        changed: BTreeSet<String>,
    ) -> Result<Option<CommitResult>, String> {
        self.status.lock().materialized_changes += 1;
        let mut tree = repo.mst().map_err(err)?;
        let mut writes = Vec::new();
        let mut kept = 0;
        {
            let p = self.peer.lock();
            let want = p.replica.records(did);
            for path in &changed {
                let wanted = want.and_then(|w| w.get(path));
                let held = tree.get(path).map_err(err)?;
                if wanted == held.as_ref() {
                    continue;
                }
                let (c, r) = path.split_once('/').ok_or("bad path")?;
                let (collection, rkey) = (Nsid::new(c).map_err(err)?, RecordKey::new(r).map_err(err)?);
                match wanted {
                    Some(cid) => {
                        let bytes = p
                            .replica
                            .blocks()
                            .get(cid)
                            .map_err(err)?
                            .ok_or_else(|| format!("record block {cid} missing"))?;
                        let record = dagcbor::decode_atproto(&bytes).map_err(err)?;
                        writes.push(Write::Update { collection, rkey, record, swap: None });
                    }
                    // Only a delete the replica holds removes a record: one it merely lacks stays.
                    None if p.replica.holds_delete(did, path) => {
                        writes.push(Write::Delete { collection, rkey, swap: None });
                    }
                    None => kept += 1,
                }
            }
        }
        if writes.is_empty() {
            if kept > 0 {
                tracing::warn!(%did, records = kept, "the repository holds records its replica lacks; they are kept");
            }
            self.materialized.lock().insert(did.clone(), root);
            return Ok(None);
        }
        let res = match accounts.apply_replicated(did, &writes) {
            Ok(res) => res,
            Err(e) => {
                self.peer.lock().replica.restore_changed(did, changed);
                return Err(e.to_string());
            }
        };
        if res.commit.data == root || kept > 0 {
            self.materialized.lock().insert(did.clone(), root);
        } else {
            // Something changed that the paths did not say: compare in full next time.
            tracing::info!(%did, replica = %root, repo = %res.commit.data, "the repository differs from the replica after its changes; compared in full next time");
            self.materialized.lock().remove(did);
        }
        self.committed(did, &res, writes.len(), root);
        Ok(Some(res))
    }

    /// Applies entries from another replica (as a session or a live push does); the next
    /// [`Replication::materialize`] commits what they change.
    pub fn apply_entries(&self, entries: Vec<Signed>) -> ues_sync::ApplyReport {
        self.peer.lock().replica.apply(entries)
    }

    /// Replication state of every replicated account (for admins).
    pub fn describe(&self, accounts: &NodeAccounts) -> Value {
        let mut out = Vec::new();
        let status = self.status();
        let blobs = &status.blobs;
        for did in self.tracked() {
            let mut p = self.peer.lock();
            let replica_root = p.replica.root(&did).ok().map(|c| c.to_string());
            let records = p.replica.records(&did).map_or(0, |r| r.len());
            let tombstones = p.replica.tombstones(&did);
            let devices: Vec<Value> = p
                .replica
                .devices(&did)
                .into_iter()
                .map(|(d, valid)| {
                    json!({"device": data_encoding::HEXLOWER.encode(&d), "peerId": peer_of(&d).map(|p| p.to_string()), "valid": valid, "self": d == self.device})
                })
                .collect();
            drop(p);
            let repo = accounts.repo(&did).ok();
            out.push(json!({
                "did": did.to_string(),
                "replicaRoot": replica_root,
                "repoRoot": repo.as_ref().map(|r| r.commit().data.to_string()),
                "rev": repo.as_ref().map(|r| r.commit().rev.to_string()),
                "records": records,
                "tombstones": tombstones,
                "blobsPending": blobs.pending.get(did.as_str()).copied().unwrap_or(0),
                "devices": devices,
            }));
        }
        let p = self.peer.lock();
        json!({
            "device": data_encoding::HEXLOWER.encode(&self.device),
            "entries": p.replica.len(),
            "pending": p.replica.pending_len(),
            "pendingBytes": p.replica.pending_bytes(),
            "replicaAccounts": p.replica.dids().len(),
            "tombstonesCollected": p.replica.collected_tombstones(),
            "materializedFull": status.materialized_full,
            "materializedChanges": status.materialized_changes,
            "refusals": p.replica.refusal_counts().iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "accounts": out,
            "blobs": {
                "pending": blobs.pending.values().sum::<u64>(),
                "copying": blobs.copying.iter().map(|c| json!({"did": c.did, "cid": c.cid, "received": c.received, "size": c.size, "peerId": c.peer})).collect::<Vec<_>>(),
                "copied": blobs.copied,
                "adopted": blobs.adopted,
                "bytesReceived": blobs.bytes_received,
                "failed": blobs.failed,
                "piecesServed": blobs.pieces_served,
            },
        })
    }

    /// Queues a command for the swarm task.
    pub async fn command(&self, c: Command) -> Result<(), String> {
        self.tx.send(c).await.map_err(|_| "the peer-to-peer service is not running".to_string())
    }

    /// The accounts this node and `peer` may both sync: replicated and hosted here, with this
    /// node's device and the peer's both authorized for them now.
    fn scope_for(&self, accounts: &NodeAccounts, peer: &PeerId) -> Option<Scope> {
        let dids: Vec<Did> = {
            let p = self.peer.lock();
            self.tracked()
                .into_iter()
                .filter(|d| p.replica.is_authorized(d, &self.device) && p.may_sync(peer, d))
                .collect()
        };
        let dids: Vec<Did> = dids.into_iter().filter(|d| accounts.get(d).ok().flatten().is_some()).collect();
        (!dids.is_empty()).then(|| Scope::new(dids))
    }

    /// Whether `peer` may sync `did` with this node (its device is authorized for it now).
    fn may_sync(&self, peer: &PeerId, did: &Did) -> bool {
        self.peer.lock().may_sync(peer, did)
    }

    /// The account hand-over a peer asks for: granted only to an authorized device, with the
    /// account's device authorizations.
    fn hand_over(&self, st: &Node, peer: &PeerId, req: &[u8]) -> Vec<u8> {
        let refuse = Handover::refusal;
        let Ok(req) = serde_json::from_slice::<Value>(req) else { return refuse("malformed request") };
        let Some(Ok(did)) = req.get("did").and_then(|d| d.as_str()).map(Did::new) else { return refuse("no DID") };
        let Some(device) = device_of(peer) else { return refuse("not an Ed25519 peer") };
        let auths = {
            let p = self.peer.lock();
            if !p.replica.is_authorized(&did, &device) {
                drop(p);
                tracing::warn!(%peer, %did, "account hand-over refused: not an authorized device");
                return refuse("NotAuthorized: this peer is not an authorized device of the account");
            }
            match p.replica.authorizations(&did, ues_sync::handover::MAX_HANDOVER_AUTHS) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(%did, error = %e, "authorizations unreadable");
                    return refuse("the account's authorizations are unreadable");
                }
            }
        };
        let account = match st.accounts.get(&did) {
            Ok(Some(a)) => a,
            _ => return refuse("AccountNotFound"),
        };
        let Ok(key) = st.accounts.signing_key(&did) else { return refuse("no key") };
        let cred = crate::node::credentials::get(st.accounts.db(), &did).ok().flatten();
        let plc_op =
            st.kv.get(format!("plc/{did}").as_bytes()).ok().flatten().map(|b| String::from_utf8_lossy(&b).to_string());
        let crate::node::credentials::AccountCredentials { email, password_hash } = cred.unwrap_or_default();
        tracing::info!(%peer, %did, authorizations = auths.len(), "account handed over to an authorized device");
        Handover { did, handle: account.handle.clone(), key, email, password_hash, plc_op, auths }.encode()
    }

    /// Takes an account handed over by an authorized peer: the account, its credentials, its
    /// device authorizations (verified against the account's key), and replication of it from
    /// now on.
    fn take_over(&self, st: &Node, did: &Did, res: &[u8]) -> Result<(), String> {
        let h = Handover::decode(res, did).map_err(|e| match e {
            HandoverError::Refused(why) => format!("the peer refused: {why}"),
            e => e.to_string(),
        })?;
        let key = h.key;
        if st.accounts.get(did).map_err(err)?.is_none() {
            st.accounts.create_with_key(did.clone(), h.handle, key.clone()).map_err(err)?;
            crate::node::credentials::replace(st.accounts.db(), did, h.email.as_deref(), h.password_hash.as_deref())
                .map_err(err)?;
            if let Some(op) = &h.plc_op {
                st.kv.put(format!("plc/{did}").as_bytes(), op.as_bytes(), None).map_err(err)?;
            }
            st.firehose.notify();
        } else if st.accounts.signing_key(did).map_err(err)?.public() != key.public() {
            return Err(format!("{did} is hosted here with another key"));
        }
        self.track(did, key.public())?;
        // Who may sync the account is known before any sync with a peer begins.
        let report = self.peer.lock().replica.apply(h.auths);
        if let Some(r) = report.refused.first() {
            tracing::warn!(%did, reason = %r.reason, "a handed-over authorization was refused");
        }
        tracing::info!(%did, authorizations = report.applied, "replicating an account handed over by a peer");
        Ok(())
    }
}

impl crate::node::peers::PeerService for Replication {
    fn local_commit(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        writes: &[Write],
        swap: Option<cid::Cid>,
    ) -> Result<CommitResult, AccountError> {
        Replication::local_commit(self, accounts, did, writes, swap)
    }

    fn tracked(&self) -> Vec<Did> {
        Replication::tracked(self)
    }

    fn status(&self) -> Status {
        Replication::status(self)
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<Value> {
        Replication::events(self)
    }

    fn describe(&self, accounts: &NodeAccounts) -> Value {
        Replication::describe(self, accounts)
    }

    fn authorize_peer(&self, accounts: &NodeAccounts, did: &Did, peer: &PeerId, revoke: bool) -> Result<(), String> {
        Replication::authorize_peer(self, accounts, did, peer, revoke).map_err(|e| e.to_string())
    }

    fn rotate(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        outgoing: &Keypair,
        new: &Keypair,
        plc: Option<String>,
    ) -> Result<(), String> {
        Replication::rotate(self, accounts, did, outgoing, new, plc).map_err(|e| e.to_string())
    }

    fn command(&self, c: Command) -> Result<(), String> {
        self.tx.try_send(c).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "the peer-to-peer service is busy: try again".to_string(),
            mpsc::error::TrySendError::Closed(_) => "the peer-to-peer service is not running".to_string(),
        })
    }
}

/// A replica refusal's reason, without the wrapping.
fn refusal_reason(e: &ReplicaError) -> String {
    match e {
        ReplicaError::Refused(r) => r.to_string(),
        e => e.to_string(),
    }
}

/// Runs blocking work (signature checks, RocksDB, SQLite) from the swarm task without
/// stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Where a command's outcome goes.
type Reply = oneshot::Sender<Result<(), String>>;

/// The swarm task's state.
struct Task {
    swarm: Swarm<Behaviour>,
    rep: Arc<Replication>,
    st: Arc<Node>,
    cfg: P2pConfig,
    /// Live pushes in flight (their empty responses are not session turns).
    live: HashSet<OutboundRequestId>,
    /// Account requests in flight.
    handovers: HashMap<OutboundRequestId, (Did, PeerId, Reply)>,
    /// Replications waiting for their peer's connection.
    waiting: Vec<(Did, PeerId, Reply, Instant)>,
    /// Dials waiting for their connection.
    dials: Vec<(Multiaddr, Reply, Instant)>,
    outbox: Vec<Signed>,
    announce: BTreeSet<Did>,
    /// Requests per peer in the current second.
    rate: HashMap<PeerId, (Instant, u32)>,
    known: HashMap<PeerId, Multiaddr>,
    /// DIDs this node announces as a provider in the DHT.
    provided: HashSet<Did>,
    last_bootstrap: Option<Instant>,
    /// Blobs being copied from other devices.
    copies: blobs::Copies,
}

/// Starts the swarm (listening on `cfg.listen`) and runs it until `shutdown` fires.
pub async fn run(
    key: identity::Keypair,
    st: Arc<Node>,
    rep: Arc<Replication>,
    mut rx: mpsc::Receiver<Command>,
    cfg: P2pConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.max_connections))
        .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let features = super::Features { limits, mdns: cfg.mdns, relay_server: cfg.relay_server };
    let mut swarm = super::swarm_with(key, features).map_err(err)?;
    for addr in &cfg.listen {
        // A taken port must not take the node's other services down: say it and go on.
        if let Err(e) = swarm.listen_on(addr.clone()) {
            tracing::error!(%addr, error = %e, "cannot listen for peers");
        }
    }
    for relay in &cfg.relays {
        let circuit = relay.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        if let Err(e) = swarm.listen_on(circuit.clone()) {
            tracing::error!(addr = %circuit, error = %e, "cannot listen through the relay");
        }
    }
    for did in rep.tracked() {
        let _ = swarm.behaviour_mut().gossip.subscribe(&repo_topic(&did));
    }
    let mut known = HashMap::new();
    for (k, v) in rep.kv.scan_prefix(b"p2p/peer/", MAX_KNOWN_PEERS).map_err(err)? {
        let peer = String::from_utf8_lossy(&k["p2p/peer/".len()..]).parse::<PeerId>();
        let addr = String::from_utf8_lossy(&v).parse::<Multiaddr>();
        if let (Ok(p), Ok(a)) = (peer, addr) {
            known.insert(p, a);
        }
    }
    let mut task = Task {
        swarm,
        rep,
        st,
        cfg,
        live: HashSet::new(),
        handovers: HashMap::new(),
        waiting: Vec::new(),
        dials: Vec::new(),
        outbox: Vec::new(),
        announce: BTreeSet::new(),
        rate: HashMap::new(),
        known,
        provided: HashSet::new(),
        last_bootstrap: None,
        copies: blobs::Copies::default(),
    };
    for did in task.rep.tracked() {
        task.provide(&did);
    }
    task.redial();
    task.fetch_configured();
    let mut flush = tokio::time::interval(Duration::from_millis(50));
    let mut tick = tokio::time::interval(task.cfg.sync_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = task.swarm.select_next_some() => task.on_event(ev),
            cmd = rx.recv() => match cmd {
                Some(c) => task.on_command(c),
                None => break,
            },
            _ = flush.tick() => task.flush(),
            _ = tick.tick() => task.anti_entropy(),
            _ = shutdown.changed() => break,
        }
    }
    tracing::info!("peer-to-peer service stopped");
    Ok(())
}

impl Task {
    fn allowed(&self, peer: &PeerId) -> bool {
        self.cfg.allow_peers.is_empty() || self.cfg.allow_peers.contains(peer)
    }

    fn redial(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        for addr in self.cfg.bootstrap.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if peer.is_none_or(|p| !connected.contains(&p))
                && let Err(e) = self.swarm.dial(fresh_port(addr.clone()))
            {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        for (peer, addr) in self.known.clone() {
            if !connected.contains(&peer) {
                let _ = self.swarm.dial(fresh_port(addr.with_p2p(peer).unwrap_or_else(|a| a)));
            }
        }
    }

    fn start_session(&mut self, peer: PeerId) {
        if !self.allowed(&peer) || self.rep.peer.lock().is_running(&peer) {
            return;
        }
        let Some(scope) = self.rep.scope_for(&self.st.accounts, &peer) else { return };
        let hello = blocking(|| self.rep.peer.lock().start(peer, scope));
        tracing::debug!(%peer, "sync session started");
        self.swarm.behaviour_mut().sync.send_request(&peer, hello);
    }

    /// Announces in the DHT that this node holds `did`'s repository.
    fn provide(&mut self, did: &Did) {
        if self.provided.len() < 100_000 && self.provided.insert(did.clone()) {
            let key = libp2p::kad::RecordKey::new(&format!("ues/repo/{did}"));
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                tracing::debug!(%did, error = %e, "not provided");
            }
        }
    }

    /// Asks for the configured accounts this node does not replicate yet (one request per
    /// account in flight).
    fn fetch_configured(&mut self) {
        for r in self.cfg.replicate.clone() {
            let busy = self.waiting.iter().any(|w| w.0 == r.did) || self.handovers.values().any(|h| h.0 == r.did);
            if self.rep.is_tracked(&r.did) || busy {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let did = r.did.clone();
            tokio::spawn(async move {
                match answer.await {
                    Ok(Ok(())) => tracing::info!(%did, "configured account replicated"),
                    Ok(Err(e)) => tracing::warn!(%did, error = %e, "configured account not handed over yet"),
                    Err(_) => {}
                }
            });
            self.on_command(Command::Replicate { did: r.did, from: r.from, addr: r.addr, reply });
        }
    }

    fn anti_entropy(&mut self) {
        self.fetch_configured();
        self.tend_tombstones();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            self.start_session(p);
        }
        self.redial();
        // Refresh the routing table at most once a minute.
        let known = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() > 0;
        if known && self.last_bootstrap.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            self.last_bootstrap = Some(Instant::now());
        }
        let now = Instant::now();
        self.waiting.retain(|w| now.duration_since(w.3) < Duration::from_secs(30));
        self.dials.retain(|d| now.duration_since(d.2) < Duration::from_secs(30));
        self.rate.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(2));
    }

    /// Acknowledges the tombstones of replicated accounts this device holds (the
    /// acknowledgement goes out live with the next flush) and collects those every device has
    /// acknowledged.
    fn tend_tombstones(&mut self) {
        let grace = self.cfg.tombstone_grace;
        for did in self.rep.tracked() {
            let (ack, collected) = blocking(|| {
                let mut p = self.rep.peer.lock();
                (p.replica.write_ack(&did), p.replica.collect_tombstones(&did, grace))
            });
            match ack {
                Ok(Some(signed)) => self.outbox.push(signed),
                Ok(None) => {}
                Err(e) => tracing::warn!(%did, error = %e, "tombstones not acknowledged"),
            }
            if collected > 0 {
                tracing::info!(%did, collected, "tombstones every device acknowledged were collected");
            }
        }
    }

    /// Counts a request from `peer`; a flood bans it and drops its connections.
    fn admit(&mut self, peer: PeerId) -> bool {
        if over_rate(&mut self.rate, peer, self.cfg.max_requests_per_sec) {
            self.ban(peer, "request flood");
            return false;
        }
        !self.rep.peer.lock().is_banned(&peer)
    }

    fn ban(&mut self, peer: PeerId, why: &str) {
        self.rep.peer.lock().ban(peer, why);
        self.rep.status.lock().bans += 1;
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "p2p listening");
                self.rep.status.lock().listening.push(address.to_string());
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                if self.rep.peer.lock().is_banned(&peer_id) || !self.allowed(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let addr = endpoint.get_remote_address().clone();
                tracing::info!(peer = %peer_id, %addr, "peer connected");
                self.rep.emit(json!({"topic": "peers", "event": "connected", "peerId": peer_id.to_string(), "addr": addr.to_string()}));
                self.rep
                    .status
                    .lock()
                    .connected
                    .insert(peer_id.to_string(), PeerStatus { addr: addr.to_string(), ..PeerStatus::default() });
                if endpoint.is_dialer() {
                    let dials = std::mem::take(&mut self.dials);
                    for (a, reply, t) in dials {
                        if a == addr || a.iter().any(|p| p == libp2p::multiaddr::Protocol::P2p(peer_id)) {
                            let _ = reply.send(Ok(()));
                            self.remember(peer_id, addr.clone());
                        } else {
                            self.dials.push((a, reply, t));
                        }
                    }
                }
                let waiting = std::mem::take(&mut self.waiting);
                for (did, from, reply, t) in waiting {
                    if from == peer_id {
                        self.ask_account(did, from, reply);
                    } else {
                        self.waiting.push((did, from, reply, t));
                    }
                }
                self.start_session(peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                tracing::info!(peer = %peer_id, "peer disconnected");
                self.rep.emit(json!({"topic": "peers", "event": "disconnected", "peerId": peer_id.to_string()}));
                self.rep.status.lock().connected.remove(&peer_id.to_string());
                self.rep.peer.lock().abort(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(error = %error, "dial failed");
                // A replication waiting for this peer says in the log why it is still waiting
                // (another dial of it may yet succeed, so it keeps waiting its 30 s).
                if let Some(p) = peer_id
                    && let Some((did, ..)) = self.waiting.iter().find(|w| w.1 == p)
                {
                    tracing::info!(peer = %p, %did, error = %error, "a dial for a replication failed");
                }
                let dials = std::mem::take(&mut self.dials);
                for (a, reply, t) in dials {
                    // The error does not say which address: answer dials to unreachable ones.
                    if error.to_string().contains(&a.to_string()) {
                        let _ = reply.send(Err(error.to_string()));
                    } else {
                        self.dials.push((a, reply, t));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Account(e)) => self.on_account(e),
            SwarmEvent::Behaviour(BehaviourEvent::Blob(e)) => self.on_blob(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => self.on_head(propagation_source, &message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                tracing::info!(peer = %peer_id, agent = %info.agent_version, "peer identified");
                // Addresses a DHT peer says it listens on go into the routing table.
                if info.protocols.contains(&super::KAD_PROTOCOL) {
                    for addr in info.listen_addrs.iter().take(16) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                }
                if let Some(p) = self.rep.status.lock().connected.get_mut(&peer_id.to_string()) {
                    p.agent = Some(info.agent_version);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, addr) in found.into_iter().take(64) {
                    if peer == *self.swarm.local_peer_id() || !self.allowed(&peer) {
                        continue;
                    }
                    self.rep.status.lock().mdns_discovered += 1;
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        tracing::info!(%peer, %addr, "peer found on the local network");
                        let _ = self.swarm.dial(fresh_port(addr.with_p2p(peer).unwrap_or_else(|a| a)));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(libp2p::kad::Event::RoutingUpdated { .. })) => {
                let n = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                self.rep.status.lock().routing_table = n;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(libp2p::kad::Event::OutboundQueryProgressed {
                result: libp2p::kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            })) => {
                // A peer looked up for `replicate --from`: dial it if it was found.
                for p in found.peers {
                    if self.waiting.iter().any(|w| w.1 == p.peer_id) && !self.swarm.is_connected(&p.peer_id) {
                        for addr in p.addrs.into_iter().take(8) {
                            let _ = self.swarm.dial(fresh_port(addr.with_p2p(p.peer_id).unwrap_or_else(|a| a)));
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(libp2p::autonat::Event::StatusChanged { new, .. })) => {
                tracing::info!(status = ?new, "reachability");
                self.rep.status.lock().nat = match new {
                    libp2p::autonat::NatStatus::Public(a) => format!("public {a}"),
                    libp2p::autonat::NatStatus::Private => "private".into(),
                    libp2p::autonat::NatStatus::Unknown => "unknown".into(),
                };
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => {
                tracing::info!(peer = %e.remote_peer_id, result = ?e.result.map(|c| c.to_string()), "hole punching");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event { peer, result: Ok(rtt), .. })) => {
                if let Some(p) = self.rep.status.lock().connected.get_mut(&peer.to_string()) {
                    p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
            }
            _ => {}
        }
    }

    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.known.len() < MAX_KNOWN_PEERS || self.known.contains_key(&peer) {
            let _ = self.rep.kv.put(&peer_key(&peer), addr.to_string().as_bytes(), None);
            self.known.insert(peer, addr);
        }
    }

    fn on_sync(&mut self, e: request_response::Event<Vec<u8>, Vec<u8>>) {
        match e {
            request_response::Event::Message { peer, message, .. } => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        if !self.admit(peer) || !self.allowed(&peer) {
                            return;
                        }
                        let reply = if live::is_live(&request) {
                            self.on_live(peer, &request);
                            Vec::new()
                        } else {
                            let res = blocking(|| self.rep.peer.lock().on_request(peer, &request));
                            match res {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!(%peer, error = %e, "sync request refused");
                                    if self.rep.peer.lock().is_banned(&peer) {
                                        self.rep.status.lock().bans += 1;
                                        let _ = self.swarm.disconnect_peer_id(peer);
                                        return;
                                    }
                                    match e {
                                        // Said to the peer, which may have a stale view of the account.
                                        ues_sync::SyncError::NotAuthorized(_) => {
                                            ues_sync::recon::reject(&e.to_string(), false)
                                        }
                                        _ => return,
                                    }
                                }
                            }
                        };
                        let _ = self.swarm.behaviour_mut().sync.send_response(channel, reply);
                    }
                    request_response::Message::Response { request_id, response } => {
                        if self.live.remove(&request_id) {
                            return;
                        }
                        let next = blocking(|| self.rep.peer.lock().on_response(peer, &response));
                        match next {
                            Ok(Next::Send(req)) => {
                                self.swarm.behaviour_mut().sync.send_request(&peer, req);
                            }
                            Ok(Next::Done(outcome)) => {
                                let stats = self.rep.peer.lock().last_stats();
                                tracing::info!(%peer, ?outcome, sent = stats.entries_sent, applied = stats.entries_applied, "sync session done");
                                let name = match outcome {
                                    ues_sync::recon::Outcome::Converged => "converged",
                                    ues_sync::recon::Outcome::Diverged => "diverged",
                                    ues_sync::recon::Outcome::Finished => "finished",
                                    ues_sync::recon::Outcome::Running => "running",
                                };
                                *self.rep.status.lock().sessions.entry(name).or_default() += 1;
                                self.rep.emit(json!({"topic": "sync", "event": "session", "peerId": peer.to_string(), "outcome": name,
                                "sent": stats.entries_sent, "applied": stats.entries_applied}));
                            }
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "sync session failed");
                                *self.rep.status.lock().sessions.entry("failed").or_default() += 1;
                            }
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. }
                if !self.live.remove(&request_id) =>
            {
                tracing::debug!(%peer, %error, "sync request failed");
                self.rep.peer.lock().abort(&peer);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            _ => {}
        }
    }

    fn on_live(&mut self, from: PeerId, bytes: &[u8]) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().filter(|p| self.allowed(p)).collect();
        let res = blocking(|| {
            let mut p = self.rep.peer.lock();
            let by_device = |rep: &Replica, peer: &PeerId, did: &Did| super::may_sync(true, rep, peer, did);
            live::receive_for(&mut p.replica, bytes, &from, &peers, &by_device)
        });
        self.rep.status.lock().live_received += 1;
        match res {
            Ok(r) => {
                if r.report.refused.iter().any(|x| super::is_misbehaviour(&x.reason)) {
                    self.ban(from, "pushed forged or malformed entries");
                    return;
                }
                // More operations awaiting authorizations than the bounds hold: an honest peer
                // rarely relays so many, a hostile one keeps trying.
                if r.report.refused.iter().any(|x| matches!(x.reason, ues_sync::Refused::PendingFull))
                    && self.rep.peer.lock().strike(from, "pushed operations past the pending bound")
                {
                    self.rep.status.lock().bans += 1;
                    let _ = self.swarm.disconnect_peer_id(from);
                    return;
                }
                for (msg, targets) in r.forward {
                    for t in targets {
                        let id = self.swarm.behaviour_mut().sync.send_request(&t, msg.clone());
                        self.live.insert(id);
                    }
                }
            }
            // Nothing of it was kept. An honest peer may push an account whose authorization
            // has not reached this node yet, now and then; a stranger keeps doing it.
            Err(ues_sync::SyncError::NotAuthorized(did)) => {
                let why = format!("pushed entries of {did}, which it may not sync");
                if self.rep.peer.lock().refused(from, &why) {
                    self.rep.status.lock().bans += 1;
                    let _ = self.swarm.disconnect_peer_id(from);
                }
            }
            Err(e) => self.ban(from, &e.to_string()),
        }
    }

    fn on_head(&mut self, from: PeerId, data: &[u8]) {
        self.rep.status.lock().heads_received += 1;
        let Ok(head) = Head::verify(data) else {
            tracing::debug!(%from, "bad head announcement");
            return;
        };
        if !self.rep.is_tracked(&head.did) {
            return;
        }
        let behind = {
            let p = self.rep.peer.lock();
            p.replica.is_authorized(&head.did, &head.device) && !head.matches(&p.replica)
        };
        if behind {
            let source = peer_of(&head.device).filter(|p| self.swarm.is_connected(p)).unwrap_or(from);
            self.start_session(source);
        }
    }

    fn ask_account(&mut self, did: Did, from: PeerId, reply: Reply) {
        let req = json!({ "did": did.to_string() }).to_string().into_bytes();
        let id = self.swarm.behaviour_mut().account.send_request(&from, req);
        self.handovers.insert(id, (did, from, reply));
    }

    fn on_account(&mut self, e: request_response::Event<Vec<u8>, Vec<u8>>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    if !self.admit(peer) {
                        return;
                    }
                    let answer = if request.len() > MAX_HANDOVER {
                        Handover::refusal("request too large")
                    } else {
                        blocking(|| self.rep.hand_over(&self.st, &peer, &request))
                    };
                    let _ = self.swarm.behaviour_mut().account.send_response(channel, answer);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some((did, from, reply)) = self.handovers.remove(&request_id) else { return };
                    let res = blocking(|| self.rep.take_over(&self.st, &did, &response));
                    if res.is_ok() {
                        let _ = self.swarm.behaviour_mut().gossip.subscribe(&repo_topic(&did));
                        self.provide(&did);
                        self.rep.peer.lock().abort(&from);
                        self.start_session(from);
                    }
                    let _ = reply.send(res);
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((_, _, reply)) = self.handovers.remove(&request_id) {
                    let _ = reply.send(Err(format!("the account request failed: {error}")));
                }
            }
            _ => {}
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Dial(addr, reply) => match self.swarm.dial(fresh_port(addr.clone())) {
                Ok(()) => self.dials.push((addr, reply, Instant::now())),
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            Command::Replicate { did, from, addr, reply } => {
                if let Some(a) = &addr {
                    self.remember(from, a.clone());
                }
                if self.swarm.is_connected(&from) {
                    self.ask_account(did, from, reply);
                } else {
                    match addr.or_else(|| self.known.get(&from).cloned()) {
                        Some(a) => {
                            if let Err(e) = self.swarm.dial(fresh_port(a.clone().with_p2p(from).unwrap_or(a))) {
                                let _ = reply.send(Err(e.to_string()));
                                return;
                            }
                        }
                        // No address: whatever the routing table and mDNS know, and a DHT lookup.
                        None => {
                            let _ = self.swarm.dial(DialOpts::peer_id(from).allocate_new_port().build());
                            self.swarm.behaviour_mut().kad.get_closest_peers(from);
                        }
                    }
                    self.waiting.push((did, from, reply, Instant::now()));
                }
            }
            Command::Local(entries) => self.outbox.extend(entries),
            Command::Announce(did) => {
                self.provide(&did);
                self.announce.insert(did);
            }
        }
    }

    /// Every 50 ms: bring repositories up to their replicas, push local entries live, announce
    /// heads that moved.
    fn flush(&mut self) {
        let mut committed = false;
        for did in self.rep.tracked() {
            match blocking(|| self.rep.materialize(&self.st.accounts, &did)) {
                Ok(Some(_)) => {
                    committed = true;
                    self.announce.insert(did);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%did, error = %e, "could not commit operations from peers"),
            }
        }
        if committed {
            self.st.firehose.notify();
        }
        self.copy_blobs();
        if !self.outbox.is_empty() {
            let entries = std::mem::take(&mut self.outbox);
            let peers: Vec<PeerId> = self.swarm.connected_peers().copied().filter(|p| self.allowed(p)).collect();
            // Each peer gets only the entries of accounts it may sync.
            let dids: Vec<Option<Did>> = entries
                .iter()
                .map(|s| match ues_sync::Entry::decode(&s.bytes) {
                    Ok(e) => Some(e.did().clone()),
                    Err(_) => None,
                })
                .collect();
            for p in &peers {
                let mine: Vec<Signed> = entries
                    .iter()
                    .zip(&dids)
                    .filter(|(_, d)| d.as_ref().is_some_and(|d| self.rep.may_sync(p, d)))
                    .map(|(s, _)| s.clone())
                    .collect();
                for chunk in mine.chunks(LIVE_CHUNK) {
                    let id = self.swarm.behaviour_mut().sync.send_request(p, live::encode(chunk));
                    self.live.insert(id);
                }
            }
        }
        for did in std::mem::take(&mut self.announce) {
            let commit = self.st.accounts.get(&did).ok().flatten().map(|a| (a.head.to_bytes(), a.rev.clone()));
            let head = Head::of(&self.rep.peer.lock().replica, &did, commit, self.rep.device);
            let msg = head.sign(&self.rep.device_key);
            if let Err(e) = self.swarm.behaviour_mut().gossip.publish(repo_topic(&did), msg) {
                tracing::trace!(%did, error = %e, "head not announced");
            }
        }
    }
}

/// Counts one request of `peer` in the current second; whether it went past `limit`.
fn over_rate(counts: &mut HashMap<PeerId, (Instant, u32)>, peer: PeerId, limit: u32) -> bool {
    let now = Instant::now();
    let e = counts.entry(peer).or_insert((now, 0));
    if now.duration_since(e.0) >= Duration::from_secs(1) {
        *e = (now, 0);
    }
    e.1 += 1;
    e.1 > limit
}

/// The node's own dials take a fresh local port. By default libp2p dials from the port it
/// listens on (hole punching needs that, and dials it through its own behaviour); a dial from
/// that port to a peer just disconnected collides with the old connection's TIME_WAIT
/// (`EADDRINUSE`) and fails again at every retry until the old socket is gone.
fn fresh_port(addr: Multiaddr) -> DialOpts {
    DialOpts::unknown_peer_id().address(addr).allocate_new_port().build()
}
