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

/// Reconciliation over QUIC on 127.0.0.1 (the node listens on TCP and QUIC alike).
#[tokio::test]
async fn two_nodes_reconcile_over_quic_on_loopback() {
    let (acct, ra, rb) = replicas(40, 25);
    let scope = Scope::new([acct.did.clone()]);
    let (mut pa, mut pb) = (SyncPeer::new(ra, SyncConfig::default()), SyncPeer::new(rb, SyncConfig::default()));
    let mut a = tcp_swarm(keypair([17; 32])).unwrap();
    let mut b = tcp_swarm(keypair([18; 32])).unwrap();
    let addr: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let (outcome, _) =
        tokio::time::timeout(Duration::from_secs(60), run_pair(&mut a, &mut pa, &mut b, &mut pb, scope, addr))
            .await
            .expect("the session ends");
    assert!(matches!(outcome, Outcome::Converged | Outcome::Finished), "{outcome:?}");
    assert_eq!(pa.replica.root(&acct.did).unwrap(), pb.replica.root(&acct.did).unwrap());
    assert_eq!(pa.replica.records(&acct.did).unwrap().len(), 65);
}

async fn listen(s: &mut Swarm<Behaviour>, addr: &str) -> Multiaddr {
    s.listen_on(addr.parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
            return address;
        }
    }
}

/// Kademlia: B and C know only A. B provides a DID; C finds B as its provider through A, looks
/// up B's address (which A learned from identify, as the node does) and connects to it.
#[tokio::test]
async fn kademlia_finds_the_provider_of_a_did_and_its_address() {
    use libp2p::kad;
    let mut a = tcp_swarm(keypair([21; 32])).unwrap();
    let mut b = tcp_swarm(keypair([22; 32])).unwrap();
    let mut c = tcp_swarm(keypair([23; 32])).unwrap();
    for s in [&mut a, &mut b, &mut c] {
        // On loopback nobody confirms an external address: serve the DHT anyway.
        s.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    }
    let a_addr = listen(&mut a, "/ip4/127.0.0.1/tcp/0").await;
    let _ = listen(&mut b, "/ip4/127.0.0.1/tcp/0").await;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    b.behaviour_mut().kad.add_address(&a_id, a_addr.clone());
    c.behaviour_mut().kad.add_address(&a_id, a_addr.clone());
    b.dial(a_addr.clone()).unwrap();
    let key = kad::RecordKey::new(&"ues/repo/did:plc:ewvi7nxzyoun6zhxrhs64oiz");
    let (mut provided, mut asked, mut found) = (false, false, false);
    let run = async {
        loop {
            tokio::select! {
                ev = a.select_next_some() => match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { peer_id, info, .. })) => {
                        for addr in info.listen_addrs {
                            a.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request: kad::InboundRequest::AddProvider { .. } })) => provided = true,
                    _ => {}
                },
                ev = b.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { peer_id, .. })) = ev
                    && peer_id == a_id
                {
                    b.behaviour_mut().kad.start_providing(key.clone()).unwrap();
                },
                ev = c.select_next_some() => match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                        result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })), ..
                    })) if providers.contains(&b_id) && !found => {
                        found = true;
                        c.behaviour_mut().kad.get_closest_peers(b_id);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                        result: kad::QueryResult::GetClosestPeers(Ok(ok)), ..
                    })) => {
                        for p in ok.peers.into_iter().filter(|p| p.peer_id == b_id) {
                            for addr in p.addrs {
                                let _ = c.dial(addr);
                            }
                        }
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == b_id => return,
                    _ => {}
                },
            }
            if provided && !asked {
                asked = true;
                c.behaviour_mut().kad.get_providers(key.clone());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("C finds B through the DHT");
    assert!(found, "C learned B provides the DID");
}

