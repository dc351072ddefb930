//! [`Api`]: the tenant plane as a hyper and tower `Service`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use tp_core::config::IpNet;
use tp_core::ratelimit::{Decision, LimitClass, Policy, Source};
use tp_core::{Error, TenantPlane};

use crate::context::Ctx;
use crate::error::ApiError;
use crate::router::{Access, Matched, Miss, Router};
use crate::{BoxError, Response, client_ip, handlers, request_id, telemetry};
use tracing::Instrument;

/// The TCP peer of a request, inserted as a request extension by the server.
///
/// A host that mounts [`Api`] in its own server should insert it too, so
/// that per-IP rate limits and trusted-proxy handling see the real peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// One route of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// HTTP method.
    pub method: http::Method,
    /// Path pattern, with `{name}` parameters.
    pub pattern: &'static str,
    /// Least role needed; `None` for public routes.
    pub role: Option<tp_core::auth::Role>,
}

/// The tenant plane's HTTP API. Cheap to clone; mount it anywhere a hyper or
/// tower service over `http::Request<B>` fits.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

/// Renders the Prometheus text of `GET /metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

struct Inner {
    metrics: std::sync::OnceLock<MetricsRenderer>,
    plane: Arc<TenantPlane>,
    router: Router,
    max_body: usize,
    body_timeout: Duration,
    request_timeout: Duration,
    trusted_proxies: Vec<IpNet>,
    /// `RateLimit-Policy` of each policy.
    policy_headers: Vec<(Policy, HeaderValue)>,
    /// Addresses whose failed authentications ran out of quota.
    auth_failures: crate::auth_failures::AuthFailures,
}

impl Api {
    /// The API over `plane`, with limits from its configuration.
    pub fn new(plane: Arc<TenantPlane>) -> Api {
        let http = plane.config().http.clone();
        let policy_headers = [
            LimitClass::User,
            LimitClass::Anonymous,
            LimitClass::Login,
            LimitClass::AuthFailure,
        ]
        .into_iter()
        .map(|class| plane.rate_limiter().policy(class))
        .filter_map(|policy| Some((policy, policy_header(&policy)?)))
        .collect();
        Api {
            inner: Arc::new(Inner {
                policy_headers,
                metrics: std::sync::OnceLock::new(),
                plane,
                router: handlers::routes(),
                max_body: http.max_body_bytes,
                body_timeout: http.body_read_timeout,
                request_timeout: http.request_timeout,
                trusted_proxies: http.trusted_proxies,
                auth_failures: Default::default(),
            }),
        }
    }

