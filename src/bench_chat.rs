//! `ues bench chat`: end-to-end encrypted messages between two running nodes (each holding
//! one of the two accounts, their DIDs in a directory both nodes read): an account on the first
//! node starts a conversation with one on the second, then sends messages as fast as its node
//! takes them; measured are the send latency (encrypt with Olm, seal, queue for the other node)
//! and the rate at which the second node's built-in device has them decrypted and readable.
//! `scripts/chat-bench.sh` starts a directory and two nodes and runs it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::bench::Conn;

async fn account(addr: SocketAddr, handle: &str) -> anyhow::Result<(String, String)> {
    crate::bench::create_account(&mut Conn::open(addr).await?, handle).await
}

/// Messages `token`'s account holds in the conversation (counted by pages).
async fn held(c: &mut Conn, token: &str, convo: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/xrpc/dev.ues.chat.getMessages?convoId={convo}&limit=100&cursor={cur}"),
            None => format!("/xrpc/dev.ues.chat.getMessages?convoId={convo}&limit=100"),
        };
        let (status, v) = c.get(&path, Some(token)).await?;
        if status != 200 {
            return Ok(n);
        }
        n += v["messages"].as_array().map_or(0, Vec::len);
        match v["cursor"].as_str() {
            Some(cur) => cursor = Some(cur.to_string()),
            None => return Ok(n),
        }
    }
}

async fn wait_for(c: &mut Conn, token: &str, convo: &str, n: usize, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while held(c, token, convo).await? < n {
        if start.elapsed() > within {
            bail!("the second node holds fewer than {n} messages after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the benchmark: `messages` messages from an account on `a` to one on `b`.
pub(crate) async fn chat(a: SocketAddr, b: SocketAddr, messages: usize) -> anyhow::Result<Value> {
    let tag = format!("{:x}", rand::random::<u32>());
    let (_, alice) = account(a, &format!("a{tag}.test")).await?;
    let (bob_did, bob) = account(b, &format!("b{tag}.test")).await?;
    let mut ca = Conn::open(a).await?;
    let mut cb = Conn::open(b).await?;
    let (status, v) = ca.post("/xrpc/dev.ues.chat.createConvo", Some(&alice), &json!({"members": [bob_did]})).await?;
    if status != 200 {
        bail!("createConvo: {status} {v}");
    }
    let convo = v["convoId"].as_str().unwrap_or_default().to_string();
    // The first message starts the Olm sessions (claimed keys, pre-key messages).
    let first = Instant::now();
    ca.post("/xrpc/dev.ues.chat.sendMessage", Some(&alice), &json!({"convoId": convo, "text": "first"})).await?;
    wait_for(&mut cb, &bob, &convo, 1, Duration::from_secs(60)).await?;
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;

    let text = "a message of ordinary length, about as long as people write to each other";
    let mut sends = Vec::with_capacity(messages);
    let start = Instant::now();
    for i in 0..messages {
        let t = Instant::now();
        let (status, v) = ca
            .post(
                "/xrpc/dev.ues.chat.sendMessage",
                Some(&alice),
                &json!({"convoId": convo, "text": format!("{text} {i}")}),
            )
            .await?;
        if status != 200 {
            bail!("sendMessage {i}: {status} {v}");
        }
        sends.push(t.elapsed());
    }
    let sent = start.elapsed();
    wait_for(&mut cb, &bob, &convo, messages + 1, Duration::from_secs(600)).await?;
    let delivered = start.elapsed();
    sends.sort();
    Ok(json!({
        "messages": messages,
        "firstMessageMs": first_ms,
        "sendPerSecond": messages as f64 / sent.as_secs_f64(),
        "sendP50Ms": percentile(&sends, 0.5),
        "sendP99Ms": percentile(&sends, 0.99),
        "deliveredPerSecond": messages as f64 / delivered.as_secs_f64(),
        "allReadableAfterMs": delivered.as_secs_f64() * 1000.0,
    }))
}
