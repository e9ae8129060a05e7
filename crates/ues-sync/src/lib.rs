//! # ues-sync: layer 4 of the UES node
//!
//! The signed operation log, hybrid logical clocks and version vectors, the deterministic merge,
//! and the range-based reconciliation state machine that replicas run over any transport.
//!
//! - [`entry`]: signed operations, device authorizations and key rotations (DAG-CBOR, BLAKE3
//!   ids).
//! - [`rotation`]: the signing-key rotation a revocation sets off, the new key sealed to the
//!   devices that stay.
//! - [`replica`]: the verified log of some accounts in HLC order, and the repositories
//!   materialized from it (a function of the set of entries).
//! - [`recon`]: the reconciliation session (messages in `proto/ues_sync.proto`).
//! - [`live`]: single entries pushed as they are written, relayed without echoes.
//! - [`head`]: signed head announcements (fingerprint, size, latest commit) for gossip.
//! - [`handover`]: the account hand-over to a new device, with the account's authorizations.
//! - [`blobcopy`]: pieces of blobs one device of an account copies from another.
//! - [`hlc`], [`vv`]: clocks.
//! - [`sim`]: generated logs and measured sessions for benchmarks.
//!
//! ## Layer contract
//! Depends only on `ues-repo`. Transport-agnostic: it runs in memory in tests and over libp2p in
//! the node (layer 5); it never opens a socket.

pub mod blobcopy;
pub mod entry;
pub mod handover;
pub mod head;
pub mod hlc;
pub mod live;
pub mod recon;
pub mod replica;
pub mod rotation;
pub mod sim;
pub mod vv;

/// The reconciliation messages, generated from `proto/ues_sync.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/ues.sync.v1.rs"));
}

pub use entry::{DeviceAuth, Entry, EntryError, EntryId, KeyRotation, Op, OpKind};
pub use recon::{
    Outcome, Scope, ScopeCache, Session, SessionStats, SessionSummary, SyncConfig, SyncError, run_session,
};
pub use replica::{
    ACK_COLLECTION, AccountKeys, ApplyReport, Change, Refusal, Refused, Replica, ReplicaError, Signed,
    check_record_block,
};
pub use ues_repo as repo;
