//! Applications plug topics and routes into the gateway through its registry: a topic's events
//! reach subscribed sockets as `app` messages, its refusals come back as errors, its routes are
//! served, and built-in names cannot be taken.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use ues_protocol::gateway::{Registry, Topic, WsConfig, router_with};

/// A topic whose events the test sends; anonymous callers are refused when `private`.
struct Ticker {
    tx: tokio::sync::broadcast::Sender<Value>,
    private: bool,
}

impl Topic for Ticker {
    fn subscribe(
        &self,
        params: &Value,
        did: Option<&str>,
    ) -> Result<tokio::sync::broadcast::Receiver<Value>, (String, String)> {
        if self.private && did.is_none() {
            return Err(("AuthRequired".into(), "sign in first".into()));
        }
        assert_eq!(params["type"], "subscribe", "the topic sees the whole message");
        Ok(self.tx.subscribe())
    }
}

async fn next(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn application_topics_and_routes_plug_into_the_gateway() {
    let n = common::node();
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let ticker = Arc::new(Ticker { tx: tx.clone(), private: false });
    let secret = Arc::new(Ticker { tx: tx.clone(), private: true });
    assert!(Registry::default().topic("repo", ticker.clone()).is_err(), "built-in names are taken");
    let registry = Registry::default()
        .topic("ticker", ticker)
        .unwrap()
        .topic("secret", secret)
        .unwrap()
        .routes(axum::Router::new().route("/apps/hello", axum::routing::get(|| async { "hello" })));
    assert!(registry.clone().topic("ticker", Arc::new(Ticker { tx: tx.clone(), private: false })).is_err());
    let app = router_with(n.state.clone(), WsConfig::default(), registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "welcome");
    ws.send(Message::Text(json!({"type": "subscribe", "id": "t", "topic": "ticker"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    tx.send(json!({"tick": 1})).unwrap();
    let m = next(&mut ws).await;
    assert_eq!((m["type"].as_str(), m["topic"].as_str(), m["sub"].as_str()), (Some("app"), Some("ticker"), Some("t")));
    assert_eq!(m["event"]["tick"], 1);
    // A topic's refusal is the client's error; the socket stays open.
    ws.send(Message::Text(json!({"type": "subscribe", "id": "s", "topic": "secret"}).to_string().into()))
        .await
        .unwrap();
    let e = next(&mut ws).await;
    assert_eq!((e["type"].as_str(), e["error"].as_str()), (Some("error"), Some("AuthRequired")));
    // After unsubscribing, its events stop.
    ws.send(Message::Text(json!({"type": "unsubscribe", "id": "t"}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "unsubscribed");
    // The forwarding task is gone (its receiver dropped), and nothing more arrives.
    for _ in 0..100 {
        if tx.receiver_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tx.receiver_count(), 0);
    let _ = tx.send(json!({"tick": 2}));
    ws.send(Message::Text(json!({"type": "ping", "id": "after"}).to_string().into())).await.unwrap();
    let m = next(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("pong"), Some("after")),
        "no event after unsubscribing: {m}"
    );

    // The application's route is served beside /ws.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET /apps/hello HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200") && raw.ends_with("hello"), "{raw}");
}
