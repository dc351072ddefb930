//! Fault tests: three replicas behind nginx with the deployment's own
//! nginx.conf, under a bounded load, while things break. Each scenario
//! prints its counts for the CI log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::load::{Load, Mix, Stats};
use tp_tests::nginx::Nginx;
use tp_tests::postgres::{PgCluster, database_of, fresh_database};
use tp_tests::proxy::BlackholeProxy;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, RedisServer, free_port};

/// `fail_timeout` of the server line in deploy/nginx.conf.
const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(2);

struct Fleet {
    env: Vec<(String, String)>,
    envs: Vec<Vec<(String, String)>>,
    replicas: Vec<Replica>,
    nginx: Nginx,
    token: String,
}

/// Three replicas on fixed ports (so a restart comes back at the same
/// address), nginx in front, a `docs` collection, and an admin token.
async fn fleet(database_url: &str, extra: &[(&str, &str)]) -> Fleet {
    let mut env = prod_env(database_url);
    for (k, v) in [
        ("TP_DRAIN_DELAY_MS", "1500"),
        ("TP_SHUTDOWN_TIMEOUT_MS", "5000"),
        ("TP_TRUSTED_PROXIES", "127.0.0.1"),
        ("DB_CONNECT_TIMEOUT", "2000"),
        ("TP_DB_QUERY_TIMEOUT_MS", "3000"),
        ("TP_RATE_LIMIT_DISABLED", "true"),
    ] {
        set(&mut env, k, v);
    }
    for (k, v) in extra {
        set(&mut env, k, v);
    }
    let envs: Vec<_> = (0..3)
        .map(|_| {
            let mut e = env.clone();
            set(&mut e, "PORT", &free_port().to_string());
            e
        })
        .collect();
    let replicas: Vec<Replica> = envs.iter().map(|e| Replica::start(e)).collect();
    let token = replicas[0].admin_token(&env).await;
    let created = Client::new()
        .with_token(&token)
        .json(
            Method::POST,
            &replicas[0].url("/api/collections"),
            None,
            &json!({"name": "docs", "dimension": 3}),
        )
        .await;
    assert_eq!(created.status, 201);
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let nginx = Nginx::start(&addrs);
    Fleet {
        env,
        envs,
        replicas,
        nginx,
        token,
    }
}

impl Fleet {
    fn load(&self, posts: bool) -> Load {
        Load::start(&self.nginx.url(""), &self.token, 4, Mix { posts })
    }
}