/// A relay (circuit relay v2, on by configuration) carries a connection to a node that is
/// reachable only through it: B listens on A's circuit address, C dials B there.
#[tokio::test]
async fn a_relay_carries_a_connection_to_a_node_behind_it() {
    let features = Features { relay_server: true, ..Features::default() };
    let mut relay = swarm_with(keypair([31; 32]), features).unwrap();
    let mut b = tcp_swarm(keypair([32; 32])).unwrap();
    let mut c = tcp_swarm(keypair([33; 32])).unwrap();
    let r_addr = listen(&mut relay, "/ip4/127.0.0.1/tcp/0").await;
    // A relay hands out reservations with its public addresses (a node learns them from AutoNAT).
    relay.add_external_address(r_addr.clone());
    let r_id = *relay.local_peer_id();
    let b_id = *b.local_peer_id();
    let circuit = r_addr.clone().with_p2p(r_id).unwrap().with(libp2p::multiaddr::Protocol::P2pCircuit);
    b.listen_on(circuit.clone()).unwrap();
    let mut reserved = false;
    let run = async {
        loop {
            tokio::select! {
                _ = relay.select_next_some() => {},
                ev = b.select_next_some() => if let SwarmEvent::NewListenAddr { address, .. } = ev
                    && address.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
                    && !reserved
                {
                    // B's reservation is accepted: C can reach B through the relay.
                    reserved = true;
                    c.dial(circuit.clone().with_p2p(b_id).unwrap()).unwrap();
                },
                ev = c.select_next_some() => if let SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } = ev
                    && peer_id == b_id
                {
                    return endpoint.get_remote_address().clone();
                },
            }
        }
    };
    let via = tokio::time::timeout(Duration::from_secs(30), run).await.expect("C reaches B through the relay");
    assert!(via.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit), "relayed: {via}");
}

/// Sessions by device: a peer whose key is no authorized device of the account is refused a
/// scope naming it (and is banned after repeated tries); an authorized device is served.
#[test]
fn only_authorized_devices_open_sessions_over_an_account() {
    let (acct, ra, rb) = replicas(5, 0);
    let mut pb = SyncPeer::authorized(rb, SyncConfig::default());
    let mut pa = SyncPeer::new(ra, SyncConfig::default());
    let scope = Scope::new([acct.did.clone()]);
    let stranger = keypair([44; 32]).public().to_peer_id();
    for i in 0..MAX_STRIKES {
        // Listed in full each time, so the digest is never learnt from a stranger.
        let (_, hello) = ues_sync::Session::initiate(&pa.replica, scope.clone(), SyncConfig::default(), true);
        let res = pb.on_request(stranger, &hello);
        if i + 1 < MAX_STRIKES {
            assert!(matches!(res, Err(SyncError::NotAuthorized(ref d)) if *d == acct.did), "{res:?}");
            assert!(!pb.is_banned(&stranger));
        }
    }
    assert!(pb.is_banned(&stranger), "a stranger that keeps asking is banned");
    assert!(pb.answering.is_empty());
    // A's device key (the peer id of [1; 32]) is authorized: served.
    let a_peer = keypair([1; 32]).public().to_peer_id();
    assert!(pb.may_sync(&a_peer, &acct.did) && !pb.may_sync(&stranger, &acct.did));
    let (_, hello) = ues_sync::Session::initiate(&pa.replica, scope.clone(), SyncConfig::default(), true);
    assert!(pb.on_request(a_peer, &hello).is_ok());
    assert!(pb.answering.contains_key(&a_peer), "the session runs");
    // Revoked, it may no longer pull the account.
    let a_dev = ed25519_dalek_key(1).verifying_key().to_bytes();
    pb.replica.authorize(&acct.key, &acct.did, a_dev, true).unwrap();
    assert!(!pb.may_sync(&a_peer, &acct.did));
    pb.abort(&a_peer);
    // (By the digest alone now: the scope is known, and still refused.)
    let hello = pa.start(a_peer, scope);
    assert!(matches!(pb.on_request(a_peer, &hello), Err(SyncError::NotAuthorized(_))));
}

