//! Route handlers, one module per area, and the routing table.

mod health;

use http::Method;

use crate::router::{Access, Router, handler};

/// The complete routing table of the API.
pub(crate) fn routes() -> Router {
    let mut r = Router::default();
    r.add(
        Method::GET,
        "/api/health",
        Access::Public,
        handler!(health::full),
    );
    r.add(
        Method::GET,
        "/api/health/live",
        Access::Public,
        handler!(health::live),
    );
    r.add(
        Method::GET,
        "/api/health/ready",
        Access::Public,
        handler!(health::ready),
    );
    r
}
