//! Route handlers, one module per area, and the routing table.

mod admin;
mod auth;
mod collections;
mod health;
mod metrics;
mod openapi;
mod secrets;

use http::Method;
use tp_core::auth::Role;

pub(crate) use metrics::render_text as render_metrics;

use crate::router::{Access, Router, handler};

const VIEWER: Access = Access::Role(Role::Viewer);
const MEMBER: Access = Access::Role(Role::Member);
const ADMIN: Access = Access::Role(Role::Admin);

/// The complete routing table of the API, with the role each route needs.
pub(crate) fn routes() -> Router {
    use Method as M;
    let mut r = Router::default();
    r.add(
        M::GET,
        "/api/health",
        Access::Public,
        handler!(health::full),
    );
    r.add(
        M::GET,
        "/api/health/live",
        Access::Public,
        handler!(health::live),
    );
    r.add(
        M::GET,
        "/api/health/ready",
        Access::Public,
        handler!(health::ready),
    );

    r.add(
        M::GET,
        "/metrics",
        Access::Public,
        handler!(metrics::prometheus),
    );
    r.add(
        M::GET,
        "/api/openapi.json",
        Access::Public,
        handler!(openapi::document),
    );
    r.add(
        M::POST,
        "/api/auth/login",
        Access::Public,
        handler!(auth::login),
    );
    r.add(
        M::POST,
        "/api/auth/refresh",
        Access::Public,
        handler!(auth::refresh),
    );
    r.add(M::POST, "/api/auth/logout", VIEWER, handler!(auth::logout));
    r.add(M::GET, "/api/auth/me", VIEWER, handler!(auth::me));

    r.add(M::POST, "/api/users", ADMIN, handler!(admin::create_user));
    r.add(M::GET, "/api/users", ADMIN, handler!(admin::list_users));
    r.add(M::GET, "/api/users/{id}", ADMIN, handler!(admin::get_user));
    r.add(
        M::PATCH,
        "/api/users/{id}",
        ADMIN,
        handler!(admin::update_user),
    );
    r.add(
        M::GET,
        "/api/users/{id}/sessions",
        ADMIN,
        handler!(admin::user_sessions),
    );
    r.add(
        M::GET,
        "/api/sessions",
        ADMIN,
        handler!(admin::list_sessions),
    );
    r.add(
        M::DELETE,
        "/api/sessions/{id}",
        ADMIN,
        handler!(admin::terminate_session),
    );
    r.add(
        M::POST,
        "/api/api-keys",
        ADMIN,
        handler!(admin::create_api_key),
    );
    r.add(
        M::GET,
        "/api/api-keys",
        ADMIN,
        handler!(admin::list_api_keys),
    );
    r.add(
        M::DELETE,
        "/api/api-keys/{id}",
        ADMIN,
        handler!(admin::revoke_api_key),
    );

    r.add(M::GET, "/api/secrets", ADMIN, handler!(secrets::list));
    // Names may contain '/', so the parameter is a catch-all.
    let secret = "/api/secrets/{*name}";
    r.add(M::PUT, secret, ADMIN, handler!(secrets::put));
    r.add(M::GET, secret, ADMIN, handler!(secrets::get));
    r.add(M::DELETE, secret, ADMIN, handler!(secrets::delete));
    r.add(M::GET, "/api/license", ADMIN, handler!(secrets::license));

    let c = "/api/collections";
    r.add(M::POST, c, MEMBER, handler!(collections::create));
    r.add(M::GET, c, VIEWER, handler!(collections::list));
    let one = "/api/collections/{name}";
    r.add(M::GET, one, VIEWER, handler!(collections::get));
    r.add(M::DELETE, one, MEMBER, handler!(collections::delete));
    let docs = "/api/collections/{name}/documents";
    r.add(M::PUT, docs, MEMBER, handler!(collections::upsert));
    r.add(M::POST, docs, MEMBER, handler!(collections::upsert));
    let delete = "/api/collections/{name}/documents/delete";
    r.add(M::POST, delete, MEMBER, handler!(collections::delete_many));
    let doc = "/api/collections/{name}/documents/{id}";
    r.add(M::GET, doc, VIEWER, handler!(collections::get_document));
    r.add(
        M::DELETE,
        doc,
        MEMBER,
        handler!(collections::delete_document),
    );
    r.add(
        M::POST,
        "/api/collections/{name}/search",
        VIEWER,
        handler!(collections::search),
    );
    r
}
