//! Tenant Plane over HTTP: hyper handlers over `tp-core`.
//!
//! [`Api`] is a hyper and tower `Service` for `http::Request<B>`: mount it in
//! any hyper-based host, or run it with [`server::serve`], which adds HTTP/1.1
//! and h2c on one port, header read timeouts and graceful draining. Errors
//! are RFC 9457 problem+json with a stable `code`; every response carries
//! `x-request-id`.

#![warn(missing_docs)]

mod auth_failures;
mod client_ip;
mod context;
pub mod error;
mod handlers;
mod openapi;
mod request_id;
mod response;
mod router;
pub mod server;
mod service;
mod telemetry;

use bytes::Bytes;
use http_body_util::Full;

pub use request_id::HEADER as REQUEST_ID_HEADER;
pub use service::{Api, MetricsRenderer, PeerAddr, RouteInfo};

/// The response type of every route.
pub type Response = http::Response<Full<Bytes>>;

/// Boxed error of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body with its concrete type erased.
pub(crate) type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
