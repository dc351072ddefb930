//! PostgreSQL connections: timeouts and keepalives from the configuration,
//! session settings for pgvector, no TLS library in the build.

use std::time::Duration;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use secrecy::{ExposeSecret, SecretString};

use super::pool::Connector;
use crate::config::{ConfigError, DatabaseConfig, vars};
use crate::error::{Error, Result};

/// Opens PostgreSQL connections with the replica's settings.
pub(crate) struct PgConnector {
    config: tokio_postgres::Config,
    session_sql: String,
    connect_timeout: Duration,
}

impl PgConnector {
    pub(crate) fn new(url: &SecretString, db: &DatabaseConfig) -> Result<Self> {
        let mut config: tokio_postgres::Config = url.expose_secret().parse().map_err(|e| {
            Error::internal(ConfigError::new(vars::DATABASE_URL, format!("{e}")).to_string())
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(db.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("tenant-plane");
        }
        // Find dead peers: an unacknowledged write fails after the query
        // timeout, an idle connection to a vanished host after ~16 s.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(db.query_timeout.max(Duration::from_secs(1)));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let statement_timeout = db.query_timeout.as_millis();
        let session_sql = format!(
            "SET statement_timeout = {statement_timeout}; \
             SET idle_in_transaction_session_timeout = {statement_timeout}; \
             SET hnsw.iterative_scan = relaxed_order;"
        );
        Ok(Self {
            config,
            session_sql,
            connect_timeout: db.connect_timeout,
        })
    }

    /// Opens a connection outside the pool (for migrations).
    pub(crate) async fn open(&self) -> Result<AsyncPgConnection> {
        self.connect().await.map_err(|e| {
            Error::unavailable(
                "database_unavailable",
                format!("cannot connect to PostgreSQL: {e}"),
                None,
            )
        })
    }
}

impl Connector for PgConnector {
    type Conn = AsyncPgConnection;

    async fn connect(&self) -> Result<AsyncPgConnection, String> {
        // tokio-postgres bounds the TCP connect only; a silent peer could
        // hold the startup handshake forever. Bound the whole of it.
        let attempt = async {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let mut conn = AsyncPgConnection::try_from_client_and_connection(client, connection)
                .await
                .map_err(|e| e.to_string())?;
            conn.batch_execute(&self.session_sql)
                .await
                .map_err(|e| e.to_string())?;
            Ok(conn)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| {
                format!(
                    "no answer within {} ms while connecting",
                    self.connect_timeout.as_millis()
                )
            })?
    }
}
