//! The libp2p face of the node: replica reconciliation exchanges carried by request-response on
//! `/ues/sync/1`, next to identify and ping.
//!
//! An exchange is the `ues_sync::recon` state machine: the initiator's messages are requests,
//! the responder's replies are responses; an empty response means the responder has nothing
//! left to say (its side of the exchange is over). Frames are length-prefixed and bounded
//! ([`MAX_FRAME`]); a peer that sends more is cut off by the codec before anything is read.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

use futures::StreamExt;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
pub use libp2p;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity};
use ues_sync::recon::{Outcome, Scope, ScopeCache, Session, SyncConfig, SyncError};
use ues_sync::{Refused, Replica};

/// The account hand-over protocol's name (`replicate DID --from PEER`).
pub const ACCOUNT_PROTOCOL: StreamProtocol = StreamProtocol::new("/ues/account/1");
/// The blob copy protocol's name (a device copying the blobs of an account it replicates).
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/ues/blob/1");
/// The reconciliation protocol's name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/ues/sync/1");
/// Largest frame either side reads (sessions keep theirs near 256 KiB; the bound is the
/// receiver's, whatever the sender does).
pub const MAX_FRAME: usize = 1 << 20;
/// Responder sessions kept at once (the oldest is dropped first).
pub const MAX_SESSIONS: usize = 64;
/// How long a misbehaving peer is refused.
pub const BAN: std::time::Duration = std::time::Duration::from_secs(600);
/// Bans remembered at once.
pub const MAX_BANS: usize = 4_096;
/// Refusals an honest peer may cause now and then (a session or push for an account whose
/// authorization has not reached one side yet) before it is banned as a misbehaving one.
pub const MAX_STRIKES: u32 = 8;
/// Largest gossip message (head announcements are under 200 bytes).
pub const MAX_GOSSIP: usize = 4_096;

/// The gossip topic of an account's head announcements.
pub fn repo_topic(did: &ues_sync::repo::syntax::Did) -> libp2p::gossipsub::IdentTopic {
    libp2p::gossipsub::IdentTopic::new(format!("ues/repo/{did}"))
}

/// Length-prefixed frames (4 bytes, big-endian) of at most [`MAX_FRAME`] bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let mut buf = vec![0; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    if data.len() > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> impl Future<Output = io::Result<Vec<u8>>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
    }

    fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> impl Future<Output = io::Result<Vec<u8>>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

pub use behaviour::{Behaviour, BehaviourEvent, Features};

pub mod node;

/// The Kademlia protocol of UES nodes (a DHT of their own, apart from IPFS's).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ues/kad/1.0.0");

mod behaviour {
    // The derive generates `BehaviourEvent` with one undocumented variant per field.
    #![allow(missing_docs)]

    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::{autonat, connection_limits, dcutr, gossipsub, identify, identity, kad, mdns, ping, relay};

    use super::{ACCOUNT_PROTOCOL, BLOB_PROTOCOL, KAD_PROTOCOL, SYNC_PROTOCOL, SyncCodec};

    /// Optional parts of the behaviour.
    #[derive(Debug, Clone, Default)]
    pub struct Features {
        /// Connection limits.
        pub limits: connection_limits::ConnectionLimits,
        /// Discover peers on the local network.
        pub mdns: bool,
        /// Relay other peers' connections (circuit relay v2 server).
        pub relay_server: bool,
    }

