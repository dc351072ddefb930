//! Rate limits through real replicas: local, global through Redis, and
//! falling back when Redis fails.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::postgres::fresh_database;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, RedisServer, temp_dir};

/// 10 requests per second sustained, 10 at once.
const PER_MINUTE: u32 = 600;
const BURST: u32 = 10;

fn limited_env(database_url: &str, redis: Option<&RedisServer>) -> Vec<(String, String)> {
    let mut env = prod_env(database_url);
    set(
        &mut env,
        "TP_RATE_LIMIT_PER_MINUTE",
        &PER_MINUTE.to_string(),
    );
    set(&mut env, "TP_RATE_LIMIT_BURST", &BURST.to_string());
    if let Some(redis) = redis {
        set(&mut env, "REDIS_URL", &redis.url());
    }
    env
}

struct Tally {
    admitted: u64,
    refused: u64,
    other: Vec<u16>,
    elapsed: Duration,
    slowest: Duration,
}

/// One user's token hammering `replicas` round robin for `window`, from 3 tasks.
async fn hammer(replicas: &[&Replica], token: &str, window: Duration) -> Tally {
    hammer_every(replicas, token, window, Duration::from_millis(2)).await
}

/// [`hammer`] with `pause` between one task's requests.
async fn hammer_every(
    replicas: &[&Replica],
    token: &str,
    window: Duration,
    pause: Duration,
) -> Tally {
    let urls: Vec<String> = replicas.iter().map(|r| r.url("/api/auth/me")).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..3usize {
        let urls = urls.clone();
        let client = Client::new()
            .with_token(token)
            .with_timeout(Duration::from_secs(5));
        tasks.push(tokio::spawn(async move {
            let mut tally = (0u64, 0u64, Vec::new(), Duration::ZERO);
            let mut i = worker;
            // Bounded by time and by count.
            while started.elapsed() < window && i < 20_000 {
                let sent = Instant::now();
                let reply = client.get(&urls[i % urls.len()], None).await;
                tally.3 = tally.3.max(sent.elapsed());
                match reply.status.as_u16() {
                    200 => tally.0 += 1,
                    429 => {
                        tally.1 += 1;
                        assert!(reply.header("retry-after").is_some());
                        assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
                    }
                    other => tally.2.push(other),
                }
                i += 3;
                tokio::time::sleep(pause).await;
            }
            tally
        }));
    }
    let mut total = Tally {
        admitted: 0,
        refused: 0,
        other: Vec::new(),
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
    };
    for task in tasks {
        let (admitted, refused, other, slowest) = task.await.unwrap();
        total.admitted += admitted;
        total.refused += refused;
        total.other.extend(other);
        total.slowest = total.slowest.max(slowest);
    }
    total.elapsed = started.elapsed();
    total
}

/// A load over the limit, admitted within 5% of what GCRA allows, nothing but 200 and 429.
fn assert_global_limit(tally: &Tally, want: f64) {
    assert!(
        tally.other.is_empty(),
        "unexpected statuses {:?}",
        tally.other
    );
    let error = (tally.admitted as f64 - want).abs() / want;
    assert!(
        error <= 0.05,
        "admitted {} vs {want:.1}: {:.1}% off",
        tally.admitted,
        error * 100.0
    );
    assert!(
        tally.refused > tally.admitted,
        "the load must exceed the limit"
    );
}

/// What GCRA admits for one key in `elapsed`: the burst, then one per interval.
fn expected(elapsed: Duration) -> f64 {
    expected_for(PER_MINUTE, BURST, elapsed)
}

