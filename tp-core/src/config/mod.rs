//! Typed configuration with defaults and validation.
//!
//! Reading the process environment happens in the binary behind
//! [`EnvSource`]; tests and embedding hosts pass a map. Every error names the
//! variable at fault, and no `Debug` output shows a secret.

mod dev;
mod parse;
pub mod vars;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretBox, SecretString};

pub use parse::redact_url;

/// Where configuration values come from.
pub trait EnvSource {
    /// The raw value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

impl<S: BuildHasher> EnvSource for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl EnvSource for BTreeMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).map(|v| (*v).to_owned())
    }
}

/// A configuration value that cannot be used, with the variable that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// Why its value cannot be used (never the value itself when secret).
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// The complete configuration of one replica.
#[derive(Debug)]
pub struct Config {
    /// Tenant this plane serves; tokens and licenses must name it.
    pub tenant_id: String,
    /// True when running the embedded default (no database URL given).
    pub dev_mode: bool,
    /// Directory for the embedded database and dev secrets.
    pub data_dir: PathBuf,
    /// Database connection settings.
    pub database: DatabaseConfig,
    /// Redis settings, when `REDIS_URL` is set.
    pub redis: Option<RedisConfig>,
    /// Token and session settings.
    pub auth: AuthConfig,
    /// Keys for secrets at rest.
    pub encryption: EncryptionConfig,
    /// License settings.
    pub license: LicenseConfig,
    /// Listener and request limits.
    pub http: HttpConfig,
    /// Rate limit policy.
    pub rate_limit: RateLimitConfig,
    /// Dev mode only: the password of the `admin` user created on first start.
    pub dev_admin_password: Option<SecretString>,
}

/// Which database the plane stores its data in.
pub enum DatabaseUrl {
    /// A PostgreSQL URL (libpq style; multi-host and `target_session_attrs` allowed).
    Postgres(SecretString),
    /// A SQLite database file.
    Sqlite(PathBuf),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => {
                write!(f, "Postgres({})", redact_url(url.expose_secret()))
            }
            DatabaseUrl::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
        }
    }
}

/// Database pool settings, named as in the operator guide.
#[derive(Debug)]
pub struct DatabaseConfig {
    /// Where the data lives.
    pub url: DatabaseUrl,
    /// `DB_POOL_MIN`: idle connections kept open.
    pub pool_min: u32,
    /// `DB_POOL_MAX`: connections per replica at most.
    pub pool_max: u32,
    /// `DB_CONNECT_TIMEOUT`: bound on connecting and on waiting for a pooled connection.
    pub connect_timeout: Duration,
    /// `DB_IDLE_TIMEOUT`: idle connections above the minimum close after this.
    pub idle_timeout: Duration,
    /// Bound on one statement, so a black-holed connection cannot hang a request.
    pub query_timeout: Duration,
    /// Run pending migrations at start.
    pub auto_migrate: bool,
    /// What sits between the replica and PostgreSQL.
    pub pooler: Pooler,
}

/// A connection pooler in front of PostgreSQL, and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// A direct connection, or a pooler in session mode: one server
    /// session per connection, so prepared statements and session settings work.
    #[default]
    None,
    /// PgBouncer in transaction mode (below 1.21, no protocol-level
    /// prepared statements): every statement runs inside a transaction,
    /// unprepared statements only, settings with `SET LOCAL`.
    PgBouncerTransaction,
}

