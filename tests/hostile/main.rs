//! Attacks on a real `ues run` node, one test per threat, each through a real socket on
//! 127.0.0.1 with bounded loops. Every test asserts what the node must hold to: bounded memory
//! (RSS read from `/proc`), an unrelated request still answered within a deadline, stored data
//! unchanged, the attacker refused with the right error (or banned, for peers).
//!
//! `SECURITY.md` names the threat each module covers.

#[path = "../support/dpop.rs"]
mod dpop;
#[path = "../support/rogue.rs"]
mod rogue;
#[path = "../support/node.rs"]
mod support;

mod common;

mod apps;
mod auth;
mod data;
mod feed;
mod http;
mod keys;
mod oauth;
mod p2p;
