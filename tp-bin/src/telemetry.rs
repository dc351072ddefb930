//! Telemetry for `serve`: structured logs, Prometheus metrics behind
//! `/metrics`, and OTLP metrics and traces (over http or https) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. This is the only place telemetry is set up.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder, TextEncoder};
use tp_core::TenantPlane;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installed providers; shut down on exit so the last spans and points leave.
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
    otlp: bool,
}

/// Sets up logs, metrics and traces for the process.
pub fn init(json_logs: bool) -> Result<Telemetry, String> {
    let resource = Resource::builder()
        .with_service_name("tenant-plane")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .build()
        .map_err(|e| format!("prometheus exporter: {e}"))?;
    let mut meters = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(prometheus);
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.trim().is_empty());
    let mut tracer = None;
    if otlp {
        // Endpoint, headers and timeouts come from the standard OTEL_* variables.
        let tls = crate::otlp::tls_config()?;
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(crate::otlp::http_client(
                tls.clone(),
                opentelemetry_otlp::OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
            )?)
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT (metrics): {e}"))?;
        meters = meters.with_periodic_exporter(metric_exporter);
        let span_exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(crate::otlp::http_client(
                tls,
                opentelemetry_otlp::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
            )?)
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT (traces): {e}"))?;
        tracer = Some(
            SdkTracerProvider::builder()
                .with_resource(resource)
                .with_batch_exporter(span_exporter)
                .build(),
        );
    }
    let meters = meters.build();
    global::set_meter_provider(meters.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(crate::logging::DEFAULT_FILTER));
    let otel_layer = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("tenant-plane"))
    });
    let registry_layers = tracing_subscriber::registry().with(filter).with(otel_layer);
    if json_logs {
        registry_layers
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry_layers
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    }
    .map_err(|e| format!("logging: {e}"))?;
    Ok(Telemetry {
        registry,
        meters,
        tracer,
        otlp,
    })
}

impl Telemetry {
    /// Whether metrics and traces also go out over OTLP.
    pub fn otlp(&self) -> bool {
        self.otlp
    }

    /// The Prometheus text of every metric.
    pub fn renderer(&self) -> tp_http::MetricsRenderer {
        let registry = self.registry.clone();
        Arc::new(move || {
            let mut buffer = Vec::new();
            if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
                tracing::warn!(error = %e, "metrics encoding failed");
            }
            String::from_utf8(buffer).unwrap_or_default()
        })
    }

    /// Gauges and counters read from the plane's state when metrics are collected.
    pub fn observe(&self, plane: &Arc<TenantPlane>) {
        let meter = self.meters.meter("tenant-plane");
        let p = plane.clone();
        meter
            .u64_observable_gauge("tp.db.pool.connections")
            .with_description("Database connections by state")
            .with_callback(move |o| {
                let state = p.database().pool_state();
                let busy = state.connections.saturating_sub(state.idle);
                o.observe(u64::from(busy), &[KeyValue::new("state", "in_use")]);
                o.observe(u64::from(state.idle), &[KeyValue::new("state", "idle")]);
            })
            .build();
        let p = plane.clone();
        meter
            .u64_observable_gauge("tp.db.pool.waiting")
            .with_description("Requests waiting for a database connection")
            .with_callback(move |o| o.observe(p.database().pool_state().waiting, &[]))
            .build();
        let p = plane.clone();
        meter
            .u64_observable_counter("tp.db.pool.timeouts")
            .with_description("Connection checkouts that timed out")
            .with_callback(move |o| o.observe(p.database().pool_state().timed_out, &[]))
            .build();
        let p = plane.clone();
        meter
            .u64_observable_gauge("tp.db.up")
            .with_description("1 while the database accepts connections")
            .with_callback(move |o| o.observe(u64::from(!p.database().is_known_down()), &[]))
            .build();
        let p = plane.clone();
        meter
            .u64_observable_gauge("tp.auth.revocations")
            .with_description("Revoked sessions and keys held in memory")
            .with_callback(move |o| o.observe(p.auth().revocations().len() as u64, &[]))
            .build();
        let p = plane.clone();
        meter
            .u64_observable_counter("tp.ratelimit.fallbacks")
            .with_description("Rate limit decisions made by the fallback because Redis failed")
            .with_callback(move |o| o.observe(p.rate_limiter().fallbacks(), &[]))
            .build();
        let p = plane.clone();
        meter
            .u64_observable_gauge("tp.ratelimit.tracked_keys")
            .with_description("Keys held by the local rate limiter")
            .with_callback(move |o| o.observe(p.rate_limiter().tracked_keys() as u64, &[]))
            .build();
        if plane.redis().is_some() {
            let p = plane.clone();
            meter
                .u64_observable_gauge("tp.redis.up")
                .with_description("1 while Redis is connected")
                .with_callback(move |o| {
                    let up = p.redis().is_some_and(|r| r.is_connected());
                    o.observe(u64::from(up), &[]);
                })
                .build();
        }
    }

    /// Flushes and stops the exporters (blocking work, off the async threads).
    pub async fn shutdown(self) {
        let Telemetry { meters, tracer, .. } = self;
        let flushed = tokio::task::spawn_blocking(move || {
            let _ = meters.shutdown();
            if let Some(tracer) = tracer {
                let _ = tracer.shutdown();
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
    }
}
