//! The one integration test binary: real replicas, databases and services on loopback.

mod conformance;
mod foundation;
mod postgres;
mod ratelimit;
mod recall;
mod revocation;
mod tokens;
mod vectors_http;
