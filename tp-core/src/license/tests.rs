//! License verification against committed test-only keys
//! (`tests/fixtures`, made once with openssl: no RSA key generation here).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};

use super::*;

const PRIVATE: &str = include_str!("../../../tests/fixtures/license-test-private.pem");
const PUBLIC: &str = include_str!("../../../tests/fixtures/license-test-public.pem");
const PUBLIC_PKCS1: &str = include_str!("../../../tests/fixtures/license-test-public-pkcs1.pem");
const OTHER_PRIVATE: &str = include_str!("../../../tests/fixtures/license-other-private.pem");

const TENANT: &str = "acme-corp";
const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
const GRACE: Duration = Duration::from_secs(14 * 86_400);

static SIGNING: LazyLock<EncodingKey> =
    LazyLock::new(|| EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).unwrap());
static OTHER: LazyLock<EncodingKey> =
    LazyLock::new(|| EncodingKey::from_rsa_pem(OTHER_PRIVATE.as_bytes()).unwrap());
static KEY: LazyLock<LicensePublicKey> =
    LazyLock::new(|| LicensePublicKey::from_pem(PUBLIC).unwrap());
/// The one valid license most tests share: RS256 signing is slow in debug builds.
static VALID: LazyLock<String> = LazyLock::new(|| rs256(rs256_header(), claims()));

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A token with exactly this header and these claims, signed with `alg`.
fn signed(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let started = Instant::now();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    eprintln!("signed {alg:?} in {} ms", started.elapsed().as_millis());
    format!("{message}.{signature}")
}

fn rs256(header: Value, claims: Value) -> String {
    signed(&header, &claims, &SIGNING, Algorithm::RS256)
}

fn rs256_header() -> Value {
    json!({ "alg": "RS256", "typ": "JWT", "kid": "test-2026" })
}

fn claims() -> Value {
    json!({
        "tid": TENANT,
        "sub": "Acme Corp",
        "iat": NOW - 30 * DAY,
        "exp": NOW + 100 * DAY,
        "plan": "enterprise",
        "features": ["sso", "audit"],
        "max_replicas": 5,
        "iss": "atlasai",
        "jti": "lic-0001",
    })
}

