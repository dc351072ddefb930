//! PostgreSQL over TLS with libpq's `sslmode` semantics, against Debian's
//! PostgreSQL 15 (built with TLS) whose `pg_hba.conf` admits TLS only; and
//! connect errors that say why.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use tp_core::Config;
use tp_core::db::{Database, DbProbe};
use tp_tests::postgres::{TLS_PASSWORD, TLS_USER};
use tp_tests::replica::{ENCRYPTION_KEY, JWT_SECRET};
use tp_tests::tls::TestPki;
use tp_tests::{PgCluster, free_port};

/// One TLS cluster for every test here: started once per test binary.
fn server() -> &'static (PgCluster, TestPki) {
    static SERVER: OnceLock<(PgCluster, TestPki)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (cluster, pki) = PgCluster::start_tls("tls");
        (cluster.until_exit(), pki)
    })
}

fn env_for(url: &str) -> BTreeMap<String, String> {
    [
        ("TENANT_ID", "acme-corp"),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("TENANT_PLANE_DATABASE_URL", url),
        ("DB_CONNECT_TIMEOUT", "3000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Opens a pool on `url` and runs one health probe.
async fn probe(url: &str) -> DbProbe {
    let config = Config::from_env(&env_for(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
    let db = Database::open(&config.database).expect("pool");
    db.probe(Duration::from_secs(5)).await
}

/// A URL for the password role; `host` is `localhost` or `127.0.0.1`.
fn url(host: &str, query: &str) -> String {
    let (cluster, _) = server();
    format!(
        "postgresql://{TLS_USER}:{TLS_PASSWORD}@{host}:{}/tp?{query}",
        cluster.port
    )
}

fn assert_reachable(url: &str, probe: &DbProbe) {
    assert!(
        probe.reachable,
        "{url}: {:?}\n{}",
        probe.error,
        server().0.log()
    );
}

fn assert_refused_with(url: &str, probe: &DbProbe, words: &str) {
    assert!(!probe.reachable, "{url} connected");
    let error = probe.error.as_deref().unwrap_or_default();
    assert!(error.contains(words), "{url}: {error:?} lacks {words:?}");
    assert!(
        !error.contains(TLS_PASSWORD),
        "the password leaked: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_connects_or_refuses_as_libpq_does() {
    let (_, pki) = server();
    let ca = pki.ca.display();
    let other = pki.other_ca.display();
    for (host, query) in [
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        // verify-ca checks the chain only: the certificate names localhost.
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        // require and prefer (the default) encrypt without verifying.
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", String::new()),
        ("127.0.0.1", format!("sslmode=require&sslrootcert={ca}")),
    ] {
        let url = url(host, &query);
        assert_reachable(&url, &probe(&url).await);
    }
    for (host, query, words) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "does not match the host name",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            "not trusted",
        ),
        // libpq: require with a root file verifies the chain.
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            "not trusted",
        ),
        ("127.0.0.1", "sslmode=disable".to_owned(), "requires TLS"),
    ] {
        let url = url(host, &query);
        assert_refused_with(&url, &probe(&url).await, words);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate() {
    let (cluster, pki) = server();
    let base = format!(
        "postgresql://{}@localhost:{}/tp?sslmode=verify-full&sslrootcert={}",
        pki.client_cn,
        cluster.port,
        pki.ca.display()
    );
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    assert_reachable(&with_cert, &probe(&with_cert).await);
    assert_refused_with(&base, &probe(&base).await, "certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_urls_verify_each_host() {
    let (cluster, pki) = server();
    let closed = free_port();
    let url = format!(
        "postgresql://{TLS_USER}:{TLS_PASSWORD}@localhost:{closed},localhost:{}/tp\
         ?sslmode=verify-full&sslrootcert={}&target_session_attrs=read-write",
        cluster.port,
        pki.ca.display()
    );
    assert_reachable(&url, &probe(&url).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_say_why() {
    let (cluster, pki) = server();
    let tls = format!("sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let port = cluster.port;
    let closed = free_port();
    for (url, words) in [
        (
            format!("postgresql://{TLS_USER}:wrong-password-x@localhost:{port}/tp?{tls}"),
            "password authentication failed for user \"app\"",
        ),
        (
            format!("postgresql://{TLS_USER}:{TLS_PASSWORD}@localhost:{port}/nope?{tls}"),
            "database \"nope\" does not exist",
        ),
        (
            format!("postgresql://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{closed}/tp"),
            &format!("connection refused at 127.0.0.1:{closed}"),
        ),
        (
            format!("postgresql://{TLS_USER}:{TLS_PASSWORD}@no-such-host.invalid:{port}/tp"),
            "DNS name not found: no-such-host.invalid",
        ),
    ] {
        assert_refused_with(&url, &probe(&url).await, words);
    }
}

#[test]
fn bad_tls_parameters_stop_the_start_naming_the_variable() {
    for (query, words) in [
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
            "/nonexistent/ca.crt",
        ),
        ("sslmode=sometimes", "sslmode must be"),
        ("sslmode=verify-full", "needs sslrootcert"),
        ("sslcert=/tmp/c.crt", "sslcert and sslkey"),
    ] {
        let url = format!("postgresql://{TLS_USER}:{TLS_PASSWORD}@localhost:5432/tp?{query}");
        let error = Config::from_env(&env_for(&url)).unwrap_err().to_string();
        assert!(
            error.starts_with("TENANT_PLANE_DATABASE_URL") && error.contains(words),
            "{query}: {error}"
        );
        assert!(!error.contains(TLS_PASSWORD), "{error}");
    }
}

#[test]
fn config_check_probe_reports_each_service() {
    let (cluster, pki) = server();
    let tls = format!("sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let port = cluster.port;
    let env_of = |url: &str, redis: Option<(&str, &str)>| {
        let mut env: Vec<(String, String)> = env_for(url).into_iter().collect();
        // The schema is not there (no pgvector in this build): not a failure.
        env.push(("TP_AUTO_MIGRATE".into(), "false".into()));
        if let Some((url, ca)) = redis {
            env.push(("REDIS_URL".into(), url.into()));
            env.push(("TP_REDIS_CA_FILE".into(), ca.into()));
        }
        env
    };
    let probe = |env: &[(String, String)]| {
        let out = tp_tests::replica::run(
            &["config", "check", "--probe"],
            env,
            std::path::Path::new("/tmp"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!stdout.contains(TLS_PASSWORD), "{stdout}");
        (out.status.code(), stdout)
    };
    let good = format!("postgresql://{TLS_USER}:{TLS_PASSWORD}@localhost:{port}/tp?{tls}");
    let (code, out) = probe(&env_of(&good, None));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("probe database (PostgreSQL): ok"), "{out}");
    assert!(out.contains("probe redis: not configured"), "{out}");

    let wrong = format!("postgresql://{TLS_USER}:not-the-password@localhost:{port}/tp?{tls}");
    let redis = tp_tests::RedisServer::start_tls(pki, false);
    let other_ca = pki.other_ca.to_string_lossy().into_owned();
    let (code, out) = probe(&env_of(&wrong, Some((&redis.tls_url(), &other_ca))));
    assert_eq!(code, Some(69), "{out}");
    assert!(
        out.contains(
            "probe database (PostgreSQL): FAILED: password authentication failed for user \"app\""
        ),
        "{out}"
    );
    assert!(out.contains("probe redis: FAILED:"), "{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
}
