//! `/api/health`, `/api/health/live`, `/api/health/ready`.

use http::StatusCode;
use serde_json::json;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

/// The operator guide's health JSON; 503 when the replica is not ready.
pub(crate) async fn full(ctx: Ctx) -> Result<Response, ApiError> {
    let report = ctx.plane.health().report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(status, &report)
}

/// The process is alive; never fails because a dependency is down.
pub(crate) async fn live(_ctx: Ctx) -> Result<Response, ApiError> {
    response::json(StatusCode::OK, &json!({ "status": "ok" }))
}

/// 200 when the replica should get traffic, 503 otherwise.
pub(crate) async fn ready(ctx: Ctx) -> Result<Response, ApiError> {
    let health = ctx.plane.health();
    let draining = health.is_draining();
    let probe = health.db_probe().await;
    let ready = !draining && probe.reachable && !probe.migrations_pending;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "db": { "reachable": probe.reachable },
        "migrations_pending": probe.migrations_pending,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(status, &body)
}