/// A live push from a peer that may not sync the account is refused whole, nothing applied.
#[test]
fn a_live_push_from_an_unauthorized_peer_is_refused_whole() {
    let (acct, mut ra, rb) = replicas(0, 0);
    let mut pb = SyncPeer::authorized(rb, SyncConfig::default());
    let post = Change::Put(Ipld::Map([("$type".to_string(), Ipld::String("app.bsky.feed.post".into()))].into()));
    let e = ra.write(&acct.did, Nsid::new("app.bsky.feed.post").unwrap(), RecordKey::new("x").unwrap(), post).unwrap();
    let msg = ues_sync::live::encode(&[e]);
    let before = pb.replica.len();
    let stranger = keypair([45; 32]).public().to_peer_id();
    let a_peer = keypair([1; 32]).public().to_peer_id();
    let allow = |rep: &Replica, p: &PeerId, d: &Did| may_sync(true, rep, p, d);
    let res = ues_sync::live::receive_for(&mut pb.replica, &msg, &stranger, &[a_peer], &allow);
    assert!(matches!(res, Err(SyncError::NotAuthorized(_))), "{res:?}");
    assert_eq!(pb.replica.len(), before);
    let r = ues_sync::live::receive_for(&mut pb.replica, &msg, &a_peer, &[a_peer, stranger], &allow).unwrap();
    assert_eq!(r.report.applied, 1);
    assert!(r.forward.is_empty(), "never to the sender, never to a stranger");
}

mod bridge {
    use std::sync::Arc;

    use ues_sync::repo::accounts::{AccountError, Accounts};
    use ues_sync::repo::crypto::KeyType;
    use ues_sync::repo::ipld::Ipld;
    use ues_sync::repo::ipld::storage::{Blockstore, MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
    use ues_sync::repo::repo::{RepoError, Write};
    use ues_sync::repo::syntax::{Did, Handle, Nsid, RecordKey};

    use crate::p2p::node::{NODE_SYNC, NodeAccounts, Replication, ReplicationError};

    fn record(depth: usize, pad: usize) -> Ipld {
        let mut v = Ipld::String("x".repeat(pad));
        for _ in 0..depth {
            v = Ipld::List(vec![v]);
        }
        Ipld::Map(
            [("$type".to_string(), Ipld::String("dev.ues.test.note".into())), ("v".to_string(), v)]
                .into_iter()
                .collect(),
        )
    }

    fn put(rkey: &str, value: Ipld) -> Write {
        Write::Create {
            collection: Nsid::new("dev.ues.test.note").unwrap(),
            rkey: RecordKey::new(rkey).unwrap(),
            record: value,
        }
    }

    fn records(accounts: &NodeAccounts, did: &Did) -> Vec<(String, cid::Cid)> {
        accounts.repo(did).unwrap().mst().unwrap().list(None, usize::MAX).unwrap()
    }

    /// `enable` is all or nothing: a record the replica refuses (nested deeper than its decoder
    /// takes) fails it with an error naming the record, and the account stays as it was, not
    /// replicated; the bridge never deletes what the replica merely lacks; and a write the
    /// replica would refuse is refused before it commits.
    #[test]
    fn a_refused_record_replicates_nothing_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Sqlite::open(dir.path().join("a.sqlite"), &SqliteConfig::default()).unwrap());
        let store = Arc::new(MemoryBlockstore::new());
        let blocks: Arc<dyn Blockstore> = store.clone();
        let accounts: NodeAccounts = Accounts::open(blocks, db, 1).unwrap();
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        accounts.create(did.clone(), Handle::new("alice.test").unwrap(), KeyType::K256).unwrap();
        // The write path refuses a record nested deeper than the decoder reads...
        let deep = accounts.apply_writes(&did, &[put("deep", record(100, 1))], None);
        assert!(matches!(deep, Err(AccountError::Repo(ref e)) if matches!(**e, RepoError::InvalidRecord { .. })));
        // ...so one stored by an earlier version stands in: its block holds a value nested 100 deep.
        accounts.apply_writes(&did, &[put("good", record(1, 10)), put("deep", record(1, 1))], None).unwrap();
        let deep_cid = records(&accounts, &did).into_iter().find(|(p, _)| p.ends_with("/deep")).unwrap().1;
        store.corrupt_block_for_test(&deep_cid, &ues_sync::repo::ipld::dagcbor::encode(&record(100, 1)));
        let before = records(&accounts, &did);
        let head = accounts.repo(&did).unwrap().commit().data;
        let (rep, _rx) = Replication::open(
            Arc::new(MemoryBlockstore::new()),
            ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
            &accounts,
            Arc::new(MemoryKv::new()),
            NODE_SYNC,
        )
        .unwrap();
        match rep.enable(&accounts, &did) {
            Err(ReplicationError::RecordRefused { path, .. }) => assert_eq!(path, "dev.ues.test.note/deep"),
            other => panic!("expected a refused record, got {other:?}"),
        }
        assert!(!rep.is_tracked(&did), "the account stays unreplicated");
        assert_eq!(rep.materialize(&accounts, &did).unwrap().map(|c| c.commit.data), None);
        assert_eq!(records(&accounts, &did), before);
        assert_eq!(accounts.repo(&did).unwrap().commit().data, head);

