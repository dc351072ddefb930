//! The database: a pool over PostgreSQL or SQLite, migrations, and a health probe.
//!
//! Queries are written once with diesel's DSL and run on either backend with
//! `with_conn!`; each statement is bounded by the query
//! timeout, and a connection whose statement timed out is never reused.

mod migrate;
mod pg;
pub(crate) mod pg_url;
mod pool;
pub(crate) mod schema;
mod sqlite;
mod transaction;
pub mod vector_sql;

use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

use crate::config::{DatabaseConfig, DatabaseUrl};
use crate::error::{Error, Result};
pub(crate) use pool::Tracked;
use pool::{ConnectSignals, Manager};
pub(crate) use transaction::{LockUsers, WriteTransaction};

/// Runs `$body` with `$conn` bound to a checked-out connection of either backend.
///
/// The body is an expression of type `Result<T, Error>` that may `.await`; it
/// is compiled once per backend, so it must use only diesel DSL both support.
/// The second form takes one body per backend for backend-specific SQL.
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        $crate::db::with_conn!($db, pg | $conn | $body, sqlite | $conn | $body)
    };
    ($db:expr, pg |$pc:ident| $pg:expr, sqlite |$sc:ident| $lite:expr) => {{
        let db: &$crate::db::Database = $db;
        match db.backend() {
            $crate::db::Backend::Postgres(pool) => {
                let mut guard = db.checkout(pool).await?;
                let outcome = {
                    let conn = &mut guard.conn;
                    ::tokio::time::timeout(db.query_timeout(), async {
                        let pooled = db.begin_pooled(conn).await?;
                        let result = {
                            let $pc = &mut *conn;
                            $pg
                        };
                        db.end_pooled(conn, pooled, result).await
                    })
                    .await
                };
                db.finish(&mut *guard, outcome)
            }
            $crate::db::Backend::Sqlite(pool) => {
                let mut guard = db.checkout(pool).await?;
                let outcome = {
                    let $sc = &mut guard.conn;
                    ::tokio::time::timeout(db.query_timeout(), async { $lite }).await
                };
                db.finish(&mut *guard, outcome)
            }
        }
    }};
}
pub(crate) use with_conn;

/// The SQLite connection type used by the pool.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

pub(crate) type PgPool = bb8::Pool<Manager<pg::PgConnector>>;
pub(crate) type SqlitePool = bb8::Pool<Manager<sqlite::SqliteConnector>>;

/// Which backend a [`Database`] runs on.
pub(crate) enum Backend {
    /// PostgreSQL with pgvector.
    Postgres(PgPool),
    /// Embedded SQLite (one replica).
    Sqlite(SqlitePool),
}

/// The connector of the pool, kept for connections outside it (migrations).
enum ConnectorRef {
    Postgres(Arc<pg::PgConnector>),
    Sqlite(Arc<sqlite::SqliteConnector>),
}

/// Connection pool plus the state needed to fail fast and bound statements.
pub struct Database {
    backend: Backend,
    signals: Arc<ConnectSignals>,
    connector: ConnectorRef,
    query_timeout: Duration,
    connect_timeout: Duration,
    /// Held for the life of the process: one replica per SQLite file.
    _sqlite_lock: Option<std::fs::File>,
    /// The last storage fault (disk full, unwritable file) and when.
    storage_fault: std::sync::Mutex<Option<(std::time::Instant, &'static str)>>,
}

/// How long readiness stays 503 after a storage fault: writes that
/// succeed again for this long mean the space came back.
pub const STORAGE_FAULT_HOLD: Duration = Duration::from_secs(5);

/// What a health probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbProbe {
    /// The database answered a query.
    pub reachable: bool,
    /// The schema is behind this binary's migrations.
    pub migrations_pending: bool,
    /// Why it is unreachable, for logs (never contains credentials).
    pub error: Option<String>,
}

/// Pool occupancy, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolState {
    /// Open connections.
    pub connections: u32,
    /// Open connections not checked out.
    pub idle: u32,
    /// Callers waiting for a connection right now.
    pub waiting: u64,
    /// Checkouts that timed out since start.
    pub timed_out: u64,
}

impl Database {
    /// Builds the pool without connecting, so a replica can start while the
    /// database is down. On SQLite it takes the one-replica file lock.
    pub fn open(config: &DatabaseConfig) -> Result<Database> {
        Self::open_with(config, true)
    }

    /// Like [`open`](Self::open) but without the SQLite file lock, for
    /// one-shot admin commands next to a running replica.
    pub fn open_shared(config: &DatabaseConfig) -> Result<Database> {
        Self::open_with(config, false)
    }

