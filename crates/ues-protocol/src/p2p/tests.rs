//! Behaviour tests over libp2p's in-memory transport (no ports, no sleeps): two swarms with
//! Noise and Yamux reconcile their replicas through request-response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, SwarmBuilder, Transport, noise, yamux};
use ues_sync::hlc::Hlc;
use ues_sync::recon::{Outcome, Scope};
use ues_sync::repo::crypto::{KeyType, Keypair};
use ues_sync::repo::ipld::Ipld;
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};
use ues_sync::{Change, Replica};

use super::*;

fn swarm() -> Swarm<Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                MemoryTransport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .boxed(),
            )
        })
        .expect("memory transport")
        .with_behaviour(Behaviour::new)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

struct Account {
    did: Did,
    key: Keypair,
}

fn replicas(n_a: usize, n_b: usize) -> (Account, Replica, Replica) {
    let key = Keypair::generate(KeyType::K256);
    let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
    let keys = Arc::new(HashMap::from([(did.clone(), key.public())]));
    let dev = |b: u8| Some(ed25519_dalek_key(b));
    let mut a = Replica::in_memory(keys.clone(), Hlc::new(60_000), dev(1));
    let mut b = Replica::in_memory(keys, Hlc::new(60_000), dev(2));
    let auths = vec![
        a.authorize(&key, &did, a.device_id().unwrap(), false).unwrap(),
        a.authorize(&key, &did, b.device_id().unwrap(), false).unwrap(),
    ];
    b.apply(auths);
    let post = |i: usize| {
        Change::Put(Ipld::Map(
            [
                ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
                ("text".to_string(), Ipld::String(format!("post {i}"))),
            ]
            .into(),
        ))
    };
    let nsid = Nsid::new("app.bsky.feed.post").unwrap();
    for i in 0..n_a {
        a.write(&did, nsid.clone(), RecordKey::new(format!("a{i}")).unwrap(), post(i)).unwrap();
    }
    for i in 0..n_b {
        b.write(&did, nsid.clone(), RecordKey::new(format!("b{i}")).unwrap(), post(i)).unwrap();
    }
    (Account { did, key }, a, b)
}

fn ed25519_dalek_key(b: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[b; 32])
}

#[tokio::test]
async fn two_swarms_reconcile_over_request_response() {
    let (acct, ra, rb) = replicas(300, 120);
    let scope = Scope::new([acct.did.clone()]);
    let cfg = SyncConfig { leaf: 8, ..SyncConfig::default() };
    let (mut pa, mut pb) = (SyncPeer::new(ra, cfg), SyncPeer::new(rb, cfg));
    let (mut a, mut b) = (swarm(), swarm());
    let addr: Multiaddr = format!("/memory/{}", rand::random::<u64>()).parse().unwrap();
    let run = run_pair(&mut a, &mut pa, &mut b, &mut pb, scope.clone(), addr);
    let (outcome, _) = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the session ends");
    assert!(matches!(outcome, Outcome::Converged | Outcome::Finished), "{outcome:?}");
    assert_eq!(pa.replica.len(), pb.replica.len());
    assert_eq!(pa.replica.root(&acct.did).unwrap(), pb.replica.root(&acct.did).unwrap());
    assert_eq!(pa.replica.records(&acct.did).unwrap().len(), 420);
    // The converged repository signs identically on both sides.
    assert_eq!(pa.replica.commit(&acct.did, &acct.key).unwrap(), pb.replica.commit(&acct.did, &acct.key).unwrap());
}

