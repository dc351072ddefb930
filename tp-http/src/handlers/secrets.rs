//! Admin routes: encrypted secrets and the license.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

/// Body of `PUT /api/secrets/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    value: String,
}

pub(crate) async fn put(mut ctx: Ctx) -> Result<Response, ApiError> {
    let PutSecret { value } = ctx.json().await?;
    let actor = ctx.principal()?.actor();
    let meta = ctx
        .plane
        .secrets()
        .put(ctx.param("name"), value, &actor)
        .await?;
    response::json(StatusCode::OK, &meta)
}

pub(crate) async fn get(ctx: Ctx) -> Result<Response, ApiError> {
    let actor = ctx.principal()?.actor();
    let name = ctx.param("name");
    let value = ctx.plane.secrets().get(name, &actor).await?;
    let mut response = response::json(StatusCode::OK, &json!({ "name": name, "value": value }))?;
    // A secret must not linger in shared or browser caches.
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

pub(crate) async fn delete(ctx: Ctx) -> Result<Response, ApiError> {
    let actor = ctx.principal()?.actor();
    ctx.plane
        .secrets()
        .delete(ctx.param("name"), &actor)
        .await?;
    Ok(response::no_content())
}

pub(crate) async fn list(ctx: Ctx) -> Result<Response, ApiError> {
    let secrets = ctx.plane.secrets().list().await?;
    response::json_object(StatusCode::OK, "secrets", &secrets)
}

pub(crate) async fn license(ctx: Ctx) -> Result<Response, ApiError> {
    response::json(StatusCode::OK, &ctx.plane.license().summary())
}