/// Every acknowledged upsert is in the database.
fn assert_no_acknowledged_write_lost(stats: &Stats, ids_in_database: &str) {
    let stored: BTreeSet<&str> = ids_in_database.lines().collect();
    let lost: Vec<&String> = stats
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    println!(
        "verified: all {} acknowledged writes are stored",
        stats.acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_replica_fails_no_idempotent_request_and_loses_no_write() {
    let url = fresh_database();
    let mut fleet = fleet(&url, &[]).await;
    let load = fleet.load(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.replicas[1].kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = load.stop().await;
    println!("{}", stats.summary("sigkill"));
    assert!(stats.sent > 200, "the load was too light: {}", stats.sent);
    assert_eq!(stats.failed(), 0, "failures: {:?}", stats.examples);
    let ids = tp_tests::postgres::shared().psql(database_of(&url), "SELECT id FROM documents");
    assert_no_acknowledged_write_lost(&stats, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_fails_no_request_of_any_kind() {
    let url = fresh_database();
    let mut fleet = fleet(&url, &[]).await;
    let load = fleet.load(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        fleet.replicas[i].terminate();
        let status = fleet.replicas[i]
            .wait(Duration::from_secs(15))
            .expect("replica exits after draining");
        assert!(status.success(), "replica {i} exited with {status}");
        fleet.replicas[i] = Replica::start(&fleet.envs[i]);
        // nginx keeps a replica that failed out of rotation for fail_timeout
        // (2 s): restarting the next one sooner would leave none in rotation.
        tokio::time::sleep(NGINX_FAIL_TIMEOUT + Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop().await;
    println!("{}", stats.summary("rolling restart"));
    assert!(stats.sent > 300, "the load was too light: {}", stats.sent);
    assert_eq!(stats.failed(), 0, "failures: {:?}", stats.examples);
    let ids = tp_tests::postgres::shared().psql(database_of(&url), "SELECT id FROM documents");
    assert_no_acknowledged_write_lost(&stats, &ids);
    let _ = &fleet.env;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_causes_no_5xx_and_revocation_still_holds() {
    let mut redis = RedisServer::start();
    let url = fresh_database();
    let redis_url = redis.url();
    let fleet = fleet(
        &url,
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("TP_REVOCATION_POLL_MS", "500"),
        ],
    )
    .await;
    let bob = fleet.replicas[0]
        .login_as(&fleet.env, "bob", "viewer")
        .await;
    let bob_token = bob["access_token"].as_str().unwrap().to_owned();
    let load = fleet.load(true);
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let health = Client::new()
        .get(&fleet.replicas[2].url("/api/health"), None)
        .await;
    assert_eq!(health.status, 200, "Redis is optional");
    assert_eq!(health.json()["status"], "degraded");
    // End bob's session while Redis is down: every replica must still refuse him.
    let ended = Client::new()
        .with_token(&fleet.token)
        .delete(
            &fleet.nginx.url(&format!(
                "/api/sessions/{}",
                bob["session_id"].as_str().unwrap()
            )),
            None,
        )
        .await;
    assert_eq!(ended.status, 204);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for replica in &fleet.replicas {
        let me = Client::new()
            .with_token(&bob_token)
            .get(&replica.url("/api/auth/me"), None)
            .await;
        assert_eq!(
            me.status, 401,
            "revoked session accepted on {} while Redis was down",
            replica.addr
        );
    }

    redis.restart();
    let back = Instant::now();
    loop {
        let health = Client::new()
            .get(&fleet.replicas[2].url("/api/health"), None)
            .await
            .json();
        if health["status"] == "ok" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "health did not return to ok: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "[redis restart] health ok again {:?} after Redis came back",
        back.elapsed()
    );
    let stats = load.stop().await;
    println!("{}", stats.summary("redis restart"));
    let server_errors: u64 = stats
        .failed_idempotent
        .iter()
        .chain(&stats.failed_other)
        .filter(|(status, _)| **status >= 500)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        server_errors + stats.transport_errors,
        0,
        "failures: {:?}",
        stats.examples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_fails_fast_and_recovers_without_restarting_replicas() {
    let cluster = PgCluster::start("restart");
    let url = cluster.create_database("tp");
    let fleet = fleet(&url, &[]).await;
    let load = fleet.load(false);
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.stop();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in &fleet.replicas {
        let ready = Client::new()
            .get(&replica.url("/api/health/ready"), None)
            .await;
        assert_eq!(
            ready.status, 503,
            "readiness of {} during the outage",
            replica.addr
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_server();
    let restarted = Instant::now();
    let client = Client::new().with_token(&fleet.token);
    loop {
        let all_ready = {
            let mut ok = true;
            for replica in &fleet.replicas {
                ok &= client
                    .get(&replica.url("/api/collections/docs"), None)
                    .await
                    .status
                    == 200;
            }
            ok
        };
        if all_ready {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "replicas did not recover by themselves"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = restarted.elapsed();
    // Through nginx: every replica answered 503 during the outage, so nginx
    // may hold them out of rotation for up to fail_timeout more.
    loop {
        if client
            .get(&fleet.nginx.url("/api/collections/docs"), None)
            .await
            .status
            == 200
        {
            break;
        }
        assert!(
            restarted.elapsed() < recovery + NGINX_FAIL_TIMEOUT + Duration::from_secs(3),
            "nginx did not route again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let through_nginx = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop().await;
    println!("{}", stats.summary("postgres restart"));
    println!(
        "[postgres restart] outage {:?}; every replica serving again {recovery:?} after the database, through nginx {through_nginx:?}",
        restarted - outage
    );
    assert_eq!(
        stats.transport_errors, 0,
        "no request may hang or drop: {:?}",
        stats.examples
    );
    assert!(
        stats.failed_idempotent.keys().all(|s| *s == 503),
        "only 503 during the outage: {:?}",
        stats.failed_idempotent
    );
    assert!(
        stats.slowest < Duration::from_millis(4000),
        "a request took {:?}; DB_CONNECT_TIMEOUT is 2 s and nginx tries 3 replicas",
        stats.slowest
    );
    let ids = cluster.psql("tp", "SELECT id FROM documents");
    assert_no_acknowledged_write_lost(&stats, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_standby_after_the_primary_dies_keeps_every_acknowledged_write() {
    // Synchronous replication: a commit is acknowledged only once the standby has it.
    // Turned on once the standby streams: before that, every commit would wait for it.
    // (The harness runs clusters with synchronous_commit=off; a later -c wins.)
    let primary = PgCluster::start_with("sync-primary", "-c synchronous_commit=on");
    primary.create_database("tp");
    let standby = PgCluster::standby_of(&primary, "sync-standby");
    primary.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    );
    primary.psql("postgres", "SELECT pg_reload_conf()");
    let waiting = Instant::now();
    while primary.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
    ) != "1"
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the standby never became synchronous"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/tp?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let fleet = fleet(&url, &[]).await;
    let load = fleet.load(false);
    tokio::time::sleep(Duration::from_secs(2)).await;

    primary.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    standby.promote();
    let promoted = Instant::now();
    let client = Client::new().with_token(&fleet.token);
    loop {
        let write = client
            .json(
                Method::PUT,
                &fleet.nginx.url("/api/collections/docs/documents"),
                None,
                &json!({"documents": [{"id": "probe", "vector": [1, 1, 1]}]}),
            )
            .await;
        if write.status == 200 {
            break;
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(20),
            "writes did not resume: {:?}",
            write.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[failover] primary killed; standby promoted after {:?}; writes resumed {:?} after promotion ({:?} after the crash)",
        promoted - killed,
        promoted.elapsed(),
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop().await;
    println!("{}", stats.summary("failover"));
    assert_eq!(stats.transport_errors, 0, "{:?}", stats.examples);
    let ids = standby.psql("tp", "SELECT id FROM documents");
    assert_no_acknowledged_write_lost(&stats, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_database_connections_time_out_with_503_and_leak_nothing() {
    let cluster = PgCluster::start("blackhole");
    cluster.create_database("tp");
    let proxy = BlackholeProxy::start(([127, 0, 0, 1], cluster.port).into()).await;
    let mut env = prod_env(&format!("postgresql://postgres@{}/tp", proxy.addr));
    set(&mut env, "DB_CONNECT_TIMEOUT", "1000");
    set(&mut env, "TP_DB_QUERY_TIMEOUT_MS", "1500");
    set(&mut env, "DB_POOL_MAX", "4");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    let created = client
        .json(
            Method::POST,
            &replica.url("/api/collections"),
            None,
            &json!({"name": "docs", "dimension": 3}),
        )
        .await;
    assert_eq!(created.status, 201);

    proxy.set_blackhole(true);
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    // More requests than connections: a leak would show as pool exhaustion later.
    for _ in 0..8 {
        let started = Instant::now();
        let reply = client
            .get(&replica.url("/api/collections/docs"), None)
            .await;
        slowest = slowest.max(started.elapsed());
        statuses.push(reply.status.as_u16());
    }
    println!("[blackhole] statuses during the black hole: {statuses:?}, slowest {slowest:?}");
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(
        slowest < Duration::from_millis(3500),
        "a request hung for {slowest:?}"
    );
    let health = client.get(&replica.url("/api/health"), None).await;
    assert_eq!(health.status, 503);

    proxy.set_blackhole(false);
    let back = Instant::now();
    loop {
        if client
            .get(&replica.url("/api/collections/docs"), None)
            .await
            .status
            == 200
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "no recovery after the black hole"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[blackhole] recovered {:?} after the path came back",
        back.elapsed()
    );
    // No leak: every connection is back in the pool and nobody waits.
    for _ in 0..20 {
        assert_eq!(
            client
                .get(&replica.url("/api/collections/docs"), None)
                .await
                .status,
            200
        );
    }
    let metrics =
        String::from_utf8_lossy(&Client::new().get(&replica.url("/metrics"), None).await.body)
            .into_owned();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        value("tp_db_pool_connections{state=\"in_use\""),
        0.0,
        "{metrics}"
    );
    assert_eq!(value("tp_db_pool_waiting"), 0.0);
}