#[tokio::test]
async fn oversized_frames_are_refused_before_reading() {
    let mut codec = SyncCodec;
    let mut frame = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0; 16]);
    let mut io = futures::io::Cursor::new(frame);
    let err = request_response::Codec::read_request(&mut codec, &SYNC_PROTOCOL, &mut io).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A garbage request gets a protocol error, not a panic, and starts nothing.
    let (_, _, rb) = replicas(0, 0);
    let mut pb = SyncPeer::new(rb, SyncConfig::default());
    let rogue = PeerId::random();
    assert!(matches!(pb.on_request(rogue, b"\x0a\x03abc"), Err(SyncError::Protocol(_))));
    assert!(pb.answering.is_empty());
    // It is banned: even a well-formed Hello is refused now; other peers are served.
    assert!(pb.is_banned(&rogue));
    let (acct, ra, _) = replicas(3, 0);
    let scope = Scope::new([acct.did.clone()]);
    let mut pa = SyncPeer::new(ra, SyncConfig::default());
    let hello = pa.start(rogue, scope.clone());
    assert!(matches!(pb.on_request(rogue, &hello), Err(SyncError::Rejected(_))));
    let friend = PeerId::random();
    let hello = pa.start(friend, scope);
    assert!(pb.on_request(friend, &hello).is_ok());
}

/// The same over real TCP on 127.0.0.1, with node identities from fixed Ed25519 secrets (as
/// the data directory holds them): identify runs both ways and the replicas converge.
#[tokio::test]
async fn two_nodes_reconcile_over_tcp_on_loopback() {
    let (acct, ra, rb) = replicas(50, 70);
    let scope = Scope::new([acct.did.clone()]);
    let (mut pa, mut pb) = (SyncPeer::new(ra, SyncConfig::default()), SyncPeer::new(rb, SyncConfig::default()));
    let mut a = tcp_swarm(keypair([7; 32])).unwrap();
    let mut b = tcp_swarm(keypair([8; 32])).unwrap();
    assert_eq!(*a.local_peer_id(), keypair([7; 32]).public().to_peer_id(), "the peer id follows from the key");
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let (outcome, seen) =
        tokio::time::timeout(Duration::from_secs(60), run_pair(&mut a, &mut pa, &mut b, &mut pb, scope, addr))
            .await
            .expect("the session ends");
    assert!(matches!(outcome, Outcome::Converged | Outcome::Finished), "{outcome:?}");
    assert_eq!(pa.replica.root(&acct.did).unwrap(), pb.replica.root(&acct.did).unwrap());
    assert_eq!(pa.replica.records(&acct.did).unwrap().len(), 120);
    // Identify ran both ways (now, or shortly after the session on this connection).
    let mut seen = seen;
    let both = |s: &Vec<&str>| s.contains(&"a identified b") && s.contains(&"b identified a");
    let wait = async {
        while !both(&seen) {
            tokio::select! {
                ev = a.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { .. })) = ev { seen.push("a identified b") },
                ev = b.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { .. })) = ev { seen.push("b identified a") },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("identify both ways");
}

/// A head announcement published by A on `ues/repo/<did>` reaches B, verified.
#[tokio::test]
async fn head_announcements_travel_by_gossip() {
    let (acct, ra, _) = replicas(5, 0);
    let (mut a, mut b) = (swarm(), swarm());
    let topic = repo_topic(&acct.did);
    a.behaviour_mut().gossip.subscribe(&topic).unwrap();
    b.behaviour_mut().gossip.subscribe(&topic).unwrap();
    let addr: Multiaddr = format!("/memory/{}", rand::random::<u64>()).parse().unwrap();
    b.listen_on(addr.clone()).unwrap();
    a.dial(addr).unwrap();
    let key = ed25519_dalek_key(1);
    let head = ues_sync::head::Head::of(&ra, &acct.did, None, ra.device_id().unwrap());
    let bytes = head.sign(&key);
    let run = async {
        loop {
            tokio::select! {
                ev = a.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Gossip(libp2p::gossipsub::Event::Subscribed { .. })) = ev {
                    // B has joined the topic: announce.
                    a.behaviour_mut().gossip.publish(topic.clone(), bytes.clone()).unwrap();
                },
                ev = b.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Gossip(libp2p::gossipsub::Event::Message { message, .. })) = ev {
                    return ues_sync::head::Head::verify(&message.data).unwrap();
                },
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(30), run).await.expect("B hears the announcement");
    assert_eq!(got, head);
    assert!(got.matches(&ra));
}
