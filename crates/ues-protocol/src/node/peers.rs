//! What the faces may ask of the peer-to-peer service, without knowing it: the p2p face
//! implements [`PeerService`] and `ues run` hands it to the [`Node`](super::Node); XRPC's
//! admin methods, `/ws` and REST reach peers and replication only through it.

use std::collections::BTreeMap;

use libp2p::{Multiaddr, PeerId};
use serde_json::Value;
use tokio::sync::oneshot;
use ues_sync::Signed;
use ues_sync::repo::accounts::{AccountError, Accounts};
use ues_sync::repo::crypto::Keypair;
use ues_sync::repo::ipld::storage::Blockstore;
use ues_sync::repo::repo::{CommitResult, Write};
use ues_sync::repo::syntax::Did;

/// The node's accounts, as the peer-to-peer service sees them.
pub type NodeAccounts = Accounts<std::sync::Arc<dyn Blockstore>>;

/// The peer-to-peer service, as the node's faces use it.
pub trait PeerService: Send + Sync {
    /// Commits writes from a client of this node; for a replicated account the commit and the
    /// signed operations that carry it to the other replicas are made together.
    fn local_commit(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        writes: &[Write],
        swap: Option<cid::Cid>,
    ) -> Result<CommitResult, AccountError>;

    /// The accounts this node replicates.
    fn tracked(&self) -> Vec<Did>;

    /// Peer and replication counters.
    fn status(&self) -> Status;

    /// Peer and sync events as they happen (`{"topic": "peers"|"sync", ...}`).
    fn events(&self) -> tokio::sync::broadcast::Receiver<Value>;

    /// Replication state of every replicated account (for the operator).
    fn describe(&self, accounts: &NodeAccounts) -> Value;

    /// Authorizes (or revokes) the device behind `peer` for a hosted account.
    fn authorize_peer(&self, accounts: &NodeAccounts, did: &Did, peer: &PeerId, revoke: bool) -> Result<(), String>;

    /// Rotates a replicated account's signing key from `outgoing` to `new`; `plc`: the signed
    /// PLC operation publishing `new`.
    fn rotate(
        &self,
        accounts: &NodeAccounts,
        did: &Did,
        outgoing: &Keypair,
        new: &Keypair,
        plc: Option<String>,
    ) -> Result<(), String>;

    /// Queues a command for the swarm task (refused at once when its queue is full).
    fn command(&self, c: Command) -> Result<(), String>;
}

/// What the swarm task is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Dial an address.
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    /// Fetch an account from a peer and replicate it.
    Replicate {
        /// The account.
        did: Did,
        /// The peer to fetch it from.
        from: PeerId,
        /// Where the peer listens, when not connected.
        addr: Option<Multiaddr>,
        /// The outcome.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Entries written here: push them live.
    Local(Vec<Signed>),
    /// An account's head moved: announce it.
    Announce(Did),
}

/// A connected peer, as this node sees it.
#[derive(Debug, Default, Clone)]
pub struct PeerStatus {
    /// Its address.
    pub addr: String,
    /// Its agent version, once identify has run.
    pub agent: Option<String>,
    /// The last ping's round trip, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Peer and replication status for admins and metrics.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// Connected peers by peer id.
    pub connected: BTreeMap<String, PeerStatus>,
    /// Addresses this node listens on.
    pub listening: Vec<String>,
    /// Sessions completed, by outcome.
    pub sessions: BTreeMap<&'static str, u64>,
    /// Live pushes received.
    pub live_received: u64,
    /// Head announcements received.
    pub heads_received: u64,
    /// Peers banned since start.
    pub bans: u64,
    /// Commits made from remote operations.
    pub remote_commits: u64,
    /// Times the repositories were brought to their replicas by comparing every record (the
    /// first time after a start), and by comparing only the paths that changed.
    pub materialized_full: u64,
    /// See `materialized_full`.
    pub materialized_changes: u64,
    /// Reachability as AutoNAT last judged it (`unknown`, `public <addr>`, `private`).
    pub nat: String,
    /// Peers in the Kademlia routing table.
    pub routing_table: usize,
    /// Peers found on the local network (mDNS).
    pub mdns_discovered: u64,
    /// Blobs copied from the account's other devices.
    pub blobs: BlobStatus,
}

/// Blobs travelling between the devices of replicated accounts.
#[derive(Debug, Default, Clone)]
pub struct BlobStatus {
    /// Blobs records reference that this node does not hold yet, by account.
    pub pending: BTreeMap<String, u64>,
    /// Copies under way.
    pub copying: Vec<BlobCopy>,
    /// Blobs copied in full.
    pub copied: u64,
    /// Blobs taken without their bytes travelling (the content was here already).
    pub adopted: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Copies that failed (to be tried again later, from any device that holds the blob).
    pub failed: u64,
    /// Blob pieces served to other devices.
    pub pieces_served: u64,
}

/// A blob copy under way.
#[derive(Debug, Clone)]
pub struct BlobCopy {
    /// The account.
    pub did: String,
    /// The blob.
    pub cid: String,
    /// Bytes held so far.
    pub received: u64,
    /// Its size, once the sender has said it.
    pub size: Option<u64>,
    /// The device it comes from.
    pub peer: String,
}
