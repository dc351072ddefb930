//! Response builders.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::Response;
use crate::error::ApiError;

/// A JSON response with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(tp_core::Error::from)?;
    Ok(with_type(status, body, "application/json"))
}

/// A JSON response `{"<field>": value}`, serialized straight from `value`
/// (no intermediate `serde_json::Value`, which would copy every element).
pub(crate) fn json_object<T: Serialize>(
    status: StatusCode,
    field: &'static str,
    value: &T,
) -> Result<Response, ApiError> {
    struct One<'a, T>(&'static str, &'a T);
    impl<T: Serialize> Serialize for One<'_, T> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(self.0, self.1)?;
            map.end()
        }
    }
    json(status, &One(field, value))
}

/// A body with a content type.
pub(crate) fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response {
    let mut response = http::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// 204 No Content.
pub(crate) fn no_content() -> Response {
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
