//! # ues-apps: layer 6 of the UES node
//!
//! Applications hosted by the node: the social feed, end-to-end encrypted chat, the digital
//! asset registry with WASM contracts, and incrementally maintained lenses.
//!
//! ## Layer contract
//! Depends only on `ues-protocol`, plugging its routes and event topics into the registries that
//! layer defines. Nothing below knows this crate exists.
//!
//! Not built yet: this crate holds its contract and re-exports the layer below.

pub use ues_protocol as protocol;
