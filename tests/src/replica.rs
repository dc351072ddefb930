//! `tenant-plane` processes under test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::env;

/// A test JWT secret (64 hex characters).
pub const JWT_SECRET: &str = "6a7e1b0c5f9d4e2a8b3c7d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
/// A test encryption key (64 hex characters).
pub const ENCRYPTION_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// Environment of a production-mode replica on `database_url`, bound to a free loopback port.
pub fn prod_env(database_url: &str) -> Vec<(String, String)> {
    [
        ("TENANT_ID", "acme-corp"),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("TENANT_PLANE_DATABASE_URL", database_url),
        ("TP_BIND_ADDR", "127.0.0.1"),
        ("PORT", "0"),
        ("TP_LOG_FORMAT", "json"),
        ("TP_DRAIN_DELAY_MS", "0"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Password of the admin user tests create.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Replaces or adds `key=value` in an environment list.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

#[derive(Default)]
struct Shared {
    logs: String,
    addr: Option<SocketAddr>,
    closed: bool,
}

/// A running replica; killed when dropped.
pub struct Replica {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    exited: Option<ExitStatus>,
}

/// Why a replica did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr and stdout.
    pub output: String,
}

impl Replica {
    /// Starts `tenant-plane serve` with exactly `env` (plus PATH) and waits until it listens.
    pub fn start(env: &[(String, String)]) -> Replica {
        Self::try_start(env, Path::new("."))
            .unwrap_or_else(|f| panic!("replica failed to start ({}):\n{}", f.status, f.output))
    }

    /// Starts a replica in `cwd`; `Err` when it exits before listening.
    pub fn try_start(env: &[(String, String)], cwd: &Path) -> Result<Replica, StartFailure> {
        let mut child = command(env, cwd)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tenant-plane");
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let (lock, cond) = &*shared;
                    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if s.addr.is_none() {
                        s.addr = listening_addr(&line);
                    }
                    s.logs.push_str(&line);
                    s.logs.push('\n');
                    cond.notify_all();
                }
                let (lock, cond) = &*shared;
                lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
                cond.notify_all();
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Let the reader threads collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let output = shared
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .logs
                    .clone();
                return Err(StartFailure { status, output });
            }
            let (lock, cond) = &*shared;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(addr) = guard.addr {
                drop(guard);
                return Ok(Replica {
                    child,
                    addr,
                    shared,
                    exited: None,
                });
            }
            assert!(
                Instant::now() < deadline,
                "replica did not listen within 30 s:\n{}",
                guard.logs
            );
            let _ = cond.wait_timeout(guard, Duration::from_millis(50));
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        crate::signal(self.pid(), "TERM");
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.exited.is_none() && Instant::now() < deadline {
            self.exited = self.child.try_wait().expect("try_wait");
            if self.exited.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.exited
    }

    /// Creates `username` with `role` through the CLI (if missing) and logs in;
    /// returns the login response (access and refresh tokens).
    pub async fn login_as(
        &self,
        env: &[(String, String)],
        username: &str,
        role: &str,
    ) -> serde_json::Value {
        let mut env = env.to_vec();
        set(&mut env, "TP_USER_PASSWORD", ADMIN_PASSWORD);
        let out = run(
            &["user", "create", "--username", username, "--role", role],
            &env,
            Path::new("/tmp"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("already exists"),
            "user create failed: {stderr}"
        );
        let reply = crate::Client::new()
            .json(
                http::Method::POST,
                &self.url("/api/auth/login"),
                None,
                &serde_json::json!({"username": username, "password": ADMIN_PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 200, "login failed: {:?}", reply.json());
        reply.json()
    }

    /// An access token of an admin user (created on first use).
    pub async fn admin_token(&self, env: &[(String, String)]) -> String {
        let login = self.login_as(env, "admin", "admin").await;
        login["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .logs
            .clone()
    }

    /// Waits up to `timeout` until the logs contain `needle`: a line the
    /// replica wrote before answering may still be in the pipe.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let (lock, cond) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if guard.logs.contains(needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || guard.closed {
                return false;
            }
            guard = cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a one-shot `tenant-plane` command (migrate, user create, …).
pub fn run(args: &[&str], env: &[(String, String)], cwd: &Path) -> Output {
    command(env, cwd)
        .args(args)
        .output()
        .expect("run tenant-plane")
}

fn command(env: &[(String, String)], cwd: &Path) -> Command {
    let mut cmd = Command::new(env::binary());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd);
    cmd
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json.get("message")?.as_str()? != "listening" {
        return None;
    }
    json.get("address")?.as_str()?.parse().ok()
}