fn expected_for(per_minute: u32, burst: u32, elapsed: Duration) -> f64 {
    f64::from(burst) + elapsed.as_secs_f64() * f64::from(per_minute) / 60.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_a_busy_key_within_its_global_limit_with_fewer_round_trips() {
    // A burst big enough for leases (an eighth of it: up to 32 requests per
    // round trip), a sustained rate the load exceeds.
    const PER_MINUTE: u32 = 3000;
    const BURST: u32 = 400;
    let redis = RedisServer::start();
    let mut env = limited_env(&fresh_database(), Some(&redis));
    set(
        &mut env,
        "TP_RATE_LIMIT_PER_MINUTE",
        &PER_MINUTE.to_string(),
    );
    set(&mut env, "TP_RATE_LIMIT_BURST", &BURST.to_string());
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let token = replicas[0].admin_token(&env).await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let before = redis.calls("evalsha");
    let tally = hammer_every(&refs, &token, Duration::from_secs(8), Duration::ZERO).await;
    let round_trips = redis.calls("evalsha") - before;
    let want = expected_for(PER_MINUTE, BURST, tally.elapsed);
    let sent = tally.admitted + tally.refused;
    println!(
        "leases: admitted {} refused {} over {:?} across 3 replicas; GCRA allows {want:.1}; \
         {round_trips} script calls for {sent} requests",
        tally.admitted, tally.refused, tally.elapsed
    );
    assert_global_limit(&tally, want);
    assert!(
        round_trips * 3 < sent,
        "{round_trips} round trips for {sent} requests: leases and remembered refusals should spare most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_three_replicas_share_one_global_limit() {
    let redis = RedisServer::start();
    let env = limited_env(&fresh_database(), Some(&redis));
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let token = replicas[0].admin_token(&env).await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let tally = hammer(&refs, &token, Duration::from_secs(10)).await;
    let want = expected(tally.elapsed);
    println!(
        "global: admitted {} refused {} over {:?} across 3 replicas; GCRA allows {want:.1}",
        tally.admitted, tally.refused, tally.elapsed
    );
    assert_global_limit(&tally, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_admits_its_own_limit() {
    let env = limited_env(&fresh_database(), None);
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let token = replicas[0].admin_token(&env).await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let tally = hammer(&refs, &token, Duration::from_secs(5)).await;
    let want = 3.0 * expected(tally.elapsed);
    println!(
        "local: admitted {} over {:?}; 3 × GCRA allows {want:.1}",
        tally.admitted, tally.elapsed
    );
    assert!(
        tally.other.is_empty(),
        "unexpected statuses {:?}",
        tally.other
    );
    let error = (tally.admitted as f64 - want).abs() / want;
    assert!(error <= 0.05, "admitted {} vs {want:.1}", tally.admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_routes_carry_headers_and_login_is_limited_per_ip() {
    let dir = temp_dir("ratelimit");
    let mut env = limited_env(&format!("sqlite://{}", dir.join("tp.db").display()), None);
    set(&mut env, "TP_RATE_LIMIT_LOGIN_PER_MINUTE", "6");
    set(&mut env, "TP_TRUSTED_PROXIES", "127.0.0.1");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);

    let reply = client.get(&replica.url("/api/collections"), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("ratelimit-limit"), Some("10"));
    assert!(reply.header("ratelimit-remaining").is_some());
    assert!(reply.header("ratelimit-reset").is_some());
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("600;w=60;burst=10;name=\"user\"")
    );
    let health = Client::new().get(&replica.url("/api/health"), None).await;
    assert!(
        health.header("ratelimit-limit").is_none(),
        "probes are not limited"
    );

    // Wrong passwords from one forwarded client: the login policy (burst 5) stops them.
    let login = |ip: &'static str| {
        let url = replica.url("/api/auth/login");
        async move {
            Client::new()
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-forwarded-for", ip),
                    ],
                    Some(
                        serde_json::to_vec(
                            &json!({"username": "admin", "password": "wrong password!"}),
                        )
                        .unwrap()
                        .into(),
                    ),
                )
                .await
                .unwrap()
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(login("203.0.113.7").await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429, 429],
        "login burst is 5 per client IP"
    );
    let refused = login("203.0.113.7").await;
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry after {retry}");
    assert_eq!(refused.json()["code"], "rate_limited");
    // Another client behind the same trusted proxy has its own bucket.
    assert_eq!(login("198.51.100.9").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = RedisServer::start();
    let mut env = limited_env(&fresh_database(), Some(&redis));
    set(&mut env, "TP_REDIS_TIMEOUT_MS", "200");
    let replicas: Vec<Replica> = (0..2).map(|_| Replica::start(&env)).collect();
    let token = replicas[0].admin_token(&env).await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let health = |r: &Replica| {
        let url = r.url("/api/health");
        async move { Client::new().get(&url, None).await.json() }
    };
    assert_eq!(
        health(&replicas[0]).await["rate_limit"]["deciding"],
        "global"
    );

    redis.stop();
    let tally = hammer(&refs, &token, Duration::from_secs(3)).await;
    println!(
        "redis down: admitted {} refused {} slowest {:?}",
        tally.admitted, tally.refused, tally.slowest
    );
    assert!(
        tally.other.is_empty(),
        "no 5xx while Redis is down: {:?}",
        tally.other
    );
    assert!(
        tally.slowest < Duration::from_secs(1),
        "no request hangs: {:?}",
        tally.slowest
    );
    assert!(
        tally.admitted > 0 && tally.refused > 0,
        "local limits still apply"
    );
    let degraded = health(&replicas[0]).await;
    assert_eq!(degraded["status"], "degraded");
    assert_eq!(degraded["rate_limit"]["deciding"], "local_fallback");
    assert!(degraded["rate_limit"]["fallbacks"].as_u64().unwrap() > 0);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = Client::new()
            .with_token(&token)
            .get(&replicas[0].url("/api/auth/me"), None)
            .await;
        let now = health(&replicas[0]).await;
        if now["rate_limit"]["deciding"] == "global" && now["status"] == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "global limits did not resume: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_limits_off_nothing_is_refused_or_announced() {
    let dir = temp_dir("limits-off");
    let mut env = limited_env(&format!("sqlite://{}", dir.join("tp.db").display()), None);
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    for _ in 0..3 * BURST {
        let reply = client.get(&replica.url("/api/auth/me"), None).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.header("ratelimit-limit").is_none() && reply.header("ratelimit-policy").is_none(),
            "no limit is announced when none applies"
        );
    }
}

/// `GET /api/auth/me` with `token`, as if from `ip` behind a trusted proxy.
async fn from(replica: &Replica, ip: &str, token: &str) -> tp_tests::Reply {
    let authorization = format!("Bearer {token}");
    Client::new()
        .send(
            Method::GET,
            &replica.url("/api/auth/me"),
            &[("x-forwarded-for", ip), ("authorization", &authorization)],
            None,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_client_address() {
    let mut env = prod_env(&fresh_database());
    set(&mut env, "TP_TRUSTED_PROXIES", "127.0.0.1/32");
    set(&mut env, "TP_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "30");
    let replica = Replica::start(&env);
    let admin = replica.admin_token(&env).await;
    // Forged tokens and unknown keys from one address: 401 while the
    // burst lasts (10 for 30 a minute), then 429 with Retry-After.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let token = if i % 2 == 0 {
            format!("eyJhbGciOiJIUzI1NiJ9.e30.forged{i}")
        } else {
            format!("tpk_{:016x}_guess{i}", 0xabc0_u64 + i)
        };
        let reply = from(&replica, "198.51.100.7", &token).await;
        if reply.status == 429 {
            assert!(reply.header("retry-after").is_some());
            assert_eq!(reply.json()["code"], "rate_limited");
        } else {
            assert_eq!(reply.status, 401);
        }
        statuses.push(reply.status.as_u16());
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    println!("40 bad credentials from one address: {refused} refused with 429");
    assert!((25..=31).contains(&refused), "{statuses:?}");
    // Even a valid token from that address waits; other addresses do not.
    assert_eq!(from(&replica, "198.51.100.7", &admin).await.status, 429);
    assert_eq!(from(&replica, "198.51.100.8", &admin).await.status, 200);
    // An ended session is what honest clients send, not guessing: never limited.
    let login = replica.login_as(&env, "leaver", "viewer").await;
    let ended = login["access_token"].as_str().unwrap().to_owned();
    let logout = Client::new()
        .with_token(&ended)
        .json(
            Method::POST,
            &replica.url("/api/auth/logout"),
            None,
            &json!({}),
        )
        .await;
    assert!(logout.status.is_success(), "{:?}", logout.status);
    for _ in 0..40 {
        let reply = from(&replica, "198.51.100.9", &ended).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["code"], "session_revoked");
    }
}
