use std::collections::BTreeMap;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn prod_env<'a>(extra: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
    let mut env = BTreeMap::from([
        (vars::TENANT_ID, "acme-corp"),
        (vars::JWT_SECRET, SECRET),
        (vars::ENCRYPTION_KEY, SECRET),
        (vars::DATABASE_URL, "postgresql://u:pw@db:5432/atlas"),
    ]);
    env.extend(extra.iter().copied());
    env
}

fn error_of(extra: &[(&str, &str)]) -> String {
    Config::from_env(&prod_env(extra))
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn spec_defaults() {
    let c = Config::from_env(&prod_env(&[])).unwrap();
    assert!(!c.dev_mode);
    assert_eq!(c.database.pool_min, 2);
    assert_eq!(c.database.pool_max, 10);
    assert_eq!(c.database.connect_timeout, Duration::from_millis(5000));
    assert_eq!(c.database.idle_timeout, Duration::from_millis(30_000));
    assert_eq!(c.http.port, 3000);
    assert_eq!(c.http.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(c.vector_db(), "pgvector");
    assert_eq!(c.auth.audience, "tenant-plane:acme-corp");
    assert_eq!(c.http.worker_threads, None);
    let c = Config::from_env(&prod_env(&[(vars::WORKER_THREADS, "1")])).unwrap();
    assert_eq!(c.http.worker_threads, Some(1));
}

#[test]
fn bad_values_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[(vars::DB_POOL_MAX, "many")],
            "DB_POOL_MAX: must be a whole number",
        ),
        (
            &[(vars::DB_POOL_MAX, "0")],
            "DB_POOL_MAX: must be between 1 and 1000",
        ),
        (
            &[(vars::DB_POOL_MIN, "20")],
            "DB_POOL_MIN: must not exceed DB_POOL_MAX",
        ),
        (
            &[(vars::JWT_SECRET, "short")],
            "JWT_SECRET: must be at least 32 bytes",
        ),
        (
            &[(vars::ENCRYPTION_KEY, "abc")],
            "ENCRYPTION_KEY: must be 64 hex characters",
        ),
        (
            &[(vars::PORT, "70000")],
            "PORT: must be between 0 and 65535",
        ),
        (
            &[(vars::DATABASE_URL, "mysql://x")],
            "TENANT_PLANE_DATABASE_URL: must start with",
        ),
        (
            &[(vars::REDIS_URL, "http://x")],
            "REDIS_URL: unknown scheme \"http\"",
        ),
        (
            &[(vars::REDIS_URL, "cache:6379")],
            "REDIS_URL: must start with",
        ),
        (
            &[
                (vars::REDIS_URL, "rediss://cache"),
                (vars::REDIS_CA_FILE, "/nonexistent/ca.pem"),
            ],
            "TP_REDIS_CA_FILE: /nonexistent/ca.pem",
        ),
        (
            &[
                (vars::REDIS_URL, "redis://cache"),
                (vars::REDIS_CA_FILE, "/etc/ca.pem"),
            ],
            "TP_REDIS_CA_FILE: is set, but REDIS_URL is not a TLS URL",
        ),
        (
            &[
                (vars::REDIS_URL, "rediss://cache"),
                (vars::REDIS_CERT_FILE, "/etc/client.pem"),
            ],
            "TP_REDIS_KEY_FILE: is required",
        ),
        (&[(vars::TENANT_ID, "a b")], "TENANT_ID: must be 1 to 64"),
        (
            &[(vars::TRUSTED_PROXIES, "10.0.0.0/8,nope")],
            "TP_TRUSTED_PROXIES: \"nope\"",
        ),
        (
            &[(vars::LICENSE_REQUIRED, "true")],
            "ATLASAI_LICENSE_KEY: is required",
        ),
        (
            &[(vars::RATE_LIMIT_FALLBACK, "maybe")],
            "TP_RATE_LIMIT_FALLBACK: must be",
        ),
        (
            &[(vars::DB_CONNECT_TIMEOUT, "-1")],
            "DB_CONNECT_TIMEOUT: must be between 100",
        ),
        (
            &[(vars::DB_CONNECT_TIMEOUT, "soon")],
            "DB_CONNECT_TIMEOUT: must be a whole number",
        ),
        (
            &[(vars::WORKER_THREADS, "0")],
            "TP_WORKER_THREADS: must be between 1 and 1024",
        ),
    ];
    for (extra, expected) in cases {
        let err = error_of(extra);
        assert!(err.starts_with(expected), "{extra:?}: got {err:?}");
    }
}

#[test]
fn errors_and_debug_never_show_secrets() {
    let err = error_of(&[(vars::JWT_SECRET, "tiny-secret-value")]);
    assert!(!err.contains("tiny-secret-value"));
    let err = error_of(&[(vars::DATABASE_URL, "mysql://user:hunter2@x")]);
    assert!(!err.contains("hunter2"), "{err}");

    let c = Config::from_env(&prod_env(&[(vars::REDIS_URL, "redis://:redispw@r:6379")])).unwrap();
    let debug = format!("{c:?}");
    for secret in [SECRET, "pw@db", "redispw"] {
        assert!(!debug.contains(secret), "{secret} leaked in {debug}");
    }
}

#[test]
fn production_requires_tenant_and_secrets() {
    let mut env = prod_env(&[]);
    env.remove(vars::TENANT_ID);
    assert_eq!(Config::from_env(&env).unwrap_err().var, vars::TENANT_ID);
    let mut env = prod_env(&[]);
    env.remove(vars::JWT_SECRET);
    assert_eq!(Config::from_env(&env).unwrap_err().var, vars::JWT_SECRET);
}

#[test]
fn dev_mode_generates_private_secrets_once() {
    let dir = std::env::temp_dir().join(format!("tp-dev-{}", uuid::Uuid::new_v4()));
    let dir_str = dir.to_str().unwrap().to_owned();
    let env = BTreeMap::from([(vars::DATA_DIR, dir_str.as_str())]);
    let first = Config::from_env(&env).unwrap();
    assert!(first.dev_mode);
    assert_eq!(first.http.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(first.vector_db(), "embedded");
    let file = dir.join(dev::DEV_SECRETS_FILE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = Config::from_env(&env).unwrap();
    assert_eq!(
        first.auth.jwt_secret.expose_secret(),
        second.auth.jwt_secret.expose_secret()
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Config::from_env(&env).unwrap_err();
    assert!(err.reason.contains("readable by other users"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sqlite_url_is_production_single_replica() {
    let c = Config::from_env(&prod_env(&[(
        vars::DATABASE_URL,
        "sqlite:///var/lib/tp/tp.db",
    )]))
    .unwrap();
    assert!(!c.dev_mode);
    assert!(
        matches!(c.database.url, DatabaseUrl::Sqlite(ref p) if p == Path::new("/var/lib/tp/tp.db"))
    );
}

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
