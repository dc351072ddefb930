//! `GET /metrics`: Prometheus text, rendered by whatever the host installed.

use http::StatusCode;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

pub(crate) async fn prometheus(ctx: Ctx) -> Result<Response, ApiError> {
    if ctx.plane.config().http.metrics_addr.is_some() {
        return Err(tp_core::Error::not_found(
            "metrics_elsewhere",
            "metrics are served on their own listener (TP_METRICS_ADDR)",
        )
        .into());
    }
    let Some(render) = ctx.metrics.clone() else {
        return Err(tp_core::Error::not_found(
            "metrics_disabled",
            "no metrics exporter is installed",
        )
        .into());
    };
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(|e| tp_core::Error::internal(format!("metrics: {e}")))?;
    Ok(response::with_type(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// Prometheus text for a separate metrics listener.
pub(crate) async fn render_text(render: crate::MetricsRenderer) -> Response {
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => response::with_type(
            StatusCode::OK,
            text,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Err(_) => response::with_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            String::new(),
            "text/plain",
        ),
    }
}