/// Redis settings.
pub struct RedisConfig {
    /// `redis[s]://`, `redis[s]-sentinel://` or `redis[s]-cluster://` URL.
    pub url: SecretString,
    /// CA and client certificate files for a TLS URL.
    pub tls_files: crate::redis::RedisTlsFiles,
    /// Bound on each command; past it the plane falls back to local state.
    pub command_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("tls_files", &self.tls_files)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// Token and session settings.
#[derive(Debug)]
pub struct AuthConfig {
    /// HS256 secret for signing and verifying access tokens.
    pub jwt_secret: SecretString,
    /// Previous secret, still verified during rotation.
    pub jwt_secret_previous: Option<SecretString>,
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// Lifetime of sessions (refresh tokens).
    pub refresh_ttl: Duration,
    /// How long a used refresh token still answers with its successor.
    pub refresh_reuse_grace: Duration,
    /// Clock skew tolerated when checking `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Interval of the database poll that backs up Redis revocation messages.
    pub revocation_poll: Duration,
}

/// Keys for secrets at rest.
#[derive(Debug)]
pub struct EncryptionConfig {
    /// Current AES-256 key.
    pub key: SecretBox<[u8; 32]>,
    /// Previous key, used to decrypt during rotation.
    pub previous: Option<SecretBox<[u8; 32]>>,
}

/// License settings.
#[derive(Debug)]
pub struct LicenseConfig {
    /// The license JWT, if given.
    pub key: Option<SecretString>,
    /// PEM public key that verifies the license.
    pub public_key: Option<String>,
    /// Refuse to start without a valid license.
    pub required: bool,
    /// How long an expired license keeps serving.
    pub grace: Duration,
}

/// Listener and request limits.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to bind.
    pub bind: IpAddr,
    /// Port to bind (0 picks a free one).
    pub port: u16,
    /// A separate listener for `GET /metrics`, off the API port.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Deadline for request headers.
    pub header_read_timeout: Duration,
    /// Bound on reading a request body.
    pub body_read_timeout: Duration,
    /// Deadline for a whole request.
    pub request_timeout: Duration,
    /// After SIGTERM: readiness fails at once and serving goes on this long.
    pub drain_delay: Duration,
    /// Then: in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For`/`X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Async worker threads; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
}

/// What the rate limiter does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFallback {
    /// Decide with this replica's own limiter (default).
    Local,
    /// Admit the request.
    Open,
    /// Refuse the request with 503.
    Closed,
}

/// Rate limit policy.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// False disables all limits.
    pub enabled: bool,
    /// Requests per minute per authenticated principal.
    pub per_minute: u32,
    /// Burst per authenticated principal.
    pub burst: u32,
    /// Requests per minute per client IP on anonymous routes.
    pub anon_per_minute: u32,
    /// Login attempts per minute per client IP.
    pub login_per_minute: u32,
    /// Failed authentications per client IP per minute.
    pub auth_failures_per_minute: u32,
    /// Behaviour when Redis fails.
    pub fallback: RedisFallback,
    /// Most requests of one key admitted from one Redis round trip.
    pub lease_max: u32,
}

/// `TP_WORKER_THREADS`, read on its own: the runtime that serves is built
/// before the rest of the configuration is read. `None`: one thread per CPU
/// the process may use (its affinity and cgroup quota).
pub fn worker_threads(env: &dyn EnvSource) -> Result<Option<usize>, ConfigError> {
    parse::optional(env, vars::WORKER_THREADS)
        .map(|_| parse::number(env, vars::WORKER_THREADS, 1, 1, 1024))
        .transpose()
}

impl Config {
    /// Reads and validates the whole configuration.
    ///
    /// With no database URL the plane runs in dev mode: SQLite under the data
    /// directory, loopback only, and secrets generated once into
    /// `<data dir>/dev-secrets.env` (mode 0600) unless given.
    pub fn from_env(env: &dyn EnvSource) -> Result<Config, ConfigError> {
        use parse::{boolean, millis, number, optional, seconds};

        let database_url = optional(env, vars::DATABASE_URL);
        let dev_mode = database_url.is_none();
        let data_dir =
            PathBuf::from(optional(env, vars::DATA_DIR).unwrap_or_else(|| ".tp-data".to_owned()));

        let tenant_id = match optional(env, vars::TENANT_ID) {
            Some(id) => id,
            None if dev_mode => "dev".to_owned(),
            None => return Err(ConfigError::new(vars::TENANT_ID, "is required")),
        };
        validate_tenant_id(&tenant_id)?;

        let dev_secrets = if dev_mode {
            Some(dev::ensure_dev_secrets(&data_dir)?)
        } else {
            None
        };
        let secret_or_dev = |var: &'static str, dev: Option<&String>| match optional(env, var) {
            Some(v) => Ok(v),
            None => dev
                .cloned()
                .ok_or_else(|| ConfigError::new(var, "is required")),
        };

