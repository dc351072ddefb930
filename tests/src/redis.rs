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

    /// A server with extra command-line settings (`--replicaof`, `--cluster-enabled`, …).
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_with(extra.iter().map(|a| (*a).to_owned()).collect(), None)
    }

    /// Runs `redis-cli` against this server's plaintext port; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
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

/// `redis-cli -p <port> <args>` on 127.0.0.1 (the one next to redis-server).
pub fn cli(port: u16, args: &[&str]) -> String {
    let redis_cli = env::get().redis_server.with_file_name("redis-cli");
    let out = Command::new(redis_cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A primary, one replica of it and two sentinels watching them (quorum 1,
/// a primary counts as down after one second).
pub struct SentinelSet {
    /// The primary at start.
    pub primary: RedisServer,
    /// Its replica, promoted when the primary dies.
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child, PathBuf)>,
}

/// The service name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "tpmain";

impl SentinelSet {
    /// Starts everything and waits until both sentinels see the replica.
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let port = primary.port.to_string();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]);
        let mut sentinels = Vec::new();
        for _ in 0..2 {
            let sentinel_port = free_port();
            let dir = temp_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {port} 1\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    dir.display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new(&env::get().redis_server)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis sentinel");
            sentinels.push((sentinel_port, child, dir));
        }
        let set = SentinelSet {
            primary,
            replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !set.sentinels.iter().all(|(p, _, _)| {
            cli(*p, &["sentinel", "replicas", SENTINEL_SERVICE]).contains("slave")
                || cli(*p, &["sentinel", "replicas", SENTINEL_SERVICE]).contains("replica")
        }) {
            assert!(
                Instant::now() < deadline,
                "sentinels did not find the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// `redis-sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>/<service>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-sentinel://{}/{SENTINEL_SERVICE}", hosts.join(","))
    }

    /// The port of the server the sentinels call primary now.
    pub fn current_primary_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinels[0].0,
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child, dir) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of three primaries and no replicas.
pub struct RedisCluster {
    /// The nodes, in slot order.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, creates the cluster and waits until it is `ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = nodes[0].cli(&args);
        assert!(out.contains("[OK]"), "cluster create failed: {out}");
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits up to 20 s until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .nodes
            .iter()
            .all(|n| n.ping() && n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cluster://127.0.0.1:<p1>,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// How many times the whole cluster ran `command`.
    pub fn calls(&self, command: &str) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.ping())
            .map(|n| n.calls(command))
            .sum()
    }
}
