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
//! Modules: [`node`] (the core beneath the faces), [`http`] (operational endpoints and the
//! HTTP(S) server), [`acme`] (certificates from an ACME server), [`xrpc`] (the AT Protocol server), [`p2p`] (the
//! libp2p node and the replication bridge), [`gateway`] (the `/ws` event server and the
//! application registry) and [`rest`] (`/api/v1` with its OpenAPI document).

pub mod acme;
pub mod gateway;
pub mod http;
pub mod node;
pub mod oauth;
pub mod p2p;
pub mod rest;
pub mod xrpc;

pub use ues_sync as sync;
