//! [`TenantPlane`]: every capability of one replica, assembled from a [`Config`].

use std::sync::Arc;
use std::time::Duration;

use diesel::ExpressionMethods;
use diesel::QueryDsl;
use diesel_async::RunQueryDsl;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::{Database, schema::plane_info, with_conn};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::license::LicenseMonitor;
use crate::ratelimit::RateLimiter;
use crate::redis::Redis;
use crate::secrets::Secrets;
use crate::vector::Vectors;

/// One replica's tenant plane: what a transport or an embedding host calls.
pub struct TenantPlane {
    config: Arc<Config>,
    db: Arc<Database>,
    health: Arc<Health>,
    vectors: Vectors,
    auth: Auth,
    redis: Option<Arc<Redis>>,
    rate_limiter: Arc<RateLimiter>,
    license: Arc<LicenseMonitor>,
    secrets: Secrets,
}

/// How the schema got ready at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupSchema {
    /// Migrations ran (versions applied, possibly none).
    Migrated(Vec<String>),
    /// Automatic migration is off; readiness waits for `tenant-plane migrate`.
    NotMigrated,
    /// The database was unreachable; a background task keeps trying.
    Deferred,
}

impl TenantPlane {
    /// Verifies the license, opens the database and prepares the schema.
    ///
    /// A missing (where required) or invalid license is an error before
    /// anything else happens ([`Error::LicenseRequired`] or an invalid-input
    /// error naming the variable).
    /// An unreachable PostgreSQL does not stop the start: the replica serves
    /// liveness, reports not ready, and migrates as soon as the database answers.
    pub async fn start(config: Config) -> Result<(Arc<TenantPlane>, StartupSchema)> {
        Self::start_with(config, true).await
    }

    /// A plane for one-shot admin commands: no SQLite file lock, so it can
    /// run next to a serving replica.
    pub async fn start_admin(config: Config) -> Result<Arc<TenantPlane>> {
        Ok(Self::start_with(config, false).await?.0)
    }

    async fn start_with(
        config: Config,
        exclusive: bool,
    ) -> Result<(Arc<TenantPlane>, StartupSchema)> {
        let license = Arc::new(LicenseMonitor::from_config(&config)?);
        let config = Arc::new(config);
        let db = Arc::new(if exclusive {
            Database::open(&config.database)?
        } else {
            Database::open_shared(&config.database)?
        });
        let probe_timeout = config.database.connect_timeout.min(Duration::from_secs(2));
        let health = Arc::new(Health::new(db.clone(), config.vector_db(), probe_timeout));
        // The schema first: the services below read their tables at start.
        let schema = if !config.database.auto_migrate {
            check_tenant(&db, &config.tenant_id).await?;
            StartupSchema::NotMigrated
        } else {
            match prepare_schema(&db, &config.tenant_id, &health).await {
                Ok(applied) => StartupSchema::Migrated(applied),
                Err(e) if e.code() == "database_unavailable" && db.is_postgres() => {
                    tracing::warn!(error = %e, "database unreachable at start; will migrate when it answers");
                    StartupSchema::Deferred
                }
                Err(e) => return Err(e),
            }
        };
        if schema != StartupSchema::Deferred {
            db.check_connection_budget(config.database.pool_max).await;
        }
        let redis = config.redis.as_ref().map(Redis::start).transpose()?;
        if let Some(redis) = &redis {
            health.register(redis.clone());
        }
        let rate_limiter = RateLimiter::new(&config.rate_limit, redis.clone(), &config.tenant_id);
        health.register(rate_limiter.clone());
        health.register(license.clone());
        let plane = Arc::new(TenantPlane {
            rate_limiter,
            license,
            secrets: Secrets::new(db.clone(), &config.encryption),
            vectors: Vectors::new(db.clone()),
            auth: Auth::start(&config, db.clone(), redis.clone()).await?,
            redis,
            config,
            db,
            health,
        });
        if schema == StartupSchema::Deferred {
            tokio::spawn(retry_prepare(Arc::downgrade(&plane)));
        }
        Ok((plane, schema))
    }

    /// The configuration this plane runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Health and readiness.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Users, sessions, tokens and API keys.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The Redis connection, when configured.
    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.redis.as_ref()
    }

    /// Rate limits.
    pub fn rate_limiter(&self) -> &Arc<RateLimiter> {
        &self.rate_limiter
    }

    /// Vector collections and search.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// The license and its state; [`LicenseMonitor::gate`] before API calls.
    pub fn license(&self) -> &Arc<LicenseMonitor> {
        &self.license
    }

    /// Encrypted secrets.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }
}

async fn prepare_schema(db: &Database, tenant: &str, health: &Health) -> Result<Vec<String>> {
    let applied = db.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "migrations applied");
    }
    check_tenant(db, tenant).await?;
    health.invalidate();
    Ok(applied)
}

/// Records the tenant on first start and refuses a database that belongs to another.
async fn check_tenant(db: &Database, tenant: &str) -> Result<()> {
    let owner: Option<String> = with_conn!(db, |conn| {
        let claimed = diesel::insert_into(plane_info::table)
            .values((
                plane_info::key.eq("tenant_id"),
                plane_info::value.eq(tenant),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await;
        match claimed {
            Ok(_) => {}
            // Schema not migrated yet: nothing to compare with.
            Err(e) if e.to_string().contains("plane_info") => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let owner = plane_info::table
            .filter(plane_info::key.eq("tenant_id"))
            .select(plane_info::value)
            .first::<String>(conn)
            .await?;
        Ok(Some(owner))
    })?;
    match owner {
        Some(owner) if owner != tenant => Err(Error::conflict(
            "tenant_mismatch",
            format!(
                "this database belongs to tenant {owner:?}, not TENANT_ID={tenant:?}; \
                 point TENANT_PLANE_DATABASE_URL at this tenant's database"
            ),
        )),
        _ => Ok(()),
    }
}

async fn retry_prepare(plane: std::sync::Weak<TenantPlane>) {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::time::sleep(delay).await;
        let Some(plane) = plane.upgrade() else { return };
        match prepare_schema(&plane.db, &plane.config.tenant_id, &plane.health).await {
            Ok(_) => {
                tracing::info!("database reachable; schema ready");
                if let Err(e) = plane.auth.revocations().load_all().await {
                    tracing::warn!(error = %e, "revocations not loaded; the poll will retry");
                }
                return;
            }
            Err(e) if e.code() == "database_unavailable" => {
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "schema preparation failed; replica stays not ready");
                return;
            }
        }
    }
}
