//! Vector search through the real binary: input limits, draining with a
//! request in flight, pool saturation, database loss and failover.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tp_tests::postgres::{PgCluster, database_of, fresh_database};
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, temp_dir};

fn sqlite_env(dir: &Path) -> Vec<(String, String)> {
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(&mut env, "TP_DATA_DIR", &dir.to_string_lossy());
    env
}

async fn create(client: &Client, replica: &Replica, name: &str, dimension: u32) {
    let reply = client
        .json(
            Method::POST,
            &replica.url("/api/collections"),
            None,
            &json!({"name": name, "dimension": dimension, "metric": "cosine"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_stable_codes_and_write_nothing() {
    let dir = temp_dir("http-input");
    let mut env = sqlite_env(&dir);
    set(&mut env, "TP_MAX_BODY_BYTES", "65536");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 3).await;
    let docs = replica.url("/api/collections/docs/documents");

    let send = |content_type: &'static str, body: Vec<u8>| {
        let client = client.clone();
        let docs = docs.clone();
        async move {
            client
                .send(
                    Method::PUT,
                    &docs,
                    &[("content-type", content_type)],
                    Some(Bytes::from(body)),
                )
                .await
                .unwrap()
        }
    };
    let valid = br#"{"documents":[{"id":"a","vector":[1,2,3]}]}"#.to_vec();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("text/plain", valid.clone(), 415, "unsupported_media_type"),
        (
            "application/json",
            b"{\"documents\": [".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "application/json",
            br#"{"documents":[],"extra":1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "application/json",
            br#"{"documents":[{"id":"a","vector":[1,1e39,3]}]}"#.to_vec(),
            400,
            "invalid_vector",
        ),
        (
            "application/json",
            br#"{"documents":[{"id":"a","vector":[1,"x",3]}]}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "application/json",
            br#"{"documents":[{"id":"a","vector":[1,2]}]}"#.to_vec(),
            400,
            "dimension_mismatch",
        ),
        (
            "application/json",
            vec![b' '; 70_000],
            413,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let reply = send(content_type, body).await;
        assert_eq!(reply.status, status, "{code}: {:?}", reply.json());
        assert_eq!(reply.json()["code"], code);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }

    // A chunked body without Content-Length is cut off at the same limit.
    let mut stream = TcpStream::connect(replica.addr).unwrap();
    let mut request = format!("PUT /api/collections/docs/documents HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").into_bytes();
    for _ in 0..20 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 4096, " ".repeat(4096)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let collection = client
        .get(&replica.url("/api/collections/docs"), None)
        .await
        .json();
    assert_eq!(collection["document_count"], 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_parsed_whole_or_refused_whole() {
    let dir = temp_dir("http-large-batch");
    let env = sqlite_env(&dir);
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 64).await;
    let docs = replica.url("/api/collections/docs/documents");
    // 1000 documents of 64 floats: far past the size from which bodies
    // are parsed on the blocking pool.
    let vector_of = |i: usize| -> Vec<f32> {
        (0..64)
            .map(|d| ((i * 64 + d) % 97) as f32 / 97.0 + 0.01)
            .collect()
    };
    let documents: Vec<_> = (0..1000)
        .map(|i| json!({"id": format!("d{i}"), "vector": vector_of(i)}))
        .collect();
    let body = serde_json::to_vec(&json!({"documents": documents})).unwrap();
    assert!(body.len() > 256 * 1024, "{} bytes", body.len());
    let mut broken = body.clone();
    broken.truncate(body.len() - 3);
    let put = |body: Vec<u8>| {
        let (client, docs) = (client.clone(), docs.clone());
        async move {
            client
                .send(
                    Method::PUT,
                    &docs,
                    &[("content-type", "application/json")],
                    Some(Bytes::from(body)),
                )
                .await
                .unwrap()
        }
    };
    let refused = put(broken).await;
    assert_eq!(refused.status, 400, "{:?}", refused.json());
    assert_eq!(refused.json()["code"], "invalid_json");
    let count = async || {
        client
            .get(&replica.url("/api/collections/docs"), None)
            .await
            .json()["document_count"]
            .clone()
    };
    assert_eq!(count().await, 0);
    let stored = put(body).await;
    assert_eq!(stored.status, 200, "{:?}", stored.json());
    assert_eq!(stored.json()["upserted"], 1000);
    assert_eq!(count().await, 1000);
    let doc = client
        .get(
            &replica.url("/api/collections/docs/documents/d999?include_vector=true"),
            None,
        )
        .await;
    assert_eq!(doc.status, 200, "{:?}", doc.json());
    let stored: Vec<f32> = serde_json::from_value(doc.json()["vector"].clone()).unwrap();
    assert_eq!(stored, vector_of(999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let dir = temp_dir("inflight");
    let mut env = sqlite_env(&dir);
    set(&mut env, "TP_DRAIN_DELAY_MS", "300");
    let mut replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 3).await;

    let body =
        br#"{"documents":[{"id":"late","vector":[1,2,3],"content":"sent during shutdown"}]}"#;
    let mut stream = TcpStream::connect(replica.addr).unwrap();
    write!(
        stream,
        "PUT /api/collections/docs/documents HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..20]).unwrap();
    replica.terminate();
    // Past the drain delay the listener is closed; this request is in flight.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        TcpStream::connect(replica.addr).is_err(),
        "listener should be closed"
    );
    stream.write_all(&body[20..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with(r#"{"upserted":1}"#), "{answer}");
    let status = replica.wait(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status}");

    let replica = Replica::start(&env);
    let doc = client
        .get(&replica.url("/api/collections/docs/documents/late"), None)
        .await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["content"], "sent during shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_answers_503_with_retry_after() {
    let url = fresh_database();
    let mut env = prod_env(&url);
    set(&mut env, "DB_POOL_MIN", "1");
    set(&mut env, "DB_POOL_MAX", "1");
    set(&mut env, "DB_CONNECT_TIMEOUT", "500");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 3).await;

    // Another session holds a lock, so the replica's only connection blocks on it.
    let db = database_of(&url).to_owned();
    let locker = std::thread::spawn(move || {
        tp_tests::postgres::shared().psql(
            &db,
            "BEGIN; LOCK TABLE collections IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;",
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocked = {
        let client = client.clone();
        let url = replica.url("/api/collections");
        tokio::spawn(async move { client.get(&url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let reply = client.get(&replica.url("/api/collections"), None).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 503, "{:?}", reply.json());
    assert_eq!(reply.json()["code"], "pool_exhausted");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(waited < Duration::from_millis(1500), "waited {waited:?}");
    locker.join().unwrap();
    assert_eq!(
        blocked.await.unwrap().status,
        200,
        "the blocked request completes"
    );
    assert_eq!(
        client
            .get(&replica.url("/api/collections"), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_fails_fast_and_recovers_without_restart() {
    let cluster = PgCluster::start("outage");
    let url = cluster.create_database("tp");
    let mut env = prod_env(&url);
    set(&mut env, "DB_CONNECT_TIMEOUT", "3000");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 3).await;

    cluster.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = client
            .get(&replica.url("/api/collections/docs"), None)
            .await;
        assert_eq!(reply.status, 503, "{:?}", reply.json());
        assert_eq!(reply.json()["code"], "database_unavailable");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            started.elapsed()
        );
    }
    let health = client.get(&replica.url("/api/health"), None).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["db"]["reachable"], false);
    assert_eq!(
        client
            .get(&replica.url("/api/health/live"), None)
            .await
            .status,
        200
    );

    cluster.start_server();
    let recovered = Instant::now();
    loop {
        let reply = client
            .get(&replica.url("/api/collections/docs"), None)
            .await;
        if reply.status == 200 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "no recovery: {:?}",
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "recovered {:?} after the database came back",
        recovered.elapsed()
    );
    assert_eq!(
        client.get(&replica.url("/api/health"), None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_follows_the_promoted_standby() {
    let primary = PgCluster::start("primary");
    primary.create_database("tp");
    let standby = PgCluster::standby_of(&primary, "standby");
    // The standby is listed first: read-write must skip it while it is read-only.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/tp?target_session_attrs=read-write",
        standby.port, primary.port
    );
    let mut env = prod_env(&url);
    set(&mut env, "DB_CONNECT_TIMEOUT", "2000");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    create(&client, &replica, "docs", 3).await;
    let upsert = |id: String| {
        let client = client.clone();
        let url = replica.url("/api/collections/docs/documents");
        async move {
            client
                .json(
                    Method::PUT,
                    &url,
                    None,
                    &json!({"documents": [{"id": id, "vector": [1, 2, 3]}]}),
                )
                .await
        }
    };
    assert_eq!(upsert("before".into()).await.status, 200);

    // Replication is asynchronous here: wait until the standby has what the
    // primary acknowledged, as a failover manager would before promoting.
    primary.wait_until_replayed(&standby);
    primary.kill();
    standby.promote();
    let started = Instant::now();
    let mut failed = 0;
    loop {
        let reply = upsert(format!("after-{failed}")).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{:?}", reply.json());
        failed += 1;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no failover: {:?}",
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "failover: writes resumed {:?} after promotion ({failed} requests answered 503 meanwhile)",
        started.elapsed()
    );
    let doc = client
        .get(&replica.url("/api/collections/docs/documents/before"), None)
        .await;
    assert_eq!(doc.status, 200, "data written before the failover survives");
}
