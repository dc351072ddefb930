//! Route handlers, one module per area, and the routing table.

mod collections;
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
    let c = "/api/collections";
    r.add(
        Method::POST,
        c,
        Access::Public,
        handler!(collections::create),
    );
    r.add(Method::GET, c, Access::Public, handler!(collections::list));
    let one = "/api/collections/{name}";
    r.add(Method::GET, one, Access::Public, handler!(collections::get));
    r.add(
        Method::DELETE,
        one,
        Access::Public,
        handler!(collections::delete),
    );
    let docs = "/api/collections/{name}/documents";
    r.add(
        Method::PUT,
        docs,
        Access::Public,
        handler!(collections::upsert),
    );
    r.add(
        Method::POST,
        docs,
        Access::Public,
        handler!(collections::upsert),
    );
    let delete = "/api/collections/{name}/documents/delete";
    r.add(
        Method::POST,
        delete,
        Access::Public,
        handler!(collections::delete_many),
    );
    let doc = "/api/collections/{name}/documents/{id}";
    r.add(
        Method::GET,
        doc,
        Access::Public,
        handler!(collections::get_document),
    );
    r.add(
        Method::DELETE,
        doc,
        Access::Public,
        handler!(collections::delete_document),
    );
    let search = "/api/collections/{name}/search";
    r.add(
        Method::POST,
        search,
        Access::Public,
        handler!(collections::search),
    );
    r
}
