//! Embedded migrations for both backends and the schema version check.

use std::sync::OnceLock;

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sqlite::Sqlite;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::pg::PgConnector;
use super::sqlite::SqliteConnector;
use super::{Backend, Database};
use crate::error::{Error, Result};

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Advisory lock key taken while migrating PostgreSQL ("tpmigr").
const LOCK_KEY: i64 = 0x0000_7470_6d69_6772;

/// Applies pending PostgreSQL migrations while holding the advisory lock.
pub(super) async fn postgres(connector: &PgConnector) -> Result<Vec<String>> {
    let conn = connector.open().await?;
    let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = AsyncConnectionWrapper::from(conn);
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        diesel::sql_query(format!("SELECT pg_advisory_lock({LOCK_KEY})"))
            .execute(&mut conn)
            .map_err(|e| Error::internal(format!("migration lock: {e}")))?;
        let applied = conn
            .run_pending_migrations(POSTGRES)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|e| migration_error(&e.to_string()));
        // Closing the connection releases the lock too; unlock to be explicit.
        let _ =
            diesel::sql_query(format!("SELECT pg_advisory_unlock({LOCK_KEY})")).execute(&mut conn);
        applied
    })
    .await
    .map_err(|e| Error::internal(format!("migration task: {e}")))?
}

/// Applies pending SQLite migrations (the file lock already excludes other processes).
pub(super) async fn sqlite(connector: &SqliteConnector) -> Result<Vec<String>> {
    let mut conn = connector.open_sync()?;
    tokio::task::spawn_blocking(move || {
        conn.run_pending_migrations(SQLITE)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|e| migration_error(&e.to_string()))
    })
    .await
    .map_err(|e| Error::internal(format!("migration task: {e}")))?
}

fn migration_error(text: &str) -> Error {
    if text.contains("extension \"vector\"") || text.contains("vector.control") {
        return Error::internal(
            "PostgreSQL has no pgvector extension: install pgvector 0.8 or newer on the \
             database server (CREATE EXTENSION vector must succeed)",
        );
    }
    Error::internal(format!("migration failed: {text}"))
}

/// The newest migration version this binary carries for the database's backend.
pub(super) fn latest_version(db: &Database) -> &'static str {
    static PG: OnceLock<String> = OnceLock::new();
    static LITE: OnceLock<String> = OnceLock::new();
    match db.backend() {
        Backend::Postgres(_) => {
            PG.get_or_init(|| newest(MigrationSource::<Pg>::migrations(&POSTGRES)))
        }
        Backend::Sqlite(_) => {
            LITE.get_or_init(|| newest(MigrationSource::<Sqlite>::migrations(&SQLITE)))
        }
    }
}

fn newest<DB: diesel::backend::Backend>(
    migrations: diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<DB>>>>,
) -> String {
    migrations
        .ok()
        .and_then(|m| m.iter().map(|m| m.name().version().to_string()).max())
        .unwrap_or_default()
}

#[derive(diesel::prelude::QueryableByName)]
pub(super) struct SchemaVersion {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub(super) v: Option<String>,
}

/// The query that reads the applied schema version.
pub(super) const CURRENT_VERSION_SQL: &str =
    "SELECT MAX(version) AS v FROM __diesel_schema_migrations";

/// Maps the version query's outcome: a missing table means nothing is applied yet.
pub(super) fn version_from(
    result: diesel::QueryResult<Vec<SchemaVersion>>,
) -> Result<Option<String>> {
    match result {
        Ok(rows) => Ok(rows.into_iter().next().and_then(|r| r.v)),
        Err(e) if e.to_string().contains("__diesel_schema_migrations") => Ok(None),
        Err(e) => Err(e.into()),
    }
}
