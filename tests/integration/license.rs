//! The license, end to end: the binary refuses to start without a valid
//! one, serves through the grace period with health degraded, refuses API
//! calls after it (health still answers), notices expiry while running, and
//! `license inspect` never prints the key. The table of malicious keys runs
//! in tp-core's unit tests; here a few go through the real start.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tp_tests::replica::{Replica, prod_env, run, set};
use tp_tests::{Client, temp_dir};

const PRIVATE: &str = include_str!("../fixtures/license-test-private.pem");
const PUBLIC: &str = include_str!("../fixtures/license-test-public.pem");
const OTHER_PRIVATE: &str = include_str!("../fixtures/license-other-private.pem");
const DAY: i64 = 86_400;

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims(exp: i64) -> Value {
    json!({
        "tid": "acme-corp", "sub": "Acme Corp", "iat": now() - 30 * DAY, "exp": exp,
        "plan": "enterprise", "features": ["sso"], "max_replicas": 3, "iss": "atlasai", "jti": "lic-7",
    })
}

fn sign(header: &Value, claims: &Value, pem: &str, alg: Algorithm) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let message = format!("{}.{}", b64(header), b64(claims));
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
    format!("{message}.{signature}")
}

fn license(claims: &Value) -> String {
    sign(
        &json!({ "alg": "RS256", "typ": "JWT" }),
        claims,
        PRIVATE,
        Algorithm::RS256,
    )
}

/// A production environment with this license, the public key given the
/// way the operator guide's .env does (one line, `\n` escapes).
fn licensed_env(key: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let dir = temp_dir("license");
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(&mut env, "ATLASAI_LICENSE_KEY", key);
    set(
        &mut env,
        "CP_LICENSE_PUBLIC_KEY",
        &PUBLIC.trim().replace('\n', "\\n"),
    );
    set(&mut env, "TP_LICENSE_REQUIRED", "true");
    for (k, v) in extra {
        set(&mut env, k, v);
    }
    env
}

