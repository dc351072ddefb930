//! Admin routes: users, sessions and API keys.

use http::StatusCode;
use serde_json::json;
use tp_core::auth::{NewApiKey, NewUser, UserUpdate};

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

pub(crate) async fn create_user(mut ctx: Ctx) -> Result<Response, ApiError> {
    let new: NewUser = ctx.json().await?;
    let user = ctx.plane.auth().create_user(new).await?;
    response::json(StatusCode::CREATED, &user)
}

pub(crate) async fn list_users(ctx: Ctx) -> Result<Response, ApiError> {
    let users = ctx.plane.auth().list_users().await?;
    response::json_object(StatusCode::OK, "users", &users)
}

pub(crate) async fn get_user(ctx: Ctx) -> Result<Response, ApiError> {
    let user = ctx.plane.auth().get_user(ctx.param("id")).await?;
    response::json(StatusCode::OK, &user)
}

pub(crate) async fn update_user(mut ctx: Ctx) -> Result<Response, ApiError> {
    let update: UserUpdate = ctx.json().await?;
    let user = ctx
        .plane
        .auth()
        .update_user(ctx.param("id"), update)
        .await?;
    response::json(StatusCode::OK, &user)
}

pub(crate) async fn user_sessions(ctx: Ctx) -> Result<Response, ApiError> {
    let sessions = ctx
        .plane
        .auth()
        .list_sessions(Some(ctx.param("id")))
        .await?;
    response::json_object(StatusCode::OK, "sessions", &sessions)
}

pub(crate) async fn list_sessions(ctx: Ctx) -> Result<Response, ApiError> {
    let user = ctx.query_param("user_id");
    let sessions = ctx.plane.auth().list_sessions(user.as_deref()).await?;
    response::json_object(StatusCode::OK, "sessions", &sessions)
}

pub(crate) async fn terminate_session(ctx: Ctx) -> Result<Response, ApiError> {
    ctx.plane.auth().terminate_session(ctx.param("id")).await?;
    Ok(response::no_content())
}

pub(crate) async fn create_api_key(mut ctx: Ctx) -> Result<Response, ApiError> {
    let new: NewApiKey = ctx.json().await?;
    let creator = ctx.principal()?.actor();
    let (key, secret) = ctx.plane.auth().create_api_key(new, Some(&creator)).await?;
    let mut body = serde_json::to_value(&key).map_err(tp_core::Error::from)?;
    body["key"] = json!(secret);
    response::json(StatusCode::CREATED, &body)
}

pub(crate) async fn list_api_keys(ctx: Ctx) -> Result<Response, ApiError> {
    let keys = ctx.plane.auth().list_api_keys().await?;
    response::json_object(StatusCode::OK, "api_keys", &keys)
}

pub(crate) async fn revoke_api_key(ctx: Ctx) -> Result<Response, ApiError> {
    ctx.plane.auth().revoke_api_key(ctx.param("id")).await?;
    Ok(response::no_content())
}
