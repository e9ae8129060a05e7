//! `ues bench lens`: the cost of maintaining a live view, on the engine the node runs and
//! databases opened as the node opens its own (the node's, with the views' own attached: WAL,
//! 4 KiB pages, `synchronous = FULL`, the writer's page cache of `[storage] sqlite_cache_mib`
//! unless `--cache-mib` says otherwise): a grouped join (likes per post, joined to the posts,
//! with a count and a `min`) is built over `rows` posts with one like each (so the view
//! holds `rows` groups), then random likes come and go one at a time, batched into
//! transactions as the event consumer batches them; each change's time is measured alone, and
//! against recomputing the view from its inputs.
//!
//! `ues bench lens-ws`: against a running node, the delay from a commit (its `createRecord`
//! answered) to the view's difference arriving on a `/ws` subscription.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde_json::{Value, json};
use ues_apps::lens::def::{self, View};
use ues_apps::lens::engine::{self, Diff, Maint};
use ues_repo::ipld::storage::rusqlite::params;
use ues_repo::ipld::storage::{Sqlite, SqliteConfig};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us_at(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

fn lexicons() -> anyhow::Result<ues_repo::lexicon::Lexicons> {
    let mut l = ues_repo::lexicon::Lexicons::new();
    for text in crate::lexicons::EMBEDDED {
        l.add(&serde_json::from_str(text)?)?;
    }
    Ok(l)
}

fn view_definition() -> Value {
    json!({"name": "likesPerPost", "from": {"collection": "app.bsky.feed.like", "as": "l"},
        "join": [{"collection": "app.bsky.feed.post", "as": "p", "on": ["l.subject.uri", "p.uri"], "kind": "inner"}],
        "where": {"eq": ["p.langs.0", "en"]},
        "groupBy": ["l.subject.uri"],
        "select": {"post": "l.subject.uri", "likes": {"count": "*"}, "firstLike": {"min": "l.createdAt"}},
        "orderBy": [{"field": "likes", "desc": true}], "limit": 100})
}

fn post_uri(i: usize) -> String {
    format!("at://did:plc:author{:04}/app.bsky.feed.post/p{i:08}", i % 1000)
}

fn post(i: usize) -> Value {
    let serde_json::Value::Object(m) =
        json!({"text": format!("post {i}"), "langs": ["en"], "createdAt": "2026-12-01T00:00:00.000Z"})
    else {
        unreachable!()
    };
    def::with_meta(m, &format!("did:plc:author{:04}", i % 1000), "app.bsky.feed.post", &format!("p{i:08}"), "bafy")
}

fn like(n: usize, subject: usize) -> (String, Value) {
    let did = format!("did:plc:liker{:04}", n % 5000);
    let rkey = format!("l{n:09}");
    let serde_json::Value::Object(m) = json!({"subject": {"uri": post_uri(subject), "cid": "bafy"},
        "createdAt": format!("2026-12-02T{:02}:{:02}:{:02}.000Z", n / 3600 % 24, n / 60 % 60, n % 60)})
    else {
        unreachable!()
    };
    (format!("at://{did}/app.bsky.feed.like/{rkey}"), def::with_meta(m, &did, "app.bsky.feed.like", &rkey, "bafy"))
}

/// Builds the view over `rows` posts and likes, then measures `changes` single-record changes.
pub(crate) fn lens(rows: usize, changes: usize, per_tx: usize, cache_mib: u64, dir: &Path) -> anyhow::Result<Value> {
    let lex = lexicons()?;
    let view: View = def::compile(&view_definition(), &lex).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(dir)?;
    // The node's database, and the views' own attached beside it, as the node opens them.
    let path = dir.join(format!("lens-bench-{rows}.sqlite"));
    let lens_db = ues_apps::lens::DATABASE;
    let attached = lens_db.attached();
    let side = dir.join(&attached.file);
    let files = [path.clone(), side.clone()];
    let remove = || {
        for f in &files {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = f.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    };
    remove();
    let cfg = SqliteConfig { writer_cache_bytes: cache_mib << 20, attached: vec![attached], ..SqliteConfig::default() };
    let db = Sqlite::open(&path, &cfg)?;
    db.write(|tx| Ok::<_, anyhow::Error>(lens_db.prepare(tx)?))?;
    let id = db.write(|tx| {
        tx.execute(
            "INSERT INTO lens_view (did, name, cid, definition, built_seq, created_at) VALUES ('did:plc:bench', ?1, 'c', ?2, 0, 0)",
            params![view.name, view_definition().to_string()],
        )?;
        Ok::<_, anyhow::Error>(tx.last_insert_rowid())
    })?;
    let bound = i64::MAX;
    // Build: every post, then one like per post, fed through the maintenance in batches.
    let started = Instant::now();
    let mut fed = 0usize;
    let batch = 10_000;
    let mut inputs: Vec<Vec<(String, engine::Row)>> = vec![Vec::new(), Vec::new()];
    for chunk in 0..rows.div_ceil(batch) {
        db.write(|tx| {
            let mut m = Maint::new(tx, id, &view, bound)?;
            let mut diff = Diff::default();
            for i in chunk * batch..((chunk + 1) * batch).min(rows) {
                let p = post(i);
                let row = engine::row_of(&view, 1, &p);
                m.change(1, &post_uri(i), Some(row.clone()), &mut diff)?;
                inputs[1].push((post_uri(i), row));
                let (uri, l) = like(i, i);
                let row = engine::row_of(&view, 0, &l);
                m.change(0, &uri, Some(row.clone()), &mut diff)?;
                inputs[0].push((uri, row));
                fed += 2;
                diff = Diff::default();
            }
            m.finish()?;
            Ok::<_, anyhow::Error>(())
        })?;
    }
    let build = started.elapsed();
    let view_rows: i64 =
        db.read(|c| c.query_row("SELECT count(*) FROM lens_out WHERE view = ?1", [id], |r| r.get(0)))?;
    // Changes: a new like of a random post, or the removal of one made here.
    let mut rng = rand::thread_rng();
    let mut times = Vec::with_capacity(changes);
    let mut made: Vec<String> = Vec::new();
    let mut next = rows;
    let started = Instant::now();
    let mut done = 0;
    while done < changes {
        db.write(|tx| {
            let mut m = Maint::new(tx, id, &view, bound)?;
            for _ in 0..per_tx.min(changes - done) {
                let mut diff = Diff::default();
                let t = if made.is_empty() || rng.gen_bool(0.7) {
                    let (uri, l) = like(next, rng.gen_range(0..rows));
                    next += 1;
                    let row = engine::row_of(&view, 0, &l);
                    let t = Instant::now();
                    m.change(0, &uri, Some(row), &mut diff)?;
                    let t = t.elapsed();
                    made.push(uri);
                    t
                } else {
                    let uri = made.swap_remove(rng.gen_range(0..made.len()));
                    let t = Instant::now();
                    m.change(0, &uri, None, &mut diff)?;
                    t.elapsed()
                };
                times.push(t);
                done += 1;
            }
            m.finish()?;
            Ok::<_, anyhow::Error>(())
        })?;
    }
    let with_commits = started.elapsed();
    times.sort();
    // Recomputation from the same inputs, in memory (no reading from disk counted).
    let started = Instant::now();
    let recomputed = engine::recompute(&view, &inputs);
    let recompute = started.elapsed();
    // The scan that fills the pool of rows next after the view's when it runs out: the rows
    // further down, in order, as many as the pool holds.
    let started = Instant::now();
    let pool = db.read(|c| {
        c.query_row(
            "SELECT count(*) FROM (SELECT k FROM lens_out WHERE view = ?1 AND top IS NULL ORDER BY sort LIMIT
             max(256, (SELECT state_n FROM lens_view WHERE id = ?1) / 1024))",
            [id],
            |r| r.get::<_, i64>(0),
        )
    })?;
    let refill = started.elapsed();
    // The views' database, and its WAL (which starts over past 64 MiB, checked every 500 ms).
    let size = std::fs::metadata(&side).map(|m| m.len()).unwrap_or(0);
    let wal = std::fs::metadata(side.with_extension("sqlite-wal")).map(|m| m.len()).unwrap_or(0);
    drop(db);
    remove();
    Ok(json!({
        "view": "likes per post (grouped inner join, count and min, top 100)",
        "view_rows": view_rows,
        "input_records": fed,
        "build_ms": ms(build),
        "build_records_per_sec": (fed as f64 / build.as_secs_f64()).round(),
        "changes": changes,
        "changes_per_transaction": per_tx,
        "page_cache_mib": if cache_mib > 0 { json!(cache_mib) } else { json!("SQLite's default (2)") },
        "change_us": {"p50": us_at(&times, 0.5), "p90": us_at(&times, 0.9), "p99": us_at(&times, 0.99), "max": us_at(&times, 1.0)},
        "changes_per_sec_with_commits": (changes as f64 / with_commits.as_secs_f64()).round(),
        "recompute_ms": ms(recompute),
        "pool_fill_scan": {"ms": ms(refill), "rows_found": pool},
        "recomputed_rows": recomputed.len(),
        "database_bytes": size,
        "wal_bytes": wal,
    }))
}

/// The delay from commits to the differences they cause arriving over `/ws`.
pub(crate) async fn lens_ws(addr: SocketAddr, writes: usize) -> anyhow::Result<Value> {
    use crate::bench::{OP_PING, OP_PONG, OP_TEXT, RawWs};
    let (token, did) = crate::bench::bench_account(addr, "lens").await?;
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let call = {
        let (agent, token) = (agent.clone(), token.clone());
        move |method: &str, body: Value| -> anyhow::Result<Value> {
            let mut res = agent
                .post(format!("http://{addr}/xrpc/{method}"))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(body)?;
            let v: Value = res.body_mut().read_json()?;
            anyhow::ensure!(res.status() == 200, "{method}: {v}");
            Ok(v)
        }
    };
    let definition = json!({"name": "recentPosts", "from": {"collection": "app.bsky.feed.post", "as": "p"},
        "select": {"uri": "p.uri", "text": "p.text"}, "orderBy": [{"field": "uri", "desc": true}], "limit": 10});
    let created = {
        let call = call.clone();
        tokio::task::spawn_blocking(move || call("dev.ues.lens.createView", json!({"definition": definition})))
            .await??
    };
    let uri = created["uri"].as_str().unwrap_or_default().to_string();
    let mut ws = RawWs::connect(addr).await?;
    let subscribe = json!({"type": "subscribe", "id": "v", "topic": "lens", "view": uri});
    ws.send(OP_TEXT, subscribe.to_string().as_bytes()).await?;
    async fn event(ws: &mut RawWs) -> anyhow::Result<Value> {
        loop {
            let (op, payload) = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok((op, p)))) => (op, p.to_vec()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => anyhow::bail!("the socket ended"),
                Err(_) => anyhow::bail!("no difference within 10 s"),
            };
            if op == OP_PING {
                ws.send(OP_PONG, &payload).await?;
            } else if op == OP_TEXT {
                let v: Value = serde_json::from_slice(&payload)?;
                if v["type"] == "app" {
                    return Ok(v["event"].clone());
                }
            }
        }
    }
    event(&mut ws).await.context("the view's first rows")?;
    let mut from_answer = Vec::new();
    let mut from_request = Vec::new();
    for i in 0..writes {
        let call = call.clone();
        let did = did.to_string();
        let sent = Instant::now();
        let answered = tokio::task::spawn_blocking(move || {
            call(
                "com.atproto.repo.createRecord",
                json!({"repo": did, "collection": "app.bsky.feed.post",
                    "record": {"$type": "app.bsky.feed.post", "text": format!("lens {i}"), "createdAt": "2026-12-06T00:00:00.000Z"}}),
            )
            .map(|_| Instant::now())
        })
        .await??;
        let e = event(&mut ws).await?;
        anyhow::ensure!(e["added"].as_array().is_some_and(|a| !a.is_empty()), "a difference without the new post: {e}");
        let got = Instant::now();
        from_answer.push(got.saturating_duration_since(answered));
        from_request.push(got - sent);
    }
    from_answer.sort();
    from_request.sort();
    let msf = |v: &[Duration], p: f64| us_at(v, p) / 1000.0;
    Ok(json!({
        "writes": writes,
        "commit_answered_to_difference_ms": {"p50": msf(&from_answer, 0.5), "p90": msf(&from_answer, 0.9), "p99": msf(&from_answer, 0.99)},
        "request_sent_to_difference_ms": {"p50": msf(&from_request, 0.5), "p90": msf(&from_request, 0.9), "p99": msf(&from_request, 0.99)},
    }))
}
