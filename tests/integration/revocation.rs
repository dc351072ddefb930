//! A session ended on one replica is refused on the others.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::postgres::fresh_database;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, RedisServer};

/// Two replicas on one database, optionally with Redis; poll interval in ms.
fn pair(redis: Option<&RedisServer>, poll_ms: &str) -> (Replica, Replica, Vec<(String, String)>) {
    let mut env = prod_env(&fresh_database());
    set(&mut env, "TP_REVOCATION_POLL_MS", poll_ms);
    if let Some(redis) = redis {
        set(&mut env, "REDIS_URL", &redis.url());
    }
    let a = Replica::start(&env);
    let b = Replica::start(&env);
    (a, b, env)
}

/// Ends `session_id` through replica A's admin API.
async fn terminate(a: &Replica, admin: &str, session_id: &str) {
    let reply = Client::new()
        .with_token(admin)
        .delete(&a.url(&format!("/api/sessions/{session_id}")), None)
        .await;
    assert_eq!(reply.status, 204, "{:?}", reply.json());
}

/// Polls replica B until the token is refused; returns how long it took.
async fn refused_within(b: &Replica, token: &str, limit: Duration) -> Duration {
    let client = Client::new().with_token(token);
    let started = Instant::now();
    loop {
        let reply = client.get(&b.url("/api/auth/me"), None).await;
        if reply.status == 401 {
            assert_eq!(reply.json()["code"], "session_revoked");
            return started.elapsed();
        }
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn user_session(a: &Replica, env: &[(String, String)], name: &str) -> (String, String) {
    let login = a.login_as(env, name, "viewer").await;
    (
        login["access_token"].as_str().unwrap().to_owned(),
        login["session_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_terminated_session_is_refused_everywhere_within_a_second() {
    let redis = RedisServer::start();
    // A one-minute poll: only Redis can deliver the revocation in time.
    let (a, b, env) = pair(Some(&redis), "60000");
    let admin = a.admin_token(&env).await;
    for round in 0..3 {
        let (token, sid) = user_session(&a, &env, &format!("bob{round}")).await;
        assert_eq!(
            Client::new()
                .with_token(&token)
                .get(&b.url("/api/auth/me"), None)
                .await
                .status,
            200
        );
        terminate(&a, &admin, &sid).await;
        let took = refused_within(&b, &token, Duration::from_secs(1)).await;
        println!("with redis: refused on the other replica after {took:?}");
    }
    let health = Client::new().get(&b.url("/api/health"), None).await.json();
    assert_eq!(health["redis"]["connected"], true);
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_revocation_arrives_within_the_poll_interval() {
    let (a, b, env) = pair(None, "500");
    let admin = a.admin_token(&env).await;
    let (token, sid) = user_session(&a, &env, "carl").await;
    terminate(&a, &admin, &sid).await;
    let took = refused_within(&b, &token, Duration::from_millis(1500)).await;
    println!("without redis (poll 500 ms): refused after {took:?}");

    // Logging out is a revocation too.
    let (token, _) = user_session(&a, &env, "dana").await;
    let reply = Client::new()
        .with_token(&token)
        .json(Method::POST, &a.url("/api/auth/logout"), None, &json!({}))
        .await;
    assert_eq!(reply.status, 204);
    refused_within(&b, &token, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_holds_while_redis_is_down_and_is_instant_again_after() {
    let mut redis = RedisServer::start();
    let (a, b, env) = pair(Some(&redis), "700");
    let admin = a.admin_token(&env).await;

    redis.stop();
    let (token, sid) = user_session(&a, &env, "erik").await;
    let started = Instant::now();
    terminate(&a, &admin, &sid).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ending a session must not hang on Redis"
    );
    let took = refused_within(&b, &token, Duration::from_secs(2)).await;
    println!("redis down: refused after {took:?} (database poll)");
    let health = Client::new().get(&b.url("/api/health"), None).await;
    assert_eq!(health.status, 200, "Redis is optional: still ready");
    assert_eq!(health.json()["status"], "degraded");
    assert_eq!(health.json()["redis"]["connected"], false);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Client::new().get(&b.url("/api/health"), None).await.json()["redis"]["connected"] != true
    {
        assert!(
            Instant::now() < deadline,
            "replica did not reconnect to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the subscriber its resubscription, then expect pub/sub speed again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (token, sid) = user_session(&a, &env, "fay").await;
    terminate(&a, &admin, &sid).await;
    let took = refused_within(&b, &token, Duration::from_millis(650)).await;
    println!("redis back: refused after {took:?}");
}

/// Demotes `username` through replica A, then polls replica B with their
/// old token on an admin route until it is refused; how long that took.
async fn demoted_within(redis: Option<&RedisServer>, poll_ms: &str, limit: Duration) -> Duration {
    let (a, b, env) = pair(redis, poll_ms);
    let root = a.admin_token(&env).await;
    let login = a.login_as(&env, "mallory", "admin").await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let mallory = Client::new().with_token(&token);
    let users = mallory.get(&b.url("/api/users"), None).await;
    assert_eq!(users.status, 200, "an admin lists users");
    let id = users.json()["users"]
        .as_array()
        .or(users.json().as_array())
        .and_then(|list| {
            list.iter()
                .find(|u| u["username"] == "mallory")
                .map(|u| u["id"].as_str().unwrap().to_owned())
        })
        .expect("mallory's id");

    let demoted = Client::new()
        .with_token(&root)
        .json(
            Method::PATCH,
            &a.url(&format!("/api/users/{id}")),
            None,
            &json!({"role": "member"}),
        )
        .await;
    assert_eq!(demoted.status, 200, "{:?}", demoted.json());
    let started = Instant::now();
    let took = loop {
        let reply = mallory.get(&b.url("/api/users"), None).await;
        if reply.status == 401 {
            assert_eq!(reply.json()["code"], "token_stale");
            break started.elapsed();
        }
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < limit, "still admin after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The session lives on; its next token carries the new role.
    let renewed = Client::new()
        .json(
            Method::POST,
            &b.url("/api/auth/refresh"),
            None,
            &json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(renewed.status, 200, "{:?}", renewed.json());
    let member = Client::new().with_token(renewed.json()["access_token"].as_str().unwrap());
    assert_eq!(member.get(&b.url("/api/users"), None).await.status, 403);
    assert_eq!(member.get(&a.url("/api/auth/me"), None).await.status, 200);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_loses_admin_rights_on_every_replica() {
    let redis = RedisServer::start();
    // With Redis and a one-minute poll: only the message can be in time.
    let took = demoted_within(Some(&redis), "60000", Duration::from_secs(1)).await;
    println!("demotion with redis: refused on the other replica after {took:?}");
    let took = demoted_within(None, "500", Duration::from_millis(1500)).await;
    println!("demotion without redis: refused on the other replica after {took:?}");
}
