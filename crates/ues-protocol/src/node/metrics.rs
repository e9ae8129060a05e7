//! Prometheus metrics at `/metrics`: requests by route and status, request latency, commits
//! sequenced, firehose subscribers and their lag.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::Node;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// The node's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Open subscribeRepos streams.
    pub(crate) subscribers: AtomicI64,
    /// Connected `/ws` clients.
    pub(crate) ws_clients: AtomicI64,
    /// Their subscriptions.
    pub(crate) ws_subscriptions: AtomicI64,
    /// Event messages queued to them.
    pub(crate) ws_events: AtomicU64,
    /// Messages waiting in their queues.
    pub(crate) ws_queued: AtomicI64,
    /// Clients closed for not keeping up.
    pub(crate) ws_slow_closed: AtomicU64,
    /// Clients refused or closed by a limit (count, size, rate, malformed).
    pub(crate) ws_refused: AtomicU64,
    /// REST requests refused by a rate limit (429).
    pub(crate) rest_limited: AtomicU64,
    /// XRPC calls refused by a rate limit (429).
    pub(crate) xrpc_limited: AtomicU64,
}

impl Metrics {
    fn observe(&self, route: String, status: u16, seconds: f64) {
        *self.requests.lock().entry((route, status)).or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.latency[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Middleware: counts and times every request under its route template.
pub(crate) async fn track(State(st): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    st.metrics.observe(route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics` in the Prometheus text format.
pub(crate) async fn render(State(st): State<Arc<Node>>, headers: axum::http::HeaderMap) -> Response {
    // Counts of requests, peers and accounts tell an outsider more than they should.
    if !st.cfg.public_metrics
        && let Err(e) = st.operator(&headers)
    {
        return e.into_response();
    }
    let m = &st.metrics;
    let mut out = String::new();
    out.push_str("# HELP ues_http_requests_total HTTP requests by route template and status.\n# TYPE ues_http_requests_total counter\n");
    for ((route, status), n) in m.requests.lock().iter() {
        let _ = writeln!(out, "ues_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
    }
    out.push_str("# HELP ues_http_request_duration_seconds Request latency.\n# TYPE ues_http_request_duration_seconds histogram\n");
    for (i, bound) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "ues_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            m.latency[i].load(Ordering::Relaxed)
        );
    }
    let count = m.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(out, "ues_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "ues_http_request_duration_seconds_sum {}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "ues_http_request_duration_seconds_count {count}");
    let seq = *st.firehose.latest();
    let _ = writeln!(
        out,
        "# HELP ues_firehose_seq Latest sequenced repository event.\n# TYPE ues_firehose_seq gauge\nues_firehose_seq {seq}"
    );
    let _ = writeln!(
        out,
        "# HELP ues_firehose_subscribers Open subscribeRepos streams.\n# TYPE ues_firehose_subscribers gauge\nues_firehose_subscribers {}",
        m.subscribers.load(Ordering::Relaxed)
    );
    for (name, kind, help, v) in [
        ("ues_ws_clients", "gauge", "Connected /ws clients.", m.ws_clients.load(Ordering::Relaxed)),
        ("ues_ws_subscriptions", "gauge", "Subscriptions of /ws clients.", m.ws_subscriptions.load(Ordering::Relaxed)),
        (
            "ues_ws_queued_messages",
            "gauge",
            "Messages waiting in /ws client queues.",
            m.ws_queued.load(Ordering::Relaxed),
        ),
        (
            "ues_ws_events_total",
            "counter",
            "Event messages queued to /ws clients.",
            m.ws_events.load(Ordering::Relaxed) as i64,
        ),
        (
            "ues_ws_slow_closed_total",
            "counter",
            "/ws clients closed for not keeping up.",
            m.ws_slow_closed.load(Ordering::Relaxed) as i64,
        ),
        (
            "ues_ws_refused_total",
            "counter",
            "/ws clients refused or closed by a limit.",
            m.ws_refused.load(Ordering::Relaxed) as i64,
        ),
        (
            "ues_rest_rate_limited_total",
            "counter",
            "REST requests refused by a rate limit (429).",
            m.rest_limited.load(Ordering::Relaxed) as i64,
        ),
        (
            "ues_xrpc_rate_limited_total",
            "counter",
            "XRPC calls refused by a rate limit (429).",
            m.xrpc_limited.load(Ordering::Relaxed) as i64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    if let Some(r) = st.replication.get() {
        let s = r.status();
        let _ = writeln!(
            out,
            "# HELP ues_p2p_connected_peers Connected libp2p peers.\n# TYPE ues_p2p_connected_peers gauge\nues_p2p_connected_peers {}",
            s.connected.len()
        );
        let _ = writeln!(
            out,
            "# HELP ues_p2p_replicated_accounts Accounts replicated with peers.\n# TYPE ues_p2p_replicated_accounts gauge\nues_p2p_replicated_accounts {}",
            r.tracked().len()
        );
        out.push_str("# HELP ues_p2p_sessions_total Reconciliation sessions this node started, by outcome.\n# TYPE ues_p2p_sessions_total counter\n");
        for (outcome, n) in &s.sessions {
            let _ = writeln!(out, "ues_p2p_sessions_total{{outcome=\"{outcome}\"}} {n}");
        }
        for (name, help, v) in [
            ("ues_p2p_live_pushes_received_total", "Live pushes received from peers.", s.live_received),
            ("ues_p2p_heads_received_total", "Head announcements received.", s.heads_received),
            ("ues_p2p_bans_total", "Peers banned.", s.bans),
            ("ues_p2p_remote_commits_total", "Commits made from peers' operations.", s.remote_commits),
            (
                "ues_p2p_materialized_full_total",
                "Repositories brought to their replicas by comparing every record.",
                s.materialized_full,
            ),
            (
                "ues_p2p_materialized_changes_total",
                "Repositories brought to their replicas by comparing the changed paths only.",
                s.materialized_changes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
    }
    if let Some(ops) = st.storage_ops.get() {
        let gauges = ops.gauges();
        let mut named = std::collections::BTreeSet::new();
        for g in &gauges {
            if named.insert(g.name) {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
                for same in gauges.iter().filter(|x| x.name == g.name) {
                    let labels: Vec<String> = same.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
                    let _ = writeln!(out, "{}{labels} {}", same.name, same.value);
                }
            }
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
