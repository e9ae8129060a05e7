//! What a rogue libp2p peer in the tests checks after misbehaving.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::StreamExt;
use ues_protocol::p2p::Behaviour;
use ues_protocol::p2p::libp2p::swarm::SwarmEvent;
use ues_protocol::p2p::libp2p::{Multiaddr, PeerId, Swarm};

/// Dials again: the node accepts the transport and drops it at once (the peer is banned), or
/// refuses it; waits at most 30 s.
pub async fn dropped_again(swarm: &mut Swarm<Behaviour>, node: PeerId, addr: Multiaddr) {
    swarm.dial(addr).unwrap();
    let run = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == node => return,
                SwarmEvent::OutgoingConnectionError { .. } => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("a banned peer is dropped again");
}