    fn open_with(config: &DatabaseConfig, exclusive: bool) -> Result<Database> {
        let signals = Arc::new(ConnectSignals::new());
        fn builder<M: bb8::ManageConnection>(config: &DatabaseConfig, min: u32) -> bb8::Builder<M> {
            bb8::Pool::builder()
                .max_size(config.pool_max)
                .min_idle(Some(min.min(config.pool_max)))
                .connection_timeout(config.connect_timeout)
                .idle_timeout(Some(config.idle_timeout))
                .test_on_check_out(false)
                // The connection used last is handed out first: a few hot
                // backends carry the load (warm caches on both sides) and
                // the rest age out through the idle timeout.
                .queue_strategy(bb8::QueueStrategy::Lifo)
                .retry_connection(false)
                .reaper_rate(Duration::from_secs(5))
        }
        let (backend, connector, lock) = match &config.url {
            DatabaseUrl::Postgres(url) => {
                let connector = Arc::new(pg::PgConnector::new(url, config)?);
                let manager = Manager {
                    connector: connector.clone(),
                    signals: signals.clone(),
                    pool_max: config.pool_max,
                };
                (
                    Backend::Postgres(builder(config, config.pool_min).build_unchecked(manager)),
                    ConnectorRef::Postgres(connector),
                    None,
                )
            }
            DatabaseUrl::Sqlite(path) => {
                let lock = if exclusive {
                    Some(sqlite::lock_database_file(path)?)
                } else {
                    sqlite::ensure_parent(path)?;
                    None
                };
                let connector =
                    Arc::new(sqlite::SqliteConnector::new(path, config.connect_timeout));
                let manager = Manager {
                    connector: connector.clone(),
                    signals: signals.clone(),
                    pool_max: config.pool_max,
                };
                (
                    Backend::Sqlite(
                        builder(config, config.pool_min.max(1)).build_unchecked(manager),
                    ),
                    ConnectorRef::Sqlite(connector),
                    lock,
                )
            }
        };
        Ok(Database {
            backend,
            signals,
            connector,
            query_timeout: config.query_timeout,
            connect_timeout: config.connect_timeout,
            _sqlite_lock: lock,
            storage_fault: std::sync::Mutex::new(None),
        })
    }

    /// The backend and its pool.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Behind a transaction pooler, begins the transaction the statements
    /// of one checkout run in (with the session's settings as `SET LOCAL`),
    /// so the pooler keeps them on one server connection; true when it did.
    pub(crate) async fn begin_pooled(&self, conn: &mut AsyncPgConnection) -> Result<bool> {
        let ConnectorRef::Postgres(connector) = &self.connector else {
            return Ok(false);
        };
        let Some(begin) = connector.pooled_begin_sql() else {
            return Ok(false);
        };
        diesel_async::AnsiTransactionManager::begin_transaction_sql(conn, begin).await?;
        Ok(true)
    }

    /// Commits what [`begin_pooled`](Self::begin_pooled) began (rolls back on `Err`).
    pub(crate) async fn end_pooled<T>(
        &self,
        conn: &mut AsyncPgConnection,
        began: bool,
        result: Result<T>,
    ) -> Result<T> {
        use diesel_async::TransactionManager;
        type Manager = diesel_async::AnsiTransactionManager;
        if !began {
            return result;
        }
        match result {
            Ok(value) => {
                Manager::commit_transaction(conn).await?;
                Ok(value)
            }
            Err(e) => {
                // A failed rollback leaves the connection broken; the pool drops it.
                let _ = Manager::rollback_transaction(conn).await;
                Err(e)
            }
        }
    }

