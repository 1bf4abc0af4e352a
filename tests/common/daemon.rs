//! A `tapewatch serve` child on loopback for tests that look at the daemon
//! from outside (the dashboard in a browser): started on a config, its log
//! collected, its HTTP endpoints read, stopped with SIGTERM.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Child,
    /// The feed and HTTP addresses from the ready line.
    pub feed: String,
    pub http: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `serve --config config` and waits for its ready line.
    pub fn start(config: &Path) -> Daemon {
        let mut child = Command::new(super::bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(" ready ") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => panic!("no ready line; log:\n{}", log.lock().unwrap().join("\n")),
        };
        let field = |name: &str| {
            let at = ready.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {ready}"));
            ready[at + name.len() + 1..].split_whitespace().next().unwrap().to_string()
        };
        Daemon { feed: field("feed"), http: field("http"), child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The body of `GET path`.
    pub fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(&self.http).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// `GET /api/status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/status")).unwrap_or(serde_json::Value::Null)
    }

    /// Polls `/api/status` until `done` holds (at most 60 s).
    pub fn wait_status(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never {what}: {status}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 60 s) until the log holds `needle`.
    pub fn wait_log(&self, needle: &str) {
        let started = Instant::now();
        while !self.log().contains(needle) {
            assert!(started.elapsed() < Duration::from_secs(60), "no `{needle}` in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP: reload the rules file.
    pub fn hup(&self) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// kill -9: no final checkpoint, no flush.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Polls `/metrics` (the hub samples once a second) until `done` holds
    /// (at most 30 s); returns that exposition.
    pub fn wait_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let metrics = self.get("/metrics");
            if done(&metrics) {
                return metrics;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never {what}:\n{metrics}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM: a final checkpoint and exit 0.
    pub fn stop(mut self) -> String {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log();
        assert!(status.success(), "serve exited with {status} after SIGTERM:\n{log}");
        assert!(log.contains("stopped after a final checkpoint"), "{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
