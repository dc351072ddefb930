//! Replicas behind Debian's PgBouncer 1.18 (no protocol-level prepared
//! statements) in transaction mode: everything works, sessions end on
//! every replica within the poll, and searches run over TLS to it.

use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::Client;
use tp_tests::pgbouncer::{PgBouncer, PoolMode};
use tp_tests::postgres::{database_of, fresh_database, shared};
use tp_tests::replica::{Replica, prod_env, run, set};
use tp_tests::tls::TestPki;

/// A fresh database migrated directly, and the environment of replicas
/// that reach it through `bouncer` at `url`.
fn behind(url_of: impl FnOnce(&str) -> String) -> Vec<(String, String)> {
    let direct = fresh_database();
    let out = run(&["migrate"], &prod_env(&direct), Path::new("/tmp"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env = prod_env(&url_of(database_of(&direct)));
    set(&mut env, "TP_DB_POOLER", "pgbouncer-transaction");
    set(&mut env, "TP_AUTO_MIGRATE", "false");
    set(&mut env, "TP_REVOCATION_POLL_MS", "1000");
    env
}

async fn ok(reply: tp_tests::Reply, what: &str) -> serde_json::Value {
    assert!(
        reply.status.is_success(),
        "{what}: {} {:?}",
        reply.status,
        reply.json()
    );
    if reply.body.is_empty() {
        serde_json::Value::Null
    } else {
        reply.json()
    }
}

/// Collections, upserts, a filtered search that still finds `k`, secrets.
async fn exercise(replica: &Replica, token: &str) {
    let client = Client::new().with_token(token);
    ok(
        client
            .json(
                Method::POST,
                &replica.url("/api/collections"),
                None,
                &json!({"name": "docs", "dimension": 3, "metric": "cosine"}),
            )
            .await,
        "create collection",
    )
    .await;
    let documents: Vec<_> = (0..60)
        .map(|i| {
            json!({"id": format!("d{i}"), "vector": [1.0, i as f32 / 10.0, 0.5],
                   "metadata": {"even": i % 2 == 0}})
        })
        .collect();
    ok(
        client
            .json(
                Method::PUT,
                &replica.url("/api/collections/docs/documents"),
                None,
                &json!({ "documents": documents }),
            )
            .await,
        "upsert",
    )
    .await;
    let found = ok(
        client
            .json(
                Method::POST,
                &replica.url("/api/collections/docs/search"),
                None,
                &json!({"vector": [1.0, 0.2, 0.5], "k": 10, "filter": {"even": true}, "ef_search": 20}),
            )
            .await,
        "search",
    )
    .await;
    let hits = found["results"]
        .as_array()
        .or(found.as_array())
        .expect("hits");
    assert_eq!(hits.len(), 10, "{found}");
    ok(
        client
            .json(
                Method::PUT,
                &replica.url("/api/secrets/openai/key"),
                None,
                &json!({"value": "sk-test-value"}),
            )
            .await,
        "put secret",
    )
    .await;
    let secret = ok(
        client
            .get(&replica.url("/api/secrets/openai/key"), None)
            .await,
        "get secret",
    )
    .await;
    assert_eq!(secret["value"], "sk-test-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_transaction_pooling() {
    // Fewer server connections than the replicas' pools add up to.
    let bouncer = PgBouncer::start(shared().port, PoolMode::Transaction, 4, None);
    let env = behind(|db| bouncer.url(db));
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&env)).collect();
    let admin = replicas[0].admin_token(&env).await;
    exercise(&replicas[1], &admin).await;

    // A session ended on one replica is refused on all three within the poll.
    let login = replicas[0].login_as(&env, "bob", "viewer").await;
    let token = login["access_token"].as_str().unwrap();
    let sid = login["session_id"].as_str().unwrap();
    let bob = Client::new().with_token(token);
    for r in &replicas {
        assert_eq!(bob.get(&r.url("/api/auth/me"), None).await.status, 200);
    }
    let ended = Client::new()
        .with_token(&admin)
        .delete(&replicas[1].url(&format!("/api/sessions/{sid}")), None)
        .await;
    assert_eq!(ended.status, 204);
    let started = Instant::now();
    for r in &replicas {
        while bob.get(&r.url("/api/auth/me"), None).await.status != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "still accepted after 3 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "refused on all three replicas after {:?}",
        started.elapsed()
    );

    // Concurrent reads, searches and writes on every replica: no 5xx.
    let mut tasks = Vec::new();
    for (n, r) in replicas.iter().enumerate() {
        let base = r.url("");
        let client = Client::new().with_token(&admin);
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..60 {
                let reply = match i % 3 {
                    0 => client.get(&format!("{base}/api/collections/docs"), None).await,
                    1 => {
                        client
                            .json(
                                Method::POST,
                                &format!("{base}/api/collections/docs/search"),
                                None,
                                &json!({"vector": [1.0, 0.3, 0.5], "k": 5}),
                            )
                            .await
                    }
                    _ => {
                        client
                            .json(
                                Method::PUT,
                                &format!("{base}/api/collections/docs/documents"),
                                None,
                                &json!({"documents": [{"id": format!("r{n}-{i}"), "vector": [0.5, 1.0, 0.1]}]}),
                            )
                            .await
                    }
                };
                if !reply.status.is_success() {
                    failures.push(format!("{} {:?}", reply.status, reply.json()));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let errors: Vec<String> = replicas
        .iter()
        .flat_map(|r| r.logs().lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("prepared statement") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        failures.is_empty() && errors.is_empty(),
        "{failures:?}\n{errors:#?}"
    );
    // No statement outlived its transaction on any server connection.
    let db = env
        .iter()
        .find(|(k, _)| k == "TENANT_PLANE_DATABASE_URL")
        .map(|(_, url)| database_of(url).to_owned())
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&bouncer.url(&db), tokio_postgres::NoTls)
        .await
        .expect("connect through pgbouncer");
    tokio::spawn(connection);
    for _ in 0..20 {
        // Simple queries, each its own transaction: they visit the servers in turn.
        let rows = client
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        let count = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(
            count.as_deref(),
            Some("0"),
            "a prepared statement was left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_run_over_tls_to_pgbouncer() {
    let pki = TestPki::for_services();
    let bouncer = PgBouncer::start(shared().port, PoolMode::Transaction, 4, Some(&pki));
    let port = bouncer.port;
    let ca = pki.ca.display().to_string();
    let env = behind(|db| {
        format!("postgresql://postgres@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={ca}")
    });
    let replica = Replica::start(&env);
    let admin = replica.admin_token(&env).await;
    exercise(&replica, &admin).await;

    // The same PgBouncer, trusted through the wrong CA: the replica does
    // not start, and says why.
    let mut wrong = env.clone();
    let url = env
        .iter()
        .find(|(k, _)| k == "TENANT_PLANE_DATABASE_URL")
        .map(|(_, v)| v.replace(&ca, &pki.other_ca.display().to_string()))
        .unwrap();
    set(&mut wrong, "TENANT_PLANE_DATABASE_URL", &url);
    let Err(refused) = Replica::try_start(&wrong, Path::new("/tmp")) else {
        panic!("started with an untrusted PgBouncer certificate");
    };
    assert_eq!(refused.status.code(), Some(69), "{}", refused.output);
    assert!(refused.output.contains("not trusted"), "{}", refused.output);
}

#[test]
fn migrations_refuse_a_transaction_pooler() {
    let mut env = prod_env(&fresh_database());
    set(&mut env, "TP_DB_POOLER", "pgbouncer-transaction");
    set(&mut env, "TP_AUTO_MIGRATE", "true");
    let out = run(&["config", "check"], &env, Path::new("/tmp"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("TP_AUTO_MIGRATE: must be false"),
        "{stderr}"
    );
    // Off by default behind a transaction pooler.
    env.retain(|(k, _)| k != "TP_AUTO_MIGRATE");
    let out = run(&["config", "check"], &env, Path::new("/tmp"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["migrate"], &env, Path::new("/tmp"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("advisory lock"), "{stderr}");
}
