//! The one integration test binary: real replicas, databases and services on loopback.

// Helpers shared by tests panic with context by design.
#![allow(clippy::unwrap_used)]

mod capacity;
mod conformance;
mod faults;
mod foundation;
mod license;
mod observability;
mod pgbouncer;
mod postgres;
mod ratelimit;
mod recall;
mod redis_ha;
mod redis_tls;
mod revocation;
mod secrets;
mod tls;
mod tokens;
mod transfer;
mod vectors_http;
