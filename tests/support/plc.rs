//! A did:plc directory for tests: `@did-plc/server` with its in-memory database, started from
//! `tests/js` on a loopback port and killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The running directory.
pub struct Directory {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the directory with the packages of `js` (the `tests/js` folder with node_modules).
pub fn start_directory(js: &std::path::Path) -> Directory {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new("node")
        .arg(js.join("plc_server.mjs"))
        .arg(port.to_string())
        .current_dir(js)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening"), "directory said {line:?}");
    Directory { child, url: format!("http://127.0.0.1:{port}") }
}
