//! # ues-protocol: layer 5 of the UES node
//!
//! The node's faces to the outside world: the XRPC server AT Protocol clients use, the libp2p
//! node other UES nodes peer with, and the WebSocket/REST gateway for mobile and web apps.
//!
//! ## Layer contract
//! Depends only on `ues-sync` (and, through it, the layers below). Applications above plug their
//! routes and event topics in through registries this crate defines; this crate never names them.
//! Every server here is a plain `fn router(state) -> Router`, testable without sockets.
//!
//! Built so far: the HTTP server's operational endpoints ([`http`]) and the first XRPC methods
//! ([`xrpc`]): server/session, identity.resolveHandle and the record endpoints; [`p2p`] carries
//! replica reconciliation over libp2p request-response (started).

pub mod gateway;
pub mod http;
pub mod p2p;
pub mod xrpc;
