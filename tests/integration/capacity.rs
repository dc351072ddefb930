//! Replicas whose pools add up to more than PostgreSQL's `max_connections`:
//! a refused connection is not an outage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, PgCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_larger_than_max_connections_keep_serving() {
    // 3 replicas x DB_POOL_MAX 10 = 30 connections wanted, 25 allowed.
    let cluster = PgCluster::start_with("tight", "-c max_connections=25");
    let url = cluster.create_database("tp");
    let mut env = prod_env(&url);
    set(&mut env, "DB_POOL_MAX", "10");
    set(&mut env, "DB_CONNECT_TIMEOUT", "2000");
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let token = replicas[0].admin_token(&env).await;
    let created = Client::new()
        .with_token(&token)
        .json(
            Method::POST,
            &replicas[0].url("/api/collections"),
            None,
            &json!({"name": "docs", "dimension": 3, "metric": "l2"}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());

    // 24 clients, 8 per replica, for at most 4 s or 400 requests each.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for w in 0..24 {
        let base = replicas[w % 3].url("");
        let client = Client::new()
            .with_token(&token)
            .with_timeout(Duration::from_secs(10));
        workers.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..400 {
                if Instant::now() > deadline {
                    break;
                }
                let reply = if i % 2 == 0 {
                    client
                        .get(&format!("{base}/api/collections/docs"), None)
                        .await
                } else {
                    client
                        .json(
                            Method::POST,
                            &format!("{base}/api/collections/docs/search"),
                            None,
                            &json!({"vector": [1.0, 2.0, 3.0], "k": 3}),
                        )
                        .await
                };
                let key = if reply.status.is_success() {
                    "ok".to_owned()
                } else {
                    let retry = reply.header("retry-after").is_some();
                    format!(
                        "{} {} retry-after={retry}",
                        reply.status.as_u16(),
                        reply.json()["code"].as_str().unwrap_or("?")
                    )
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }));
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        for (k, v) in worker.await.unwrap() {
            *seen.entry(k).or_default() += v;
        }
    }
    println!("24 clients against 3 x 10 pooled connections, max_connections 25: {seen:?}");
    let ok = seen.get("ok").copied().unwrap_or(0);
    let refused: u64 = seen
        .iter()
        .filter(|(k, _)| *k != "ok")
        .map(|(_, v)| v)
        .sum();
    assert!(
        seen.keys()
            .all(|k| k == "ok" || k.ends_with("retry-after=true")),
        "every refusal says when to retry: {seen:?}"
    );
    assert!(
        !seen.keys().any(|k| k.contains("database_unavailable")),
        "a full database is not an outage: {seen:?}"
    );
    assert!(ok > 500 && refused * 20 < ok, "{seen:?}");
    for r in &replicas {
        let ready = Client::new().get(&r.url("/api/health/ready"), None).await;
        assert_eq!(ready.status, 200, "{}", r.logs());
        let logs = r.logs();
        let full = logs.matches("refused another connection").count();
        let failed = logs.matches("\"request failed\"").count();
        println!("capacity lines: {full}, failure lines: {failed}");
        assert!(
            full <= 3,
            "the condition is logged once, not per attempt: {full}"
        );
        assert!(
            failed <= 5,
            "failures are summarised, not one line each: {failed}"
        );
    }
}
