//! `/api/auth`: login, refresh, logout, me.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tp_core::auth::Principal;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

pub(crate) async fn login(mut ctx: Ctx) -> Result<Response, ApiError> {
    let body: Login = ctx.json().await?;
    let meta = ctx.client_meta();
    let pair = ctx
        .plane
        .auth()
        .login(&body.username, &body.password, meta)
        .await?;
    response::json(StatusCode::OK, &pair)
}

pub(crate) async fn refresh(mut ctx: Ctx) -> Result<Response, ApiError> {
    let body: Refresh = ctx.json().await?;
    let pair = ctx.plane.auth().refresh(&body.refresh_token).await?;
    response::json(StatusCode::OK, &pair)
}

pub(crate) async fn logout(ctx: Ctx) -> Result<Response, ApiError> {
    ctx.plane.auth().logout(ctx.principal()?).await?;
    Ok(response::no_content())
}

pub(crate) async fn me(ctx: Ctx) -> Result<Response, ApiError> {
    let body = match ctx.principal()? {
        Principal::User {
            user_id,
            session_id,
            role,
        } => {
            let username = ctx.plane.auth().username(user_id).await?;
            json!({
                "kind": "user",
                "id": user_id,
                "username": username,
                "role": role,
                "session_id": session_id,
            })
        }
        Principal::ApiKey { key_id, role } => {
            json!({ "kind": "api_key", "id": key_id, "role": role })
        }
    };
    response::json(StatusCode::OK, &body)
}
