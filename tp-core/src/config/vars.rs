//! Every environment variable the tenant plane reads, by name.
//!
//! The names without a `TP_` prefix are fixed by the operator guide; the
//! `TP_` ones are this implementation's additions.

/// Tenant identifier; tokens and licenses must carry the same.
pub const TENANT_ID: &str = "TENANT_ID";
/// HS256 signing secret for access tokens (at least 32 bytes).
pub const JWT_SECRET: &str = "JWT_SECRET";
/// Previous signing secret, still accepted for verification during rotation.
pub const JWT_SECRET_PREVIOUS: &str = "TP_JWT_SECRET_PREVIOUS";
/// AES-256 key for secrets at rest, 64 hex characters.
pub const ENCRYPTION_KEY: &str = "ENCRYPTION_KEY";
/// Previous encryption key, still accepted for decryption during rotation.
pub const ENCRYPTION_KEY_PREVIOUS: &str = "TP_ENCRYPTION_KEY_PREVIOUS";
/// `postgresql://…` or `sqlite://path`; unset means embedded dev mode.
pub const DATABASE_URL: &str = "TENANT_PLANE_DATABASE_URL";
/// Optional Redis for global rate limits and instant revocation.
pub const REDIS_URL: &str = "REDIS_URL";
/// PEM CA certificates that sign the Redis servers' (a `rediss` URL); the platform's roots when unset.
pub const REDIS_CA_FILE: &str = "TP_REDIS_CA_FILE";
/// PEM client certificate for Redis (with [`REDIS_KEY_FILE`]).
pub const REDIS_CERT_FILE: &str = "TP_REDIS_CERT_FILE";
/// PEM private key of [`REDIS_CERT_FILE`].
pub const REDIS_KEY_FILE: &str = "TP_REDIS_KEY_FILE";
/// On-prem license, an RS256 JWT.
pub const LICENSE_KEY: &str = "ATLASAI_LICENSE_KEY";
/// PEM public key that verifies the license (`\n` escapes accepted).
pub const LICENSE_PUBLIC_KEY: &str = "CP_LICENSE_PUBLIC_KEY";
/// Refuse to start without a valid license.
pub const LICENSE_REQUIRED: &str = "TP_LICENSE_REQUIRED";
/// Days an expired license keeps serving (degraded) before API calls are refused.
pub const LICENSE_GRACE_DAYS: &str = "TP_LICENSE_GRACE_DAYS";
/// Minimum idle connections per replica.
pub const DB_POOL_MIN: &str = "DB_POOL_MIN";
/// Maximum connections per replica.
pub const DB_POOL_MAX: &str = "DB_POOL_MAX";
/// Connection (and pool wait) timeout in milliseconds.
pub const DB_CONNECT_TIMEOUT: &str = "DB_CONNECT_TIMEOUT";
/// Idle connection timeout in milliseconds.
pub const DB_IDLE_TIMEOUT: &str = "DB_IDLE_TIMEOUT";
/// Per-statement deadline in milliseconds.
pub const DB_QUERY_TIMEOUT: &str = "TP_DB_QUERY_TIMEOUT_MS";
/// `pgbouncer-transaction` when a transaction-pooling PgBouncer (below
/// 1.21) sits between the replicas and PostgreSQL; `none` otherwise.
pub const DB_POOLER: &str = "TP_DB_POOLER";
/// Run pending migrations at start (default true).
pub const AUTO_MIGRATE: &str = "TP_AUTO_MIGRATE";
/// TCP port.
pub const PORT: &str = "PORT";
/// Bind address (default 0.0.0.0, or 127.0.0.1 in dev mode).
pub const BIND_ADDR: &str = "TP_BIND_ADDR";
/// Data directory for the embedded database and dev secrets.
pub const DATA_DIR: &str = "TP_DATA_DIR";
/// Largest accepted request body in bytes.
pub const MAX_BODY_BYTES: &str = "TP_MAX_BODY_BYTES";
/// Deadline for a client to send request headers, in milliseconds.
pub const HEADER_READ_TIMEOUT: &str = "TP_HEADER_READ_TIMEOUT_MS";
/// Bound on reading a request body, in milliseconds (408 past it).
pub const BODY_READ_TIMEOUT: &str = "TP_BODY_READ_TIMEOUT_MS";
/// Deadline for a whole request, in milliseconds.
pub const REQUEST_TIMEOUT: &str = "TP_REQUEST_TIMEOUT_MS";
/// Async worker threads of a serving replica (default: one per CPU it may use).
pub const WORKER_THREADS: &str = "TP_WORKER_THREADS";
/// After SIGTERM: how long readiness fails while the replica keeps serving.
pub const DRAIN_DELAY: &str = "TP_DRAIN_DELAY_MS";
/// After the drain delay: how long in-flight requests may take to finish.
pub const SHUTDOWN_TIMEOUT: &str = "TP_SHUTDOWN_TIMEOUT_MS";
/// Most client connections one replica keeps open; more are closed at once.
pub const MAX_CONNECTIONS: &str = "TP_MAX_CONNECTIONS";
/// Comma-separated CIDRs of proxies whose forwarding headers are trusted.
pub const TRUSTED_PROXIES: &str = "TP_TRUSTED_PROXIES";
/// `host:port` of a separate listener for `GET /metrics`; unset: the API port.
pub const METRICS_ADDR: &str = "TP_METRICS_ADDR";
/// Access token lifetime in seconds.
pub const ACCESS_TOKEN_TTL: &str = "TP_ACCESS_TOKEN_TTL_SECS";
/// Refresh token (session) lifetime in seconds.
pub const REFRESH_TOKEN_TTL: &str = "TP_REFRESH_TOKEN_TTL_SECS";
/// Seconds a used refresh token still answers with the pair it was
/// exchanged for (a retry, a second tab); 0 turns the grace off.
pub const REFRESH_REUSE_GRACE: &str = "TP_REFRESH_REUSE_GRACE_SECS";
/// `iss` of issued tokens.
pub const JWT_ISSUER: &str = "TP_JWT_ISSUER";
/// `aud` of issued tokens.
pub const JWT_AUDIENCE: &str = "TP_JWT_AUDIENCE";
/// Interval of the database poll that backs up Redis revocation messages, in ms.
pub const REVOCATION_POLL: &str = "TP_REVOCATION_POLL_MS";
/// Redis command timeout in milliseconds.
pub const REDIS_TIMEOUT: &str = "TP_REDIS_TIMEOUT_MS";
/// Requests per minute per authenticated principal.
pub const RATE_LIMIT_PER_MINUTE: &str = "TP_RATE_LIMIT_PER_MINUTE";
/// Burst size per authenticated principal.
pub const RATE_LIMIT_BURST: &str = "TP_RATE_LIMIT_BURST";
/// Requests per minute per client IP on anonymous routes.
pub const RATE_LIMIT_ANON_PER_MINUTE: &str = "TP_RATE_LIMIT_ANON_PER_MINUTE";
/// Login attempts per minute per client IP.
pub const RATE_LIMIT_LOGIN_PER_MINUTE: &str = "TP_RATE_LIMIT_LOGIN_PER_MINUTE";
/// Failed authentications (bad tokens, unknown API keys) per client IP per minute.
pub const RATE_LIMIT_AUTH_FAILURES_PER_MINUTE: &str = "TP_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE";
/// What to do when Redis fails: `local`, `open` or `closed`.
pub const RATE_LIMIT_FALLBACK: &str = "TP_RATE_LIMIT_FALLBACK";
/// Most requests of one key a replica admits from one Redis round trip
/// (a local lease of global quota); `1` asks Redis for every request.
pub const RATE_LIMIT_LEASE_MAX: &str = "TP_RATE_LIMIT_LEASE_MAX";
/// Disable rate limiting entirely (`true` to disable).
pub const RATE_LIMIT_DISABLED: &str = "TP_RATE_LIMIT_DISABLED";
/// Log format: `json` or `text`.
pub const LOG_FORMAT: &str = "TP_LOG_FORMAT";
