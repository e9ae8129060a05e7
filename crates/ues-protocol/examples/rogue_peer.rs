//! A hostile libp2p peer, for soak runs (`scripts/soak.py`): for a bounded time, one stranger
//! identity after another connects to a node and pushes live entries carrying ~256 KB records,
//! half for accounts the node does not replicate and half for one it does (signed by device
//! keys the account never authorized), until the node drops it; then the next identity.
//!
//!     cargo run --example rogue_peer -- /ip4/127.0.0.1/tcp/PORT/p2p/PEER did:plc:... SECONDS
//!
//! Prints a JSON line with what it did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ues_protocol::p2p::libp2p::multiaddr::Protocol;
use ues_protocol::p2p::libp2p::request_response::{Event as RrEvent, Message as RrMessage};
use ues_protocol::p2p::libp2p::swarm::SwarmEvent;
use ues_protocol::p2p::libp2p::{Multiaddr, PeerId};
use ues_protocol::p2p::{BehaviourEvent, keypair, tcp_swarm};
use ues_sync::entry::{DAG_CBOR, Entry, Op, OpKind};
use ues_sync::hlc::Timestamp;
use ues_sync::repo::ipld::{Ipld, cid_sha256, dagcbor};
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};

const COLLECTION: &str = "dev.ues.soak.note";
/// Pushes per identity.
const PUSHES: u64 = 12;

fn put(device: &ed25519_dalek::SigningKey, did: &Did, seq: u64) -> Vec<u8> {
    let record = Ipld::Map(BTreeMap::from([
        ("$type".to_string(), Ipld::String(COLLECTION.into())),
        ("text".to_string(), Ipld::String("r".repeat(256_000))),
    ]));
    let bytes = dagcbor::encode(&record);
    let cid = cid_sha256(DAG_CBOR, &bytes);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let op = Op::sign(
        device,
        did.clone(),
        seq,
        Timestamp { wall_ms: now as u64, logical: 0 },
        Nsid::new(COLLECTION).expect("a valid NSID"),
        RecordKey::new(format!("r{seq}")).expect("a valid record key"),
        OpKind::Put(cid),
    );
    ues_sync::live::encode(&[ues_sync::Signed { bytes: Entry::Op(op).encode(), block: Some((cid, bytes)) }])
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, tracked, seconds] = args.as_slice() else {
        return Err("usage: rogue_peer MULTIADDR/p2p/PEER TRACKED_DID SECONDS".into());
    };
    let addr: Multiaddr = addr.parse()?;
    let Some(Protocol::P2p(node)) = addr.iter().last() else { return Err("the address names no /p2p/ peer".into()) };
    let node: PeerId = node;
    let tracked = Did::new(tracked.as_str())?;
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    let (mut identities, mut sent, mut answered, mut dropped) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        identities += 1;
        let seed: [u8; 32] = rand::random();
        let device = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mut queue = (1..=PUSHES).map(|k| {
            let did = if k % 2 == 0 {
                tracked.clone()
            } else {
                let id: String = (0..24).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect();
                Did::new(format!("did:plc:{id}")).expect("a valid DID")
            };
            put(&device, &did, k)
        });
        let mut swarm = tcp_swarm(keypair(seed))?;
        swarm.dial(addr.clone())?;
        let round = async {
            loop {
                let send = match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node => 2,
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(
                        RrEvent::Message { message: RrMessage::Response { .. }, .. } | RrEvent::OutboundFailure { .. },
                    )) => {
                        answered += 1;
                        1
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == node => {
                        dropped += 1;
                        return;
                    }
                    SwarmEvent::OutgoingConnectionError { .. } => return,
                    _ => 0,
                };
                for _ in 0..send {
                    match queue.next() {
                        Some(p) => {
                            sent += 1;
                            swarm.behaviour_mut().sync.send_request(&node, p);
                        }
                        None => return,
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), round).await;
        drop(swarm);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(r#"{{"identities": {identities}, "pushes": {sent}, "answered": {answered}, "dropped": {dropped}}}"#);
    Ok(())
}