    /// The bound on one statement.
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// Applies pending migrations (PostgreSQL: under an advisory lock, so
    /// replicas starting together migrate once). Returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        match &self.connector {
            ConnectorRef::Postgres(connector) if connector.pooled_begin_sql().is_some() => {
                Err(Error::invalid(
                    "migrations_need_direct_connection",
                    "migrations hold a session-level advisory lock, which a transaction pooler \
                     cannot keep: run them with TENANT_PLANE_DATABASE_URL pointing at PostgreSQL \
                     itself (or a session-mode pool) and TP_DB_POOLER unset",
                ))
            }
            ConnectorRef::Postgres(connector) => migrate::postgres(connector).await,
            ConnectorRef::Sqlite(connector) => migrate::sqlite(connector).await,
        }
    }

    /// Whether the database answers and its schema is current, within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> DbProbe {
        let attempt = async {
            let version = with_conn!(self, |conn| {
                use diesel_async::RunQueryDsl;
                migrate::version_from(
                    diesel::sql_query(migrate::CURRENT_VERSION_SQL)
                        .load::<migrate::SchemaVersion>(conn)
                        .await,
                )
            })?;
            Ok::<_, Error>(version)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(version)) => DbProbe {
                reachable: true,
                migrations_pending: version.as_deref() < Some(migrate::latest_version(self)),
                error: None,
            },
            Ok(Err(e)) => DbProbe {
                reachable: false,
                migrations_pending: false,
                error: Some(match &e {
                    Error::Internal { detail } => detail.clone(),
                    // The connect error itself: authentication, TLS, DNS, …
                    _ if e.code() == "database_unavailable" => self
                        .signals
                        .last_error()
                        .map_or_else(|| e.to_string(), |(_, reason)| reason),
                    other => other.to_string(),
                }),
            },
            Err(_) => DbProbe {
                reachable: false,
                migrations_pending: false,
                error: Some(format!("no answer within {} ms", timeout.as_millis())),
            },
        }
    }

    /// On PostgreSQL reached directly, warns when this replica's pool is a
    /// large share of the connections the server has left: several
    /// replicas' pools can add up to more than `max_connections`.
    pub async fn check_connection_budget(&self, pool_max: u32) {
        #[derive(diesel::QueryableByName)]
        struct Budget {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            max: i32,
            #[diesel(sql_type = diesel::sql_types::Integer)]
            reserved: i32,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            used: i64,
        }
        let Backend::Postgres(_) = &self.backend else {
            return;
        };
        if matches!(&self.connector, ConnectorRef::Postgres(c) if c.pooled_begin_sql().is_some()) {
            // Behind a transaction pooler the server's slots are the pooler's.
            return;
        }
        let read = async {
            with_conn!(
                self,
                pg | conn
                    | {
                        use diesel_async::RunQueryDsl;
                        Ok(diesel::sql_query(
                    "SELECT current_setting('max_connections')::int AS max, \
                     current_setting('superuser_reserved_connections')::int AS reserved, \
                     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used",
                )
                .load::<Budget>(conn)
                .await?)
                    },
                sqlite | _conn | Ok(Vec::new())
            )
        };
        let budget: Result<Vec<Budget>> = read.await;
        let Some(b) = budget.ok().and_then(|rows| rows.into_iter().next()) else {
            return;
        };
        let left =
            i64::from(b.max - b.reserved) - b.used + i64::from(self.signals.open_connections());
        if i64::from(pool_max) * 2 > left {
            tracing::warn!(
                max_connections = b.max,
                superuser_reserved = b.reserved,
                in_use = b.used,
                pool_max,
                "DB_POOL_MAX is more than half the connections PostgreSQL has left: \
                 replicas will meet max_connections (they keep serving on what they have)"
            );
        }
    }

    /// The code of a storage fault in the last [`STORAGE_FAULT_HOLD`]
    /// (`storage_full`, `storage_unavailable`): readiness is 503 meanwhile.
    pub fn storage_fault(&self) -> Option<&'static str> {
        self.storage_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|(at, _)| at.elapsed() < STORAGE_FAULT_HOLD)
            .map(|(_, code)| code)
    }

    /// True while connecting fails (requests are failed fast).
    pub fn is_known_down(&self) -> bool {
        self.signals.is_down()
    }

    /// Pool occupancy for metrics.
    pub fn pool_state(&self) -> PoolState {
        let state = match &self.backend {
            Backend::Postgres(p) => p.state(),
            Backend::Sqlite(p) => p.state(),
        };
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            waiting: state.statistics.pending_gets(),
            timed_out: state.statistics.get_timed_out,
        }
    }

    /// Checks a connection out of `pool`, failing fast when the database is known to be down.
    ///
    /// An idle connection the server has closed meanwhile (a restart, a
    /// failover, a terminated backend) is dropped here rather than handed
    /// out to fail its statement: each idle one is tried at most once, then
    /// a new one is opened.
    pub(crate) async fn checkout<'a, K: pool::Connector>(
        &self,
        pool: &'a bb8::Pool<Manager<K>>,
    ) -> Result<bb8::PooledConnection<'a, Manager<K>>> {
        for _ in 0..=pool.state().idle_connections {
            let mut conn = self.checkout_once(pool).await?;
            // A closed one goes back as broken, and the pool drops it.
            if conn.is_open() {
                return Ok(conn);
            }
        }
        Err(unavailable_with("the server closed every connection tried"))
    }

    async fn checkout_once<'a, K: pool::Connector>(
        &self,
        pool: &'a bb8::Pool<Manager<K>>,
    ) -> Result<bb8::PooledConnection<'a, Manager<K>>> {
        if self.signals.is_down() {
            self.spawn_probe(pool);
            return Err(self.unavailable());
        }
        let mut failures = self.signals.subscribe();
        failures.mark_unchanged();
        tokio::select! {
            biased;
            got = pool.get() => got.map_err(|e| match e {
                bb8::RunError::User(e) => unavailable_with(&e.0),
                bb8::RunError::TimedOut if self.signals.is_down() => self.unavailable(),
                bb8::RunError::TimedOut => Error::unavailable(
                    "pool_exhausted",
                    format!(
                        "all database connections are busy (waited {} ms)",
                        self.connect_timeout.as_millis()
                    ),
                    Some(Duration::from_secs(1)),
                ),
            }),
            _ = failures.changed() => Err(self.unavailable()),
        }
    }

    /// Starts one background connect attempt, so a replica that fails fast still notices recovery.
    fn spawn_probe<K: pool::Connector>(&self, pool: &bb8::Pool<Manager<K>>) {
        if !self.signals.begin_probe() {
            return;
        }
        let pool = pool.clone();
        let signals = self.signals.clone();
        tokio::spawn(async move {
            // A successful connect clears the down flag in the manager; a
            // failed one ends the probe at once instead of waiting out the
            // pool timeout.
            let mut failures = signals.subscribe();
            failures.mark_unchanged();
            tokio::select! {
                got = pool.get() => {
                    // An idle connection may be a dead one nobody noticed yet:
                    // only an answered query proves the database is back.
                    if let Ok(mut conn) = got
                        && pool::ping(&mut conn).await
                    {
                        signals.connected();
                    }
                }
                _ = failures.changed() => {}
            }
            signals.end_probe();
        });
    }

    fn unavailable(&self) -> Error {
        let detail = self
            .signals
            .last_error()
            .map(|(_, e)| e)
            .unwrap_or_else(|| "no connection".to_owned());
        unavailable_with(&detail)
    }

    /// Turns the outcome of a bounded statement into a result, poisoning the connection on timeout.
    pub(crate) fn finish<C, T>(
        &self,
        conn: &mut Tracked<C>,
        outcome: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.code() == "database_unavailable" {
                    conn.poison();
                }
                if matches!(e.code(), "storage_full" | "storage_unavailable") {
                    *self.storage_fault.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((std::time::Instant::now(), e.code()));
                }
                Err(e)
            }
            Err(_) => {
                conn.poison();
                tracing::warn!(
                    timeout_ms = self.query_timeout.as_millis() as u64,
                    "database statement timed out; connection discarded"
                );
                Err(Error::unavailable(
                    "database_timeout",
                    "the database did not answer in time",
                    Some(Duration::from_secs(1)),
                ))
            }
        }
    }
}

