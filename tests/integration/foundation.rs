//! The embedded single-replica plane: health, config errors, draining, limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, temp_dir};

fn dev_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "TP_DATA_DIR".into(),
            dir.join("data").to_string_lossy().into_owned(),
        ),
        ("PORT".into(), "0".into()),
        ("TP_LOG_FORMAT".into(), "json".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_spec_health_json() {
    let dir = temp_dir("dev");
    let replica = Replica::try_start(&dev_env(&dir), &dir).expect("dev mode starts");
    assert!(replica.addr.ip().is_loopback(), "dev mode binds loopback");
    let client = Client::new();

    let reply = client.get(&replica.url("/api/health"), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.len() == 32)
    );
    let health = reply.json();
    let timestamp = health["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[19] == b'.',
        "{timestamp}"
    );
    assert!(health["uptime_seconds"].is_u64());
    insta::assert_json_snapshot!("dev_health", health, {
        ".timestamp" => "[timestamp]",
        ".uptime_seconds" => "[uptime]",
        ".version" => "[version]",
    });
    let keys: Vec<&str> = health
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for required in [
        "status",
        "plane",
        "version",
        "uptime_seconds",
        "db",
        "vector_db",
        "timestamp",
    ] {
        assert!(keys.contains(&required), "{required} missing from {keys:?}");
    }

    assert_eq!(
        client
            .get(&replica.url("/api/health/live"), None)
            .await
            .status,
        200
    );
    let ready = client.get(&replica.url("/api/health/ready"), None).await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());

    // The API describes itself, without credentials.
    let openapi = client.get(&replica.url("/api/openapi.json"), None).await;
    assert_eq!(openapi.status, 200);
    let openapi = openapi.json();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert_eq!(
        openapi["paths"]["/api/collections/{name}/search"]["post"]["x-required-role"],
        "viewer"
    );

    let secrets = dir.join("data/dev-secrets.env");
    let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let logs = replica.logs();
    assert!(logs.contains("DEV MODE"), "{logs}");
    let secret_text = std::fs::read_to_string(&secrets).unwrap();
    let jwt = secret_text
        .lines()
        .find_map(|l| l.strip_prefix("JWT_SECRET="))
        .unwrap();
    assert!(!logs.contains(jwt), "dev secret leaked into logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_errors_are_problem_json() {
    let dir = temp_dir("dev");
    let replica = Replica::try_start(&dev_env(&dir), &dir).expect("start");
    let client = Client::new();
    let reply = client
        .send(
            http::Method::GET,
            &replica.url("/api/nowhere"),
            &[("x-request-id", "trace-42")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-request-id"), Some("trace-42"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    insta::assert_json_snapshot!("not_found_problem", reply.json());

    let reply = client
        .send(
            http::Method::DELETE,
            &replica.url("/api/health"),
            &[("x-request-id", "trace-43")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    assert_eq!(reply.json()["status"], 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_before_binding_and_names_the_variable() {
    let cases = [
        ("DB_POOL_MAX", "lots", "DB_POOL_MAX: must be a whole number"),
        (
            "DB_POOL_MAX",
            "0",
            "DB_POOL_MAX: must be between 1 and 1000",
        ),
        (
            "JWT_SECRET",
            "too-short-secret",
            "JWT_SECRET: must be at least 32 bytes",
        ),
        (
            "ENCRYPTION_KEY",
            "not-hex",
            "ENCRYPTION_KEY: must be 64 hex characters",
        ),
        (
            "ENCRYPTION_KEY",
            &"zz".repeat(32),
            "ENCRYPTION_KEY: must be 64 hex characters",
        ),
        (
            "TENANT_PLANE_DATABASE_URL",
            "mysql://root:hunter2@db/x",
            "TENANT_PLANE_DATABASE_URL: must start with",
        ),
        (
            "DB_CONNECT_TIMEOUT",
            "soon",
            "DB_CONNECT_TIMEOUT: must be a whole number",
        ),
        // Read before the runtime is built, with the same one-line error.
        (
            "TP_WORKER_THREADS",
            "0",
            "TP_WORKER_THREADS: must be between 1 and 1024",
        ),
    ];
    let dir = temp_dir("config");
    for (var, value, expected) in cases {
        let mut env = prod_env("postgresql://postgres@127.0.0.1:1/none");
        set(&mut env, "PORT", "1"); // a bind attempt would fail differently
        set(&mut env, var, value);
        let failure = match Replica::try_start(&env, &dir) {
            Ok(_) => panic!("{var}={value} was accepted"),
            Err(f) => f,
        };
        assert_eq!(failure.status.code(), Some(64), "{var}: {}", failure.output);
        let output = failure.output.trim();
        assert_eq!(output.lines().count(), 1, "one line expected: {output}");
        assert!(output.contains(expected), "{var}: {output}");
        assert!(
            !output.contains("hunter2") && !output.contains("too-short-secret"),
            "secret in {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_keeps_serving_then_exits_zero() {
    let dir = temp_dir("drain");
    let mut env = dev_env(&dir);
    env.push(("TP_DRAIN_DELAY_MS".into(), "1500".into()));
    let mut replica = Replica::try_start(&env, &dir).expect("start");
    let client = Client::new();
    assert_eq!(
        client.get(&replica.url("/api/health"), None).await.status,
        200
    );

    let signalled = Instant::now();
    replica.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = client.get(&replica.url("/api/health"), None).await;
    assert_eq!(
        health.status, 503,
        "readiness must fail at once while draining"
    );
    assert_eq!(health.header("connection"), Some("close"));
    let body = health.json();
    assert_eq!(body["draining"], true);
    assert_eq!(body["status"], "degraded");
    assert_eq!(
        client
            .get(&replica.url("/api/health/ready"), None)
            .await
            .status,
        503
    );
    assert_eq!(
        client
            .get(&replica.url("/api/health/live"), None)
            .await
            .status,
        200,
        "still serving"
    );

    let status = replica
        .wait(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "exited before the drain delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_clients_are_disconnected() {
    let dir = temp_dir("slow");
    let mut env = dev_env(&dir);
    env.push(("TP_HEADER_READ_TIMEOUT_MS".into(), "300".into()));
    let replica = Replica::try_start(&env, &dir).expect("start");

    // Headers never finished.
    let mut slow = TcpStream::connect(replica.addr).unwrap();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_closed_within(&mut slow, Duration::from_secs(3));

    // Nothing sent at all.
    let mut silent = TcpStream::connect(replica.addr).unwrap();
    assert_closed_within(&mut silent, Duration::from_secs(3));

    // A prompt client on the same server is served.
    let reply = Client::new()
        .get(&replica.url("/api/health/live"), None)
        .await;
    assert_eq!(reply.status, 200);
}

fn assert_closed_within(stream: &mut TcpStream, limit: Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open after {:?}: {e}", started.elapsed()),
        }
    }
    assert!(started.elapsed() < limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_the_same_sqlite_file_is_refused() {
    let dir = temp_dir("lock");
    let db = dir.join("tp.db");
    let mut env = prod_env(&format!("sqlite://{}", db.display()));
    set(&mut env, "TP_DATA_DIR", &dir.to_string_lossy());
    let first = Replica::start(&env);
    let failure = match Replica::try_start(&env, &dir) {
        Ok(_) => panic!("two replicas on one SQLite file"),
        Err(f) => f,
    };
    assert!(!failure.status.success());
    assert!(
        failure
            .output
            .contains("another tenant-plane process is using"),
        "{}",
        failure.output
    );
    let reply = Client::new().get(&first.url("/api/health"), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["vector_db"], "embedded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_gets_408_problem_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = tp_tests::replica::prod_env(&tp_tests::postgres::fresh_database());
    tp_tests::replica::set(&mut env, "TP_BODY_READ_TIMEOUT_MS", "500");
    let replica = tp_tests::Replica::start(&env);
    let mut stream = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    // Headers promise 100 bytes; 10 come, then nothing.
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"username",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut reply),
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert!(read.is_ok(), "no answer within 10 s");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = tp_tests::replica::prod_env(&tp_tests::postgres::fresh_database());
    tp_tests::replica::set(&mut env, "TP_MAX_CONNECTIONS", "2");
    let replica = tp_tests::Replica::start(&env);
    const GET: &[u8] = b"GET /api/health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    async fn answered(stream: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0u8; 512];
        if stream.write_all(GET).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200")
        )
    }
    // Two keep-alive connections hold both slots.
    let mut first = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    assert!(answered(&mut first).await);
    assert!(answered(&mut second).await);
    let mut third = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    assert!(!answered(&mut third).await, "a third connection is closed");
    // A slot freed is a slot taken again.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut again = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
        if answered(&mut again).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answered(&mut second).await, "open connections keep working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_problem_json() {
    let env = tp_tests::replica::prod_env(&tp_tests::postgres::fresh_database());
    let replica = tp_tests::Replica::start(&env);
    let client = tp_tests::Client::new();
    let long = format!("/api/collections/{}", "a".repeat(9000));
    let reply = client.get(&replica.url(&long), None).await;
    assert_eq!(reply.status, 414);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.json()["code"], "uri_too_long");
    let big = "b".repeat(40 * 1024);
    let reply = client
        .send(
            http::Method::GET,
            &replica.url("/api/health/live"),
            &[("x-padding", big.as_str())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 431);
    assert_eq!(reply.json()["code"], "headers_too_large");
}
