//! Test harness: real replica processes, PostgreSQL clusters, Redis servers
//! and an HTTP client, all on 127.0.0.1.
//!
//! The services come from `scripts/test-deps.sh` (paths in `TP_TEST_*`
//! variables, which `scripts/test` exports). Processes started here are
//! stopped by PID when their guard drops; shared ones are cleaned up by
//! `scripts/test` from `TP_TEST_STATE_DIR`.

pub mod client;
pub mod data;
pub mod env;
pub mod load;
pub mod nginx;
pub mod pgbouncer;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod replica;
pub mod tls;

pub use client::{Client, Reply};
pub use postgres::PgCluster;
pub use redis::RedisServer;
pub use replica::Replica;

/// A free TCP port on 127.0.0.1 (bound and released; fine on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A fresh directory under the test state dir (or the system temp dir).
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let base = std::env::var_os("TP_TEST_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}
