//! Tenant Plane core: everything one replica of the tenant plane does, with
//! no HTTP types.
//!
//! [`TenantPlane`] assembles the capabilities from a [`Config`]: the
//! database (PostgreSQL with pgvector, or embedded SQLite), health and
//! readiness, and the services built on them. A Rust host can embed it
//! directly; `tp-http` serves it over HTTP.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod license;
mod plane;
pub mod ratelimit;
pub mod redis;
pub mod secrets;
pub mod time;
pub mod tls;
pub mod vector;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use plane::{StartupSchema, TenantPlane};
