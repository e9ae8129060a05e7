//! The node core beneath the faces: what every face (`xrpc`, `rest`, `gateway`, `p2p`) shares
//! and none owns. A face depends on this module and on no other face.
//!
//! - [`credentials`]: emails, password hashes and app passwords, the node's own tables.
//! - [`sequencer`]: the durable event log every commit writes its event into.

pub mod credentials;
pub mod sequencer;