        let jwt_secret = secret_or_dev(
            vars::JWT_SECRET,
            dev_secrets.as_ref().map(|d| &d.jwt_secret),
        )?;
        parse::jwt_secret(vars::JWT_SECRET, &jwt_secret)?;
        let jwt_secret_previous = optional(env, vars::JWT_SECRET_PREVIOUS);
        if let Some(prev) = &jwt_secret_previous {
            parse::jwt_secret(vars::JWT_SECRET_PREVIOUS, prev)?;
        }

        let encryption_key = secret_or_dev(
            vars::ENCRYPTION_KEY,
            dev_secrets.as_ref().map(|d| &d.encryption_key),
        )?;
        let key = parse::hex_key(vars::ENCRYPTION_KEY, &encryption_key)?;
        let previous = optional(env, vars::ENCRYPTION_KEY_PREVIOUS)
            .map(|raw| parse::hex_key(vars::ENCRYPTION_KEY_PREVIOUS, &raw))
            .transpose()?;

        let url = match &database_url {
            None => DatabaseUrl::Sqlite(data_dir.join("tenant-plane.db")),
            Some(raw) => parse_database_url(raw)?,
        };
        let database = DatabaseConfig {
            url,
            pool_min: number(env, vars::DB_POOL_MIN, 2, 0, 1000)?,
            pool_max: number(env, vars::DB_POOL_MAX, 10, 1, 1000)?,
            connect_timeout: millis(env, vars::DB_CONNECT_TIMEOUT, 5000, 100, 600_000)?,
            idle_timeout: millis(env, vars::DB_IDLE_TIMEOUT, 30_000, 1000, 86_400_000)?,
            query_timeout: millis(env, vars::DB_QUERY_TIMEOUT, 30_000, 100, 3_600_000)?,
            auto_migrate: false,
            pooler: Pooler::None,
        };
        let mut database = database;
        database.pooler = match optional(env, vars::DB_POOLER).as_deref() {
            None | Some("none") => match &database.url {
                DatabaseUrl::Postgres(url)
                    if crate::db::pg_url::asks_for_pgbouncer(url.expose_secret()) =>
                {
                    Pooler::PgBouncerTransaction
                }
                _ => Pooler::None,
            },
            Some("pgbouncer-transaction") => Pooler::PgBouncerTransaction,
            Some(other) => {
                return Err(ConfigError::new(
                    vars::DB_POOLER,
                    format!("must be none or pgbouncer-transaction, got {other:?}"),
                ));
            }
        };
        if database.pooler == Pooler::PgBouncerTransaction {
            if matches!(database.url, DatabaseUrl::Sqlite(_)) {
                return Err(ConfigError::new(
                    vars::DB_POOLER,
                    "applies to PostgreSQL only",
                ));
            }
            // Migrations hold a session-level advisory lock, which a
            // transaction pooler would take on one server connection and
            // release on another.
            if boolean(env, vars::AUTO_MIGRATE, false)? {
                return Err(ConfigError::new(
                    vars::AUTO_MIGRATE,
                    "must be false behind a transaction pooler: run `tenant-plane migrate` \
                     with TENANT_PLANE_DATABASE_URL pointing at PostgreSQL itself (or a session-mode pool)",
                ));
            }
        } else {
            database.auto_migrate = boolean(env, vars::AUTO_MIGRATE, true)?;
        }

        let redis = optional(env, vars::REDIS_URL)
            .map(|url| -> Result<RedisConfig, ConfigError> {
                let tls_files = redis_tls_files(env)?;
                // Parsed in full, TLS files included, so a bad one stops the start.
                crate::redis::check_target(&url, &tls_files)?;
                Ok(RedisConfig {
                    url: url.into(),
                    tls_files,
                    command_timeout: millis(env, vars::REDIS_TIMEOUT, 250, 10, 60_000)?,
                })
            })
            .transpose()?;

