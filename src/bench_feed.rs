//! `ues bench feed`: the feed application at scale. It starts a node of its own (this binary,
//! on 127.0.0.1, rate limits off, in a fresh data directory), loads it over HTTP with many
//! accounts, posts, likes, a viewer following many accounts and one long thread, with the feed
//! application off; then restarts it with the feed on, so the feed indexes the whole event log
//! from the start (the indexing rate), and measures `getTimeline` and `getPostThread` over
//! HTTP/1.1 keep-alive as the viewer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::Conn;

/// An account's DID and access token.
type Account = (String, String);

/// What to load.
#[derive(Debug, Clone)]
pub(crate) struct FeedShape {
    pub(crate) accounts: usize,
    pub(crate) posts: usize,
    pub(crate) follows: usize,
    pub(crate) likes_per_account: usize,
    pub(crate) replies: usize,
    pub(crate) connections: usize,
    pub(crate) calls: usize,
    pub(crate) dir: Option<PathBuf>,
}

struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start(exe: &Path, dir: &Path, feed: bool, port: u16) -> anyhow::Result<Node> {
    let apps = if feed { r#"["dev.ues.stats", "dev.ues.feed"]"# } else { r#"["dev.ues.stats"]"# };
    std::fs::write(dir.join("node.toml"), format!("[xrpc.rate_limits]\nenabled = false\n\n[apps]\nenabled = {apps}\n"))
        .with_context(|| format!("writing {}", dir.join("node.toml").display()))?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log")).context("the node's log")?;
    let child = Command::new(exe)
        .args(["run", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the node")?;
    let node = Node { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(mut c) = Conn::open(node.addr).await
            && let Ok((200, _)) = c.get("/xrpc/_health", None).await
        {
            return Ok(node);
        }
        if Instant::now() > deadline {
            bail!("the node never answered (see {})", dir.join("node.log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the node as an operator would (SIGTERM, then a kill after 60 s).
fn stop(mut node: Node) -> anyhow::Result<()> {
    let _ = Command::new("kill").arg(node.child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A createdAt spread over the last week, the same for the same `i`.
fn created_at(i: usize) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let spread = 7 * 24 * 3600 * 1000i64;
    let jitter = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as i64 % spread;
    ues_apps::protocol::node::sequencer::iso_from_millis(now - jitter)
}

async fn call(c: &mut Conn, path: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, v) = c.post(path, Some(token), body).await?;
    if status != 200 {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

/// Runs `f(i)` for i in 0..n over `connections` keep-alive connections.
async fn fan_out<F, Fut>(addr: SocketAddr, n: usize, connections: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Conn>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, f) = (next.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                c = f(c, i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[i] * 1000.0).round() / 1000.0
}

async fn latencies(addr: SocketAddr, path: &str, token: &str, calls: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut c = Conn::open(addr).await?;
    let mut ms = Vec::with_capacity(calls);
    let mut items = 0;
    for _ in 0..calls {
        let t = Instant::now();
        let (status, v) = c.get(path, Some(token)).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            bail!("{path}: {status} {v}");
        }
        items = v["feed"].as_array().map_or_else(|| v["thread"]["replies"].as_array().map_or(0, Vec::len), Vec::len);
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99), items))
}

pub(crate) async fn feed(shape: FeedShape) -> anyhow::Result<Value> {
    let dir = shape
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ues-bench-feed-{}", std::process::id())));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    // This program, found now: a rebuild while the benchmark runs replaces the file.
    let exe = std::env::current_exe().context("this program's path")?;
    // The same port both times: the node's service DID (the tokens' audience) is named by it.
    let port = free_port()?;
    let node = start(&exe, &dir, false, port).await?;
    let addr = node.addr;
    let t_load = Instant::now();

    // Accounts.
    let accounts: Arc<std::sync::Mutex<Vec<Option<Account>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; shape.accounts]));
    let acc = accounts.clone();
    let tag = std::process::id();
    fan_out(addr, shape.accounts, shape.connections, move |mut c, i| {
        let acc = acc.clone();
        async move {
            let (did, token) = crate::bench::create_account(&mut c, &format!("f{i}x{tag}.test")).await?;
            acc.lock().expect("not poisoned")[i] = Some((did, token));
            Ok(c)
        }
    })
    .await?;
    let accounts: Arc<Vec<(String, String)>> =
        Arc::new(accounts.lock().expect("not poisoned").iter().flatten().cloned().collect());
    let accounts_secs = t_load.elapsed().as_secs_f64();

    // Posts: each account's in applyWrites calls of up to 200; every 50th post's URI kept for likes.
    let per = shape.posts.div_ceil(shape.accounts.max(1));
    let sample: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let (acc, smp, posts_total) = (accounts.clone(), sample.clone(), shape.posts);
    fan_out(addr, accounts.len(), shape.connections, move |mut c, i| {
        let (acc, smp) = (acc.clone(), smp.clone());
        async move {
            let (did, token) = &acc[i];
            let mut made = 0;
            while made < per && i * per + made < posts_total {
                let n = (per - made).min(200).min(posts_total - i * per - made);
                let writes: Vec<Value> = (0..n)
                    .map(|k| {
                        let seq = i * per + made + k;
                        json!({ "$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.post",
                                "value": { "$type": "app.bsky.feed.post", "text": format!("post {seq} from {i}: rust and sqlite and feeds"), "createdAt": created_at(seq) } })
                    })
                    .collect();
                let v = call(&mut c, "/xrpc/com.atproto.repo.applyWrites", token, &json!({ "repo": did, "writes": writes })).await?;
                let mut s = smp.lock().expect("not poisoned");
                for (k, r) in v["results"].as_array().into_iter().flatten().enumerate() {
                    if (made + k) % 50 == 0 {
                        s.push((r["uri"].as_str().unwrap_or_default().to_string(), r["cid"].as_str().unwrap_or_default().to_string()));
                    }
                }
                made += n;
            }
            Ok(c)
        }
    })
    .await?;
    let sample: Arc<Vec<(String, String)>> = Arc::new(sample.lock().expect("not poisoned").clone());

    // Likes: each account likes `likes_per_account` sampled posts.
    let (acc, smp, lpa) = (accounts.clone(), sample.clone(), shape.likes_per_account);
    if lpa > 0 && !sample.is_empty() {
        fan_out(addr, accounts.len(), shape.connections, move |mut c, i| {
            let (acc, smp) = (acc.clone(), smp.clone());
            async move {
                let (did, token) = &acc[i];
                let writes: Vec<Value> = (0..lpa.min(200))
                    .map(|k| {
                        let (uri, cid) = &smp[(i * 7919 + k * 104_729) % smp.len()];
                        json!({ "$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.like",
                                "value": { "$type": "app.bsky.feed.like", "subject": { "uri": uri, "cid": cid }, "createdAt": created_at(i + k) } })
                    })
                    .collect();
                call(&mut c, "/xrpc/com.atproto.repo.applyWrites", token, &json!({ "repo": did, "writes": writes })).await?;
                Ok(c)
            }
        })
        .await?;
    }

    // The viewer (the first account) follows the next `follows` accounts.
    let (viewer_did, viewer_token) = accounts[0].clone();
    let mut c = Conn::open(addr).await?;
    let followed: Vec<&(String, String)> = accounts.iter().skip(1).take(shape.follows).collect();
    for chunk in followed.chunks(200) {
        let writes: Vec<Value> = chunk
            .iter()
            .map(|(d, _)| {
                json!({ "$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.graph.follow",
                        "value": { "$type": "app.bsky.graph.follow", "subject": d, "createdAt": created_at(0) } })
            })
            .collect();
        call(
            &mut c,
            "/xrpc/com.atproto.repo.applyWrites",
            &viewer_token,
            &json!({ "repo": viewer_did, "writes": writes }),
        )
        .await?;
    }

    // One thread: a root post by the second account and `replies` replies from the others.
    let (root_did, root_token) = accounts.get(1).unwrap_or(&accounts[0]).clone();
    let root = call(
        &mut c,
        "/xrpc/com.atproto.repo.createRecord",
        &root_token,
        &json!({ "repo": root_did, "collection": "app.bsky.feed.post",
                 "record": { "$type": "app.bsky.feed.post", "text": "a long thread", "createdAt": created_at(1) } }),
    )
    .await?;
    let root_ref = json!({ "uri": root["uri"], "cid": root["cid"] });
    let (acc, rr) = (accounts.clone(), root_ref.clone());
    fan_out(addr, shape.replies, shape.connections, move |mut c, i| {
        let (acc, rr) = (acc.clone(), rr.clone());
        async move {
            let (did, token) = &acc[(2 + i) % acc.len()];
            call(
                &mut c,
                "/xrpc/com.atproto.repo.createRecord",
                token,
                &json!({ "repo": did, "collection": "app.bsky.feed.post",
                         "record": { "$type": "app.bsky.feed.post", "text": format!("reply {i}"), "createdAt": created_at(i + 3),
                                     "reply": { "root": rr, "parent": rr } } }),
            )
            .await?;
            Ok(c)
        }
    })
    .await?;
    let load_secs = t_load.elapsed().as_secs_f64();
    let (_, head) = c.get("/xrpc/dev.ues.feed.getStatus", None).await.unwrap_or((0, Value::Null));
    drop(c);
    stop(node)?;

    // The feed on: it indexes the whole log from its first event.
    let records = shape.posts + accounts.len() * shape.likes_per_account.min(200) + followed.len() + 1 + shape.replies;
    let t_index = Instant::now();
    let node = start(&exe, &dir, true, port).await?;
    let addr = node.addr;
    let mut c = Conn::open(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let events = loop {
        let (_, v) = c.get("/xrpc/dev.ues.feed.getStatus", None).await?;
        if v["caughtUp"] == true && v["head"].as_i64().unwrap_or(0) > 0 {
            break v["head"].as_i64().unwrap_or(0);
        }
        if Instant::now() > deadline {
            bail!("the feed did not catch up within an hour: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let index_secs = t_index.elapsed().as_secs_f64();
    let _ = head;

    let timeline = "/xrpc/app.bsky.feed.getTimeline?limit=50";
    let (tl_p50, tl_p99, tl_items) = latencies(addr, timeline, &viewer_token, shape.calls).await?;
    let thread = format!("/xrpc/app.bsky.feed.getPostThread?uri={}", root["uri"].as_str().unwrap_or_default());
    let (th_p50, th_p99, th_replies) = latencies(addr, &thread, &viewer_token, (shape.calls / 5).max(10)).await?;
    // A deeper page of the timeline: the cursor after 500 items (on a new connection: the
    // node closes one left idle).
    let mut c = Conn::open(addr).await?;
    let mut cursor = String::new();
    for _ in 0..10 {
        let (_, v) = c.get(&format!("{timeline}{cursor}"), Some(&viewer_token)).await?;
        match v["cursor"].as_str() {
            Some(k) => cursor = format!("&cursor={k}"),
            None => break,
        }
    }
    let (deep_p50, deep_p99, _) = latencies(addr, &format!("{timeline}{cursor}"), &viewer_token, shape.calls).await?;
    drop(c);
    stop(node)?;
    if shape.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(json!({
        "accounts": accounts.len(), "posts": shape.posts, "likes": accounts.len() * shape.likes_per_account.min(200),
        "viewerFollows": followed.len(), "threadReplies": shape.replies,
        "load": { "seconds": (load_secs * 10.0).round() / 10.0, "accountsSeconds": (accounts_secs * 10.0).round() / 10.0 },
        "indexing": { "events": events, "records": records, "seconds": (index_secs * 100.0).round() / 100.0,
                      "recordsPerSec": (records as f64 / index_secs).round(), "note": "from the node's start with the feed on to the feed's cursor at the log head" },
        "getTimeline": { "limit": 50, "items": tl_items, "p50ms": tl_p50, "p99ms": tl_p99, "calls": shape.calls },
        "getTimelineAfter500": { "p50ms": deep_p50, "p99ms": deep_p99 },
        "getPostThread": { "replies": th_replies, "p50ms": th_p50, "p99ms": th_p99 },
    }))
}