    /// The node's libp2p behaviour.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Connections in total and per peer.
        pub limits: connection_limits::Behaviour,
        /// Exchanges listen addresses and protocols.
        pub identify: identify::Behaviour,
        /// Liveness.
        pub ping: ping::Behaviour,
        /// Reconciliation sessions.
        pub sync: request_response::Behaviour<SyncCodec>,
        /// Head announcements on `ues/repo/<did>`.
        pub gossip: gossipsub::Behaviour,
        /// Account hand-over to an authorized device.
        pub account: request_response::Behaviour<SyncCodec>,
        /// Blob pieces for the devices of an account.
        pub blob: request_response::Behaviour<SyncCodec>,
        /// Peer routing and provider records for the DIDs a node hosts or replicates.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Local-network discovery.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Reachability through relays (when built with a relay transport).
        pub relay_client: Toggle<relay::client::Behaviour>,
        /// Relaying for others (by configuration).
        pub relay: Toggle<relay::Behaviour>,
        /// Hole punching of relayed connections.
        pub dcutr: dcutr::Behaviour,
        /// Whether this node is reachable from outside.
        pub autonat: autonat::Behaviour,
    }

    impl Behaviour {
        /// The behaviour for a node with this identity key (no limits, no mDNS, no relays).
        pub fn new(key: &identity::Keypair) -> Self {
            Self::with_features(key, None, Features::default())
        }

        /// The behaviour for a node with this identity key, relay client and options.
        pub fn with_features(
            key: &identity::Keypair,
            relay_client: Option<relay::client::Behaviour>,
            features: Features,
        ) -> Self {
            let id = key.public().to_peer_id();
            let mdns = if features.mdns {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), id) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS unavailable");
                        None
                    }
                }
            } else {
                None
            };
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_query_timeout(std::time::Duration::from_secs(30));
            // The node refreshes the table itself, and only when it knows peers.
            kad_cfg.set_periodic_bootstrap_interval(None);
            Behaviour {
                limits: connection_limits::Behaviour::new(features.limits),
                identify: identify::Behaviour::new(
                    identify::Config::new("/ues/0.1.0".into(), key.public())
                        .with_agent_version(format!("ues/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::default(),
                sync: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(30))
                        .with_max_concurrent_streams(32),
                ),
                gossip: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::ConfigBuilder::default()
                        .max_transmit_size(super::MAX_GOSSIP)
                        .validation_mode(gossipsub::ValidationMode::Strict)
                        .build()
                        .expect("a valid gossipsub configuration"),
                )
                .expect("signed gossipsub"),
                account: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(ACCOUNT_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(30))
                        .with_max_concurrent_streams(32),
                ),
                blob: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(BLOB_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(30))
                        .with_max_concurrent_streams(8),
                ),
                kad: kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad_cfg),
                mdns: mdns.into(),
                relay_client: relay_client.into(),
                relay: features.relay_server.then(|| relay::Behaviour::new(id, relay::Config::default())).into(),
                dcutr: dcutr::Behaviour::new(id),
                autonat: autonat::Behaviour::new(id, autonat::Config::default()),
            }
        }
    }
}

/// The libp2p identity of a node whose Ed25519 identity key has this 32-byte secret (the key
/// `ues init` writes to the data directory), so the peer id is stable across restarts.
pub fn keypair(secret: [u8; 32]) -> identity::Keypair {
    let mut secret = secret;
    identity::Keypair::ed25519_from_bytes(&mut secret).expect("32 bytes are an Ed25519 secret")
}

/// A swarm over TCP and QUIC (TCP with Noise and Yamux), reachable through relays too,
/// with default features (connections idle for 60 s are closed).
pub fn tcp_swarm(key: identity::Keypair) -> Result<libp2p::Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    swarm_with(key, Features::default())
}

/// As [`tcp_swarm`], with these features.
pub fn swarm_with(
    key: identity::Keypair,
    features: Features,
) -> Result<libp2p::Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )?
        .with_quic()
        .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)?
        .with_behaviour(|k, relay| Behaviour::with_features(k, Some(relay), features))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(std::time::Duration::from_secs(60)))
        .build())
}

/// One side's sessions with its peers: the replica, the sessions it answers, the ones it runs.
pub struct SyncPeer {
    /// The replica sessions read and write.
    pub replica: Replica,
    cfg: SyncConfig,
    scopes: ScopeCache,
    answering: HashMap<PeerId, Session>,
    order: VecDeque<PeerId>,
    running: HashMap<PeerId, (Session, Scope, bool)>,
    last_stats: ues_sync::SessionStats,
    bans: HashMap<PeerId, Instant>,
    strikes: HashMap<PeerId, (Instant, u32)>,
    /// Peers may sync only the accounts their device is authorized for (else every account).
    by_device: bool,
}

/// What the initiator does after a response.
#[derive(Debug)]
pub enum Next {
    /// Send this request.
    Send(Vec<u8>),
    /// The session ended, with this outcome.
    Done(Outcome),
}

impl SyncPeer {
    /// Sessions over `replica` in which every peer may sync every account it holds (tests and
    /// benchmarks between peers whose ids are not devices of the accounts).
    pub fn new(replica: Replica, cfg: SyncConfig) -> Self {
        SyncPeer {
            replica,
            cfg,
            scopes: ScopeCache::default(),
            answering: HashMap::new(),
            order: VecDeque::new(),
            running: HashMap::new(),
            last_stats: ues_sync::SessionStats::default(),
            bans: HashMap::new(),
            strikes: HashMap::new(),
            by_device: false,
        }
    }

    /// Sessions over `replica` in which a peer may sync an account only while its peer id's
    /// Ed25519 key is an authorized device of the account in the replica (as nodes run them):
    /// a peer that is not one neither pulls the account's entries nor pushes any.
    pub fn authorized(replica: Replica, cfg: SyncConfig) -> Self {
        SyncPeer { by_device: true, ..Self::new(replica, cfg) }
    }

