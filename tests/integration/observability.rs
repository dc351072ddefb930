//! Prometheus metrics, correlated JSON logs, and OTLP export.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tp_tests::postgres::fresh_database;
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::tls::TestPki;
use tp_tests::{Client, temp_dir};

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_requests_pool_revocations_and_limits() {
    let env = prod_env(&fresh_database());
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let client = Client::new().with_token(&token);
    for _ in 0..5 {
        assert_eq!(
            client.get(&replica.url("/api/auth/me"), None).await.status,
            200
        );
    }
    assert_eq!(
        client
            .get(&replica.url("/api/collections/missing"), None)
            .await
            .status,
        404
    );
    // Made-up methods from anyone: one bounded label, not one series each.
    for n in 0..40 {
        let method = Method::from_bytes(format!("PROBE{n}").as_bytes()).unwrap();
        let reply = Client::new()
            .send(method, &replica.url("/api/health"), &[], None)
            .await
            .unwrap();
        assert_eq!(reply.status, 405);
    }
    let reply = Client::new().get(&replica.url("/metrics"), None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        reply.header("ratelimit-limit").is_none(),
        "scrapes are not limited"
    );
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let me = [
        "http_route=\"/api/auth/me\"",
        "http_response_status_code=\"200\"",
    ];
    assert_eq!(
        metric(&text, "http_server_requests_total", &me),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "http_server_request_duration_seconds_count", &me),
        Some(5.0)
    );
    let missing = [
        "http_route=\"/api/collections/{name}\"",
        "http_response_status_code=\"404\"",
    ];
    assert_eq!(
        metric(&text, "http_server_requests_total", &missing),
        Some(1.0)
    );
    assert!(
        !text.contains("PROBE"),
        "a method named by a client is no label"
    );
    assert_eq!(
        metric(
            &text,
            "http_server_requests_total",
            &["http_request_method=\"_OTHER\""]
        ),
        Some(40.0)
    );
    assert!(metric(&text, "tp_db_pool_connections", &["state=\"idle\""]).is_some());
    assert!(metric(&text, "tp_db_pool_waiting", &[]).is_some());
    assert_eq!(metric(&text, "tp_db_up", &[]), Some(1.0));
    assert!(metric(&text, "tp_auth_revocations", &[]).is_some());
    assert!(
        metric(
            &text,
            "tp_ratelimit_decisions_total",
            &["policy=\"user\"", "outcome=\"admitted\""]
        )
        .unwrap()
            >= 6.0
    );
    assert_eq!(
        metric(&text, "tp_ratelimit_fallbacks_total", &[]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_the_callers_trace_id() {
    let dir = temp_dir("logs");
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(&mut env, "RUST_LOG", "info,tp_http=debug");
    let replica = Replica::start(&env);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = Client::new()
        .send(
            Method::GET,
            &replica.url("/api/health/live"),
            &[
                ("x-request-id", "req-correlate-1"),
                ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let line = replica
        .logs()
        .lines()
        .find(|l| l.contains("req-correlate-1"))
        .map(str::to_owned)
        .expect("a log line for the request");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["span"]["request_id"], "req-correlate-1");
    assert_eq!(json["span"]["trace_id"], trace);
    assert_eq!(json["span"]["route"], "/api/health/live");
    // The request's last line (debug) carries its status.
    assert_eq!(json["message"], "request done", "{line}");
    assert_eq!(json["status"], 200, "{line}");
}

/// The paths a minimal OTLP/HTTP collector was sent protobuf bodies on.
type Received = Arc<Mutex<Vec<String>>>;

/// Starts a collector on 127.0.0.1, serving https with `tls` when given.
async fn collector(tls: Option<&TestPki>) -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|pki| {
        let certs = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            match acceptor.clone() {
                None => {
                    tokio::spawn(record(stream, seen));
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            record(stream, seen).await;
                        }
                    });
                }
            }
        }
    });
    (addr, received)
}