fn unavailable_with(detail: &str) -> Error {
    tracing::debug!(detail, "database unavailable");
    Error::unavailable(
        "database_unavailable",
        "the database is unavailable",
        Some(Duration::from_secs(1)),
    )
}

#[cfg(test)]
mod tests {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    use super::*;
    use crate::config::Pooler;

    async fn write_blob(db: &Database, bytes: usize) -> Result<()> {
        with_conn!(
            db,
            pg | _c | Ok(()),
            sqlite | c | {
                diesel::sql_query(format!("INSERT INTO fill VALUES (zeroblob({bytes}))"))
                    .execute(c)
                    .await?;
                Ok(())
            }
        )
    }

    async fn pragma(db: &Database, sql: &str) -> Result<()> {
        with_conn!(
            db,
            pg | _c | Ok(()),
            sqlite | c | {
                c.batch_execute(sql).await?;
                Ok(())
            }
        )
    }

    #[tokio::test]
    async fn a_full_disk_is_a_retryable_503_that_readiness_shows() {
        let dir = std::env::temp_dir().join(format!("tp-full-{}", uuid::Uuid::new_v4()));
        let config = DatabaseConfig {
            url: DatabaseUrl::Sqlite(dir.join("tp.db")),
            pool_min: 1,
            // One connection, so the page limit below is the pool's.
            pool_max: 1,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            query_timeout: Duration::from_secs(5),
            auto_migrate: true,
            pooler: Pooler::None,
        };
        let db = Database::open(&config).unwrap();
        db.migrate().await.unwrap();
        pragma(&db, "CREATE TABLE fill (b BLOB)").await.unwrap();
        // SQLite's own "database or disk is full": no room to grow.
        pragma(&db, "PRAGMA max_page_count = 1").await.unwrap();
        let full = write_blob(&db, 1 << 20).await.unwrap_err();
        assert_eq!(
            (full.kind(), full.code()),
            (crate::ErrorKind::Unavailable, "storage_full")
        );
        assert!(full.retry_after().is_some());
        assert_eq!(db.storage_fault(), Some("storage_full"));
        // Room again: writes succeed on the same pool, no restart.
        pragma(&db, "PRAGMA max_page_count = 1000000")
            .await
            .unwrap();
        write_blob(&db, 1 << 20).await.unwrap();
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