    /// Whether `peer` may sync `did` with this side: its device is authorized for the account
    /// now (a revoked device may not), when sessions are by device.
    pub fn may_sync(&self, peer: &PeerId, did: &ues_sync::repo::syntax::Did) -> bool {
        may_sync(self.by_device, &self.replica, peer, did)
    }

    /// Statistics of the session this side last took part in.
    pub fn last_stats(&self) -> ues_sync::SessionStats {
        self.last_stats
    }

    /// Starts a session with `peer` over `scope`: the first request.
    pub fn start(&mut self, peer: PeerId, scope: Scope) -> Vec<u8> {
        let (s, hello) = Session::initiate(&self.replica, scope.clone(), self.cfg, false);
        self.running.insert(peer, (s, scope, false));
        hello
    }

    /// Handles a response to one of our requests.
    pub fn on_response(&mut self, peer: PeerId, res: &[u8]) -> Result<Next, SyncError> {
        let Some((mut s, scope, listed)) = self.running.remove(&peer) else {
            return Err(SyncError::Protocol("a response outside any session".into()));
        };
        if res.is_empty() {
            self.last_stats = s.stats();
            return Ok(Next::Done(s.outcome()));
        }
        let step = s.receive(&mut self.replica, res);
        self.last_stats = s.stats();
        match step {
            Ok(Some(next)) => {
                self.running.insert(peer, (s, scope, listed));
                Ok(Next::Send(next))
            }
            Ok(None) => Ok(Next::Done(s.outcome())),
            // The responder did not know the scope's digest: say it in full, once.
            Err(SyncError::Rejected(_)) if !listed => {
                let (s, hello) = Session::initiate(&self.replica, scope.clone(), self.cfg, true);
                self.running.insert(peer, (s, scope, true));
                Ok(Next::Send(hello))
            }
            Err(e) => Err(e),
        }
    }

    /// Answers a request from `peer` (a Hello starts a session; anything else continues it).
    /// An empty response ends our side of the session. A peer that breaks the protocol or
    /// sends forged, equivocating or malformed entries is banned for [`BAN`]: its requests
    /// are refused ([`SyncError::Rejected`]) and the node should drop its connections. A scope
    /// naming an account the peer may not sync is refused ([`SyncError::NotAuthorized`]; the
    /// node tells the peer so) and counts as a strike.
    pub fn on_request(&mut self, peer: PeerId, req: &[u8]) -> Result<Vec<u8>, SyncError> {
        if self.is_banned(&peer) {
            return Err(SyncError::Rejected(format!("{peer} is banned")));
        }
        let res = self.answer(peer, req);
        if let Err(SyncError::NotAuthorized(did)) = &res {
            let why = format!("asked to sync {did}, which it may not");
            self.refused(peer, &why);
        }
        let forged = self
            .answering
            .get(&peer)
            .is_some_and(|s| s.last_report().refused.iter().any(|r| is_misbehaviour(&r.reason)));
        match &res {
            Err(SyncError::Protocol(why)) => self.ban(peer, why),
            Ok(_) if forged => self.ban(peer, "sent forged or malformed entries"),
            _ => {}
        }
        res
    }

    fn answer(&mut self, peer: PeerId, req: &[u8]) -> Result<Vec<u8>, SyncError> {
        if let Some(s) = self.answering.get_mut(&peer) {
            let step = s.receive(&mut self.replica, req);
            self.last_stats = s.stats();
            match step {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {
                    self.answering.remove(&peer);
                    return Ok(Vec::new());
                }
                // Not a turn of the running session: perhaps a new Hello.
                Err(SyncError::Protocol(_)) => {
                    self.answering.remove(&peer);
                }
                Err(e) => return Err(e),
            }
        }
        let by_device = self.by_device;
        let allowed = move |rep: &Replica, did: &ues_sync::repo::syntax::Did| may_sync(by_device, rep, &peer, did);
        let (session, reply) = Session::respond_for(&mut self.replica, &mut self.scopes, self.cfg, req, &allowed)?;
        if let Some(s) = session {
            self.last_stats = s.stats();
            if self.answering.len() >= MAX_SESSIONS
                && let Some(old) = self.order.pop_front()
            {
                self.answering.remove(&old);
            }
            self.order.retain(|p| *p != peer);
            self.order.push_back(peer);
            self.answering.insert(peer, s);
        }
        Ok(reply)
    }

    /// Whether a session this side started with `peer` is running.
    pub fn is_running(&self, peer: &PeerId) -> bool {
        self.running.contains_key(peer)
    }

    /// Forgets the sessions with `peer` (its connection closed, or a request failed).
    pub fn abort(&mut self, peer: &PeerId) {
        self.running.remove(peer);
        self.answering.remove(peer);
        self.order.retain(|p| p != peer);
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.get(peer).is_some_and(|until| Instant::now() < *until)
    }

