//! `/api/auth`: login, refresh, logout, me.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tp_core::auth::{Principal, Role};

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

/// The body of `GET /api/auth/me`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Me<'a> {
    User {
        id: &'a str,
        username: &'a str,
        role: Role,
        session_id: &'a str,
    },
    ApiKey {
        id: &'a str,
        role: Role,
    },
}

pub(crate) async fn me(ctx: Ctx) -> Result<Response, ApiError> {
    match ctx.principal()? {
        Principal::User {
            user_id,
            session_id,
            role,
        } => {
            let username = ctx.plane.auth().username(user_id).await?;
            let me = Me::User {
                id: user_id,
                username: &username,
                role: *role,
                session_id,
            };
            response::json(StatusCode::OK, &me)
        }
        Principal::ApiKey { key_id, role } => response::json(
            StatusCode::OK,
            &Me::ApiKey {
                id: key_id,
                role: *role,
            },
        ),
    }
}