    /// Every route with the role it needs (`None`: public), for docs and tests.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.inner
            .router
            .list()
            .map(|(method, route)| RouteInfo {
                method: method.clone(),
                pattern: route.pattern,
                role: match route.access {
                    Access::Public => None,
                    Access::Role(role) => Some(role),
                },
            })
            .collect()
    }

    /// Serves `GET /metrics` with `render` (set once; later calls are ignored).
    pub fn set_metrics_renderer(&self, render: MetricsRenderer) {
        let _ = self.inner.metrics.set(render);
    }

    /// The plane this API serves.
    pub fn plane(&self) -> &Arc<TenantPlane> {
        &self.inner.plane
    }

    /// Answers one request. Never fails: errors become problem+json responses.
    pub async fn handle<B>(&self, request: Request<B>) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let request_id = request_id::from_headers(request.headers());
        // Routed before the span is made, so that the span carries its route
        // from the start and no field is recorded into it afterwards.
        let routed = self.inner.router.at(request.method(), request.uri().path());
        let route = routed.as_ref().map_or(UNMATCHED, |m| m.route.pattern);
        let span = telemetry::request_span(request.headers(), &request_id, request.method(), route);
        self.handle_in_span(request, &request_id, routed, route, started)
            .instrument(span)
            .await
    }

    async fn handle_in_span<B>(
        &self,
        request: Request<B>,
        request_id: &str,
        routed: Result<Matched<'_>, Miss>,
        route: &'static str,
        started: Instant,
    ) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let (parts, body) = request.into_parts();
        let method = parts.method.clone();

        // Below hyper's own limits, so an oversized request gets the same
        // problem+json as every other error instead of hyper's bare answer.
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let oversized =
            if parts.uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI_BYTES {
                Some((
                    StatusCode::URI_TOO_LONG,
                    "uri_too_long",
                    format!("the request target exceeds {MAX_URI_BYTES} bytes"),
                ))
            } else if header_bytes > MAX_HEADER_BYTES {
                Some((
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("the request headers exceed {MAX_HEADER_BYTES} bytes"),
                ))
            } else {
                None
            };
        let routed = match oversized {
            Some((status, code, detail)) => {
                let response = crate::error::problem(status, code, detail, request_id);
                return finish(inner, response, request_id, &method, route, started);
            }
            None => routed,
        };

        let response = match routed {
            Err(Miss::NotFound) => ApiError::from(Error::not_found(
                "route_not_found",
                format!("no route for {}", parts.uri.path()),
            ))
            .into_response(request_id),
            Err(Miss::MethodNotAllowed(allow)) => {
                let mut response = crate::error::problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed on {}", parts.uri.path()),
                    request_id,
                );
                if let Ok(allow) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                response
            }
            Ok(matched) => {
                // Admission (license, authentication), then the rate limit:
                // either may answer for the handler.
                let gates = async {
                    let principal =
                        admit_guarded(inner, matched.route, &parts.headers, peer, request_id)
                            .await?;
                    let limit = limit(
                        inner,
                        matched.route.pattern,
                        principal.as_ref(),
                        peer,
                        &parts.headers,
                        request_id,
                    )
                    .await?;
                    Ok::<_, Response>((principal, limit))
                };
                let (principal, limit) = match gates.await {
                    Ok(passed) => passed,
                    Err(response) => {
                        return finish(inner, response, request_id, &method, route, started);
                    }
                };
                let ctx = Ctx {
                    plane: inner.plane.clone(),
                    client_ip: client_ip::client_ip(peer, &parts.headers, &inner.trusted_proxies),
                    headers: parts.headers,
                    query: parts.uri.query().map(str::to_owned),
                    params: matched.params,
                    body: Some(body.map_err(Into::into).boxed_unsync()),
                    max_body: inner.max_body,
                    body_timeout: inner.body_timeout,
                    principal,
                    metrics: inner.metrics.get().cloned(),
                };
                let handler = matched.route.handler;
                let outcome = tokio::time::timeout(inner.request_timeout, handler(ctx)).await;
                let mut response = match outcome {
                    Ok(Ok(response)) => response,
                    Ok(Err(e)) => e.into_response(request_id),
                    Err(_) => ApiError::from(Error::Timeout {
                        code: "request_timeout",
                        message: format!(
                            "the request took longer than {} ms",
                            inner.request_timeout.as_millis()
                        ),
                    })
                    .into_response(request_id),
                };
                if let Some(decision) = limit {
                    rate_limit_headers(inner, &mut response, &decision);
                }
                response
            }
        };

        finish(inner, response, request_id, &method, route, started)
    }
}

/// The license gate, then the principal a route needs (`None` on public
/// routes): past the license's grace period only health, metrics and the
/// license itself answer.
async fn admit(
    inner: &Inner,
    route: &crate::router::Route,
    headers: &http::HeaderMap,
) -> Result<Option<tp_core::auth::Principal>, Error> {
    if !license_exempt(route.pattern) {
        inner.plane.license().gate()?;
    }
    match route.access {
        Access::Public => Ok(None),
        Access::Role(needed) => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let principal = inner.plane.auth().authenticate(authorization).await?;
            principal.require(needed)?;
            Ok(Some(principal))
        }
    }
}

/// [`admit`], with failed authentications limited per client address: an
/// address whose tokens or keys keep failing to verify gets 429 for a
/// while, without another verification or key lookup.
async fn admit_guarded(
    inner: &Inner,
    route: &crate::router::Route,
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    request_id: &str,
) -> Result<Option<tp_core::auth::Principal>, Response> {
    let guarded = matches!(route.access, Access::Role(_))
        && inner.plane.rate_limiter().is_enabled()
        && headers.contains_key(header::AUTHORIZATION);
    let ip = guarded
        .then(|| client_ip::client_ip(peer, headers, &inner.trusted_proxies))
        .flatten();
    if let Some(ip) = ip
        && let Some(retry_after) = inner.auth_failures.blocked(ip)
    {
        return Err(ApiError::from(Error::RateLimited { retry_after }).into_response(request_id));
    }
    match admit(inner, route, headers).await {
        Ok(principal) => Ok(principal),
        Err(error) => {
            if let Some(ip) = ip
                && crate::auth_failures::is_guess(&error)
            {
                let decision = inner
                    .plane
                    .rate_limiter()
                    .check(LimitClass::AuthFailure, &format!("authfail:ip:{ip}"))
                    .await;
                telemetry::metrics().record_limit(
                    decision.policy.name,
                    decision.source,
                    decision.allowed,
                );
                if !decision.allowed {
                    let retry_after = decision.retry_after.unwrap_or(Duration::from_secs(1));
                    inner.auth_failures.block(ip, retry_after);
                    tracing::warn!(client_ip = %ip, retry_after_ms = retry_after.as_millis() as u64, "too many failed authentications; refusing the address for a while");
                    let mut response = ApiError::from(Error::RateLimited { retry_after })
                        .into_response(request_id);
                    rate_limit_headers(inner, &mut response, &decision);
                    return Err(response);
                }
            }
            Err(ApiError::from(error).into_response(request_id))
        }
    }
}

