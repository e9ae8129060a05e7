//! # ues-ipld: layer 2 of the UES node
//!
//! CIDs, strict canonical DAG-CBOR ([`dagcbor`]), AT Protocol JSON <-> IPLD ([`json`]), CAR v1
//! streams ([`car`]), a typed IPLD store with path resolution ([`IpldStore`]), and the AT Protocol
//! Merkle Search Tree ([`mst`]) over the blockstore, bit-exact with Bluesky's implementation.
//!
//! ## Layer contract
//! Depends only on `ues-storage`. Knows the IPLD data model and the MST; does not know
//! repositories, accounts, signatures or lexicons (layer 3).

pub mod car;
pub mod dagcbor;
pub mod json;
pub mod mst;
mod store;
mod value;

use cid::Cid;
use multihash::Multihash;
use sha2::Digest;

pub use dagcbor::{CborError, DecodeOptions};
pub use mst::{Mst, MstLimits};
pub use store::{IpldStore, StoreError};
pub use ues_storage as storage;
pub use value::Ipld;

/// Multicodec of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec of raw bytes.
pub const RAW: u64 = 0x55;

/// CIDv1 with sha2-256 of `bytes` (the form AT Protocol requires).
pub fn cid_sha256(codec: u64, bytes: &[u8]) -> Cid {
    let digest = sha2::Sha256::digest(bytes);
    Cid::new_v1(codec, Multihash::<64>::wrap(0x12, &digest).expect("32-byte digest fits"))
}

/// Errors of the Merkle Search Tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MstError {
    /// A node the tree links to is not in the store.
    #[error("MST node {0} is missing from the store")]
    MissingNode(Cid),
    /// A node is not valid DAG-CBOR.
    #[error("MST node is not strict DAG-CBOR: {0}")]
    Cbor(#[from] CborError),
    /// A node's structure is wrong.
    #[error("malformed MST node: {0}")]
    Malformed(String),
    /// Keys within a node are not strictly ascending.
    #[error("MST keys out of order at {0:?}")]
    UnsortedKeys(String),
    /// A key sits on a layer its hash does not give it.
    #[error("MST key {key:?} has height {height} but sits on layer {layer}")]
    WrongHeight {
        /// The key.
        key: String,
        /// Its height from SHA-256.
        height: u8,
        /// The layer of the node holding it.
        layer: u8,
    },
    /// A node links to a subtree with a CID outside the blessed form (v1, dag-cbor, sha2-256).
    #[error("MST node links to {0}, which is not a dag-cbor sha2-256 CIDv1")]
    BadNodeLink(Cid),
    /// A node holds more entries than the limit.
    #[error("MST node has {entries} entries, over the limit of {max}")]
    TooManyEntries {
        /// Entries found.
        entries: usize,
        /// The limit.
        max: usize,
    },
    /// A node's encoding is larger than the limit.
    #[error("MST node {cid} is {bytes} bytes, over the limit")]
    NodeTooLarge {
        /// The node.
        cid: Cid,
        /// Its size.
        bytes: usize,
    },
    /// A key that cannot be stored (empty or too long).
    #[error("invalid MST key {0:?}")]
    InvalidKey(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] ues_storage::Error),
}
