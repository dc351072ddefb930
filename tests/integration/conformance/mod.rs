//! One backend conformance suite, run against SQLite and PostgreSQL.
//!
//! Each test takes a started [`TenantPlane`]; `backend_suite!` stamps the
//! whole list out once per backend, so both pass the same tests or neither
//! is done.

mod auth;
mod contention;
mod vectors;

use std::collections::BTreeMap;
use std::sync::Arc;

use tp_core::{Config, TenantPlane};
use tp_tests::pgbouncer::{self, PoolMode};
use tp_tests::replica::{ENCRYPTION_KEY, JWT_SECRET};

/// A plane on an embedded SQLite file in a fresh directory.
pub async fn sqlite_plane() -> Arc<TenantPlane> {
    let dir = tp_tests::temp_dir("conformance");
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    plane(&url).await
}

/// A plane on a fresh database of the shared PostgreSQL cluster.
pub async fn postgres_plane() -> Arc<TenantPlane> {
    let url = tokio::task::spawn_blocking(tp_tests::postgres::fresh_database)
        .await
        .expect("create database");
    plane(&url).await
}

/// A plane reaching a fresh database of the shared cluster through
/// PgBouncer in `mode`; the schema is migrated directly first, as an
/// operator must for a transaction pooler.
async fn pgbouncer_plane(mode: PoolMode) -> Arc<TenantPlane> {
    let direct = tokio::task::spawn_blocking(tp_tests::postgres::fresh_database)
        .await
        .expect("create database");
    let config = Config::from_env(&env(&direct, &[])).expect("config");
    let db = tp_core::db::Database::open_shared(&config.database).expect("pool");
    db.migrate().await.expect("migrate directly");
    let bouncer = tokio::task::spawn_blocking(move || pgbouncer::shared(mode))
        .await
        .expect("pgbouncer");
    let url = bouncer.url(tp_tests::postgres::database_of(&direct));
    match mode {
        PoolMode::Transaction => {
            plane_with(
                &url,
                &[
                    ("TP_DB_POOLER", "pgbouncer-transaction"),
                    ("TP_AUTO_MIGRATE", "false"),
                ],
            )
            .await
        }
        PoolMode::Session => plane(&url).await,
    }
}

/// Through PgBouncer in transaction mode (`TP_DB_POOLER=pgbouncer-transaction`).
pub async fn pgbouncer_transaction_plane() -> Arc<TenantPlane> {
    pgbouncer_plane(PoolMode::Transaction).await
}

/// Through PgBouncer in session mode, configured as for a direct connection.
pub async fn pgbouncer_session_plane() -> Arc<TenantPlane> {
    pgbouncer_plane(PoolMode::Session).await
}

async fn plane(url: &str) -> Arc<TenantPlane> {
    plane_with(url, &[]).await
}

fn env(url: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    [
        ("TENANT_ID", "acme-corp"),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("TENANT_PLANE_DATABASE_URL", url),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// A plane on `url` with extra configuration.
pub async fn plane_with(url: &str, extra: &[(&str, &str)]) -> Arc<TenantPlane> {
    let config = Config::from_env(&env(url, extra)).expect("config");
    TenantPlane::start(config).await.expect("plane starts").0
}

/// Stamps out every conformance test for one backend.
macro_rules! backend_suite {
    ($backend:ident, $make:path) => {
        mod $backend {
            use super::{auth, contention, vectors};

            macro_rules! case {
                ($module:ident :: $name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let plane = $make().await;
                        $module::$name(&plane).await;
                    }
                };
            }

            case!(vectors::collections_lifecycle);
            case!(vectors::upsert_is_atomic_and_idempotent);
            case!(vectors::invalid_batches_write_nothing);
            case!(vectors::scores_follow_the_documented_metric);
            case!(vectors::filters_agree_with_the_reference_evaluator);
            case!(vectors::filtered_search_still_returns_k);
            case!(vectors::include_flags_and_documents);
            case!(vectors::search_input_is_validated);
            case!(vectors::large_values_give_finite_scores_or_a_clear_refusal);
            case!(vectors::nul_characters_and_oversized_filters_are_refused);
            case!(auth::users_are_validated);
            case!(auth::login_checks_the_password_the_same_way_for_unknown_users);
            case!(auth::refresh_rotates_and_reuse_ends_the_session);
            case!(auth::logout_and_termination_end_sessions);
            case!(auth::disabling_a_user_ends_every_session);
            case!(auth::api_keys_verify_until_revoked);
            case!(auth::a_role_change_takes_effect_on_the_next_request);
            case!(auth::the_last_admin_cannot_be_demoted_or_disabled);
            case!(auth::usernames_are_unique_regardless_of_case);
            case!(auth::concurrent_refreshes_of_one_token_share_its_successor);
            case!(contention::concurrent_writes_are_acknowledged_and_kept);
        }
    };
}

backend_suite!(sqlite, super::sqlite_plane);
backend_suite!(postgres, super::postgres_plane);
backend_suite!(pgbouncer_transaction, super::pgbouncer_transaction_plane);
backend_suite!(pgbouncer_session, super::pgbouncer_session_plane);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grace_a_replayed_refresh_token_ends_the_session() {
    let dir = tp_tests::temp_dir("conformance");
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    let plane = plane_with(&url, &[("TP_REFRESH_REUSE_GRACE_SECS", "0")]).await;
    auth::without_grace_a_replayed_refresh_token_ends_the_session(&plane).await;
}