/// Serves one collector connection, recording each non-empty protobuf export.
async fn record<S>(stream: S, seen: Received)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let path = request.uri().path().to_owned();
            let is_protobuf = request
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/x-protobuf");
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if is_protobuf && !body.is_empty() {
                seen.lock().unwrap().push(path);
            }
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Waits until `received` holds both a trace and a metrics export.
async fn await_exports(replica: &Replica, received: &Received) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(
            Client::new()
                .get(&replica.url("/api/health/live"), None)
                .await
                .status,
            200
        );
        let paths = received.lock().unwrap().clone();
        if paths.iter().any(|p| p == "/v1/traces") && paths.iter().any(|p| p == "/v1/metrics") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "OTLP export not seen; got {paths:?}\n{}",
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A replica on SQLite exporting to `endpoint` every few hundred milliseconds.
fn exporting_replica(name: &str, endpoint: &str, extra: &[(&str, &str)]) -> Replica {
    let dir = temp_dir(name);
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(&mut env, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    set(&mut env, "OTEL_METRIC_EXPORT_INTERVAL", "500");
    set(&mut env, "OTEL_BSP_SCHEDULE_DELAY", "200");
    for (name, value) in extra {
        set(&mut env, name, value);
    }
    Replica::start(&env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_are_exported_over_otlp() {
    let (collector, received) = collector(None).await;
    let replica = exporting_replica("otlp", &format!("http://{collector}"), &[]);
    await_exports(&replica, &received).await;
}

/// A replica exporting to an https collector on `localhost` whose
/// certificate the test CA signed, trusting the CA `trusted` picks.
async fn https_export(name: &str, trusted: fn(&TestPki) -> &Path) -> (Replica, Received) {
    let pki = TestPki::generate(&temp_dir(&format!("{name}-pki")), None);
    let (collector, received) = collector(Some(&pki)).await;
    let endpoint = format!("https://localhost:{}", collector.port());
    let ca = trusted(&pki).display().to_string();
    let replica = exporting_replica(name, &endpoint, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)]);
    (replica, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_exports_over_https_to_a_verified_collector() {
    let (replica, received) = https_export("otlp-https", |pki| &pki.ca).await;
    await_exports(&replica, &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_refuses_a_collector_its_ca_did_not_sign() {
    let (replica, received) = https_export("otlp-https-other", |pki| &pki.other_ca).await;
    Client::new()
        .get(&replica.url("/api/health/live"), None)
        .await;
    assert!(
        replica.wait_for_log("ExportError", Duration::from_secs(15)),
        "an unverified collector went unreported:\n{}",
        replica.logs()
    );
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing reaches a collector that failed verification"
    );
}

#[test]
fn a_half_configured_otlp_client_certificate_is_a_config_error() {
    let dir = temp_dir("otlp-half-identity");
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(
        &mut env,
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "https://localhost:4318",
    );
    set(
        &mut env,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "/nonexistent.crt",
    );
    let Err(failed) = Replica::try_start(&env, &dir) else {
        panic!("a client certificate without its key was accepted");
    };
    assert!(
        failed.output.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "{}",
        failed.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_move_off_the_api_port() {
    let mut env = prod_env(&fresh_database());
    let port = tp_tests::free_port();
    set(&mut env, "TP_METRICS_ADDR", &format!("127.0.0.1:{port}"));
    let replica = Replica::start(&env);
    let client = Client::new();
    assert_eq!(
        client.get(&replica.url("/api/health"), None).await.status,
        200
    );
    let public = client.get(&replica.url("/metrics"), None).await;
    assert_eq!(public.status, 404, "not on the API port");
    assert_eq!(public.json()["code"], "metrics_elsewhere");
    let scraped = client
        .get(&format!("http://127.0.0.1:{port}/metrics"), None)
        .await;
    assert_eq!(scraped.status, 200);
    let text = String::from_utf8_lossy(&scraped.body);
    assert!(text.contains("http_server_requests_total"), "{text}");
    let other = client
        .get(&format!("http://127.0.0.1:{port}/api/health"), None)
        .await;
    assert_eq!(
        other.status, 404,
        "the metrics listener serves nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_otlp_export_is_logged() {
    let closed = tp_tests::free_port();
    let replica = exporting_replica("otlp-down", &format!("http://127.0.0.1:{closed}"), &[]);
    for _ in 0..5 {
        Client::new()
            .get(&replica.url("/api/health/live"), None)
            .await;
    }
    assert!(
        replica.wait_for_log("ExportError", Duration::from_secs(15)),
        "a failing collector went unreported:\n{}",
        replica.logs()
    );
    assert_eq!(
        Client::new()
            .get(&replica.url("/api/health/live"), None)
            .await
            .status,
        200,
        "serving goes on"
    );
}

#[test]
fn a_signal_timeout_that_is_not_milliseconds_is_a_config_error() {
    let dir = temp_dir("otlp-bad-timeout");
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(
        &mut env,
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://127.0.0.1:4318",
    );
    set(&mut env, "OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
    set(&mut env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon");
    let Err(failed) = Replica::try_start(&env, &dir) else {
        panic!("a traces timeout of \"soon\" was accepted");
    };
    assert!(
        failed.output.contains("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        "{}",
        failed.output
    );
}