/// An admin token made by the CLI (login itself is an API call the license gates).
fn cli_admin_token(env: &[(String, String)]) -> String {
    let mut env = env.to_vec();
    set(
        &mut env,
        "TP_USER_PASSWORD",
        tp_tests::replica::ADMIN_PASSWORD,
    );
    let created = run(
        &["user", "create", "--username", "root", "--admin"],
        &env,
        Path::new("/tmp"),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = run(
        &["token", "create", "--username", "root"],
        &env,
        Path::new("/tmp"),
    );
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let pair: Value = serde_json::from_slice(&token.stdout).unwrap();
    pair["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_license_is_reported_and_never_shown() {
    let key = license(&claims(now() + 90 * DAY));
    let env = licensed_env(&key, &[]);
    let replica = Replica::start(&env);
    let token = cli_admin_token(&env);
    let client = Client::new().with_token(&token);

    let shown = client.get(&replica.url("/api/license"), None).await;
    assert_eq!(shown.status, 200, "{:?}", shown.json());
    let shown = shown.json();
    assert_eq!(shown["state"], "valid");
    assert_eq!(shown["plan"], "enterprise");
    assert_eq!(shown["max_replicas"], 3);
    assert!(
        (88..=90).contains(&shown["days_left"].as_i64().unwrap()),
        "{shown}"
    );
    let health = Client::new()
        .get(&replica.url("/api/health"), None)
        .await
        .json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["license"]["state"], "valid", "{health}");

    // The key is in no response and no log line.
    let signature = key.rsplit('.').next().unwrap();
    assert!(!shown.to_string().contains(signature) && !health.to_string().contains(signature));
    assert!(
        !replica.logs().contains(signature),
        "the license key was logged"
    );
    let viewer = replica.login_as(&env, "vic", "viewer").await;
    let viewer = viewer["access_token"].as_str().unwrap();
    assert_eq!(
        Client::new()
            .get(&replica.url("/api/license"), Some(viewer))
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_missing_licenses_stop_the_start_with_one_clear_line() {
    let good_claims = claims(now() + 90 * DAY);
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let mut globex = good_claims.clone();
    globex["tid"] = json!("globex");
    let other_tenant = license(&globex);
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "another RSA key",
            sign(&header, &good_claims, OTHER_PRIVATE, Algorithm::RS256),
            77,
            "signature does not verify",
        ),
        (
            "HS256 with the public key as secret",
            sign(
                &json!({"alg": "HS256"}),
                &good_claims,
                PUBLIC,
                Algorithm::HS256,
            ),
            77,
            "ATLASAI_LICENSE_KEY",
        ),
        ("another tenant", other_tenant, 77, "tenant"),
        ("not a JWT", "hello".to_owned(), 77, "ATLASAI_LICENSE_KEY"),
    ];
    for (what, key, code, says) in cases {
        let env = licensed_env(&key, &[]);
        let failure = match Replica::try_start(&env, &temp_dir("license-bad")) {
            Ok(_) => panic!("{what}: started"),
            Err(f) => f,
        };
        assert_eq!(
            failure.status.code(),
            Some(code),
            "{what}: {}",
            failure.output
        );
        let errors: Vec<&str> = failure
            .output
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: {}", failure.output);
        assert!(errors[0].contains(says), "{what}: {}", errors[0]);
        let signature = key.rsplit('.').next().unwrap();
        assert!(
            signature.len() < 8 || !failure.output.contains(signature),
            "{what}: the key was printed"
        );
    }

    // Required but missing: a configuration error naming the variable.
    let mut env = licensed_env("x", &[]);
    env.retain(|(k, _)| k != "ATLASAI_LICENSE_KEY");
    let failure = Replica::try_start(&env, &temp_dir("license-missing"))
        .err()
        .expect("started without a license");
    assert_eq!(failure.status.code(), Some(64), "{}", failure.output);
    assert!(
        failure.output.contains("ATLASAI_LICENSE_KEY"),
        "{}",
        failure.output
    );

    // A bad public key names its variable too.
    let env = licensed_env(
        &license(&good_claims),
        &[(
            "CP_LICENSE_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----",
        )],
    );
    let failure = Replica::try_start(&env, &temp_dir("license-pem"))
        .err()
        .expect("started with a bad public key");
    assert_eq!(failure.status.code(), Some(64), "{}", failure.output);
    assert!(
        failure.output.contains("CP_LICENSE_PUBLIC_KEY"),
        "{}",
        failure.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_license_serves_through_grace_then_refuses_api_calls_but_not_health() {
    // Expired two days ago, 14 days of grace: serving, degraded, 12 days left.
    let env = licensed_env(&license(&claims(now() - 2 * DAY)), &[]);
    let replica = Replica::start(&env);
    let token = cli_admin_token(&env);
    let health = Client::new().get(&replica.url("/api/health"), None).await;
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["license"]["state"], "grace");
    assert!(
        (11..=12).contains(&health["license"]["days_left"].as_i64().unwrap()),
        "{health}"
    );
    assert_eq!(
        Client::new()
            .get(&replica.url("/api/collections"), Some(&token))
            .await
            .status,
        200
    );
    drop(replica);

    // Past the grace period: API refused with a clear problem, health answers.
    let env = licensed_env(&license(&claims(now() - 20 * DAY)), &[]);
    let replica = Replica::start(&env);
    let token = cli_admin_token(&env);
    let refused = Client::new()
        .get(&replica.url("/api/collections"), Some(&token))
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    let problem = refused.json();
    assert_eq!(problem["code"], "license_expired", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("grace period ended"),
        "{problem}"
    );
    let login = Client::new()
        .json(
            http::Method::POST,
            &replica.url("/api/auth/login"),
            None,
            &json!({"username": "root", "password": "x"}),
        )
        .await;
    assert_eq!(login.json()["code"], "license_expired");
    for path in ["/api/health", "/api/health/live", "/api/health/ready"] {
        assert_eq!(
            Client::new().get(&replica.url(path), None).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        Client::new()
            .get(&replica.url("/metrics"), None)
            .await
            .status,
        200
    );
    let shown = Client::new()
        .get(&replica.url("/api/license"), Some(&token))
        .await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["state"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_notices_expiry_without_a_restart() {
    let env = licensed_env(
        &license(&claims(now() + 4)),
        &[("TP_LICENSE_GRACE_DAYS", "0")],
    );
    let replica = Replica::start(&env);
    let token = cli_admin_token(&env);
    let client = Client::new().with_token(&token);
    assert_eq!(
        client
            .get(&replica.url("/api/collections"), None)
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client.get(&replica.url("/api/collections"), None).await;
        if reply.status == 403 {
            assert_eq!(reply.json()["code"], "license_expired");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still serving after expiry"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        replica.wait_for_log("API calls are refused", Duration::from_secs(5)),
        "expiry not logged"
    );
}

#[test]
fn license_inspect_prints_claims_and_exit_codes_never_the_key() {
    let key = license(&claims(now() + 30 * DAY));
    let dir = temp_dir("inspect");
    std::fs::write(dir.join("license.jwt"), &key).unwrap();
    std::fs::write(dir.join("public.pem"), PUBLIC).unwrap();
    let files = [
        "license",
        "inspect",
        "--key-file",
        "license.jwt",
        "--public-key-file",
        "public.pem",
    ];
    let out = run(&files, &[("TENANT_ID".into(), "acme-corp".into())], &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["state"], "valid");
    assert_eq!(report["claims"]["plan"], "enterprise");
    assert_eq!(report["signature"]["verified"], true);
    assert!(
        !stdout.contains(key.rsplit('.').next().unwrap()),
        "inspect printed the key"
    );

    // From the environment, with the wrong tenant: refused, naming the variable.
    let env: Vec<(String, String)> = vec![
        ("ATLASAI_LICENSE_KEY".into(), key.clone()),
        (
            "CP_LICENSE_PUBLIC_KEY".into(),
            PUBLIC.trim().replace('\n', "\\n"),
        ),
        ("TENANT_ID".into(), "globex".into()),
    ];
    let out = run(&["license", "inspect"], &env, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("ATLASAI_LICENSE_KEY") && stderr.contains("globex"),
        "{stderr}"
    );
    assert!(!stderr.contains(key.rsplit('.').next().unwrap()));

    // Nothing to inspect.
    let out = run(&["license", "inspect"], &[], &dir);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ATLASAI_LICENSE_KEY: is not set"));
}
