//! # ues-repo: layer 3 of the UES node
//!
//! Identities (DIDs, handles, keys), signed repositories (v3 commits over the MST), records,
//! blobs, the Lexicon engine and the SQLite collection indexes.
//!
//! Built so far: the validated identifier types ([`syntax`]) and signing keys ([`crypto`]).
//!
//! ## Layer contract
//! Depends only on `ues-ipld`. Knows accounts and repositories of one node; does not know
//! replication between nodes (layer 4) or any wire protocol (layer 5).

pub mod accounts;
pub mod blobs;
pub mod commit;
pub mod crypto;
pub mod dids;
pub mod firehose;
pub mod identity;
pub mod lexicon;
pub mod lexicon_evolution;
pub mod plc;
pub mod repo;
pub mod seal;
pub mod syntax;

pub use ues_ipld as ipld;