/// Routes that answer whatever the license says.
pub(crate) fn license_exempt(pattern: &str) -> bool {
    pattern.starts_with("/api/health")
        || matches!(pattern, "/metrics" | "/api/license" | "/api/openapi.json")
}

/// Applies the rate limit of the route; `Err` is the refusal to send.
async fn limit(
    inner: &Inner,
    pattern: &str,
    principal: Option<&tp_core::auth::Principal>,
    peer: Option<std::net::IpAddr>,
    headers: &http::HeaderMap,
    request_id: &str,
) -> Result<Option<Decision>, Response> {
    // Probes and scrapes are never limited: a load balancer must always see
    // the truth. With limits off there is nothing to decide or announce.
    if pattern.starts_with("/api/health")
        || pattern == "/metrics"
        || !inner.plane.rate_limiter().is_enabled()
    {
        return Ok(None);
    }
    let ip = || {
        let ip = client_ip::client_ip(peer, headers, &inner.trusted_proxies);
        format!(
            "ip:{}",
            ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
        )
    };
    let (class, key) = match principal {
        _ if pattern == "/api/auth/login" => (LimitClass::Login, ip()),
        Some(principal) => (LimitClass::User, principal.key()),
        None => (LimitClass::Anonymous, ip()),
    };
    let decision = inner.plane.rate_limiter().check(class, &key).await;
    telemetry::metrics().record_limit(decision.policy.name, decision.source, decision.allowed);
    if decision.allowed {
        return Ok(Some(decision));
    }
    let error = match decision.source {
        Source::FailClosed => Error::unavailable(
            "rate_limiter_unavailable",
            "the rate limiter is unavailable; retry shortly",
            decision.retry_after,
        ),
        _ => Error::RateLimited {
            retry_after: decision.retry_after.unwrap_or(Duration::from_secs(1)),
        },
    };
    let mut response = ApiError::from(error).into_response(request_id);
    rate_limit_headers(inner, &mut response, &decision);
    Err(response)
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` (draft-ietf-httpapi-ratelimit-headers) and the policy.
fn rate_limit_headers(inner: &Inner, response: &mut Response, decision: &Decision) {
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    let headers = response.headers_mut();
    let reset = decision.reset_after.as_secs() + u64::from(decision.reset_after.subsec_nanos() > 0);
    let policy = decision.policy;
    headers.reserve(4);
    headers.insert(LIMIT, HeaderValue::from(policy.burst));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(reset));
    // Formatted once per policy at start; policies never change.
    let known = inner.policy_headers.iter().find(|(p, _)| *p == policy);
    if let Some(value) = known
        .map(|(_, v)| v.clone())
        .or_else(|| policy_header(&policy))
    {
        headers.insert(POLICY, value);
    }
}

/// `RateLimit-Policy` of a policy.
fn policy_header(policy: &Policy) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{};w=60;burst={};name=\"{}\"",
        policy.per_minute, policy.burst, policy.name
    ))
    .ok()
}

/// The route of requests that match none, in spans and metrics.
const UNMATCHED: &str = "<unmatched>";

/// Longest request target (path and query) answered; longer is 414.
const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes answered; more is 431. hyper's own limit is higher.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Headers every response carries, and the request log line.
fn finish(
    inner: &Inner,
    mut response: Response,
    request_id: &str,
    method: &http::Method,
    route: &'static str,
    started: Instant,
) -> Response {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(request_id::HEADER, id);
    }
    if inner.plane.health().is_draining() {
        // Ask HTTP/1 clients and proxies not to reuse this connection,
        // so none is idle on it when the listener closes.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    telemetry::metrics().record_request(method, route, status, elapsed);
    telemetry::record_status(status);
    tracing::debug!(
        status,
        elapsed_us = elapsed.as_micros() as u64,
        "request done"
    );
    response
}

type ApiFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> hyper::service::Service<Request<B>> for Api
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(request).await) })
    }
}

impl<B> tower_service::Service<Request<B>> for Api
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        hyper::service::Service::call(self, request)
    }
}
