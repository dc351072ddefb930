//! Paths of the test services, from the variables `scripts/test` exports.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Where each external program lives.
#[derive(Debug)]
pub struct TestEnv {
    /// PostgreSQL + pgvector `bin` directory.
    pub pg_bin: PathBuf,
    /// `bin` directory of a PostgreSQL built with TLS (Debian's 15).
    pub pg_tls_bin: PathBuf,
    /// User to run PostgreSQL as (when the tests run as root).
    pub pg_user: Option<String>,
    /// `redis-server` binary.
    pub redis_server: PathBuf,
    /// `pgbouncer` binary.
    pub pgbouncer: PathBuf,
    /// `nginx` binary.
    pub nginx: PathBuf,
    /// Python with helm-python-sdk.
    pub python: PathBuf,
}

/// The test environment; panics with instructions when it was not set up.
pub fn get() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with scripts/test (it installs and exports the test services)")
            })
        };
        TestEnv {
            pg_bin: var("TP_TEST_PG_BIN").into(),
            pg_tls_bin: var("TP_TEST_PG_TLS_BIN").into(),
            pg_user: Some(var("TP_TEST_PG_USER")).filter(|u| !u.is_empty()),
            redis_server: var("TP_TEST_REDIS_SERVER").into(),
            nginx: var("TP_TEST_NGINX").into(),
            pgbouncer: var("TP_TEST_PGBOUNCER").into(),
            python: var("TP_TEST_PYTHON").into(),
        }
    })
}

/// The `tenant-plane` binary built next to this test executable.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/integration-<hash> → target/<profile>/tenant-plane
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tenant-plane"))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: build it first (scripts/test runs cargo build -p tp-bin)",
        path.display()
    );
    path
}
