//! `GET /api/openapi.json`.

use std::sync::OnceLock;

use bytes::Bytes;
use http::StatusCode;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

pub(crate) async fn document(_ctx: Ctx) -> Result<Response, ApiError> {
    // The routing table never changes, so neither does the document.
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        let document = crate::openapi::document(&super::routes());
        Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
    });
    Ok(response::with_type(
        StatusCode::OK,
        body.clone(),
        "application/json",
    ))
}