        // Without the deep record it replicates; a record written past the replica (as by an
        // older version) is kept by the bridge, not deleted.
        accounts
            .apply_writes(
                &did,
                &[Write::Delete {
                    collection: Nsid::new("dev.ues.test.note").unwrap(),
                    rkey: RecordKey::new("deep").unwrap(),
                    swap: None,
                }],
                None,
            )
            .unwrap();
        rep.enable(&accounts, &did).unwrap();
        assert!(rep.is_tracked(&did));
        accounts.apply_writes(&did, &[put("past", record(1, 5))], None).unwrap();
        for _ in 0..3 {
            rep.materialize(&accounts, &did).unwrap();
        }
        let now: Vec<String> = records(&accounts, &did).into_iter().map(|(p, _)| p).collect();
        assert_eq!(now, ["dev.ues.test.note/good", "dev.ues.test.note/past"]);

        // Too deep, or over 1 MiB: refused before anything commits.
        let head = accounts.repo(&did).unwrap().commit().data;
        for bad in [record(100, 1), record(1, (1 << 20) + 16)] {
            let res = rep.local_commit(&accounts, &did, &[put("bad", bad)], None);
            match res {
                Err(AccountError::Repo(e)) => assert!(matches!(*e, RepoError::InvalidRecord { .. }), "{e}"),
                other => panic!("expected an invalid record, got {other:?}"),
            }
            assert_eq!(accounts.repo(&did).unwrap().commit().data, head, "nothing committed");
        }
        rep.local_commit(&accounts, &did, &[put("fine", record(2, 5))], None).unwrap();
        assert_eq!(records(&accounts, &did).len(), 3);
    }
}

mod materialize {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Instant;

