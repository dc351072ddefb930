//! Redis servers for tests, each on its own port so tests can stop them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{env, free_port, temp_dir};

/// A redis-server child process.
pub struct RedisServer {
    /// TCP port on 127.0.0.1 (plaintext; the harness's own port on a TLS server).
    pub port: u16,
    /// The TLS port, on servers started with [`start_tls`](Self::start_tls).
    pub tls_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new(), None)
    }

    /// A server that also serves TLS with the PKI's server certificate
    /// (`localhost`), asking clients for a certificate when `client_certs`.
    pub fn start_tls(pki: &crate::tls::TestPki, client_certs: bool) -> RedisServer {
        let tls_port = free_port();
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&pki.server_cert),
            "--tls-key-file".into(),
            path(&pki.server_key),
            "--tls-ca-cert-file".into(),
            path(&pki.ca),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
        ];
        Self::start_with(extra, Some(tls_port))
    }

    fn start_with(extra: Vec<String>, tls_port: Option<u16>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            tls_port,
            dir: temp_dir("redis"),
            child: None,
            extra,
        };
        server.restart();
        server
    }

    /// `rediss://localhost:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://localhost:{}",
            self.tls_port.expect("a TLS server")
        )
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = Command::new(&env::get().redis_server)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.to_string_lossy(),
                "--pidfile",
                &self.dir.join("redis.pid").to_string_lossy(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis on port {} did not answer PING", self.port);
    }

    /// Stops the server (SIGKILL: an outage, not a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How many times the server ran `command` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        stream
            .write_all(b"INFO commandstats\r\n")
            .expect("send INFO");
        // A bulk string: `$<len>\r\n<text>\r\n`.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).expect("read INFO");
            assert!(n > 0, "redis closed the connection");
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n") {
                let len: usize = head.trim_start_matches('$').parse().expect("bulk length");
                if body.len() >= len {
                    let needle = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
                    return body
                        .lines()
                        .find_map(|l| l.strip_prefix(&needle))
                        .and_then(|rest| rest.split(',').next())
                        .map_or(0, |n| n.parse().expect("calls"));
                }
            }
        }
    }

    /// True when the server answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
