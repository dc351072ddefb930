//! Request metrics and trace context through the OpenTelemetry API. Without
//! a provider installed by the host these are no-ops; `tenant-plane`
//! installs Prometheus and, when configured, OTLP.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use opentelemetry::metrics::{Counter, Histogram, ObservableCounter};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, global};
use tp_core::ratelimit::Source;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Latency buckets in seconds: 1 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub(crate) struct Metrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    _limits: ObservableCounter<u64>,
}

/// Rate limit policies, in the order of [`DECISIONS`].
const POLICIES: [&str; 4] = ["user", "anon", "login", "auth_failure"];
/// Deciding limiters, in the order of [`DECISIONS`].
const SOURCES: [Source; 6] = [
    Source::Disabled,
    Source::Local,
    Source::Global,
    Source::LocalFallback,
    Source::FailOpen,
    Source::FailClosed,
];

/// Rate limit decisions by policy, source and outcome (refused, admitted):
/// an atomic add on the request path, read when metrics are collected.
static DECISIONS: [[[AtomicU64; 2]; SOURCES.len()]; POLICIES.len()] =
    [const { [const { [const { AtomicU64::new(0) }; 2] }; SOURCES.len()] }; POLICIES.len()];

pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter("tenant-plane");
        Metrics {
            requests: meter
                .u64_counter("http.server.requests")
                .with_description("HTTP requests by route, method and status")
                .build(),
            duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("HTTP request latency by route, method and status")
                .with_boundaries(BUCKETS.to_vec())
                .build(),
            _limits: meter
                .u64_observable_counter("tp.ratelimit.decisions")
                .with_description("Rate limit decisions by policy, deciding limiter and outcome")
                .with_callback(|observer| {
                    for (p, policy) in POLICIES.iter().enumerate() {
                        for (s, source) in SOURCES.iter().enumerate() {
                            for (o, outcome) in ["refused", "admitted"].iter().enumerate() {
                                let n = DECISIONS[p][s][o].load(Ordering::Relaxed);
                                if n > 0 {
                                    observer.observe(
                                        n,
                                        &[
                                            KeyValue::new("policy", *policy),
                                            KeyValue::new("source", source.as_str()),
                                            KeyValue::new("outcome", *outcome),
                                        ],
                                    );
                                }
                            }
                        }
                    }
                })
                .build(),
        }
    })
}

impl Metrics {
    pub(crate) fn record_request(
        &self,
        method: &Method,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let attributes = [
            KeyValue::new("http.route", route),
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        self.requests.add(1, &attributes);
        self.duration.record(elapsed.as_secs_f64(), &attributes);
    }

    pub(crate) fn record_limit(&self, policy: &'static str, source: Source, allowed: bool) {
        let p = POLICIES.iter().position(|&name| name == policy);
        let s = SOURCES.iter().position(|&known| known == source);
        if let (Some(p), Some(s)) = (p, s) {
            DECISIONS[p][s][usize::from(allowed)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A method's name from a closed set, so clients cannot mint label values:
/// any method HTTP does not define is `_OTHER`, as OpenTelemetry's HTTP
/// conventions say.
fn method_name(method: &Method) -> opentelemetry::Value {
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    };
    name.into()
}

/// The span of one request: request id, W3C trace id and route in every
/// log line inside it; exported spans continue the caller's `traceparent`.
///
/// Every field is set here: the JSON log layer formats a span's fields when
/// it is made and re-reads and re-writes them on every later record.
pub(crate) fn request_span(
    headers: &HeaderMap,
    request_id: &str,
    method: &Method,
    route: &'static str,
) -> tracing::Span {
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .unwrap_or_else(fresh_context);
    let span = tracing::info_span!(
        "request",
        request_id,
        trace_id = %parent.trace_id(),
        method = method.as_str(),
        route,
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    span
}

/// Adds the response status to the current request's exported span. It
/// goes to OpenTelemetry only, not into the span's logged fields, which
/// would cost the JSON log layer a re-write of them all.
pub(crate) fn record_status(status: u16) {
    tracing::Span::current().set_attribute("status", i64::from(status));
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

fn fresh_context() -> SpanContext {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let span = *uuid::Uuid::new_v4().as_bytes();
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&span[..8]);
    SpanContext::new(
        TraceId::from_bytes(bytes),
        SpanId::from_bytes(span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_and_garbage_ignored() {
        let ok =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            ok.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert_ne!(fresh_context().trace_id(), fresh_context().trace_id());
    }
}