    /// A refusal of something `peer` may not sync: a peer that is an authorized device of some
    /// account here is a replica with a view not yet up to date (an account authorized for this
    /// node that it has not taken over yet), so its refusal is only logged; a stranger's is a
    /// strike ([`SyncPeer::strike`]). Returns whether the peer is banned now.
    pub fn refused(&mut self, peer: PeerId, why: &str) -> bool {
        let known = !self.by_device || node::device_of(&peer).is_some_and(|d| self.replica.is_device_of_any(&d));
        if known {
            tracing::info!(%peer, reason = why, "a replica's request refused");
            return false;
        }
        self.strike(peer, why)
    }

    /// Counts a refusal an honest peer may cause now and then; the [`MAX_STRIKES`]th within
    /// [`BAN`] bans it. Returns whether the peer is banned now.
    pub fn strike(&mut self, peer: PeerId, why: &str) -> bool {
        tracing::warn!(%peer, reason = why, "peer refused");
        let now = Instant::now();
        if self.strikes.len() >= MAX_BANS && !self.strikes.contains_key(&peer) {
            self.strikes.retain(|_, (since, _)| now.duration_since(*since) < BAN);
            if self.strikes.len() >= MAX_BANS
                && let Some(oldest) = self.strikes.iter().min_by_key(|(_, (t, _))| *t).map(|(p, _)| *p)
            {
                self.strikes.remove(&oldest);
            }
        }
        let e = self.strikes.entry(peer).or_insert((now, 0));
        if now.duration_since(e.0) >= BAN {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 >= MAX_STRIKES {
            self.strikes.remove(&peer);
            self.ban(peer, &format!("{MAX_STRIKES} refusals, the last: {why}"));
        }
        self.is_banned(&peer)
    }

    /// Refuses `peer` for [`BAN`] and drops its sessions.
    pub fn ban(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, reason = why, "peer banned");
        self.answering.remove(&peer);
        self.running.remove(&peer);
        if self.bans.len() >= MAX_BANS {
            let now = Instant::now();
            self.bans.retain(|_, until| *until > now);
            if self.bans.len() >= MAX_BANS
                && let Some(oldest) = self.bans.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p)
            {
                self.bans.remove(&oldest);
            }
        }
        self.bans.insert(peer, Instant::now() + BAN);
    }
}

/// Whether `peer` may sync `did` with a replica: any peer when sessions are not by device, else
/// only while its peer id's key is an authorized device of the account there.
pub(crate) fn may_sync(by_device: bool, rep: &Replica, peer: &PeerId, did: &ues_sync::repo::syntax::Did) -> bool {
    !by_device || node::device_of(peer).is_some_and(|d| rep.is_authorized(did, &d))
}

/// Refusals that only a misbehaving peer causes (not a late authorization or a clock skew).
pub(crate) fn is_misbehaviour(r: &Refused) -> bool {
    matches!(r, Refused::Entry(_) | Refused::Equivocation { .. } | Refused::BadBlock(..))
}

/// Drives two local swarms (benchmarks, tests) until A's session with B over `scope` ends; returns A's outcome and the identify and
/// ping events seen. `addr`: where B listens (a memory address, or TCP port 0 on 127.0.0.1).
pub async fn run_pair(
    a: &mut Swarm<Behaviour>,
    pa: &mut SyncPeer,
    b: &mut Swarm<Behaviour>,
    pb: &mut SyncPeer,
    scope: Scope,
    addr: Multiaddr,
) -> (Outcome, Vec<&'static str>) {
    b.listen_on(addr).unwrap();
    let mut seen = Vec::new();
    // B's actual address (TCP port 0 resolves to a real one).
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            break address;
        }
    };
    a.dial(addr).unwrap();
    let b_id = *b.local_peer_id();
    let mut started = false;
    loop {
        tokio::select! {
            ev = a.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == b_id && !started => {
                    started = true;
                    let hello = pa.start(b_id, scope.clone());
                    a.behaviour_mut().sync.send_request(&b_id, hello);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { peer, message: request_response::Message::Response { response, .. }, .. })) => {
                    match pa.on_response(peer, &response).expect("A's session runs") {
                        Next::Send(req) => { a.behaviour_mut().sync.send_request(&peer, req); }
                        Next::Done(outcome) => return (outcome, seen),
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure { error, .. })) => panic!("outbound failure: {error}"),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { .. })) => seen.push("a identified b"),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event { result: Ok(_), .. })) => seen.push("a pinged b"),
                _ => {}
            },
            ev = b.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. })) => {
                    let reply = pb.on_request(peer, &request).expect("B answers");
                    b.behaviour_mut().sync.send_response(channel, reply).expect("B responds");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { .. })) => seen.push("b identified a"),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests;
