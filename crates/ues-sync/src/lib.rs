//! # ues-sync: layer 4 of the UES node
//!
//! The signed operation log, hybrid logical clocks and version vectors, the deterministic merge,
//! and the range-based reconciliation state machine that replicas run over any transport.
//!
//! ## Layer contract
//! Depends only on `ues-repo`. Transport-agnostic: it runs in memory in tests and over libp2p in
//! the node (layer 5); it never opens a socket.
//!
//! Built so far: hybrid logical clocks ([`hlc`]) and version vectors ([`vv`]). Not built yet:
//! device authorizations, the signed operation log, the merge and reconciliation.

pub mod hlc;
pub mod vv;

pub use ues_repo as repo;
