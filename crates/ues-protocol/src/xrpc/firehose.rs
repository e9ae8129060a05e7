//! `com.atproto.sync.subscribeRepos`: the WebSocket stream over the node's sequencer
//! ([`crate::node::sequencer`]). Subscribers replay from the log after their cursor and then
//! follow it. Memory per subscriber is bounded by one batch; a subscriber further behind than
//! `max_lag` events gets `ConsumerTooSlow` and is closed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use ues_sync::repo::ipld::Ipld;

use crate::node::Node;
use crate::node::extract::XQuery;
use crate::node::sequencer::{error_frame, events_after, frame, map, oldest_seq};

#[derive(Deserialize)]
pub(crate) struct Subscribe {
    cursor: Option<i64>,
}

pub(crate) async fn subscribe_repos(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<Subscribe>,
    ws: WebSocketUpgrade,
) -> Response {
    // Counted from the moment the upgrade is accepted, so a shutdown right after the 101 still
    // waits for this stream's close frame.
    st.metrics.subscribers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let on_fail = st.clone();
    ws.read_buffer_size(crate::http::READ_BUFFER)
        .max_message_size(64 * 1024)
        .on_failed_upgrade(move |_| {
            on_fail.metrics.subscribers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .on_upgrade(move |socket| stream(st, q.cursor, socket))
}

async fn stream(st: Arc<Node>, cursor: Option<i64>, socket: WebSocket) {
    serve_subscriber(&st, cursor, socket).await;
    st.metrics.subscribers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn serve_subscriber(st: &Arc<Node>, cursor: Option<i64>, mut socket: WebSocket) {
    let fh = &st.firehose;
    let mut closing = fh.closing.subscribe();
    let mut rx = fh.latest.subscribe();
    let latest = *rx.borrow_and_update();
    let mut last = match cursor {
        Some(c) if c > latest => {
            let _ = socket.send(Message::Binary(error_frame("FutureCursor", "Cursor in the future.").into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        Some(c) => {
            let oldest = oldest_seq(&fh.db).ok().flatten().unwrap_or(1);
            if c + 1 < oldest {
                let info = frame(
                    "#info",
                    map(vec![
                        ("name", Ipld::String("OutdatedCursor".into())),
                        ("message", Ipld::String("Requested cursor exceeded limit. Possibly missing events".into())),
                    ]),
                );
                if socket.send(Message::Binary(info.into())).await.is_err() {
                    return;
                }
            }
            c.max(oldest - 1)
        }
        None => latest,
    };
    loop {
        if *closing.borrow() {
            let frame = axum::extract::ws::CloseFrame { code: 1001, reason: "server shutting down".into() };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return;
        }
        let batch: Vec<(i64, Arc<[u8]>)> = match fh.ring_after(last) {
            Some(b) => b,
            None => {
                let db = fh.db.clone();
                match tokio::task::spawn_blocking(move || events_after(&db, last)).await {
                    Ok(Ok(b)) => b.into_iter().map(|(seq, f)| (seq, Arc::from(f))).collect(),
                    _ => break,
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = closing.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
            }
            continue;
        }
        for (seq, bytes) in batch {
            if socket.send(Message::Binary(bytes.to_vec().into())).await.is_err() {
                return;
            }
            last = seq;
        }
        if *rx.borrow() - last > fh.max_lag {
            let _ =
                socket.send(Message::Binary(error_frame("ConsumerTooSlow", "Stream consumer too slow").into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    }
}
