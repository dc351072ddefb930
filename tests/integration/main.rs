//! The one integration test binary: real replicas, databases and services on loopback.

mod foundation;
mod postgres;
