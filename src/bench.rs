//! `ues bench create`: createRecord throughput and latency against a running node, over real
//! HTTP/1.1 keep-alive connections, from a client light enough that the node is what is measured
//! (a plain tokio TCP client; the official-client benchmark is `tests/js/bench_create.mjs`).
//!
//! `ues bench sync`: replica reconciliation scenarios in memory (see `ues_sync::sim`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e} (is the node running there?)"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream: BufReader::new(stream), addr })
    }

    /// POSTs JSON, returns (status, body). Bounded: 10 s, 1 MiB of response body.
    pub(crate) async fn post(&mut self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<(u16, Value)> {
        let body = serde_json::to_vec(body)?;
        tokio::time::timeout(Duration::from_secs(10), self.request("POST", path, token, Some(&body)))
            .await
            .context("timed out")?
    }

    /// GETs, returns (status, body). Bounded as [`Conn::post`].
    pub(crate) async fn get(&mut self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        tokio::time::timeout(Duration::from_secs(10), self.request("GET", path, token, None))
            .await
            .context("timed out")?
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Value)> {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let content = body
            .map_or(String::new(), |b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n{content}{auth}\r\n", self.addr).into_bytes();
        // One write, as HTTP clients do for small requests: with TCP_NODELAY, two writes are two
        // segments, and the server may wake once for the head and again for the body.
        request.extend_from_slice(body.unwrap_or_default());
        self.stream.get_mut().write_all(&request).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        if len > 8 << 20 {
            bail!("response body of {len} bytes");
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        Ok((status, serde_json::from_slice(&buf).unwrap_or(Value::Null)))
    }
}

/// Creates the account `handle` over `c`: its DID and access token.
pub(crate) async fn create_account(c: &mut Conn, handle: &str) -> anyhow::Result<(String, String)> {
    let (status, acct) = c
        .post(
            "/xrpc/com.atproto.server.createAccount",
            None,
            // An email too: the reference PDS asks for one, so the same client measures both.
            &json!({"handle": handle, "email": format!("{handle}@example.com"), "password": "correct horse battery"}),
        )
        .await?;
    if status != 200 {
        bail!("createAccount {handle}: {status} {acct}");
    }
    Ok((acct["did"].as_str().context("no did")?.into(), acct["accessJwt"].as_str().context("no token")?.into()))
}

/// A fresh account named `<prefix><pid>.test`: its access token and DID.
pub(crate) async fn bench_account(addr: SocketAddr, prefix: &str) -> anyhow::Result<(Arc<str>, Arc<str>)> {
    let mut c = Conn::open(addr).await?;
    let (did, token) = create_account(&mut c, &format!("{prefix}{}.test", std::process::id())).await?;
    Ok((token.into(), did.into()))
}

/// Creates an account, then `records` createRecord calls from `concurrency` connections.
/// Returns `{records, concurrency, seconds, recordsPerSec, p50ms, p99ms, maxMs}`.
pub(crate) async fn create(addr: SocketAddr, records: usize, concurrency: usize) -> anyhow::Result<Value> {
    let (token, did) = bench_account(addr, "bench").await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (token, did, next) = (token.clone(), did.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    return anyhow::Ok(lat);
                }
                let body = json!({"repo": &*did, "collection": "app.bsky.feed.post", "record": {
                    "$type": "app.bsky.feed.post", "text": format!("benchmark post {i}"),
                    "createdAt": "2026-11-24T12:00:00.000Z"}});
                let t = Instant::now();
                let (status, v) = conn.post("/xrpc/com.atproto.repo.createRecord", Some(&token), &body).await?;
                if status == 429 {
                    bail!(
                        "createRecord: 429 {v}: benchmark a node whose node.toml has [xrpc.rate_limits] enabled = false"
                    );
                }
                if status != 200 {
                    bail!("createRecord: {status} {v}");
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(records);
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let ms = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(json!({
        "records": records, "concurrency": concurrency, "seconds": secs,
        "recordsPerSec": records as f64 / secs, "p50ms": ms(0.5), "p99ms": ms(0.99), "maxMs": ms(1.0),
    }))
}

/// Runs the reconciliation scenarios, handing each result to `emit` as it completes.
pub(crate) fn sync(ops: usize, rtt_ms: f64, only: Option<&str>, mut emit: impl FnMut(Value)) {
    use ues_sync::recon::SyncConfig;
    use ues_sync::sim::{Missing, generate, replicas, run};
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    // Asked for by name only: its line has other fields than the scenarios'.
    if only.is_some_and(|o| "live_single_edit".contains(o)) {
        let (put, add) = ues_sync::sim::live_edit_sizes();
        emit(
            json!({"scenario": "live_single_edit", "put_message_bytes": put, "counter_add_message_bytes": add, "signature_bytes": 64}),
        );
    }
    let mut report = |r: ues_sync::sim::ScenarioResult, setup_s: f64| {
        emit(json!({
            "scenario": r.scenario,
            "ops": r.ops,
            "differences": r.differences,
            "round_trips": r.round_trips,
            "bytes_a_to_b": r.bytes_a_to_b,
            "bytes_b_to_a": r.bytes_b_to_a,
            "recon_bytes_a_to_b": r.recon_bytes_a_to_b,
            "recon_bytes_b_to_a": r.recon_bytes_b_to_a,
            "cpu_ms": (r.cpu_ms * 100.0).round() / 100.0,
            "elapsed_ms_at_rtt": (r.elapsed_ms * 100.0).round() / 100.0,
            "rtt_ms": rtt_ms,
            "converged": r.converged,
            "setup_s": (setup_s * 10.0).round() / 10.0,
        }))
    };
    let one_author = ["identical", "recent_100", "scattered_100", "recent_100_both_sides", "scattered_100_both_sides"];
    if one_author.iter().any(|n| wanted(n)) {
        let t = Instant::now();
        let g = generate(ops, 1, 3, 7);
        let gen_s = t.elapsed().as_secs_f64();
        for (name, missing) in [
            ("identical", Missing::Nothing),
            ("recent_100", Missing::Recent(100)),
            ("scattered_100", Missing::Scattered(100)),
            ("recent_100_both_sides", Missing::RecentBoth(100)),
            ("scattered_100_both_sides", Missing::ScatteredBoth(100)),
        ] {
            if !wanted(name) {
                continue;
            }
            let t = Instant::now();
            let (mut a, mut b, d) = replicas(&g, missing, 11);
            let setup = gen_s + t.elapsed().as_secs_f64();
            report(run(name, &g, &mut a, &mut b, d, SyncConfig::default(), rtt_ms), setup);
        }
    }
    if wanted("authors_1000_idle") {
        let t = Instant::now();
        let g = generate(ops, 1_000, 3, 9);
        let (mut a, mut b, d) = replicas(&g, Missing::Nothing, 11);
        let setup = t.elapsed().as_secs_f64();
        report(run("authors_1000_idle", &g, &mut a, &mut b, d, SyncConfig::default(), rtt_ms), setup);
    }
}

/// `ues bench p2p`: two nodes in this process over TCP on 127.0.0.1 (Noise, Yamux): connection
/// setup; a new, empty replica catching up on `ops` operations (every signature verified on
/// arrival); one new operation synced by a session.
pub(crate) async fn p2p(ops: usize) -> anyhow::Result<Value> {
    use ues_protocol::p2p::libp2p::futures::StreamExt;
    use ues_protocol::p2p::libp2p::swarm::SwarmEvent;
    use ues_protocol::p2p::node::NODE_SYNC;
    use ues_protocol::p2p::{SyncPeer, keypair, run_pair, tcp_swarm};
    use ues_sync::Replica;
    use ues_sync::hlc::Hlc;
    use ues_sync::recon::Scope;
    use ues_sync::sim::{Missing, generate, replicas};

    let swarm = |seed: u8| tcp_swarm(keypair([seed; 32])).map_err(|e| anyhow::anyhow!("{e}"));
    // Connection setup: dial to established, 20 fresh pairs, median.
    let mut setups = Vec::new();
    for i in 0..20u8 {
        let (mut a, mut b) = (swarm(2 * i + 1)?, swarm(2 * i + 2)?);
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        };
        let t = Instant::now();
        a.dial(addr)?;
        let wait = async {
            loop {
                tokio::select! {
                    ev = a.select_next_some() => if let SwarmEvent::ConnectionEstablished { .. } = ev { break },
                    _ = b.select_next_some() => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.context("connecting")?;
        setups.push(t.elapsed().as_secs_f64() * 1e3);
    }
    setups.sort_by(f64::total_cmp);

    let g = generate(ops, 1, 3, 5);
    let scope = Scope::new(g.dids.iter().cloned());
    let end = g.end_ms;
    let mut full = Replica::in_memory(g.keys.clone(), Hlc::with_physical(60_000, move || end), None);
    full.apply_verified(g.entries.iter().cloned());
    let empty = Replica::in_memory(g.keys.clone(), Hlc::with_physical(60_000, move || end), None);
    // Sessions as `ues run` runs them (messages under 256 KiB).
    let (mut pa, mut pb) = (SyncPeer::new(empty, NODE_SYNC), SyncPeer::new(full, NODE_SYNC));
    let (mut a, mut b) = (swarm(101)?, swarm(102)?);
    let t = Instant::now();
    let (outcome, _) = tokio::time::timeout(
        Duration::from_secs(600),
        run_pair(&mut a, &mut pa, &mut b, &mut pb, scope.clone(), "/ip4/127.0.0.1/tcp/0".parse()?),
    )
    .await
    .context("catch-up timed out")?;
    let secs = t.elapsed().as_secs_f64();
    let did = &g.dids[0];
    let converged = pa.replica.len() == pb.replica.len() && pa.replica.root(did)? == pb.replica.root(did)?;
    let (sa, sb) = (pa.last_stats(), pb.last_stats());
    let bytes = sa.bytes_sent + sb.bytes_sent;

    // One new operation: A holds it, B does not.
    let (ra, rb, _) = replicas(&g, Missing::Recent(1), 3);
    let (mut qa, mut qb) = (SyncPeer::new(ra, NODE_SYNC), SyncPeer::new(rb, NODE_SYNC));
    let (mut c, mut d) = (swarm(103)?, swarm(104)?);
    let (one, _) = tokio::time::timeout(
        Duration::from_secs(60),
        run_pair(&mut c, &mut qa, &mut d, &mut qb, scope, "/ip4/127.0.0.1/tcp/0".parse()?),
    )
    .await
    .context("one-write session timed out")?;
    let (oa, ob) = (qa.last_stats(), qb.last_stats());
    Ok(json!({
        "connect_ms_median": (setups[setups.len() / 2] * 1000.0).round() / 1000.0,
        "connect_ms_max": (setups[setups.len() - 1] * 1000.0).round() / 1000.0,
        "catchup_ops": ops,
        "catchup_s": (secs * 1000.0).round() / 1000.0,
        "catchup_ops_per_s": (ops as f64 / secs).round(),
        "catchup_bytes": bytes,
        "catchup_mb_per_s": (bytes as f64 / secs / 1e6 * 100.0).round() / 100.0,
        "catchup_outcome": format!("{outcome:?}"),
        "catchup_converged": converged,
        "one_write_bytes_a_to_b": oa.bytes_sent,
        "one_write_bytes_b_to_a": ob.bytes_sent,
        "one_write_outcome": format!("{one:?}"),
        // What a connected node actually sends for a write: one live push (entry and record).
        "one_write_live_push_bytes": ues_sync::live::encode(&g.entries[g.entries.len() - 1..]).len(),
    }))
}

/// One JSON object on one line with the scenario fields first, in the order the sync
/// benchmark documents them (`{"scenario", "ops", "differences", "round_trips",
/// "bytes_a_to_b", "bytes_b_to_a", "cpu_ms", "converged", ...}`), the rest after.
pub(crate) fn ordered_line(v: &Value) -> String {
    const FIRST: [&str; 8] =
        ["scenario", "ops", "differences", "round_trips", "bytes_a_to_b", "bytes_b_to_a", "cpu_ms", "converged"];
    let Some(map) = v.as_object() else { return v.to_string() };
    let keys = FIRST
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .chain(map.keys().map(String::as_str).filter(|k| !FIRST.contains(k)));
    let fields: Vec<String> = keys.map(|k| format!("{}:{}", Value::from(k), map[k])).collect();
    format!("{{{}}}", fields.join(","))
}

/// The load `ues bench ws` puts on a node.
pub(crate) struct WsShape {
    /// WebSocket clients.
    pub(crate) clients: usize,
    /// Writes per second asked.
    pub(crate) rate: u64,
    /// Seconds of writing.
    pub(crate) seconds: u64,
    /// Concurrent writers.
    pub(crate) writers: usize,
    /// Batch subscriptions.
    pub(crate) batch: bool,
}

/// `ues bench ws`: `clients` WebSocket clients subscribed to one repository of a running node
/// while writers create records at `rate` per second for `seconds`; each record carries its send
/// time, so every client measures delivery latency. Reports latency percentiles, events
/// delivered and missing (for clients still connected), clients closed, and the node's RSS
/// (from `/stats`, which needs the operator's password).
pub(crate) async fn ws(addr: SocketAddr, shape: WsShape, admin_password: Option<&str>) -> anyhow::Result<Value> {
    let WsShape { clients, rate, seconds, writers, batch } = shape;
    let (token, did) = bench_account(addr, "ws").await?;
    let epoch = Instant::now();

    // The clients: each connects, subscribes, then counts its events and adds each one's
    // latency to a histogram all clients share (10 µs buckets up to 10 s, then one overflow
    // bucket): a thousand clients' samples kept one by one (20 million at 2,000 writes/s) cost
    // the machine more than the node's fan-out does.
    let histogram: Arc<Vec<AtomicU64>> = Arc::new((0..=LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect());
    let max_us = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (did, ready, stop) = (did.clone(), ready.clone(), stop.clone());
        let (histogram, max_us) = (histogram.clone(), max_us.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = RawWs::connect(addr).await?;
            let marker = memchr::memmem::Finder::new(br#""text":""#);
            let subscribe = json!({"type": "subscribe", "id": "b", "topic": "repo", "did": &*did, "batch": batch});
            ws.send(OP_TEXT, subscribe.to_string().as_bytes()).await?;
            let (mut events, mut closed) = (0usize, None);
            let mut counted = false;
            while !stop.load(Ordering::Relaxed) {
                let (op, payload) = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(m)) => m?,
                };
                match op {
                    // Light parsing, so the 1,000 clients cost the machine less than the node.
                    // (`event`: one; `events`: a batch, each with its own send time.)
                    OP_TEXT if payload.starts_with(br#"{"type":"event"#) => {
                        let now = epoch.elapsed().as_micros() as u64;
                        for at in marker.find_iter(payload) {
                            let digits = &payload[at + marker.needle().len()..];
                            let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
                            if let Some(sent) =
                                std::str::from_utf8(&digits[..end]).ok().and_then(|d| d.parse::<u64>().ok())
                            {
                                let us = now.saturating_sub(sent);
                                histogram[((us / 10) as usize).min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
                                max_us.fetch_max(us, Ordering::Relaxed);
                                events += 1;
                            }
                        }
                    }
                    OP_TEXT => {
                        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
                        if v["type"] == "subscribed" && !counted {
                            counted = true;
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    OP_PING => {
                        let payload = payload.to_vec();
                        ws.send(OP_PONG, &payload).await?;
                    }
                    OP_CLOSE => {
                        closed = Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])));
                        break;
                    }
                    _ => {}
                }
            }
            anyhow::Ok((events, closed))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < clients {
        if Instant::now() > deadline {
            bail!("only {} of {clients} clients subscribed", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The writers, paced together at `rate` records per second, on a thread of their own: on the
    // clients' thread they would queue behind a thousand sockets' reads and fall off the pace
    // (in use they are other devices).
    let writers_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let total = (rate * seconds) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut wtasks = Vec::new();
    for _ in 0..writers.max(1) {
        let (token, did, next) = (token.clone(), did.clone(), next.clone());
        wtasks.push(writers_rt.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut ok = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(ok);
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let sent = epoch.elapsed().as_micros() as u64;
                let body = json!({"repo": &*did, "collection": "app.bsky.feed.post",
                    "record": {"$type": "app.bsky.feed.post", "text": sent.to_string(), "createdAt": "2026-11-25T00:00:00.000Z"}});
                let (status, _) = conn.post("/xrpc/com.atproto.repo.createRecord", Some(&token), &body).await?;
                if status == 200 {
                    ok += 1;
                }
            }
        }));
    }
    let mut written = 0;
    for t in wtasks {
        written += t.await??;
    }
    let write_secs = started.elapsed().as_secs_f64();
    writers_rt.shutdown_background();
    // Let the last events arrive, then read the node's memory while every client is connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = http_get_json(addr, "/stats", admin_password).await.unwrap_or(Value::Null);
    stop.store(true, Ordering::Relaxed);
    let (mut delivered, mut missing, mut closed, mut complete) = (0usize, 0usize, 0usize, 0usize);
    for t in tasks {
        let (events, close) = t.await??;
        if close.is_some() {
            closed += 1;
        } else {
            missing += written.saturating_sub(events);
            if events >= written {
                complete += 1;
            }
        }
        delivered += events;
    }
    let counts: Vec<u64> = histogram.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    // The upper edge of the bucket holding the p-th sample, in ms.
    let pct = |p: f64| {
        let want = ((delivered as f64 * p) as u64).min(delivered.saturating_sub(1) as u64);
        let mut seen = 0;
        counts
            .iter()
            .position(|c| {
                seen += c;
                seen > want
            })
            .map_or(0.0, |i| (i as f64 + 1.0) * 0.01)
    };
    Ok(json!({
        "clients": clients,
        "batch": batch,
        "writes_requested": total,
        "writes_ok": written,
        "writes_per_s": (written as f64 / write_secs).round(),
        "events_delivered": delivered,
        "events_missing_for_connected_clients": missing,
        "clients_with_every_event": complete,
        "clients_closed": closed,
        "latency_ms_p50": pct(0.50),
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "node_rss_mb": stats["rssBytes"].as_u64().map(|b| b / (1 << 20)),
        "node_peak_rss_mb": stats["peakRssBytes"].as_u64().map(|b| b / (1 << 20)),
        "node_ws_slow_closed": stats["wsSlowClosed"],
    }))
}

pub(crate) const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The WebSocket client of `ues bench ws`: RFC 6455 framing over a plain TCP stream, reading
/// into one reused buffer (no zeroing, no copy per message, no UTF-8 check), so that a thousand
/// of them on the node's machine cost it as little as a client can. Messages up to 4 MiB.
pub(crate) struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start (the previous message ends there).
    start: usize,
    /// Bytes of the previous message to drop before reading the next.
    consumed: usize,
}

impl RawWs {
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(
                format!(
                    "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dWVzIGJlbmNoIGNsaWVudA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::with_capacity(64 << 10);
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 << 10 || stream.read_buf(&mut buf).await? == 0 {
                bail!("no WebSocket handshake answer");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!("handshake refused: {}", String::from_utf8_lossy(&buf[..head_end]));
        }
        Ok(Self { stream, buf, start: head_end, consumed: 0 })
    }

    /// Sends one masked frame (clients must mask).
    pub(crate) async fn send(&mut self, op: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mask = rand::random::<[u8; 4]>();
        let mut frame = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        Ok(self.stream.write_all(&frame).await?)
    }

    /// The next frame's opcode and payload (`None` when the server closed the connection).
    /// Fragmented messages are not expected from the node and are refused.
    pub(crate) async fn next(&mut self) -> Option<anyhow::Result<(u8, &[u8])>> {
        self.start += std::mem::take(&mut self.consumed);
        loop {
            match self.frame() {
                Ok(Some((op, from, to))) => {
                    self.consumed = to - self.start;
                    return Some(Ok((op, &self.buf[from..to])));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            // Keep the unread bytes at the front, then read more after them.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(64 << 10);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// A whole frame at `start`: (opcode, payload start, payload end), or `None` if incomplete.
    fn frame(&self) -> anyhow::Result<Option<(u8, usize, usize)>> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x80 == 0 || b[0] & 0x0F == 0 {
            bail!("fragmented message");
        }
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if len > 4 << 20 {
            bail!("message of {len} bytes");
        }
        if b.len() < at + len {
            return Ok(None);
        }
        Ok(Some((b[0] & 0x0F, self.start + at, self.start + at + len)))
    }
}

/// Latency histogram buckets of `ues bench ws` (10 µs each: up to 10 s).
const LATENCY_BUCKETS: usize = 1_000_000;

/// One GET with a JSON answer.
async fn http_get_json(addr: SocketAddr, path: &str, admin_password: Option<&str>) -> anyhow::Result<Value> {
    use base64::Engine;
    let auth = admin_password.map_or(String::new(), |p| {
        format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("admin:{p}")))
    });
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(serde_json::from_str(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_lines_lead_with_the_scenario_fields_and_stay_valid_json() {
        let v = json!({"converged": true, "zeta": 1, "scenario": "identical", "ops": 5, "cpu_ms": 1.5});
        let line = ordered_line(&v);
        assert!(line.starts_with(r#"{"scenario":"identical","ops":5,"cpu_ms":1.5,"converged":true"#), "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }
}