    use ues_sync::hlc::Hlc;
    use ues_sync::repo::accounts::Accounts;
    use ues_sync::repo::crypto::KeyType;
    use ues_sync::repo::ipld::Ipld;
    use ues_sync::repo::ipld::storage::{Blockstore, Kv, MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
    use ues_sync::repo::repo::Write;
    use ues_sync::repo::syntax::{Did, Handle, Nsid, RecordKey};
    use ues_sync::{Change, Replica, Signed};

    use crate::p2p::node::{NODE_SYNC, NodeAccounts, Replication};

    fn note(text: String) -> Ipld {
        Ipld::Map(BTreeMap::from([
            ("$type".to_string(), Ipld::String("dev.ues.test.note".into())),
            ("text".to_string(), Ipld::String(text)),
        ]))
    }

    fn nsid() -> Nsid {
        Nsid::new("dev.ues.test.note").unwrap()
    }

    /// The repository's records: path → CID.
    fn repo_records(accounts: &NodeAccounts, did: &Did) -> BTreeMap<String, cid::Cid> {
        accounts.repo(did).unwrap().mst().unwrap().list(None, usize::MAX).unwrap().into_iter().collect()
    }

    /// A batch of another device's changes: puts of new and existing records, and deletes.
    fn remote_batch(remote: &mut Replica, did: &Did, round: usize, n: usize) -> Vec<Signed> {
        (0..n)
            .map(|i| {
                let rkey = RecordKey::new(format!("r{:06}", (round * 7919 + i * 104_729) % 4_000)).unwrap();
                let change =
                    if i % 4 == 3 { Change::Delete } else { Change::Put(note(format!("round {round} change {i}"))) };
                remote.write(did, nsid(), rkey, change).unwrap()
            })
            .collect()
    }

    /// Bringing a repository to its replica after remote changes compares the whole record sets
    /// only the first time after a start; after that only the changed paths, and the result is
    /// the same repository: every record as the replica holds it, the same MST root. (Run with
    /// `--nocapture` and `UES_MATERIALIZE_RECORDS` for the time each takes.)
    #[test]
    fn remote_changes_are_materialized_path_by_path_after_the_first_time() {
        let n: usize = std::env::var("UES_MATERIALIZE_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000);
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Sqlite::open(dir.path().join("a.sqlite"), &SqliteConfig::default()).unwrap());
        let blocks: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
        let accounts: NodeAccounts = Accounts::open(blocks, db, 1).unwrap();
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        accounts.create(did.clone(), Handle::new("alice.test").unwrap(), KeyType::K256).unwrap();
        for start in (0..n).step_by(500) {
            let writes: Vec<Write> = (start..n.min(start + 500))
                .map(|i| Write::Create {
                    collection: nsid(),
                    rkey: RecordKey::new(format!("r{i:06}")).unwrap(),
                    record: note(format!("seed {i}")),
                })
                .collect();
            accounts.apply_writes(&did, &writes, None).unwrap();
        }
        let replica_blocks: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
        let open = || {
            let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
            Replication::open(replica_blocks.clone(), key, &accounts, kv.clone(), NODE_SYNC).unwrap().0
        };
        let mut rep = open();
        rep.enable(&accounts, &did).unwrap();
        // Another device of the account, authorized by the account's key.
        let account_key = accounts.signing_key(&did).unwrap();
        let keys = Arc::new(std::collections::HashMap::from([(did.clone(), account_key.public())]));
        let mut remote =
            Replica::in_memory(keys, Hlc::new(60_000), Some(ed25519_dalek::SigningKey::from_bytes(&[9; 32])));
        let auth = remote.authorize(&account_key, &did, remote.device_id().unwrap(), false).unwrap();
        assert_eq!(rep.apply_entries(vec![auth]).applied, 1);

        let check = |rep: &Replication, what: &str| {
            let status = rep.status();
            let described = rep.describe(&accounts);
            let a = &described["accounts"][0];
            assert_eq!(a["repoRoot"], a["replicaRoot"], "{what}: {a}");
            assert_eq!(repo_records(&accounts, &did).len() as u64, a["records"].as_u64().unwrap(), "{what}");
            (status.materialized_full, status.materialized_changes)
        };
        let mut timings = Vec::new();
        for round in 1..=6 {
            // The node restarts before round 4: its first materialization compares in full.
            if round == 4 {
                drop(rep);
                rep = open();
            }
            let batch = remote_batch(&mut remote, &did, round, 40);
            let report = rep.apply_entries(batch);
            assert!(report.refused.is_empty(), "{:?}", report.refused);
            let started = Instant::now();
            let res = rep.materialize(&accounts, &did).unwrap();
            timings.push((round, started.elapsed()));
            assert!(res.is_some(), "round {round} committed the remote changes");
            let (full, changes) = check(&rep, &format!("round {round}"));
            match round {
                1..=3 => assert_eq!((full, changes), (0, round as u64), "round {round} compared only the changes"),
                4 => assert_eq!((full, changes), (1, 0), "the first time after a start compares in full"),
                _ => assert_eq!((full, changes), (1, round as u64 - 4), "round {round}"),
            }
        }
        for (round, t) in timings {
            eprintln!("{n} records, 40 remote changes: round {round} materialized in {t:?}");
        }
    }
}
