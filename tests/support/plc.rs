//! A did:plc directory for tests: `@did-plc/server` with its in-memory database, started from
//! `tests/js` on a loopback port and killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The running directory.
pub struct Directory {
    child: Child,
    log: std::path::PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts the directory with the packages of `js` (the `tests/js` folder with node_modules).
/// The free port it is given can be taken by another test before the directory binds it: then
/// it starts again on another (at most five times).
pub fn start_directory(js: &std::path::Path) -> Directory {
    let mut last = String::new();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("ues-plc-{port}-{}.log", std::process::id()));
        let mut child = Command::new("node")
            .arg(js.join("plc_server.mjs"))
            .arg(port.to_string())
            .current_dir(js)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("node runs");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        if line.starts_with("listening") {
            return Directory { child, log, url: format!("http://127.0.0.1:{port}") };
        }
        let _ = child.kill();
        let _ = child.wait();
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        last = format!("said {line:?}; stderr: {}", err.lines().rev().take(3).collect::<Vec<_>>().join(" / "));
    }
    panic!("the PLC directory did not start: {last}");
}