        let access_ttl = seconds(env, vars::ACCESS_TOKEN_TTL, 900, 30, 86_400)?;
        let auth = AuthConfig {
            jwt_secret: jwt_secret.into(),
            jwt_secret_previous: jwt_secret_previous.map(Into::into),
            issuer: optional(env, vars::JWT_ISSUER).unwrap_or_else(|| "tenant-plane".to_owned()),
            audience: optional(env, vars::JWT_AUDIENCE)
                .unwrap_or_else(|| format!("tenant-plane:{tenant_id}")),
            access_ttl,
            refresh_ttl: seconds(env, vars::REFRESH_TOKEN_TTL, 30 * 86_400, 60, 365 * 86_400)?,
            refresh_reuse_grace: seconds(env, vars::REFRESH_REUSE_GRACE, 10, 0, 300)?,
            leeway: Duration::from_secs(30),
            revocation_poll: millis(env, vars::REVOCATION_POLL, 2000, 100, 600_000)?,
        };

        let license = LicenseConfig {
            key: optional(env, vars::LICENSE_KEY).map(Into::into),
            public_key: optional(env, vars::LICENSE_PUBLIC_KEY)
                .map(|pem| parse::unescape_newlines(&pem)),
            required: boolean(env, vars::LICENSE_REQUIRED, false)?,
            grace: seconds(env, vars::LICENSE_GRACE_DAYS, 14, 0, 365)?.saturating_mul(86_400),
        };

        let default_bind = if dev_mode {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let bind = match optional(env, vars::BIND_ADDR) {
            None => default_bind,
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::new(
                    vars::BIND_ADDR,
                    format!("must be an IP address, got {raw:?}"),
                )
            })?,
        };
        let http = HttpConfig {
            bind,
            port: number(env, vars::PORT, 3000, 0, 65_535)?,
            max_body_bytes: number(env, vars::MAX_BODY_BYTES, 8 << 20, 1024, 1 << 30)?,
            header_read_timeout: millis(env, vars::HEADER_READ_TIMEOUT, 10_000, 100, 600_000)?,
            body_read_timeout: millis(env, vars::BODY_READ_TIMEOUT, 30_000, 100, 3_600_000)?,
            request_timeout: millis(env, vars::REQUEST_TIMEOUT, 60_000, 100, 3_600_000)?,
            // No load balancer to wait for in dev mode: Ctrl-C stops at once.
            drain_delay: millis(
                env,
                vars::DRAIN_DELAY,
                if dev_mode { 0 } else { 5000 },
                0,
                600_000,
            )?,
            shutdown_timeout: millis(env, vars::SHUTDOWN_TIMEOUT, 20_000, 0, 3_600_000)?,
            max_connections: number(env, vars::MAX_CONNECTIONS, 10_000, 1, 1_000_000)?,
            trusted_proxies: parse_trusted_proxies(optional(env, vars::TRUSTED_PROXIES))?,
            metrics_addr: optional(env, vars::METRICS_ADDR)
                .map(|raw| {
                    raw.parse::<std::net::SocketAddr>().map_err(|_| {
                        ConfigError::new(
                            vars::METRICS_ADDR,
                            format!("must be an address and port like 127.0.0.1:9464, got {raw:?}"),
                        )
                    })
                })
                .transpose()?,
            worker_threads: worker_threads(env)?,
        };

        let rate_limit = RateLimitConfig {
            enabled: !boolean(env, vars::RATE_LIMIT_DISABLED, false)?,
            per_minute: number(env, vars::RATE_LIMIT_PER_MINUTE, 1200, 1, 10_000_000)?,
            burst: number(env, vars::RATE_LIMIT_BURST, 100, 1, 1_000_000)?,
            anon_per_minute: number(env, vars::RATE_LIMIT_ANON_PER_MINUTE, 300, 1, 10_000_000)?,
            login_per_minute: number(env, vars::RATE_LIMIT_LOGIN_PER_MINUTE, 10, 1, 100_000)?,
            auth_failures_per_minute: number(
                env,
                vars::RATE_LIMIT_AUTH_FAILURES_PER_MINUTE,
                60,
                1,
                1_000_000,
            )?,
            lease_max: number(env, vars::RATE_LIMIT_LEASE_MAX, 32, 1, 1024)?,
            fallback: match optional(env, vars::RATE_LIMIT_FALLBACK).as_deref() {
                None | Some("local") => RedisFallback::Local,
                Some("open") => RedisFallback::Open,
                Some("closed") => RedisFallback::Closed,
                Some(other) => {
                    return Err(ConfigError::new(
                        vars::RATE_LIMIT_FALLBACK,
                        format!("must be local, open or closed, got {other:?}"),
                    ));
                }
            },
        };

        let config = Config {
            tenant_id,
            dev_mode,
            data_dir,
            database,
            redis,
            auth,
            encryption: EncryptionConfig {
                key: SecretBox::new(Box::new(key)),
                previous: previous.map(|k| SecretBox::new(Box::new(k))),
            },
            license,
            http,
            rate_limit,
            dev_admin_password: dev_secrets.map(|d| d.admin_password.into()),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between values (each value was checked on its own when read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database.pool_min > self.database.pool_max {
            return Err(ConfigError::new(
                vars::DB_POOL_MIN,
                format!(
                    "must not exceed DB_POOL_MAX ({} > {})",
                    self.database.pool_min, self.database.pool_max
                ),
            ));
        }
        if self.license.required && self.license.key.is_none() {
            return Err(ConfigError::new(
                vars::LICENSE_KEY,
                "is required because TP_LICENSE_REQUIRED=true",
            ));
        }
        if self.license.key.is_some() && self.license.public_key.is_none() {
            return Err(ConfigError::new(
                vars::LICENSE_PUBLIC_KEY,
                "is required to verify ATLASAI_LICENSE_KEY",
            ));
        }
        let secret = self.auth.jwt_secret.expose_secret();
        if let Some(prev) = &self.auth.jwt_secret_previous
            && prev.expose_secret() == secret
        {
            return Err(ConfigError::new(
                vars::JWT_SECRET_PREVIOUS,
                "must differ from JWT_SECRET",
            ));
        }
        Ok(())
    }

    /// The kind of vector index this configuration uses, as health reports it.
    pub fn vector_db(&self) -> &'static str {
        match self.database.url {
            DatabaseUrl::Postgres(_) => "pgvector",
            DatabaseUrl::Sqlite(_) => "embedded",
        }
    }
}

