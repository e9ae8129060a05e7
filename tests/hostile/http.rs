//! Attacks on the HTTP server: slow clients (readers that never read, trickling bodies, half
//! headers, one address opening too many connections), large bodies before authentication,
//! many readers of a large blob, login and call floods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::support::*;

const MIB: u64 = 1 << 20;

/// A node with the HTTP bounds of these tests; `extra` adds to its node.toml.
fn node(dir: &std::path::Path, extra: &str) -> Arc<Running> {
    raise_open_files();
    Arc::new(start_with(dir, &format!("[http]\nheader_timeout_secs = 6\nwrite_timeout_secs = 8\n{extra}")))
}

/// Runs blocking client calls off the test's async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// `describeRepo` (served on the blocking pool) answers within `deadline`.
fn describe_repo_answers(node: &Running, did: &str, deadline: Duration) {
    let started = Instant::now();
    let client: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(deadline)).http_status_as_error(false).build().into();
    let res = client
        .get(format!("{}/xrpc/com.atproto.repo.describeRepo?repo={did}", node.base))
        .call()
        .unwrap_or_else(|e| panic!("describeRepo got no answer within {deadline:?}: {e}"));
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() <= deadline);
}

/// The node's cap on blocking threads (`ues run`).
const BLOCKING_THREADS: u64 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_pin_neither_threads_nor_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        node(dir.path(), "max_connections = 4000\nmax_connections_per_ip = 250\n[xrpc.rate_limits]\nenabled = false\n");
    let pid = node.child.id();
    let n = node.clone();
    let (did, token) = blocking(move || {
        let (did, token) = account(&n, "slow.test");
        // A repository larger than what socket buffers and the export's channel hold (8 MB).
        let big = "x".repeat(200_000);
        for i in 0..40 {
            let body = json!({"repo": did, "collection": "com.example.big", "rkey": format!("r{i}"),
                "record": {"$type": "com.example.big", "data": big}});
            let (s, v) = call(&n, "POST", "/xrpc/com.atproto.repo.createRecord", Some(&token), Some(body));
            assert_eq!(s, 200, "{v}");
        }
        (did, token)
    })
    .await;
    let (rss0, threads0) = (rss(pid), threads(pid));
    eprintln!("threads before: {}", thread_names(pid));

    // 200 getRepo readers that never read after the request (from 127.0.0.2).
    let mut readers = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from(&node, [127, 0, 0, 2], Some(4096)).await.unwrap();
        let req = format!("GET /xrpc/com.atproto.sync.getRepo?did={did} HTTP/1.1\r\nHost: n\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        readers.push(s);
    }
    let attacked = Instant::now();
    // 200 uploadBlob bodies that trickle a byte a second (from 127.0.0.3), for 12 s.
    let mut tricklers = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from(&node, [127, 0, 0, 3], None).await.unwrap();
        let head = format!(
            "POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: image/png\r\nContent-Length: 10000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        tricklers.push(tokio::spawn(async move {
            for _ in 0..12 {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            s
        }));
    }
    // 150 connections that send half a request header (from 127.0.0.4).
    let mut halves = Vec::new();
    for _ in 0..150 {
        let mut s = connect_from(&node, [127, 0, 0, 4], None).await.unwrap();
        s.write_all(b"GET /xrpc/_health HTTP/1.1\r\nHost: n\r\n").await.unwrap();
        halves.push(s);
    }
    // 300 silent connections from one address (127.0.0.5): past its cap of 250, each is closed
    // as soon as it is accepted; the others stay open until the header deadline (6 s).
    let mut crowd = Vec::new();
    for _ in 0..300 {
        crowd.push(connect_from(&node, [127, 0, 0, 5], None).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    for s in &mut crowd {
        if closed_within(s, Duration::from_millis(5)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 50, "connections past the per-address cap are closed at once");

    // While 850 attackers hold their connections, honest calls are answered, including one
    // served on the blocking pool, and neither memory nor threads grow with the attackers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (n, d) = (node.clone(), did.clone());
    blocking(move || {
        still_answers(&n, Duration::from_secs(10));
        describe_repo_answers(&n, &d, Duration::from_secs(10));
    })
    .await;
    let (rss1, threads1) = (rss(pid), threads(pid));
    eprintln!("slow clients: RSS {} -> {} MiB, threads {threads0} -> {threads1}", rss0 / MIB, rss1 / MIB);
    assert!(rss1 < rss0 + 256 * MIB, "RSS grew from {} to {} MiB", rss0 / MIB, rss1 / MIB);
    // The blocking pool is capped (the exports that may run at once and brief store work share
    // it): a bound far below the 850 attackers, however many come.
    assert!(threads1 <= threads0 + BLOCKING_THREADS, "threads grew from {threads0} to {threads1}");

    // Half headers are cut at the header deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &mut halves {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(closed_within(s, left).await, "a half-sent header was still open after its deadline");
    }
    // Readers that read nothing lose their connection once a response has waited on them for
    // 8 s: by now, at least the first 16 (the exports allowed at once; the others wait their
    // turn without a thread).
    tokio::time::sleep((attacked + Duration::from_secs(14)).saturating_duration_since(Instant::now())).await;
    // A cut reader gets what was already in flight and then the end, short of the whole CAR;
    // the others, once they read, get all of it and stay open (keep-alive).
    let draining: Vec<_> = readers
        .into_iter()
        .map(|mut s| tokio::spawn(async move { drain(&mut s, Duration::from_secs(3)).await }))
        .collect();
    let mut cut = 0;
    for d in draining {
        if let (true, bytes) = d.await.unwrap()
            && bytes < 8_000_000
        {
            cut += 1;
        }
    }
    assert!(cut >= 16, "only {cut} non-reading getRepo clients were cut off");

    // The attackers leave. Threads stay bounded (the blocking pool keeps idle threads while
    // it has any work, so the count need not fall back), and none is left pinned: sixteen
    // honest exports at once, as many as may run, all complete.
    drop((halves, crowd));
    for t in tricklers {
        drop(t.await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let threads2 = threads(pid);
    eprintln!("slow clients gone: RSS {} MiB, threads {threads2}: {}", rss(pid) / MIB, thread_names(pid));
    assert!(
        threads2 <= threads0 + BLOCKING_THREADS,
        "threads at {threads2} (before: {threads0}): {}",
        thread_names(pid)
    );
    let n = node.clone();
    blocking(move || still_answers(&n, Duration::from_secs(10))).await;
    let started = Instant::now();
    let honest: Vec<_> = (0..16)
        .map(|_| {
            let (n, did) = (node.clone(), did.clone());
            tokio::task::spawn_blocking(move || {
                let client: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(30)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut res = client.get(format!("{}/xrpc/com.atproto.sync.getRepo?did={did}", n.base)).call().unwrap();
                assert_eq!(res.status(), 200);
                res.body_mut().with_config().limit(64 * MIB).read_to_vec().unwrap().len()
            })
        })
        .collect();
    for h in honest {
        // The repository is intact: each reader gets all of it.
        let len = h.await.unwrap();
        assert!(len > 8_000_000, "the CAR has {len} bytes");
    }
    eprintln!("16 honest exports after the attack: {:?}", started.elapsed());
}

/// Sends a POST (from 127.0.0.6) declaring a body of `len` bytes, then as much of it as the
/// node takes until it answers; returns the status.
async fn post_big(node: &Running, path: &str, len: usize) -> u16 {
    let mut s = connect_from(node, [127, 0, 0, 6], None).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < len {
            let n = piece.len().min(len - sent);
            if wr.write_all(&piece[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
    });
    let head = read_head(&mut rd, Duration::from_secs(30)).await;
    writer.abort();
    head.expect("an answer").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "[xrpc.rate_limits]\nenabled = false\n");
    let pid = node.child.id();
    let n = node.clone();
    let (did, _) = blocking(move || account(&n, "body.test")).await;
    let rss0 = rss(pid);
    // Twenty 16 MiB bodies at once: to the login, and to a record write without a token.
    let mut calls = Vec::new();
    for i in 0..20 {
        let path =
            if i % 2 == 0 { "/xrpc/com.atproto.server.createSession" } else { "/xrpc/com.atproto.repo.createRecord" };
        let n = node.clone();
        calls.push(tokio::spawn(async move { (i, post_big(&n, path, 16 << 20).await) }));
    }
    for c in calls {
        let (i, status) = c.await.unwrap();
        let want = if i % 2 == 0 { 413 } else { 401 };
        assert_eq!(status, want, "call {i}");
    }
    let rss1 = rss(pid);
    eprintln!("16 MiB bodies: RSS {} -> {} MiB", rss0 / MIB, rss1 / MIB);
    assert!(rss1 < rss0 + 32 * MIB, "RSS grew from {} to {} MiB", rss0 / MIB, rss1 / MIB);
    let n = node.clone();
    blocking(move || {
        // A login body just over its few KiB: refused too.
        let (s, v) = call(
            &n,
            "POST",
            "/xrpc/com.atproto.server.createSession",
            None,
            Some(json!({"identifier": "x".repeat(8192), "password": "p"})),
        );
        assert_eq!((s, v["error"].as_str()), (413, Some("PayloadTooLarge")));
        // Nothing was stored.
        let (s, v) = call(&n, "GET", &format!("/xrpc/com.atproto.repo.describeRepo?repo={did}"), None, None);
        assert_eq!(s, 200);
        assert_eq!(v["collections"], json!([]));
        still_answers(&n, Duration::from_secs(10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_of_a_large_blob_hold_pieces_not_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "[xrpc.rate_limits]\nenabled = false\n");
    let pid = node.child.id();
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (n, d) = (node.clone(), data.clone());
    let (did, cid) = blocking(move || {
        let (did, token) = account(&n, "blob.test");
        let mut res = agent()
            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", n.base))
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "video/mp4")
            .send(&d[..])
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.body_mut().read_json().unwrap();
        (did, v["blob"]["ref"]["$link"].as_str().unwrap().to_string())
    })
    .await;
    let rss0 = rss(pid);
    // 40 readers (from 127.0.0.7) that read its first MiB and then nothing.
    let path = format!("/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}");
    let mut readers = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from(&node, [127, 0, 0, 7], Some(4096)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: n\r\n\r\n").as_bytes()).await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        s.read_exact(&mut got).await.unwrap();
        readers.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = rss(pid);
    eprintln!("40 readers of a 20 MB blob: RSS {} -> {} MiB", rss0 / MIB, rss1 / MIB);
    // Whole copies would be 800 MB.
    assert!(rss1 < rss0 + 100 * MIB, "RSS grew from {} to {} MiB", rss0 / MIB, rss1 / MIB);
    let n = node.clone();
    let whole = blocking(move || {
        still_answers(&n, Duration::from_secs(10));
        let mut res = agent().get(format!("{}{path}", n.base)).call().unwrap();
        assert_eq!(res.status(), 200);
        res.body_mut().with_config().limit(64 * MIB).read_to_vec().unwrap()
    })
    .await;
    assert!(whole == data, "the blob read back differs ({} bytes)", whole.len());
    drop(readers);
}

/// A GET from `from` on a fresh connection: the status and headers.
async fn get_from(node: &Running, from: [u8; 4], path: &str) -> (u16, Vec<(String, String)>) {
    let mut s = connect_from(node, from, None).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    read_head(&mut s, Duration::from_secs(10)).await.expect("an answer")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_call_floods_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "[xrpc.rate_limits]\ncalls_per_ip_5min = 60\n");
    let n = node.clone();
    blocking(move || {
        account(&n, "guessed.test");
        account(&n, "other.test");
        let login = |ident: &str, password: &str| {
            agent()
                .post(format!("{}/xrpc/com.atproto.server.createSession", n.base))
                .send_json(json!({"identifier": ident, "password": password}))
                .unwrap()
        };
        // Wrong passwords for one identifier: 30 answered, then refused.
        for i in 0..30 {
            assert_eq!(login("guessed.test", &format!("guess {i}")).status(), 401, "guess {i}");
        }
        let res = login("guessed.test", "guess 30");
        assert_eq!(res.status(), 429);
        let h = |k: &str| res.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(h("ratelimit-limit").as_deref(), Some("30"));
        assert_eq!(h("ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(h("ratelimit-policy").as_deref(), Some("30;w=300"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let reset: u64 = h("ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > now && reset <= now + 301, "reset {reset}, now {now}");
        // Even the right password waits now; another identifier logs in at once.
        assert_eq!(login("guessed.test", "a long password").status(), 429);
        let res = login("other.test", "a long password");
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit-remaining").is_some());
    })
    .await;

    // One address (127.0.0.9) calling past 60 per 5 minutes is refused; others are not.
    let mut ok = 0;
    let mut last = (0, Vec::new());
    for _ in 0..70 {
        last = get_from(&node, [127, 0, 0, 9], "/xrpc/com.atproto.server.describeServer").await;
        if last.0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 60, "calls answered before the limit");
    assert_eq!(last.0, 429);
    assert_eq!(header(&last.1, "ratelimit-limit"), Some("60"));
    assert_eq!(header(&last.1, "ratelimit-policy"), Some("60;w=300"));
    assert!(header(&last.1, "retry-after").is_some());
    let n = node.clone();
    blocking(move || {
        still_answers(&n, Duration::from_secs(10));
        let metrics = agent().get(format!("{}/metrics", n.base)).header("authorization", &n.operator_auth()).call();
        assert_eq!(metrics.unwrap().status(), 200);
    })
    .await;
}

/// A client that sends its whole body before it reads the answer (as most HTTP clients do)
/// still gets the 413 the node gave before reading the body: the node reads and discards the
/// rest for a while (a lingering close) instead of resetting the connection under the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_sent_whole_still_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "[xrpc.rate_limits]\nenabled = false\n");
    for _ in 0..3 {
        let mut s = connect_from(&node, [127, 0, 0, 7], None).await.unwrap();
        let len = 16 << 20;
        let head = format!(
            "POST /xrpc/com.atproto.server.createSession HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b' '; 64 << 10];
        for _ in 0..len / piece.len() {
            s.write_all(&piece).await.expect("the node takes the whole body before it closes");
        }
        let (mut rd, _wr) = s.into_split();
        let (status, _) = read_head(&mut rd, Duration::from_secs(10)).await.expect("an answer");
        assert_eq!(status, 413);
    }
    still_answers(&node, Duration::from_secs(10));
}
