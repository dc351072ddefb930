//! The one integration test binary: real replicas, databases and services on loopback.

mod conformance;
mod foundation;
mod postgres;
mod recall;
mod vectors_http;
