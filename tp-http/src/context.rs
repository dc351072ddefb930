//! The per-request context handed to handlers.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tp_core::auth::{ClientMeta, Principal};
use tp_core::{Error, TenantPlane};

use crate::RequestBody;
use crate::error::ApiError;

/// Everything a handler may look at.
pub(crate) struct Ctx {
    pub(crate) plane: Arc<TenantPlane>,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    pub(crate) params: Vec<(&'static str, String)>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) body: Option<RequestBody>,
    pub(crate) max_body: usize,
    /// Bound on reading the whole body.
    pub(crate) body_timeout: std::time::Duration,
    pub(crate) principal: Option<Principal>,
    pub(crate) metrics: Option<crate::MetricsRenderer>,
}

impl Ctx {
    /// The authenticated caller (routes with a role always have one).
    pub(crate) fn principal(&self) -> Result<&Principal, ApiError> {
        self.principal.as_ref().ok_or_else(|| {
            Error::internal("route without authentication asked for a principal").into()
        })
    }

    /// Client IP and user agent, for session records.
    pub(crate) fn client_meta(&self) -> ClientMeta {
        ClientMeta {
            ip: self.client_ip.map(|ip| ip.to_string()),
            user_agent: self
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// A path parameter by name (percent-decoded).
    pub(crate) fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// A `true`/`false` query parameter (absent means false).
    pub(crate) fn query_flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.query_param(name).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(Error::invalid(
                "invalid_query",
                format!("{name} must be true or false, got {other:?}"),
            )
            .into()),
        }
    }

    /// A query parameter, percent-decoded.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| {
                let value = value.replace('+', " ");
                percent_encoding::percent_decode_str(&value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    /// The raw body, at most the configured limit.
    pub(crate) async fn bytes(&mut self) -> Result<Bytes, ApiError> {
        let limit = self.max_body;
        let declared = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Error::PayloadTooLarge { limit }.into());
        }
        let Some(mut body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        let timeout = self.body_timeout;
        let read = async {
            let mut buffer = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    ApiError::from(Error::invalid(
                        "body_read_failed",
                        format!("could not read the request body: {e}"),
                    ))
                })?;
                if let Ok(data) = frame.into_data() {
                    if buffer.len() + data.len() > limit {
                        return Err(Error::PayloadTooLarge { limit }.into());
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            Ok(buffer.freeze())
        };
        // A client that trickles its body would hold the request (and its
        // connection) until the request timeout.
        tokio::time::timeout(timeout, read).await.map_err(|_| {
            ApiError::from(Error::ClientTimeout {
                message: format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            })
        })?
    }

    /// The body parsed as JSON; requires a JSON content type.
    ///
    /// A large body (a batch of documents) is parsed on the blocking pool:
    /// milliseconds of parsing on a runtime worker would hold up the tasks
    /// queued behind it, and the I/O driver when that worker holds it.
    pub(crate) async fn json<T: DeserializeOwned + Send + 'static>(
        &mut self,
    ) -> Result<T, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let is_json = essence.eq_ignore_ascii_case("application/json")
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !is_json {
            return Err(Error::UnsupportedMediaType {
                message: "the body must be JSON (Content-Type: application/json)".to_owned(),
            }
            .into());
        }
        let bytes = self.bytes().await?;
        if bytes.len() < PARSE_OFF_THREAD {
            return parse_json(&bytes);
        }
        tokio::task::spawn_blocking(move || parse_json(&bytes))
            .await
            .map_err(|e| {
                ApiError::from(tp_core::Error::internal(format!("JSON parse task: {e}")))
            })?
    }
}

/// Bodies from this size on are parsed off the runtime's workers (about
/// 0.2 ms of parsing for vectors; handing over costs tens of µs).
const PARSE_OFF_THREAD: usize = 64 * 1024;

/// Parses a JSON body with an error that says where it went wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("invalid_json", format!("invalid JSON body: {e}")).into())
}
