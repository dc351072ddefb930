//! The one place where errors become HTTP responses (RFC 9457 problem+json).
//!
//! A 5xx never carries internal text: clients get a generic message and the
//! request id; the detail goes to the log under the same id.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use tp_core::{Error, ErrorKind};

use crate::Response;

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// Problem details as sent to clients.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type (the status reason).
    pub title: &'a str,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'a str,
    /// The request this answers, for support and logs.
    pub request_id: &'a str,
}

/// HTTP status for an error kind. Exhaustive: a new kind must be mapped here.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::LicenseRequired => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Requests refused because a dependency is unavailable, logged as a
/// summary: the first of a code at once, then at most one line per code
/// every [`SUMMARY_EVERY`] with how many there were. An outage of a few
/// seconds at thousands of requests a second is a handful of lines, not a
/// line per request. (Internal errors are bugs: each is logged.)
struct FailureLog {
    codes: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

const SUMMARY_EVERY: Duration = Duration::from_secs(10);

static FAILURES: LazyLock<FailureLog> = LazyLock::new(|| FailureLog {
    codes: Mutex::new(HashMap::new()),
});

impl FailureLog {
    fn record(&self, code: &'static str, error: &str, request_id: &str) {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match codes.get_mut(code) {
            Some((logged_at, since)) if now.duration_since(*logged_at) < SUMMARY_EVERY => {
                *since += 1;
            }
            entry => {
                let earlier = entry.map_or(0, |(_, since)| *since);
                tracing::warn!(
                    request_id,
                    code,
                    error,
                    failed_since_last_line = earlier,
                    "request failed"
                );
                codes.insert(code, (now, 0));
            }
        }
    }
}

impl ApiError {
    /// Renders the problem+json response for `request_id`.
    pub fn into_response(self, request_id: &str) -> Response {
        let error = self.0;
        let status = status_of(error.kind());
        let detail = if status.is_server_error() && error.kind() == ErrorKind::Internal {
            tracing::error!(request_id, error = %error, "request failed");
            "an internal error occurred; quote the request id when reporting it".to_owned()
        } else {
            if status.is_server_error() {
                FAILURES.record(error.code(), &error.to_string(), request_id);
            }
            error.to_string()
        };
        let mut response = problem(status, error.code(), detail, request_id);
        let headers = response.headers_mut();
        if let Some(retry) = error.retry_after() {
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if error.kind() == ErrorKind::Unauthenticated {
            // RFC 6750 §3: no error code when the request carried no credentials.
            let challenge = if error.code() == "missing_token" {
                "Bearer realm=\"tenant-plane\"".to_owned()
            } else {
                format!(
                    "Bearer realm=\"tenant-plane\", error=\"invalid_token\", error_description=\"{}\"",
                    error.code()
                )
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// A problem+json response for `status`; the one shape of every error body.
pub fn problem(status: StatusCode, code: &str, detail: String, request_id: &str) -> Response {
    let problem = Problem {
        kind: format!("urn:tenant-plane:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        code,
        request_id,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
