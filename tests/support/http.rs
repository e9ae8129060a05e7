//! A stand-in HTTP service on 127.0.0.1 for tests (a chat service, an AppView, a relay): each
//! request is parsed (method, path, headers, body), recorded, and answered by a handler.
//! Serves at most 200 connections, one request each, then stops.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// One request the service took: method, path with query, headers (lower-case names), body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer: status, extra header lines (`name: value\r\n` each), body (JSON unless a
/// `content-type` is among the headers).
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// 200 with a JSON body.
    pub fn json(v: &serde_json::Value) -> Self {
        Self { status: 200, headers: String::new(), body: v.to_string().into_bytes() }
    }
}

/// Starts the service; `answer` gets each request and its own port. Returns the port and the
/// requests taken so far.
pub fn serve(answer: impl Fn(&Seen, u16) -> Answer + Send + 'static) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((n, v)) = h.trim().split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len =
                headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let request = Seen { method, path, headers, body };
            let a = answer(&request, port);
            log.lock().unwrap().push(request);
            let content_type = if a.headers.to_ascii_lowercase().contains("content-type:") {
                ""
            } else {
                "content-type: application/json\r\n"
            };
            let head = format!(
                "HTTP/1.1 {} X\r\n{content_type}{}content-length: {}\r\nconnection: close\r\n\r\n",
                a.status,
                a.headers,
                a.body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&a.body);
        }
    });
    (port, seen)
}
