//! PostgreSQL connections: TLS with libpq's `sslmode` semantics (rustls),
//! timeouts and keepalives from the configuration, session settings for
//! pgvector, and connect errors that say why.

use std::time::Duration;

use diesel::connection::CacheSize;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_url;
use super::pool::Connector;
use crate::config::{ConfigError, DatabaseConfig, Pooler, vars};
use crate::error::{Error, Result};

/// Opens PostgreSQL connections with the replica's settings.
pub(crate) struct PgConnector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    session_sql: String,
    /// Behind a transaction pooler: the `BEGIN` with settings every statement runs under.
    begin_sql: Option<String>,
    connect_timeout: Duration,
}

impl PgConnector {
    pub(crate) fn new(url: &SecretString, db: &DatabaseConfig) -> Result<Self> {
        let target = pg_url::parse(url.expose_secret())
            .map_err(|e| Error::internal(ConfigError::new(vars::DATABASE_URL, e).to_string()))?;
        if target.unverified() {
            tracing::warn!(
                sslmode = ?target.mode,
                "PostgreSQL connections are encrypted when the server offers TLS, but the server's \
                 certificate is not verified; set sslmode=verify-full and sslrootcert to verify it"
            );
        }
        let tls = target.tls;
        let mut config = target.config;
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
        let settings = format!(
            "statement_timeout = {statement_timeout}; \
             SET {scope}idle_in_transaction_session_timeout = {statement_timeout}; \
             SET {scope}hnsw.iterative_scan = relaxed_order;",
            scope = if db.pooler == Pooler::PgBouncerTransaction {
                "LOCAL "
            } else {
                ""
            }
        );
        let (session_sql, begin_sql) = match db.pooler {
            Pooler::None => (format!("SET {settings}"), None),
            // A transaction pooler hands each transaction to any server
            // connection: session settings would land on one of them, so
            // every transaction sets its own.
            Pooler::PgBouncerTransaction => {
                (String::new(), Some(format!("BEGIN; SET LOCAL {settings}")))
            }
        };
        Ok(Self {
            config,
            tls,
            session_sql,
            begin_sql,
            connect_timeout: db.connect_timeout,
        })
    }

    /// What begins a transaction behind a transaction pooler (`None`: no pooler).
    pub(crate) fn pooled_begin_sql(&self) -> Option<&str> {
        self.begin_sql.as_deref()
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
                .connect(self.tls.clone())
                .await
                .map_err(|e| describe_connect_error(&e, &self.config))?;
            let pooled = self.begin_sql.is_some();
            let mut conn = if pooled {
                // diesel-async sets the time zone and encoding with two
                // prepared statements as it wraps the client: begun in one
                // transaction, they stay on one server connection. The
                // client's driver runs here so BEGIN can go first.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(|e| describe_connect_error(&e, &self.config))?;
                AsyncPgConnection::try_from(client)
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                AsyncPgConnection::try_from_client_and_connection(client, connection)
                    .await
                    .map_err(|e| e.to_string())?
            };
            if pooled {
                // A statement left prepared on a shared server connection
                // would meet another client's of the same name: cache
                // nothing, so each is closed inside the transaction that
                // used it, and drop what the setup prepared.
                conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                // tokio-postgres looks up a type it does not know (pgvector's
                // `vector`) with a statement it keeps prepared for the life
                // of the connection. Meet the type now, so that statement is
                // deallocated with the rest; without the extension there is
                // nothing to meet.
                conn.batch_execute("SAVEPOINT tp_types")
                    .await
                    .map_err(|e| e.to_string())?;
                let met = diesel::sql_query("SELECT NULL::vector AS v")
                    .execute(&mut conn)
                    .await;
                let end = if met.is_ok() {
                    "RELEASE SAVEPOINT tp_types; DEALLOCATE ALL; COMMIT"
                } else {
                    "ROLLBACK TO SAVEPOINT tp_types; DEALLOCATE ALL; COMMIT"
                };
                conn.batch_execute(end).await.map_err(|e| e.to_string())?;
            } else {
                conn.batch_execute(&self.session_sql)
                    .await
                    .map_err(|e| e.to_string())?;
            }
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

/// Where a connection goes, for messages: `host:port`, or several of them.
fn target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Says why connecting failed, in the operator's terms: the server's own
/// reason (authentication, unknown database, TLS required), a refused or
/// unresolvable address, or the certificate check that failed. Never the
/// password: tokio-postgres does not put it in errors, and neither do we.
pub(crate) fn describe_connect_error(
    error: &tokio_postgres::Error,
    config: &tokio_postgres::Config,
) -> String {
    let at = target(config);
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} (SQLSTATE {}) at {at}", db.message(), db.code().code());
        if db.message().contains("no encryption") {
            text.push_str("; the server requires TLS: set sslmode=require or stricter");
        }
        return text;
    }
    if let Some(tls) = crate::tls::describe_handshake_error(error) {
        return format!("{tls} at {at}");
    }
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        source = e.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("connection refused") {
        format!("connection refused at {at}")
    } else if lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
        || lower.contains("no address associated")
    {
        format!("DNS name not found: {at} ({chain})")
    } else if lower.contains("server does not support tls") {
        format!("the server does not offer TLS at {at}, and sslmode requires it")
    } else {
        format!("{chain} (at {at})")
    }
}
