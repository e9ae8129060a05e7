//! The node's background tasks: block-journal checkpoints, full-text indexing, event-log
//! pruning, blob collection, crawl requests to relays, rate-limit bookkeeping. `ues run` starts them ([`start_tasks`]) and
//! stops them on shutdown; building a router starts none.

use std::sync::Arc;

use super::Node;

/// Moves queued record texts into the full-text index every 100 ms (in batches of
/// [`TEXT_BATCH`], one transaction each), until the state is dropped.
fn spawn_text_indexer(state: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    use ues_sync::repo::accounts::TEXT_BATCH;
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let Some(st) = weak.upgrade() else { break };
            // A full batch means more may be waiting: go again at once (bounded per tick).
            for _ in 0..100 {
                let st = st.clone();
                match tokio::task::spawn_blocking(move || st.accounts.index_text(TEXT_BATCH)).await {
                    Ok(Ok(n)) if n == TEXT_BATCH => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "full-text indexing failed");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "full-text indexer panicked");
                        break;
                    }
                }
            }
        }
    })
}

/// Every second, syncs the blockstore and drops the block-journal rows that covers
/// ([`ues_sync::repo::accounts::Accounts::checkpoint`]): one sync for all commits of the second
/// instead of one per commit, and a journal that stays small.
fn spawn_checkpointer(state: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let Some(st) = weak.upgrade() else { break };
            match tokio::task::spawn_blocking(move || st.accounts.checkpoint()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "block-journal checkpoint failed (its rows stay until one succeeds)")
                }
                Err(e) => tracing::error!(error = %e, "block-journal checkpoint panicked"),
            }
        }
    })
}

/// Every 10 minutes, drops firehose events older than the backfill window.
fn spawn_pruner(state: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let Some(st) = weak.upgrade() else { break };
            let window = st.cfg.firehose_backfill;
            match tokio::task::spawn_blocking(move || st.firehose.prune(window)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(n, "firehose events past the backfill window dropped"),
                Ok(Err(e)) => tracing::error!(error = %e, "firehose pruning failed"),
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    })
}

/// Deletes blobs no record references that were uploaded more than the grace period ago
/// (uploads that were never used would otherwise fill the disk or the bucket): every tenth of
/// the grace period, at least each second and at most every 10 minutes.
fn spawn_blob_gc(state: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    let grace = state.cfg.blob_grace;
    let every = (grace / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(600));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(st) = weak.upgrade() else { break };
            match tokio::task::spawn_blocking(move || st.blobs.gc(grace)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(n, "unreferenced blobs deleted"),
                Ok(Err(e)) => tracing::error!(error = %e, "blob garbage collection failed"),
                _ => {}
            }
        }
    })
}

/// Asks every configured relay to crawl this node: at start, then (checked each minute) when
/// new events exist and 20 minutes have passed since the last request, as the reference PDS
/// does.
fn spawn_crawl_requests(state: &Arc<Node>) -> Option<tokio::task::JoinHandle<()>> {
    if state.cfg.relays.is_empty() {
        return None;
    }
    let weak = Arc::downgrade(state);
    Some(tokio::spawn(async move {
        let mut notified_seq: Option<i64> = None;
        let mut last = std::time::Instant::now();
        loop {
            let Some(st) = weak.upgrade() else { break };
            let seq = *st.firehose.latest();
            let due = notified_seq.is_none() || (Some(seq) != notified_seq && last.elapsed().as_secs() >= 1200);
            if due {
                notified_seq = Some(seq);
                last = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || request_crawl(&st)).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    }))
}

fn request_crawl(st: &Node) {
    for relay in &st.cfg.relays {
        match request_crawl_one(st, relay) {
            Ok(status) if (200..300).contains(&status) => tracing::info!(%relay, "requestCrawl accepted"),
            Ok(status) => tracing::warn!(%relay, status, "requestCrawl refused"),
            Err(e) => tracing::warn!(%relay, error = %e, "requestCrawl failed"),
        }
    }
}

/// Asks `relay` (a base URL) to crawl this node: the status it answered.
pub(crate) fn request_crawl_one(st: &Node, relay: &str) -> Result<u16, String> {
    let hostname = st.cfg.public_url.split("://").nth(1).unwrap_or("").trim_end_matches('/').to_string();
    let body = serde_json::json!({ "hostname": hostname }).to_string();
    let url = format!("{}/xrpc/com.atproto.sync.requestCrawl", relay.trim_end_matches('/'));
    st.proxy_agent
        .post(&url)
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The node's background tasks, once [`start_tasks`] started them: full-text indexing, firehose
/// pruning, blob collection, crawl requests to relays, rate-limit bookkeeping. Building a
/// router starts none of them. Dropping the handle stops them.
#[must_use = "dropping the handle stops the tasks"]
pub struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl BackgroundTasks {
    /// Stops the tasks (what dropping the handle does).
    pub fn stop(self) {}

    /// Lets the tasks run as long as the state lives (they hold it weakly and end after it).
    pub fn detach(mut self) {
        self.0.clear();
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the node's background tasks for `state` (see [`BackgroundTasks`]).
pub fn start_tasks(state: &Arc<Node>) -> BackgroundTasks {
    let mut tasks = vec![
        spawn_checkpointer(state),
        spawn_text_indexer(state),
        spawn_pruner(state),
        spawn_blob_gc(state),
        super::limits::spawn_gc(state),
    ];
    tasks.extend(spawn_crawl_requests(state));
    BackgroundTasks(tasks)
}
