//! The per-request context handed to handlers.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use tp_core::{Error, TenantPlane};

use crate::RequestBody;
use crate::error::ApiError;

/// Everything a handler may look at.
pub(crate) struct Ctx {
    pub(crate) plane: Arc<TenantPlane>,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    pub(crate) params: Vec<(&'static str, String)>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) request_id: String,
    pub(crate) body: Option<RequestBody>,
    pub(crate) max_body: usize,
}

impl Ctx {
    /// A path parameter by name (percent-decoded).
    pub(crate) fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
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
        let Some(body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Error::PayloadTooLarge { limit }.into())
            }
            Err(e) => {
                Err(Error::invalid("body_read_failed", format!("could not read body: {e}")).into())
            }
        }
    }

    /// The body parsed as JSON; requires a JSON content type.
    pub(crate) async fn json<T: DeserializeOwned>(&mut self) -> Result<T, ApiError> {
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
        parse_json(&bytes)
    }
}

/// Parses a JSON body with an error that says where it went wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("invalid_json", format!("invalid JSON body: {e}")).into())
}
