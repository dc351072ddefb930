//! Redis behind Sentinel and as a Cluster: limits and revocations work,
//! and survive a failover or a node restart under load without a 5xx.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tp_tests::Client;
use tp_tests::postgres::fresh_database;
use tp_tests::redis::{RedisCluster, SentinelSet};
use tp_tests::replica::{Replica, prod_env, set};

fn fleet(redis_url: &str, poll_ms: &str) -> (Replica, Replica, Vec<(String, String)>) {
    let mut env = prod_env(&fresh_database());
    set(&mut env, "REDIS_URL", redis_url);
    set(&mut env, "TP_REVOCATION_POLL_MS", poll_ms);
    let a = Replica::start(&env);
    let b = Replica::start(&env);
    (a, b, env)
}

async fn health(replica: &Replica) -> serde_json::Value {
    Client::new()
        .get(&replica.url("/api/health"), None)
        .await
        .json()
}

/// Waits up to `limit` until the replica reports Redis connected; false if never.
async fn connected_within(replica: &Replica, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if health(replica).await["redis"]["connected"] == true {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Polls `replica` with `token` until it is refused; how long that took.
async fn refused_within(replica: &Replica, token: &str, limit: Duration) -> Duration {
    let client = Client::new().with_token(token);
    let started = Instant::now();
    loop {
        let reply = client.get(&replica.url("/api/auth/me"), None).await;
        if reply.status == 401 {
            return started.elapsed();
        }
        assert_eq!(reply.status, 200, "{:?}", reply.json());
        assert!(started.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Authenticated reads against both replicas until stopped (at most 20,000).
fn load(
    urls: [String; 2],
    token: String,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<BTreeMap<u16, u64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let client = Client::new()
            .with_token(&token)
            .with_timeout(Duration::from_secs(10));
        let mut statuses = BTreeMap::new();
        for i in 0..20_000usize {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let reply = client.get(&urls[i % 2], None).await;
            *statuses.entry(reply.status.as_u16()).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    });
    (stop, handle)
}

async fn session(replica: &Replica, env: &[(String, String)], name: &str) -> (String, String) {
    let login = replica.login_as(env, name, "viewer").await;
    (
        login["access_token"].as_str().unwrap().to_owned(),
        login["session_id"].as_str().unwrap().to_owned(),
    )
}

async fn terminate(replica: &Replica, admin: &str, sid: &str) {
    let reply = Client::new()
        .with_token(admin)
        .delete(&replica.url(&format!("/api/sessions/{sid}")), None)
        .await;
    assert_eq!(reply.status, 204, "{:?}", reply.json());
}

fn assert_no_server_errors(statuses: &BTreeMap<u16, u64>) {
    println!("load during the fault: {statuses:?}");
    let errors: u64 = statuses
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(errors, 0, "{statuses:?}");
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_limits_and_revocations() {
    let mut sentinels = SentinelSet::start();
    let (a, b, env) = fleet(&sentinels.url(), "1000");
    assert!(connected_within(&a, Duration::from_secs(10)).await);
    assert!(connected_within(&b, Duration::from_secs(10)).await);
    let admin = a.admin_token(&env).await;
    let (reader, _) = session(&a, &env, "reader").await;
    let (token, sid) = session(&a, &env, "bob").await;
    Client::new()
        .with_token(&reader)
        .get(&b.url("/api/auth/me"), None)
        .await;
    assert!(
        sentinels.primary.calls("evalsha") > 0,
        "limits go to the primary"
    );

    let (stop, running) = load([a.url("/api/auth/me"), b.url("/api/auth/me")], reader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promoted_port = sentinels.replica.port;
    sentinels.primary.stop();
    let killed = Instant::now();
    // Ended while Redis has no primary: the database poll carries it.
    terminate(&a, &admin, &sid).await;
    let took = refused_within(&b, &token, Duration::from_secs(3)).await;
    println!("revoked during the failover: refused on the other replica after {took:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while sentinels.current_primary_port() != Some(promoted_port) {
        assert!(
            Instant::now() < deadline,
            "sentinel did not promote the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("sentinel promoted the replica after {:?}", killed.elapsed());
    for replica in [&a, &b] {
        assert!(
            connected_within(replica, Duration::from_secs(20)).await,
            "no reconnect to the new primary: {}",
            replica.logs()
        );
    }
    println!(
        "both replicas on the new primary after {:?}",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    assert_no_server_errors(&running.await.unwrap());
    assert!(
        sentinels.replica.calls("evalsha") > 0,
        "global limits resume on the promoted primary"
    );
    // Health was degraded while Redis had no primary; it turns ok again
    // once a request finds the limiter answering (the breaker stays open
    // for a second after the last failure).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = Client::new()
            .with_token(&admin)
            .get(&a.url("/api/auth/me"), None)
            .await;
        assert_eq!(reply.status, 200);
        let report = health(&a).await;
        if report["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "{report}\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for line in a.logs().lines().filter(|l| l.contains("redis")) {
        println!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_carries_limits_and_revocations_across_a_node_restart() {
    let mut cluster = RedisCluster::start();
    let (a, b, env) = fleet(&cluster.url(), "1500");
    assert!(
        connected_within(&a, Duration::from_secs(10)).await,
        "{}",
        a.logs()
    );
    assert!(connected_within(&b, Duration::from_secs(10)).await);
    let admin = a.admin_token(&env).await;
    let (reader, _) = session(&a, &env, "reader").await;
    for _ in 0..20 {
        let reply = Client::new()
            .with_token(&reader)
            .get(&b.url("/api/auth/me"), None)
            .await;
        assert_eq!(reply.status, 200);
    }
    assert!(cluster.calls("evalsha") > 0, "limits go to the cluster");

    // Through pub/sub: well under the poll interval.
    let (token, sid) = session(&a, &env, "bob").await;
    terminate(&a, &admin, &sid).await;
    let took = refused_within(&b, &token, Duration::from_secs(5)).await;
    println!("revoked with the cluster up: refused after {took:?}");
    assert!(cluster.calls("publish") > 0, "the revocation was published");

    let (stop, running) = load([a.url("/api/auth/me"), b.url("/api/auth/me")], reader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[1].stop();
    let (token, sid) = session(&a, &env, "carol").await;
    terminate(&a, &admin, &sid).await;
    let took = refused_within(&b, &token, Duration::from_secs(4)).await;
    println!("revoked with a node down: refused after {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes[1].restart();
    cluster.wait_ok();
    let before = cluster.calls("evalsha");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.calls("evalsha") <= before {
        assert!(
            Instant::now() < deadline,
            "global limits did not resume: {}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    assert_no_server_errors(&running.await.unwrap());
    assert!(connected_within(&a, Duration::from_secs(10)).await);
}
