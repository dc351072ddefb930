//! Encrypted secrets over HTTP on both databases: the API, what lands on
//! disk, key rotation while replicas serve, and wrong keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tp_tests::postgres::{database_of, fresh_database, shared};
use tp_tests::replica::{ENCRYPTION_KEY, Replica, prod_env, run, set};
use tp_tests::{Client, temp_dir};

/// A value that must never appear in the database as it is.
const PLAINTEXT: &str = "sk-live-PLAINTEXT-MARKER-7f3a9c";
/// The key rotated to, and an unrelated one.
const NEW_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const WRONG_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn secret_url(replica: &Replica, name: &str) -> String {
    replica.url(&format!("/api/secrets/{name}"))
}

async fn put(client: &Client, replica: &Replica, name: &str, value: &str) -> tp_tests::Reply {
    client
        .json(
            Method::PUT,
            &secret_url(replica, name),
            None,
            &json!({ "value": value }),
        )
        .await
}

/// The API's contract, whatever the backend; `stored` returns every byte
/// the database holds for the secrets and the audit log.
async fn api_contract(replica: &Replica, env: &[(String, String)], stored: impl Fn() -> Vec<u8>) {
    let admin = Client::new().with_token(&replica.admin_token(env).await);

    let written = put(&admin, replica, "openai/api-key", PLAINTEXT).await;
    assert_eq!(written.status, 200, "{:?}", written.json());
    let meta = written.json();
    assert_eq!(meta["name"], "openai/api-key");
    assert!(meta["key_id"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(
        meta.get("value").is_none(),
        "a write never echoes the value: {meta}"
    );
    assert!(meta["updated_by"].as_str().unwrap().starts_with("user:"));

    let read = admin
        .get(&secret_url(replica, "openai/api-key"), None)
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.json(),
        json!({ "name": "openai/api-key", "value": PLAINTEXT })
    );
    assert_eq!(read.header("cache-control"), Some("no-store"));
    // Percent-encoded slashes name the same secret.
    let encoded = admin
        .get(&secret_url(replica, "openai%2Fapi-key"), None)
        .await;
    assert_eq!(encoded.json()["value"], PLAINTEXT);

    // Replace, list without values.
    assert_eq!(
        put(&admin, replica, "openai/api-key", "rotated-value")
            .await
            .status,
        200
    );
    assert_eq!(
        put(&admin, replica, "smtp-password", "hunter2")
            .await
            .status,
        200
    );
    let listed = admin.get(&replica.url("/api/secrets"), None).await;
    assert_eq!(listed.status, 200);
    let listed = listed.json();
    let names: Vec<&str> = listed["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai/api-key", "smtp-password"]);
    let text = listed.to_string();
    assert!(
        !text.contains("rotated-value") && !text.contains("hunter2"),
        "list shows values: {text}"
    );

    // Bad input: clear 4xx, nothing written.
    for (name, body, status, code) in [
        (
            "bad%20name",
            json!({ "value": "x" }),
            400,
            "invalid_secret_name",
        ),
        (
            "a/../b",
            json!({ "value": "x" }),
            400,
            "invalid_secret_name",
        ),
        (
            "too-big",
            json!({ "value": "x".repeat(64 * 1024 + 1) }),
            400,
            "secret_too_large",
        ),
        ("no-value", json!({ "val": "x" }), 400, "invalid_json"),
        ("not-a-string", json!({ "value": 5 }), 400, "invalid_json"),
    ] {
        let reply = admin
            .json(Method::PUT, &secret_url(replica, name), None, &body)
            .await;
        assert_eq!(reply.status.as_u16(), status, "{name}: {:?}", reply.json());
        assert_eq!(reply.json()["code"], code, "{name}");
    }
    assert_eq!(
        admin.get(&replica.url("/api/secrets"), None).await.json()["secrets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Delete; then it is gone.
    assert_eq!(
        admin
            .delete(&secret_url(replica, "smtp-password"), None)
            .await
            .status,
        204
    );
    let gone = admin.get(&secret_url(replica, "smtp-password"), None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["code"], "secret_not_found");
    assert_eq!(
        admin
            .delete(&secret_url(replica, "smtp-password"), None)
            .await
            .status,
        404
    );

    // Admins only.
    let member = replica.login_as(env, "mia", "member").await;
    let member = Client::new().with_token(member["access_token"].as_str().unwrap());
    assert_eq!(
        member
            .get(&secret_url(replica, "openai/api-key"), None)
            .await
            .status,
        403
    );
    assert_eq!(put(&member, replica, "x", "y").await.status, 403);
    assert_eq!(
        member.get(&replica.url("/api/secrets"), None).await.status,
        403
    );
    assert_eq!(
        Client::new()
            .get(&secret_url(replica, "openai/api-key"), None)
            .await
            .status,
        401
    );

    // On disk: never a value, in no encoding; the audit log names who and which.
    let bytes = stored();
    for value in [PLAINTEXT, "rotated-value", "hunter2"] {
        assert!(
            !contains(&bytes, value.as_bytes()),
            "{value} is stored as it is"
        );
        assert!(
            !contains(&bytes, hex(value).as_bytes()),
            "{value} is stored as hex"
        );
    }
    let text = String::from_utf8_lossy(&bytes);
    for action in ["secret.put", "secret.get", "secret.delete"] {
        assert!(text.contains(action), "no {action} in the audit log");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_api_on_sqlite_never_stores_a_value_in_the_clear() {
    let dir = temp_dir("secrets-sqlite");
    let db = dir.join("tp.db");
    let env = prod_env(&format!("sqlite://{}", db.display()));
    let replica = Replica::start(&env);
    api_contract(&replica, &env, || {
        // The database file and its write-ahead log, as they are on disk.
        ["tp.db", "tp.db-wal"]
            .iter()
            .flat_map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_api_on_postgres_never_stores_a_value_in_the_clear() {
    let url = fresh_database();
    let env = prod_env(&url);
    let replica = Replica::start(&env);
    let database = database_of(&url).to_owned();
    api_contract(&replica, &env, || {
        let rows = shared().psql(
            &database,
            "SELECT s::text FROM secrets s UNION ALL SELECT a::text FROM audit_log a",
        );
        // bytea prints as \x<hex>: decode it, so the check covers the raw bytes too.
        let mut bytes = rows.clone().into_bytes();
        for word in rows.split(['\\', ',', '(', ')']) {
            if let Some(hex) = word.strip_prefix('x') {
                bytes.extend(decode_hex(hex));
            }
        }
        bytes
    })
    .await;
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn with_keys(
    env: &[(String, String)],
    current: &str,
    previous: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    set(&mut env, "ENCRYPTION_KEY", current);
    env.retain(|(k, _)| k != "TP_ENCRYPTION_KEY_PREVIOUS");
    if let Some(previous) = previous {
        set(&mut env, "TP_ENCRYPTION_KEY_PREVIOUS", previous);
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_replicas_serve_loses_nothing_and_wrong_keys_never_return_garbage() {
    let url = fresh_database();
    let mut env = prod_env(&url);
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let old = Replica::start(&env);
    let token = old.admin_token(&env).await;
    let admin = Client::new().with_token(&token);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..60 {
        let (name, value) = (
            format!("team-{}/key-{i:02}", i % 4),
            format!("value-{i}-{}", "v".repeat(i)),
        );
        assert_eq!(put(&admin, &old, &name, &value).await.status, 200);
        expected.insert(name, value);
    }
    let old_key_id =
        admin.get(&old.url("/api/secrets"), None).await.json()["secrets"][0]["key_id"].clone();
    drop(old);

    // Two replicas on the new key that still read the old one.
    let rotating = with_keys(&env, NEW_KEY, Some(ENCRYPTION_KEY));
    let replicas = Arc::new([Replica::start(&rotating), Replica::start(&rotating)]);
    let expected = Arc::new(std::sync::Mutex::new(expected));
    // Values being written: a read may see one before the writer's PUT
    // returns. The writer updates `expected` before it clears `pending`.
    let pending: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for reader in 0..3usize {
        let (replicas, expected, pending, stop, reads, bad, token) = (
            replicas.clone(),
            expected.clone(),
            pending.clone(),
            stop.clone(),
            reads.clone(),
            bad.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = Client::new().with_token(&token);
            let started = Instant::now();
            let mut i = reader;
            // Bounded in count and time.
            while !stop.load(Ordering::Relaxed)
                && i < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let (name, value) = {
                    let map = expected.lock().unwrap();
                    let (n, v) = map.iter().nth(i % map.len()).unwrap();
                    (n.clone(), v.clone())
                };
                let replica = &replicas[i % 2];
                let reply = client.get(&secret_url(replica, &name), None).await;
                reads.fetch_add(1, Ordering::Relaxed);
                // A concurrent writer may have replaced it meanwhile: the
                // value being written, then (in this order) the expectation.
                let being_written = pending.lock().unwrap().get(&name).cloned();
                let now_expected = expected.lock().unwrap().get(&name).cloned();
                let got = reply.json()["value"].as_str().map(str::to_owned);
                if reply.status != 200
                    || (got != Some(value) && got != now_expected && got != being_written)
                {
                    bad.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bad read of {name}: {} {:?}", reply.status, reply.json());
                }
                i += 3;
            }
        }));
    }
    // One writer rewrites a few secrets during the rotation (under the new key).
    let writer = {
        let (replicas, expected, pending, stop, token) = (
            replicas.clone(),
            expected.clone(),
            pending.clone(),
            stop.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let client = Client::new().with_token(&token);
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && round < 200 {
                let name = format!("team-1/key-{:02}", 1 + 4 * (round % 5));
                let value = format!("rewritten-{round}");
                pending.lock().unwrap().insert(name.clone(), value.clone());
                let reply = put(&client, &replicas[round % 2], &name, &value).await;
                assert_eq!(reply.status, 200, "{:?}", reply.json());
                expected.lock().unwrap().insert(name.clone(), value);
                pending.lock().unwrap().remove(&name);
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotation = {
        let rotating = rotating.clone();
        tokio::task::spawn_blocking(move || {
            run(
                &["secrets", "rotate", "--batch-size", "7"],
                &rotating,
                Path::new("/tmp"),
            )
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&rotation.stdout).into_owned();
    assert!(
        rotation.status.success(),
        "rotate failed: {stdout}\n{}",
        String::from_utf8_lossy(&rotation.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    writer.await.unwrap();
    println!(
        "[secrets rotation] {stdout}; {} concurrent reads, {} bad",
        reads.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    assert!(
        reads.load(Ordering::Relaxed) > 50,
        "too few reads ran during the rotation"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "reads failed or returned wrong values during rotation"
    );
    assert!(stdout.contains("failed 0"), "{stdout}");

    // Everything is under the new key now: a replica without the old key reads it all.
    drop(replicas);
    let new_only = Replica::start(&with_keys(&env, NEW_KEY, None));
    let listed = admin.get(&new_only.url("/api/secrets"), None).await.json();
    let key_ids: std::collections::BTreeSet<String> = listed["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(key_ids.len(), 1, "{key_ids:?}");
    assert_ne!(json!(key_ids.first().unwrap()), old_key_id);
    let expected = expected.lock().unwrap().clone();
    for (name, value) in &expected {
        let read = admin.get(&secret_url(&new_only, name), None).await;
        assert_eq!(
            read.json()["value"].as_str(),
            Some(value.as_str()),
            "{name}"
        );
    }
    // Running it again is a no-op.
    let again = run(
        &["secrets", "rotate"],
        &with_keys(&env, NEW_KEY, None),
        Path::new("/tmp"),
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("rotated 0, already current 60, failed 0")
    );
    drop(new_only);

    // A wrong key: a clear 503, never garbage, and the data stays intact.
    let wrong = Replica::start(&with_keys(&env, WRONG_KEY, None));
    let read = admin.get(&secret_url(&wrong, "team-0/key-00"), None).await;
    assert_eq!(read.status, 503, "{:?}", read.json());
    assert_eq!(read.json()["code"], "encryption_key_unavailable");
    assert!(
        !read.body.windows(8).any(|w| w == b"value-0-"),
        "a wrong key returned data"
    );
    let failed_rotation = run(
        &["secrets", "rotate"],
        &with_keys(&env, WRONG_KEY, None),
        Path::new("/tmp"),
    );
    assert!(!failed_rotation.status.success());
    drop(wrong);
    let right = Replica::start(&with_keys(&env, NEW_KEY, None));
    for (name, value) in expected.iter().take(5) {
        assert_eq!(
            admin.get(&secret_url(&right, name), None).await.json()["value"].as_str(),
            Some(value.as_str())
        );
    }
}
