//! Health and readiness, in the operator guide's JSON shape.
//!
//! The database probe is cached and single-flight: whatever the probe rate,
//! a replica queries its database at most once per [`PROBE_INTERVAL`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::db::{Database, DbProbe};

/// How long a database probe result is reused.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `ok` or `degraded`, as the operator guide defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy and ready.
    Ok,
    /// Running, but something is unavailable or the replica is not ready.
    Degraded,
}

/// The state of an optional component (Redis, license, rate limiter, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// `ok` or `degraded`.
    pub status: Status,
    /// Component-specific fields.
    #[serde(flatten)]
    pub detail: BTreeMap<&'static str, serde_json::Value>,
}

/// A component that reports its own state. `check` must be cheap and do no I/O.
pub trait HealthContributor: Send + Sync {
    /// Key of the component in the health JSON.
    fn name(&self) -> &'static str;
    /// The component's current state.
    fn check(&self) -> ComponentHealth;
}

/// `db` in the health JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DbHealth {
    /// A database is configured (always true: SQLite or PostgreSQL).
    pub enabled: bool,
    /// The last probe got an answer.
    pub reachable: bool,
}

/// The body of `GET /api/health`: the guide's fields first, extras after.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// `ok` or `degraded`.
    pub status: Status,
    /// Always `tenant`.
    pub plane: &'static str,
    /// Version of this build.
    pub version: &'static str,
    /// Seconds since the replica started.
    pub uptime_seconds: u64,
    /// Database state.
    pub db: DbHealth,
    /// `pgvector` or `embedded`.
    pub vector_db: &'static str,
    /// When this report was made, RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Whether the replica should receive traffic.
    pub ready: bool,
    /// True after SIGTERM, while the replica finishes its work.
    pub draining: bool,
    /// The schema is behind this binary's migrations.
    pub migrations_pending: bool,
    /// Optional components (redis, license, rate_limit, …).
    #[serde(flatten)]
    pub components: BTreeMap<&'static str, ComponentHealth>,
}

/// Tracks readiness, draining and the cached database probe.
pub struct Health {
    started: Instant,
    vector_db: &'static str,
    db: Arc<Database>,
    probe_timeout: Duration,
    draining: AtomicBool,
    cached: Mutex<Option<(Instant, DbProbe)>>,
    refresh: tokio::sync::Mutex<()>,
    contributors: Mutex<Vec<Arc<dyn HealthContributor>>>,
}

impl Health {
    /// A monitor for `db`; probes give up after `probe_timeout`.
    pub fn new(db: Arc<Database>, vector_db: &'static str, probe_timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            vector_db,
            db,
            probe_timeout,
            draining: AtomicBool::new(false),
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            contributors: Mutex::new(Vec::new()),
        }
    }

    /// Adds a component to the report.
    pub fn register(&self, contributor: Arc<dyn HealthContributor>) {
        self.contributors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(contributor);
    }

    /// Turns readiness off for good: the replica is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Forgets the cached probe, so the next check queries the database.
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The database probe, at most [`PROBE_INTERVAL`] old.
    pub async fn db_probe(&self) -> DbProbe {
        if let Some(fresh) = self.fresh_probe() {
            return fresh;
        }
        let _refreshing = self.refresh.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(fresh) = self.fresh_probe() {
            return fresh;
        }
        let probe = self.db.probe(self.probe_timeout).await;
        if let Some(error) = &probe.error {
            tracing::warn!(error = error.as_str(), "database probe failed");
        }
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), probe.clone()));
        probe
    }

    fn fresh_probe(&self) -> Option<DbProbe> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PROBE_INTERVAL)
            // A cached failure is stale once the pool has reconnected; while
            // the database stays down a new probe fails fast without I/O.
            .filter(|(_, probe)| probe.reachable || self.db.is_known_down())
            .map(|(_, probe)| probe.clone())
    }

    /// Whether the replica should receive traffic now.
    pub async fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        let probe = self.db_probe().await;
        probe.reachable && !probe.migrations_pending && self.db.storage_fault().is_none()
    }

    /// The full report for `GET /api/health`.
    pub async fn report(&self) -> HealthReport {
        let probe = self.db_probe().await;
        let draining = self.is_draining();
        let ready = !draining
            && probe.reachable
            && !probe.migrations_pending
            && self.db.storage_fault().is_none();
        let contributors = self
            .contributors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let components: BTreeMap<_, _> =
            contributors.iter().map(|c| (c.name(), c.check())).collect();
        let all_ok = components.values().all(|c| c.status == Status::Ok);
        HealthReport {
            status: if ready && all_ok {
                Status::Ok
            } else {
                Status::Degraded
            },
            plane: "tenant",
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            db: DbHealth {
                enabled: true,
                reachable: probe.reachable,
            },
            vector_db: self.vector_db,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ready,
            draining,
            migrations_pending: probe.migrations_pending,
            components,
        }
    }
}