fn with(mut value: Value, key: &str, field: Value) -> Value {
    value[key] = field;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

fn verify(token: &str) -> Result<License> {
    License::verify(token, &KEY, Some(TENANT), NOW)
}

/// Swaps one part of a token (0 header, 1 claims, 2 signature).
fn replace_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

#[test]
fn valid_license_verifies_with_both_pem_forms() {
    let escaped = PUBLIC.trim().replace('\n', "\\n");
    for pem in [PUBLIC, PUBLIC_PKCS1, escaped.as_str()] {
        let key = LicensePublicKey::from_pem(pem).unwrap();
        assert_eq!(key.bits(), 2048);
        let started = Instant::now();
        let license = License::verify(&VALID, &key, Some(TENANT), NOW).unwrap();
        eprintln!("verified in {} ms", started.elapsed().as_millis());
        assert_eq!(license.tid, TENANT);
        assert_eq!(license.sub.as_deref(), Some("Acme Corp"));
        assert_eq!(license.plan, "enterprise");
        assert_eq!(license.features, ["sso", "audit"]);
        assert_eq!(license.max_replicas, Some(5));
        assert_eq!(license.iss.as_deref(), Some("atlasai"));
        assert_eq!(license.exp, NOW + 100 * DAY);
        assert_eq!(
            license.state_at(NOW, GRACE),
            LicenseState::Valid { days_left: 100 }
        );
    }
    // Optional claims may be absent; features default to none.
    let minimal = json!({ "tid": TENANT, "iat": NOW, "exp": NOW + DAY, "plan": "basic" });
    let license = verify(&rs256(json!({ "alg": "RS256" }), minimal)).unwrap();
    assert!(license.features.is_empty());
    assert_eq!(license.sub, None);
}

#[test]
fn states_follow_the_clock() {
    let license = verify(&VALID).unwrap();
    let exp = license.exp;
    let cases = [
        (exp - 10 * DAY - 1, LicenseState::Valid { days_left: 10 }),
        (exp - 1, LicenseState::Valid { days_left: 0 }),
        (exp, LicenseState::Grace { days_left: 14 }),
        (exp + DAY + 1, LicenseState::Grace { days_left: 12 }),
        (exp + 14 * DAY - 1, LicenseState::Grace { days_left: 0 }),
        (exp + 14 * DAY, LicenseState::Expired),
        (exp + 400 * DAY, LicenseState::Expired),
    ];
    for (now, expected) in cases {
        assert_eq!(
            license.state_at(now, GRACE),
            expected,
            "at exp{:+}",
            now - exp
        );
    }
    assert_eq!(license.state_at(exp, Duration::ZERO), LicenseState::Expired);
}

#[test]
fn monitor_gates_and_reports_health() {
    let license = verify(&VALID).unwrap();
    let exp = license.exp;
    let monitor = LicenseMonitor::licensed(license, GRACE, true);

    let health = monitor.health_at(NOW);
    assert_eq!(health.status, Status::Ok);
    assert_eq!(health.detail["state"], "valid");
    assert_eq!(health.detail["days_left"], 100);
    assert_eq!(health.detail["plan"], "enterprise");
    assert_eq!(health.detail["tenant"], TENANT);
    assert_eq!(health.detail["expires_at"], rfc3339_secs(exp));
    assert!(monitor.gate_at(NOW).is_ok());

    // Expired within grace: serves, degraded, with the days of grace left.
    let health = monitor.health_at(exp + 4 * DAY);
    assert_eq!(health.status, Status::Degraded);
    assert_eq!(health.detail["state"], "grace");
    assert_eq!(health.detail["days_left"], 10);
    assert!(monitor.gate_at(exp + 4 * DAY).is_ok());

    // Past grace: API refused with a clear code, health still answers.
    let err = monitor.gate_at(exp + 15 * DAY).unwrap_err();
    assert_eq!(err.code(), "license_expired");
    assert_eq!(err.kind(), crate::error::ErrorKind::LicenseRequired);
    assert!(err.to_string().contains("grace period ended"), "{err}");
    let health = monitor.health_at(exp + 15 * DAY);
    assert_eq!(health.status, Status::Degraded);
    assert_eq!(health.detail["state"], "expired");
    assert_eq!(health.detail["days_left"], 0);

    let summary = monitor.summary_at(exp + 4 * DAY);
    assert_eq!(summary["state"], "grace");
    assert_eq!(summary["licensed"], true);
    assert_eq!(summary["required"], true);
    assert_eq!(summary["features"], json!(["sso", "audit"]));
    assert_eq!(summary["grace_days"], 14);
    assert!(!summary.to_string().contains(VALID.as_str()));
}

#[test]
fn unlicensed_mode_allows_everything() {
    let monitor = LicenseMonitor::unlicensed(TENANT);
    assert_eq!(monitor.state_at(NOW), None);
    assert!(monitor.gate_at(i64::MAX).is_ok());
    let health = monitor.check();
    assert_eq!(monitor.name(), "license");
    assert_eq!(health.status, Status::Ok);
    assert_eq!(health.detail["state"], "unlicensed");
    let summary = monitor.summary();
    assert_eq!(summary["state"], "unlicensed");
    assert_eq!(summary["licensed"], false);
}

fn config(extra: &[(&str, &str)]) -> Config {
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut env = BTreeMap::from([
        (vars::TENANT_ID, TENANT),
        (vars::JWT_SECRET, secret),
        (vars::ENCRYPTION_KEY, secret),
        (vars::DATABASE_URL, "postgresql://u:pw@db:5432/atlas"),
    ]);
    env.extend(extra.iter().copied());
    Config::from_env(&env).unwrap()
}

#[test]
fn from_config_modes() {
    let escaped = PUBLIC.trim().replace('\n', "\\n");
    let cfg = config(&[
        (vars::LICENSE_KEY, VALID.as_str()),
        (vars::LICENSE_PUBLIC_KEY, &escaped),
        (vars::LICENSE_GRACE_DAYS, "7"),
    ]);
    let monitor = LicenseMonitor::from_config_at(&cfg, NOW).unwrap();
    assert_eq!(
        monitor.state_at(NOW),
        Some(LicenseState::Valid { days_left: 100 })
    );
    // A license found expired at start still starts (grace, then gated).
    let later = NOW + 100 * DAY + 3 * DAY;
    let monitor = LicenseMonitor::from_config_at(&cfg, later).unwrap();
    assert_eq!(
        monitor.state_at(later),
        Some(LicenseState::Grace { days_left: 4 })
    );
    let past = NOW + 100 * DAY + 8 * DAY;
    let monitor = LicenseMonitor::from_config_at(&cfg, past).unwrap();
    assert_eq!(monitor.gate_at(past).unwrap_err().code(), "license_expired");

    let monitor = LicenseMonitor::from_config_at(&config(&[]), NOW).unwrap();
    assert!(monitor.license().is_none());

    let mut cfg = config(&[]);
    cfg.license.required = true;
    let err = LicenseMonitor::from_config_at(&cfg, NOW).unwrap_err();
    assert_eq!(err.code(), "license_missing");

    let cfg = config(&[
        (vars::LICENSE_KEY, "a.b.c"),
        (vars::LICENSE_PUBLIC_KEY, PUBLIC),
    ]);
    let err = LicenseMonitor::from_config_at(&cfg, NOW).unwrap_err();
    assert_eq!(err.code(), "license_invalid");
    assert!(
        err.to_string().starts_with("ATLASAI_LICENSE_KEY: "),
        "{err}"
    );

    let other_tenant = config(&[
        (vars::TENANT_ID, "globex"),
        (vars::LICENSE_KEY, VALID.as_str()),
        (vars::LICENSE_PUBLIC_KEY, PUBLIC),
    ]);
    let err = LicenseMonitor::from_config_at(&other_tenant, NOW).unwrap_err();
    assert_eq!(err.code(), "license_tenant_mismatch");
    assert!(!err.to_string().contains(VALID.as_str()));
}

#[test]
fn public_key_problems_are_named() {
    let cases = [
        ("", "exactly one PEM block"),
        ("not a pem", "exactly one PEM block"),
        (PRIVATE, "is a private key"),
        (
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "is a certificate",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "not a readable RSA public key",
        ),
        (
            // A P-256 public key: valid PEM, not RSA.
            "-----BEGIN PUBLIC KEY-----\n\
             MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\n\
             q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n\
             -----END PUBLIC KEY-----",
            "not a readable RSA public key",
        ),
    ];
    for (pem, expected) in cases {
        let err = LicensePublicKey::from_pem(pem).unwrap_err();
        assert_eq!(err.code(), "license_public_key_invalid", "{pem}");
        let text = err.to_string();
        assert!(text.starts_with("CP_LICENSE_PUBLIC_KEY: "), "{text}");
        assert!(text.contains(expected), "{text} should say {expected}");
    }
    assert_eq!(PUBLIC.matches("BEGIN").count(), 1);
}

#[test]
fn modulus_size_is_read_from_der() {
    // SEQUENCE { INTEGER 0x00C1 (8 bits), INTEGER 3 }
    assert_eq!(
        verify::rsa_modulus_bits(&[0x30, 0x07, 0x02, 0x02, 0x00, 0xC1, 0x02, 0x01, 0x03]),
        Some(8)
    );
    assert_eq!(verify::rsa_modulus_bits(&[0x30, 0x80]), None);
    assert_eq!(verify::rsa_modulus_bits(&[]), None);
}

/// Every way a license must be refused, each with the reason it must give.
#[test]
fn malicious_and_invalid_tokens_are_refused() {
    let started = Instant::now();
    let valid = VALID.as_str();
    let parts: Vec<&str> = valid.split('.').collect();
    let hs256_confusion = signed(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(),
        &EncodingKey::from_secret(PUBLIC.as_bytes()),
        Algorithm::HS256,
    );
    let fake_signature = URL_SAFE_NO_PAD.encode([7u8; 64]);
    let crafted = |header: Value| format!("{}.{}.{fake_signature}", b64(&header), parts[1]);
    let tampered_claims = b64(&with(claims(), "plan", json!("unlimited")));
    let oversized = format!(
        "{}.{}.{}",
        parts[0],
        "A".repeat(MAX_LICENSE_BYTES),
        parts[2]
    );

    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("empty", String::new(), "license_invalid", "is empty"),
        ("garbage", "hello".into(), "license_invalid", "is not a JWT"),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "license_invalid",
            "is not a JWT",
        ),
        (
            "unsigned alg none",
            format!("{}.{}.", b64(&json!({ "alg": "none" })), parts[1]),
            "license_invalid",
            "is not a JWT",
        ),
        (
            "alg none with a signature",
            crafted(json!({ "alg": "none" })),
            "license_invalid",
            "signed with \"none\"",
        ),
        (
            "HS256 keyed with the public key PEM",
            hs256_confusion,
            "license_invalid",
            "signed with \"HS256\"",
        ),
        (
            "PS256 re-signed with the right key",
            signed(
                &json!({ "alg": "PS256", "typ": "JWT" }),
                &claims(),
                &SIGNING,
                Algorithm::PS256,
            ),
            "license_invalid",
            "signed with \"PS256\"",
        ),
        (
            "ES256",
            crafted(json!({ "alg": "ES256" })),
            "license_invalid",
            "signed with \"ES256\"",
        ),
        (
            "another RSA key",
            signed(&rs256_header(), &claims(), &OTHER, Algorithm::RS256),
            "license_invalid",
            "signature does not verify",
        ),
        (
            "tampered claims",
            replace_part(valid, 1, &tampered_claims),
            "license_invalid",
            "signature does not verify",
        ),
        (
            "tampered header",
            replace_part(valid, 0, &b64(&json!({ "alg": "RS256" }))),
            "license_invalid",
            "signature does not verify",
        ),
        (
            "signature cut short",
            replace_part(valid, 2, &parts[2][..40]),
            "license_invalid",
            "signature does not verify",
        ),
        ("oversized", oversized, "license_invalid", "at most 16384"),
        (
            "unknown critical header",
            rs256(
                json!({ "alg": "RS256", "crit": ["exp-policy"], "exp-policy": 1 }),
                claims(),
            ),
            "license_invalid",
            "critical parameters",
        ),
        (
            "jku header",
            rs256(
                json!({ "alg": "RS256", "jku": "https://evil.example/jwks.json" }),
                claims(),
            ),
            "license_invalid",
            "key source (jku)",
        ),
        (
            "x5u header",
            rs256(
                json!({ "alg": "RS256", "x5u": "https://evil.example/cert.pem" }),
                claims(),
            ),
            "license_invalid",
            "key source (x5u)",
        ),
        (
            "embedded jwk",
            rs256(
                json!({ "alg": "RS256", "jwk": { "kty": "RSA", "n": "AQAB", "e": "AQAB" } }),
                claims(),
            ),
            "license_invalid",
            "key source (jwk)",
        ),
        (
            "wrong tenant",
            rs256(rs256_header(), with(claims(), "tid", json!("globex"))),
            "license_tenant_mismatch",
            "for tenant \"globex\", not TENANT_ID=\"acme-corp\"",
        ),
        (
            "missing exp",
            rs256(rs256_header(), without(claims(), "exp")),
            "license_invalid",
            "claim \"exp\" is missing or not a number",
        ),
        (
            "string exp",
            rs256(rs256_header(), with(claims(), "exp", json!("2099-01-01"))),
            "license_invalid",
            "claim \"exp\" is missing or not a number",
        ),
        (
            "missing tenant",
            rs256(rs256_header(), without(claims(), "tid")),
            "license_invalid",
            "missing field `tid`",
        ),
        (
            "not yet valid",
            rs256(rs256_header(), with(claims(), "nbf", json!(NOW + 2 * DAY))),
            "license_not_yet_valid",
            "not valid before",
        ),
    ];
    eprintln!("signed the cases in {} ms", started.elapsed().as_millis());
    for (name, token, code, reason) in &cases {
        let err = verify(token).expect_err(name);
        assert_eq!(err.code(), *code, "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(reason),
            "{name}: {text:?} should say {reason:?}"
        );
        assert!(text.starts_with("ATLASAI_LICENSE_KEY: "), "{name}: {text}");
        if token.len() > 20 {
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!text.contains(part), "{name}: the error echoes the token");
            }
        }
    }
    // A token that is merely expired (even long ago) still verifies: expiry is a state.
    let expired = verify(&VALID).unwrap();
    assert_eq!(
        expired.state_at(NOW + 1000 * DAY, GRACE),
        LicenseState::Expired
    );
    eprintln!("whole table in {} ms", started.elapsed().as_millis());
}

#[test]
fn inspect_shows_claims_and_state_never_the_token() {
    let report = inspect_at(&VALID, PUBLIC, Some(TENANT), GRACE, NOW).unwrap();
    assert_eq!(report["state"], "valid");
    assert_eq!(report["days_left"], 100);
    assert_eq!(report["signature"]["verified"], true);
    assert_eq!(report["signature"]["kid"], "test-2026");
    assert_eq!(report["claims"]["tid"], TENANT);
    assert_eq!(report["tenant_checked"], true);
    assert!(!report.to_string().contains(VALID.as_str()));

    let report = inspect_at(&VALID, PUBLIC_PKCS1, None, GRACE, NOW + 105 * DAY).unwrap();
    assert_eq!(report["state"], "grace");
    assert_eq!(report["tenant_checked"], false);

    let err = inspect_at(&VALID, PUBLIC, Some("globex"), GRACE, NOW).unwrap_err();
    assert_eq!(err.code(), "license_tenant_mismatch");
    assert!(err.to_string().starts_with("license: "));
    // The default grace period and the real clock.
    assert!(inspect(&VALID, PUBLIC, Some(TENANT)).is_ok());
}
