//! The one error type of tp-core and its transport-free kind.
//!
//! Every error carries a stable, machine-readable `code` (snake_case) that
//! clients may match on. Messages of client errors are safe to show; the
//! detail of internal errors is for logs only and never leaves the process.

use std::time::Duration;

/// What went wrong, as a small closed set a transport maps to its status codes.
///
/// Voluntarily a restricted subset: a new variant is a breaking change for
/// every transport, so it is added only when clients must react differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or violates a documented limit.
    InvalidInput,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request body is not in a format the operation accepts.
    UnsupportedMediaType,
    /// No credentials, or credentials that do not verify.
    Unauthenticated,
    /// Valid credentials without the right to do this.
    Forbidden,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with the current state (duplicate name, …).
    Conflict,
    /// The caller sent too many requests; retry after the given delay.
    RateLimited,
    /// A dependency (database, …) is unavailable or the replica is draining.
    Unavailable,
    /// The request took longer than allowed.
    Timeout,
    /// The client did not send its request in time.
    ClientTimeout,
    /// The license does not allow this call.
    LicenseRequired,
    /// A bug or an unexpected failure; details only in the log.
    Internal,
}

/// The error type of tp-core.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's input is invalid. The message says what and why.
    #[error("{message}")]
    InvalidInput {
        /// Stable machine-readable code.
        code: &'static str,
        /// Human-readable explanation, safe to return to the caller.
        message: String,
    },
    /// The body is larger than the configured limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's content type is not accepted.
    #[error("{message}")]
    UnsupportedMediaType {
        /// Safe explanation naming the accepted type.
        message: String,
    },
    /// Missing or invalid credentials.
    #[error("{message}")]
    Unauthenticated {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation (never says which check failed in detail).
        message: String,
    },
    /// The principal lacks the required role.
    #[error("{message}")]
    Forbidden {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
    },
    /// The named resource does not exist.
    #[error("{message}")]
    NotFound {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
    },
    /// The request conflicts with existing state.
    #[error("{message}")]
    Conflict {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
    },
    /// Rate limit exceeded.
    #[error("rate limit exceeded, retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// How long until a request would be admitted.
        retry_after: Duration,
    },
    /// A dependency is down, the pool is exhausted or the replica drains.
    #[error("{message}")]
    Unavailable {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
        /// Suggested delay before retrying, when known.
        retry_after: Option<Duration>,
    },
    /// An operation exceeded its deadline.
    #[error("{message}")]
    Timeout {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
    },
    /// The client sent its request too slowly.
    #[error("{message}")]
    ClientTimeout {
        /// Safe explanation.
        message: String,
    },
    /// The license is missing, invalid or expired past its grace period.
    #[error("{message}")]
    LicenseRequired {
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe explanation.
        message: String,
    },
    /// Unexpected failure. The detail is logged, never returned.
    #[error("internal error: {detail}")]
    Internal {
        /// What happened, for the log only.
        detail: String,
    },
}

/// Result alias used across tp-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The transport-free kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Error::UnsupportedMediaType { .. } => ErrorKind::UnsupportedMediaType,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::ClientTimeout { .. } => ErrorKind::ClientTimeout,
            Error::LicenseRequired { .. } => ErrorKind::LicenseRequired,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { code, .. }
            | Error::Unauthenticated { code, .. }
            | Error::Forbidden { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unavailable { code, .. }
            | Error::Timeout { code, .. }
            | Error::LicenseRequired { code, .. } => code,
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType { .. } => "unsupported_media_type",
            Error::RateLimited { .. } => "rate_limited",
            Error::ClientTimeout { .. } => "body_timeout",
            Error::Internal { .. } => "internal",
        }
    }

    /// The delay a client should wait before retrying, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => Some(*retry_after),
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// An invalid-input error with the given code and message.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            code,
            message: message.into(),
        }
    }

    /// A not-found error with the given code and message.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    /// A conflict error with the given code and message.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    /// An unauthenticated error with the given code and message.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unauthenticated {
            code,
            message: message.into(),
        }
    }

    /// A forbidden error with the given code and message.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Error::Forbidden {
            code,
            message: message.into(),
        }
    }

    /// An unavailable error with the given code, message and retry hint.
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Error::Unavailable {
            code,
            message: message.into(),
            retry_after,
        }
    }

    /// An internal error; `detail` goes to the log only.
    pub fn internal(detail: impl Into<String>) -> Self {
        Error::Internal {
            detail: detail.into(),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error as D};
        match e {
            D::NotFound => Error::not_found("not_found", "not found"),
            D::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                Error::conflict("already_exists", "a resource with this key already exists")
            }
            D::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => Error::unavailable(
                "database_unavailable",
                "the database is unavailable",
                Some(Duration::from_secs(1)),
            )
            .with_log(info.message()),
            D::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, info) => Error::unavailable(
                "database_read_only",
                "the database is read-only (failover in progress)",
                Some(Duration::from_secs(1)),
            )
            .with_log(info.message()),
            D::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => busy(info.message()),
            other => {
                let text = other.to_string();
                if let Some(error) = storage_fault(&text) {
                    return error.with_log(&text);
                }
                // SQLite's SQLITE_BUSY and SQLITE_LOCKED: another writer held
                // the lock past the busy timeout.
                if text.contains("database is locked") || text.contains("database table is locked")
                {
                    return busy(&text);
                }
                // tokio-postgres reports a dead socket as an unknown database error.
                if is_connection_failure(&text) {
                    Error::unavailable(
                        "database_unavailable",
                        "the database is unavailable",
                        Some(Duration::from_secs(1)),
                    )
                    .with_log(&text)
                } else {
                    Error::internal(format!("database: {text}"))
                }
            }
        }
    }
}

/// A database that cannot write for lack of space or a broken file, as a
/// retryable 503 rather than a 500: SQLite's SQLITE_FULL, SQLITE_READONLY,
/// SQLITE_CANTOPEN and SQLITE_IOERR, PostgreSQL's disk_full (53100).
fn storage_fault(text: &str) -> Option<Error> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("database or disk is full")
        || lower.contains("no space left on device")
        || lower.contains("could not extend file")
    {
        return Some(Error::unavailable(
            "storage_full",
            "the database's storage is full",
            Some(Duration::from_secs(5)),
        ));
    }
    if lower.contains("attempt to write a readonly database")
        || lower.contains("unable to open database file")
        || lower.contains("disk i/o error")
    {
        return Some(Error::unavailable(
            "storage_unavailable",
            "the database's storage cannot be written",
            Some(Duration::from_secs(5)),
        ));
    }
    None
}

/// Another transaction held what this one needed for longer than the database waits.
fn busy(detail: &str) -> Error {
    Error::unavailable(
        "database_busy",
        "the database is busy; retry shortly",
        Some(Duration::from_secs(1)),
    )
    .with_log(detail)
}

/// Whether a database error text describes a lost connection rather than a bad query.
pub(crate) fn is_connection_failure(text: &str) -> bool {
    const MARKERS: &[&str] = &[
        "connection closed",
        "error communicating with database",
        "terminating connection",
        "server closed the connection",
        "broken pipe",
        "connection reset",
        "connection refused",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "cannot execute",
    ];
    let lower = text.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

impl Error {
    fn with_log(self, detail: &str) -> Self {
        tracing::warn!(code = self.code(), detail, "database error");
        self
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::internal(format!("json: {e}"))
    }
}