fn validate_tenant_id(id: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            vars::TENANT_ID,
            "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

fn redis_tls_files(env: &dyn EnvSource) -> Result<crate::redis::RedisTlsFiles, ConfigError> {
    let file = |var| parse::optional(env, var).map(PathBuf::from);
    let client = match (file(vars::REDIS_CERT_FILE), file(vars::REDIS_KEY_FILE)) {
        (Some(cert), Some(key)) => Some(crate::tls::ClientIdentity { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                vars::REDIS_KEY_FILE,
                "is required with TP_REDIS_CERT_FILE",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                vars::REDIS_CERT_FILE,
                "is required with TP_REDIS_KEY_FILE",
            ));
        }
    };
    Ok(crate::redis::RedisTlsFiles {
        ca_file: file(vars::REDIS_CA_FILE),
        client,
    })
}

fn parse_database_url(raw: &str) -> Result<DatabaseUrl, ConfigError> {
    if raw.starts_with("postgresql://") || raw.starts_with("postgres://") {
        // Parsed in full, TLS files included, so a bad one stops the start.
        if let Err(e) = crate::db::pg_url::parse(raw) {
            return Err(ConfigError::new(
                vars::DATABASE_URL,
                format!("is not a valid PostgreSQL URL: {e}"),
            ));
        }
        return Ok(DatabaseUrl::Postgres(raw.to_owned().into()));
    }
    if let Some(path) = raw.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(ConfigError::new(
                vars::DATABASE_URL,
                "sqlite:// needs a file path, e.g. sqlite:///var/lib/tenant-plane/tp.db",
            ));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    Err(ConfigError::new(
        vars::DATABASE_URL,
        format!(
            "must start with postgresql:// or sqlite://, got {:?}",
            redact_url(raw)
        ),
    ))
}

fn parse_trusted_proxies(raw: Option<String>) -> Result<Vec<IpNet>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        vars::TRUSTED_PROXIES,
                        format!("{s:?} is not an IP address or CIDR"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
