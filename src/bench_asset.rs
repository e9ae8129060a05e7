//! `ues bench asset`: ledger transfers against a running node over real HTTP connections, on a
//! fungible class without a contract and on one whose `on_transfer` hook is a contract (a
//! module given with `--hook`: `scripts/asset-bench.sh` compiles the AssemblyScript fee hook),
//! by one writer and by several (each transfer is a signed commit of the issuer's repository;
//! one issuer's transfers are made one at a time).
//!
//! `ues bench ledger`: `verifyLedger`'s replay over a ledger of many transactions, built in
//! memory as the node writes them (records in signed commits of a repository).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use ues_apps::asset::{ledger, replay, store};
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::ipld::json::record_from_json;
use ues_repo::ipld::storage::MemoryBlockstore;
use ues_repo::repo::{Repo, Write};
use ues_repo::syntax::{Did, Nsid, RecordKey, TidGenerator};

use crate::bench::{Conn, create_account};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Uploads a module and instantiates it as `token`'s account; the instance's URI.
fn instantiate(addr: SocketAddr, token: &str, wasm: &[u8], msg: &Value) -> anyhow::Result<String> {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let auth = format!("Bearer {token}");
    let mut res = agent
        .post(format!("http://{addr}/xrpc/dev.ues.contract.upload"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/wasm")
        .send(wasm)?;
    let code: Value = res.body_mut().read_json()?;
    let uri = code["uri"].as_str().with_context(|| format!("upload: {code}"))?;
    let mut res = agent
        .post(format!("http://{addr}/xrpc/dev.ues.contract.instantiate"))
        .header("Authorization", &auth)
        .send_json(json!({ "code": uri, "msg": msg }))?;
    let v: Value = res.body_mut().read_json()?;
    Ok(v["uri"].as_str().with_context(|| format!("instantiate: {v}"))?.to_string())
}

/// `transfers` transfers by `writers` concurrent holders on one class: per second, p50, p99.
async fn run(addr: SocketAddr, issuer: &str, ledger: &str, transfers: usize, writers: usize) -> anyhow::Result<Value> {
    let tag = format!("{:x}", rand::random::<u32>());
    let mut holders = Vec::new();
    let mut c = Conn::open(addr).await?;
    for w in 0..writers {
        let (did, token) = create_account(&mut Conn::open(addr).await?, &format!("h{w}x{tag}.test")).await?;
        let (s, v) = c
            .post(
                "/xrpc/dev.ues.asset.mint",
                Some(issuer),
                &json!({"ledger": ledger, "to": did, "amount": (transfers as u128 * 10).to_string()}),
            )
            .await?;
        if s != 200 {
            bail!("mint: {s} {v}");
        }
        holders.push((did, token));
    }
    let per = transfers / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, (_, token)) in holders.iter().enumerate() {
        let to = holders[(w + 1) % holders.len()].0.clone();
        let (token, ledger) = (token.clone(), ledger.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await?;
            let mut times = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let (s, v) = c
                    .post(
                        "/xrpc/dev.ues.asset.transfer",
                        Some(&token),
                        &json!({"ledger": ledger, "to": to, "amount": "1"}),
                    )
                    .await?;
                if s != 200 {
                    bail!("transfer: {s} {v}");
                }
                times.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(times)
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await??);
    }
    let elapsed = start.elapsed();
    times.sort();
    Ok(json!({
        "transfers": times.len(),
        "writers": writers,
        "perSecond": times.len() as f64 / elapsed.as_secs_f64(),
        "p50Ms": percentile(&times, 0.5),
        "p99Ms": percentile(&times, 0.99),
    }))
}

/// Runs the transfer benchmark on the node at `addr`.
pub(crate) async fn asset(
    addr: SocketAddr,
    transfers: usize,
    writers: usize,
    hook: Option<PathBuf>,
    hook_msg: Value,
) -> anyhow::Result<Value> {
    let tag = format!("{:x}", rand::random::<u32>());
    let (_, issuer) = create_account(&mut Conn::open(addr).await?, &format!("i{tag}.test")).await?;
    let mut c = Conn::open(addr).await?;
    let class = |name: &str, contract: Option<&str>| {
        let mut body = json!({"kind": "fungible", "name": name});
        if let Some(k) = contract {
            body["contract"] = json!(k);
        }
        body
    };
    let plain = class("Plain", None);
    let (s, v) = c.post("/xrpc/dev.ues.asset.createClass", Some(&issuer), &plain).await?;
    if s != 200 {
        bail!("createClass: {s} {v}");
    }
    let plain = v["uri"].as_str().unwrap_or_default().to_string();
    let mut out = json!({
        "plain": {
            "oneWriter": run(addr, &issuer, &plain, transfers, 1).await?,
            "writers": run(addr, &issuer, &plain, transfers, writers).await?,
        }
    });
    if let Some(path) = hook {
        let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (token, msg) = (issuer.clone(), hook_msg);
        let instance = tokio::task::spawn_blocking(move || instantiate(addr, &token, &wasm, &msg)).await??;
        let hooked = class("Hooked", Some(&instance));
        let (s, v) = c.post("/xrpc/dev.ues.asset.createClass", Some(&issuer), &hooked).await?;
        if s != 200 {
            bail!("createClass with a hook: {s} {v}");
        }
        let hooked = v["uri"].as_str().unwrap_or_default().to_string();
        out["hook"] = json!({
            "module": path.display().to_string(),
            "oneWriter": run(addr, &issuer, &hooked, transfers, 1).await?,
            "writers": run(addr, &issuer, &hooked, transfers, writers).await?,
        });
    }
    Ok(out)
}

/// The peak resident set of this process, MiB (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Builds a ledger of `txs` transactions (a mint, then transfers among 1,000 holders) in a
/// repository in memory, `per_commit` records a commit, then replays it as `verifyLedger` does.
pub(crate) fn ledger(txs: usize, per_commit: usize) -> anyhow::Result<Value> {
    let store = MemoryBlockstore::new();
    let key = Keypair::generate(KeyType::K256);
    let did = Did::new("did:web:ledger.bench.example")?;
    let tids = TidGenerator::new(7);
    let (mut repo, _) = Repo::create(&store, did.clone(), &key, tids.next())?;
    let class_rkey = tids.next().to_string();
    let class_json =
        json!({"$type": store::CLASS, "kind": "fungible", "name": "Bench", "createdAt": "2026-12-06T00:00:00.000Z"});
    let class = ledger::Class::from_record(did.as_str(), &class_json).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (class_nsid, tx_nsid) = (Nsid::new(store::CLASS)?, Nsid::new(store::TX)?);
    repo.apply_writes(
        &[Write::Create {
            collection: class_nsid,
            rkey: RecordKey::new(&class_rkey)?,
            record: record_from_json(&class_json)?,
        }],
        &key,
        tids.next(),
        None,
    )?;
    let uri = store::ledger_uri(did.as_str(), &class_rkey);
    let holders: Vec<String> = (0..1000).map(|i| format!("did:web:h{i}.bench.example")).collect();
    let mut state = ledger::Memory::default();
    let build = Instant::now();
    let mut writes = Vec::with_capacity(per_commit);
    for seq in 1..=txs {
        let (actor, op) = if seq == 1 {
            (
                did.to_string(),
                ledger::Op::Mint {
                    to: holders[0].clone(),
                    token: None,
                    amount: 1 << 60,
                    metadata: None,
                    unique: false,
                },
            )
        } else {
            // Each holder passes one unit on, round the ring: every balance stays positive.
            let from = holders[(seq - 2) % holders.len()].clone();
            let to = holders[(seq - 1) % holders.len()].clone();
            let amount = if seq <= holders.len() { (1u128 << 60) >> (seq - 1).min(50) } else { 1 };
            (from.clone(), ledger::Op::Transfer { from, to, token: None, amount, fee: None })
        };
        let hash = state.apply(&class, &actor, &op).map_err(|e| anyhow::anyhow!("tx {seq}: {e}"))?;
        let record = json!({
            "$type": store::TX, "ledger": uri, "seq": seq, "actor": actor, "op": op.to_json(),
            "stateHash": hash, "createdAt": "2026-12-06T00:00:00.000Z",
        });
        writes.push(Write::Create {
            collection: tx_nsid.clone(),
            rkey: RecordKey::new(store::tx_rkey(&class_rkey, seq as i64))?,
            record: record_from_json(&record)?,
        });
        if writes.len() == per_commit || seq == txs {
            repo.apply_writes(&writes, &key, tids.next(), None)?;
            writes.clear();
        }
    }
    let built = build.elapsed();
    let start = Instant::now();
    let report = replay::replay(&repo, did.as_str(), store::CLASS, &class_rkey)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?
        .context("the class is in the repository")?;
    let replayed = start.elapsed();
    if report.first_bad.is_some() || report.state_hash != state.hash.digest() {
        bail!("the replay disagrees: {:?}", report.first_bad);
    }
    Ok(json!({
        "txs": txs,
        "perCommit": per_commit,
        "buildSeconds": built.as_secs_f64(),
        "replaySeconds": replayed.as_secs_f64(),
        "replayedPerSecond": txs as f64 / replayed.as_secs_f64(),
        "replayMicrosPerTx": replayed.as_secs_f64() * 1e6 / txs as f64,
        "stateHash": report.state_hash,
        "peakRssMiB": peak_rss_mib(),
    }))
}
