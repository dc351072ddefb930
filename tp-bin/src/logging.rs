//! Structured logs: JSON (default outside dev mode) or human-readable text.

use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`: info, and only warnings and errors of
/// OpenTelemetry's own (a failed export is an error there).
pub const DEFAULT_FILTER: &str = "info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry-otlp=warn,opentelemetry-http=warn";

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(crate::logging::DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_target(false).init();
    }
}

/// Whether logs should be JSON: `TP_LOG_FORMAT`, else JSON unless in dev mode.
pub fn wants_json(dev_mode: bool) -> bool {
    match std::env::var(tp_core::config::vars::LOG_FORMAT).as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !dev_mode,
    }
}
