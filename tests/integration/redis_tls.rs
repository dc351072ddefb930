//! Redis over TLS: a `rediss` URL gets verified TLS or no connection at
//! all, never plaintext; limits and revocations work over it.

use std::time::{Duration, Instant};

use tp_tests::postgres::fresh_database;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::tls::TestPki;
use tp_tests::{Client, RedisServer, temp_dir};

fn env_with(redis_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = prod_env(&fresh_database());
    set(&mut env, "REDIS_URL", redis_url);
    // A one-minute poll: only Redis can deliver a revocation in time.
    set(&mut env, "TP_REVOCATION_POLL_MS", "60000");
    for (k, v) in extra {
        set(&mut env, k, v);
    }
    env
}

async fn redis_health(replica: &Replica) -> serde_json::Value {
    Client::new()
        .get(&replica.url("/api/health"), None)
        .await
        .json()["redis"]
        .clone()
}

/// Waits until the replica reports Redis connected (or not), up to 10 s.
async fn wait_connected(replica: &Replica, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let redis = redis_health(replica).await;
        if redis["connected"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis {redis} never became connected={want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_never_talks_plaintext() {
    let pki = TestPki::generate(&temp_dir("redis-pki"), None);
    // A server that speaks plaintext only, named by a TLS URL.
    let plain = RedisServer::start();
    let env = env_with(
        &format!("rediss://localhost:{}", plain.port),
        &[("TP_REDIS_CA_FILE", &pki.ca.to_string_lossy())],
    );
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    for _ in 0..20 {
        assert_eq!(
            client.get(&replica.url("/api/auth/me"), None).await.status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redis_health(&replica).await["connected"], false);
    // (The harness itself sent one PING when the server started.)
    for command in [
        "evalsha",
        "eval",
        "subscribe",
        "publish",
        "client|setinfo",
        "select",
    ] {
        assert_eq!(
            plain.calls(command),
            0,
            "{command} reached Redis in cleartext"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_with_a_client_certificate_carries_limits_and_revocations() {
    let pki = TestPki::generate(&temp_dir("redis-pki"), None);
    let server = RedisServer::start_tls(&pki, true);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let env = env_with(
        &server.tls_url(),
        &[
            ("TP_REDIS_CA_FILE", &path(&pki.ca)),
            ("TP_REDIS_CERT_FILE", &path(&pki.client_cert)),
            ("TP_REDIS_KEY_FILE", &path(&pki.client_key)),
        ],
    );
    let a = Replica::start(&env);
    let b = Replica::start(&env);
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let admin = a.admin_token(&env).await;
    let login = a.login_as(&env, "carol", "viewer").await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let sid = login["session_id"].as_str().unwrap();
    let client = Client::new().with_token(&token);
    assert_eq!(client.get(&b.url("/api/auth/me"), None).await.status, 200);
    let ended = Client::new()
        .with_token(&admin)
        .delete(&a.url(&format!("/api/sessions/{sid}")), None)
        .await;
    assert_eq!(ended.status, 204);
    let started = Instant::now();
    loop {
        let reply = client.get(&b.url("/api/auth/me"), None).await;
        if reply.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the revocation did not cross Redis over TLS within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server.calls("evalsha") > 0,
        "rate limits went through Redis"
    );
    assert!(server.calls("publish") > 0, "the revocation was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_unauthenticated_tls_peer_is_refused_and_logged() {
    let pki = TestPki::generate(&temp_dir("redis-pki"), None);
    let server = RedisServer::start_tls(&pki, true);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    // The server's certificate is not signed by this CA.
    let wrong_ca = env_with(
        &server.tls_url(),
        &[("TP_REDIS_CA_FILE", &path(&pki.other_ca))],
    );
    let replica = Replica::start(&wrong_ca);
    assert!(
        replica.wait_for_log("redis connection failed", Duration::from_secs(10)),
        "{}",
        replica.logs()
    );
    assert_eq!(redis_health(&replica).await["connected"], false);
    assert!(
        replica.logs().contains("UnknownIssuer"),
        "{}",
        replica.logs()
    );
    // The right CA, but no client certificate for a server that wants one.
    let no_cert = env_with(&server.tls_url(), &[("TP_REDIS_CA_FILE", &path(&pki.ca))]);
    let replica = Replica::start(&no_cert);
    assert!(replica.wait_for_log("redis connection failed", Duration::from_secs(10)));
    assert_eq!(redis_health(&replica).await["connected"], false);
    assert_eq!(server.calls("evalsha"), 0);
}

#[test]
fn bad_tls_settings_stop_the_start_naming_the_variable() {
    for (extra, words) in [
        (
            vec![("TP_REDIS_CA_FILE", "/nonexistent/ca.pem")],
            "TP_REDIS_CA_FILE: /nonexistent/ca.pem",
        ),
        (
            vec![("TP_REDIS_CERT_FILE", "/tmp/c.pem")],
            "TP_REDIS_KEY_FILE",
        ),
    ] {
        let env = env_with("rediss://localhost:6390", &extra);
        let out = tp_tests::replica::run(&["config", "check"], &env, std::path::Path::new("/tmp"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(words), "{stderr}");
    }
    let env = env_with("redis-cluster://", &[]);
    let out = tp_tests::replica::run(&["config", "check"], &env, std::path::Path::new("/tmp"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("REDIS_URL: names no host"), "{stderr}");
}
