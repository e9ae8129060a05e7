//! Misbehaving libp2p peers against a real `ues run` node on 127.0.0.1: one sends a malformed
//! sync message, one floods it with requests. Each is disconnected and banned (a reconnection
//! is dropped at once), and the node keeps serving its clients.

#[path = "support/rogue.rs"]
mod rogue;
#[path = "support/node.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use support::{agent, free_port};
use ues_protocol::p2p::libp2p::swarm::SwarmEvent;
use ues_protocol::p2p::libp2p::{Multiaddr, PeerId, Swarm};
use ues_protocol::p2p::{Behaviour, keypair, tcp_swarm};

/// Connects; sends `request` once connected, then again on every answer or failure, keeping
/// `in_flight` requests going (at most `total`); returns once the node has closed the connection.
async fn misbehave(
    swarm: &mut Swarm<Behaviour>,
    node: PeerId,
    addr: Multiaddr,
    request: Vec<u8>,
    in_flight: usize,
    total: usize,
) {
    use ues_protocol::p2p::libp2p::request_response::Event;
    swarm.dial(addr).unwrap();
    let mut sent = 0;
    let run = async {
        loop {
            let again = match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node => in_flight,
                SwarmEvent::Behaviour(ues_protocol::p2p::BehaviourEvent::Sync(
                    Event::Message { .. } | Event::OutboundFailure { .. },
                )) => 1,
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == node => return,
                _ => 0,
            };
            for _ in 0..again {
                if sent < total {
                    sent += 1;
                    swarm.behaviour_mut().sync.send_request(&node, request.clone());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("the node drops the misbehaving peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_flooding_peers_are_banned_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (http, p2p) = (free_port(), free_port());
    let mut node = support::spawn(&data, http, &format!("/ip4/127.0.0.1/tcp/{p2p}"), &dir.path().join("node.log"));
    support::wait_healthy(http);
    let health = || agent().get(format!("http://127.0.0.1:{http}/xrpc/_health")).call().map(|r| r.status().as_u16());
    let node_id: PeerId = support::peer_id(&data).parse().unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{p2p}").parse().unwrap();

    // A malformed session message: a protocol violation.
    let mut rogue = tcp_swarm(keypair([91; 32])).unwrap();
    misbehave(&mut rogue, node_id, addr.clone(), b"\x0a\x03abc".to_vec(), 1, 1).await;
    rogue::dropped_again(&mut rogue, node_id, addr.clone()).await;

    // A flood: (harmless, empty) live pushes back to back, 16 at a time, far over the 200 per
    // second allowed (more than 32 at once would be dropped by the stream limit instead).
    let mut flooder = tcp_swarm(keypair([92; 32])).unwrap();
    let empty_push = ues_sync::live::encode(&[]);
    misbehave(&mut flooder, node_id, addr.clone(), empty_push, 16, 20_000).await;
    rogue::dropped_again(&mut flooder, node_id, addr.clone()).await;

    // The node still serves, says it banned two peers, and an honest peer still connects.
    assert_eq!(health().unwrap(), 200);
    let peers = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["peer", "list", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .output()
        .unwrap();
    assert!(peers.status.success(), "{}", String::from_utf8_lossy(&peers.stderr));
    let peers: serde_json::Value = serde_json::from_slice(&peers.stdout).unwrap();
    assert!(peers["bans"].as_u64().unwrap() >= 2, "{peers}");
    // The operator watching the node's peers over /ws sees the honest peer arrive.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{http}/ws").into_client_request().unwrap();
    req.headers_mut().insert("authorization", support::operator_auth(&data).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let subscribe = serde_json::json!({"type": "subscribe", "id": "p", "topic": "peers"}).to_string();
    ws.send(Message::Text(subscribe.into())).await.unwrap();
    // Subscribed before the peer dials (the events of a topic start at the subscription).
    let subscribed = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"subscribed""#) => return,
                Some(Ok(_)) => continue,
                other => panic!("the socket closed: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), subscribed).await.expect("subscribed to peer events");
    let mut honest = tcp_swarm(keypair([93; 32])).unwrap();
    let honest_id = *honest.local_peer_id();
    honest.dial(addr).unwrap();
    let connected = async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = honest.select_next_some().await
                && peer_id == node_id
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), connected).await.expect("an honest peer connects");
    let seen = async {
        loop {
            // (The node's heartbeat pings every 20 s: not what is awaited.)
            let t = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("the socket closed: {other:?}"),
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "peer" && v["event"] == "connected" && v["peerId"] == honest_id.to_string() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), seen).await.expect("the app hears the peer connect");
    let _ = Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
    let _ = node.wait();
}
