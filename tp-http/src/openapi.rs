//! `GET /api/openapi.json`: the API described as OpenAPI 3.1.
//!
//! Paths, methods and the role each operation needs come from the routing
//! table itself, so the document cannot list a route that does not exist or
//! miss one that does; [`operation`] adds what the table does not know (a
//! summary, the request and response bodies). A test checks that every
//! route has such a description and that every `$ref` resolves.

use http::Method;
use serde_json::{Map, Value, json};

use crate::router::{Access, Router};

/// What the routing table does not know about an operation.
struct Operation {
    summary: &'static str,
    /// Schema name of the JSON request body.
    request: Option<&'static str>,
    /// Success status and the schema name of its body (`None`: no body).
    success: (u16, Option<&'static str>),
    /// Error codes specific to the operation, beyond those every route has.
    errors: &'static [u16],
    /// Query parameters: name, type, description.
    query: &'static [(&'static str, &'static str, &'static str)],
}

const fn op(
    summary: &'static str,
    request: Option<&'static str>,
    success: (u16, Option<&'static str>),
    errors: &'static [u16],
) -> Operation {
    Operation {
        summary,
        request,
        success,
        errors,
        query: &[],
    }
}

/// The description of `method pattern`; `None` for a route nobody described.
fn operation(method: &Method, pattern: &str) -> Option<Operation> {
    let m = method.as_str();
    Some(match (m, pattern) {
        ("GET", "/api/health") => op(
            "Health in the operator guide's shape; 503 when not ready",
            None,
            (200, Some("Health")),
            &[503],
        ),
        ("GET", "/api/health/live") => op(
            "Liveness: the process answers (never fails for a dependency)",
            None,
            (200, Some("Live")),
            &[],
        ),
        ("GET", "/api/health/ready") => op(
            "Readiness: database reachable, schema current, not draining",
            None,
            (200, Some("Ready")),
            &[503],
        ),
        ("GET", "/metrics") => op("Prometheus metrics (text)", None, (200, None), &[]),
        ("GET", "/api/openapi.json") => {
            op("This document", None, (200, Some("OpenApiDocument")), &[])
        }
        ("POST", "/api/auth/login") => op(
            "Log in with a password: an access JWT and a refresh token",
            Some("Login"),
            (200, Some("TokenPair")),
            &[400, 401],
        ),
        ("POST", "/api/auth/refresh") => op(
            "Trade a refresh token for a new pair; a reused token ends the session",
            Some("Refresh"),
            (200, Some("TokenPair")),
            &[400, 401],
        ),
        ("POST", "/api/auth/logout") => op("End the caller's session", None, (204, None), &[]),
        ("GET", "/api/auth/me") => op("Who the caller is", None, (200, Some("Me")), &[]),
        ("POST", "/api/users") => op(
            "Create a user",
            Some("NewUser"),
            (201, Some("User")),
            &[400, 409],
        ),
        ("GET", "/api/users") => op("List users", None, (200, Some("UserList")), &[]),
        ("GET", "/api/users/{id}") => op("One user", None, (200, Some("User")), &[404]),
        ("PATCH", "/api/users/{id}") => op(
            "Change a user's role, password or disabled flag; disabling ends every session",
            Some("UserUpdate"),
            (200, Some("User")),
            &[400, 404],
        ),
        ("GET", "/api/users/{id}/sessions") => op(
            "A user's sessions",
            None,
            (200, Some("SessionList")),
            &[404],
        ),
        ("GET", "/api/sessions") => Operation {
            query: &[("user_id", "string", "only this user's sessions")],
            ..op("List sessions", None, (200, Some("SessionList")), &[])
        },
        ("DELETE", "/api/sessions/{id}") => op(
            "Terminate a session on every replica",
            None,
            (204, None),
            &[404],
        ),
        ("POST", "/api/api-keys") => op(
            "Create an API key; the key is in this response only",
            Some("NewApiKey"),
            (201, Some("CreatedApiKey")),
            &[400],
        ),
        ("GET", "/api/api-keys") => op("List API keys", None, (200, Some("ApiKeyList")), &[]),
        ("DELETE", "/api/api-keys/{id}") => op("Revoke an API key", None, (204, None), &[404]),
        ("GET", "/api/secrets") => op(
            "List secrets: names and key ids, never values",
            None,
            (200, Some("SecretList")),
            &[],
        ),
        ("PUT", "/api/secrets/{*name}") => op(
            "Create or replace a secret (encrypted at rest, audit-logged)",
            Some("PutSecret"),
            (200, Some("SecretMeta")),
            &[400, 413, 503],
        ),
        ("GET", "/api/secrets/{*name}") => op(
            "A secret's value (audit-logged, Cache-Control: no-store)",
            None,
            (200, Some("SecretValue")),
            &[404, 503],
        ),
        ("DELETE", "/api/secrets/{*name}") => {
            op("Delete a secret (audit-logged)", None, (204, None), &[404])
        }
        ("GET", "/api/license") => op(
            "The license's claims and state, never the key",
            None,
            (200, Some("License")),
            &[],
        ),
        ("POST", "/api/collections") => op(
            "Create a collection",
            Some("NewCollection"),
            (201, Some("Collection")),
            &[400, 409],
        ),
        ("GET", "/api/collections") => {
            op("List collections", None, (200, Some("CollectionList")), &[])
        }
        ("GET", "/api/collections/{name}") => op(
            "One collection, with its document count",
            None,
            (200, Some("Collection")),
            &[404],
        ),
        ("DELETE", "/api/collections/{name}") => op(
            "Delete a collection and its documents",
            None,
            (204, None),
            &[404],
        ),
        ("PUT" | "POST", "/api/collections/{name}/documents") => op(
            "Upsert up to 1000 documents in one transaction, idempotent by id",
            Some("Upsert"),
            (200, Some("Upserted")),
            &[400, 404, 413],
        ),
        ("POST", "/api/collections/{name}/documents/delete") => op(
            "Delete documents by id",
            Some("DeleteIds"),
            (200, Some("Deleted")),
            &[400, 404],
        ),
        ("GET", "/api/collections/{name}/documents/{id}") => Operation {
            query: &[("include_vector", "boolean", "also return the vector")],
            ..op("One document", None, (200, Some("Document")), &[404])
        },
        ("DELETE", "/api/collections/{name}/documents/{id}") => {
            op("Delete one document", None, (204, None), &[404])
        }
        ("POST", "/api/collections/{name}/search") => op(
            "Nearest neighbours of a vector, optionally filtered by metadata",
            Some("SearchRequest"),
            (200, Some("SearchResults")),
            &[400, 404],
        ),
        _ => return None,
    })
}

/// The document for `router`.
pub(crate) fn document(router: &Router) -> Value {
    let mut paths = Map::new();
    for (method, route) in router.list() {
        let Some(described) = operation(method, route.pattern) else {
            continue;
        };
        let path = route.pattern.replace("{*", "{");
        let object = operation_object(&path, method, route.access, &described);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[method.as_str().to_ascii_lowercase()] = object;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tenant Plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "One tenant's users, sessions, vector collections and encrypted secrets. \
                Errors are RFC 9457 application/problem+json with a stable `code`; every response \
                carries `x-request-id`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "paths": paths,
        "components": components(),
    })
}

fn operation_object(path: &str, method: &Method, access: Access, op: &Operation) -> Value {
    let mut parameters: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
        })
        .collect();
    parameters.extend(op.query.iter().map(|(name, ty, description)| {
        json!({ "name": name, "in": "query", "required": false,
                "description": description, "schema": { "type": ty } })
    }));

    let mut responses = Map::new();
    let (status, body) = op.success;
    responses.insert(status.to_string(), success_response(path, status, body));
    let mut errors: Vec<u16> = op.errors.to_vec();
    // As the service's `limit`: probes and scrapes are never limited.
    if !path.starts_with("/api/health") && path != "/metrics" {
        errors.push(429);
    }
    if let Access::Role(_) = access {
        errors.extend([401, 403]);
    }
    if !crate::service::license_exempt(path) {
        // Past the license's grace period.
        errors.push(403);
    }
    errors.sort_unstable();
    errors.dedup();
    for code in errors {
        let reference = match code {
            401 => "#/components/responses/Unauthenticated",
            429 => "#/components/responses/RateLimited",
            _ => "#/components/responses/Problem",
        };
        responses.insert(code.to_string(), json!({ "$ref": reference }));
    }

    let mut object = json!({
        "summary": op.summary,
        "operationId": operation_id(method, path),
        "responses": responses,
    });
    if !parameters.is_empty() {
        object["parameters"] = Value::Array(parameters);
    }
    if let Some(schema) = op.request {
        object["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema_ref(schema) } },
        });
    }
    match access {
        Access::Public => object["security"] = json!([]),
        Access::Role(role) => {
            object["security"] = json!([{ "bearer": [] }]);
            object["x-required-role"] = json!(role.as_str());
        }
    }
    object
}

fn success_response(path: &str, status: u16, body: Option<&str>) -> Value {
    match body {
        None if path == "/metrics" => json!({
            "description": "Prometheus text exposition",
            "content": { "text/plain": { "schema": { "type": "string" } } },
        }),
        None => json!({ "description": "Done; no body" }),
        Some(schema) => json!({
            "description": if status == 201 { "Created" } else { "OK" },
            "content": { "application/json": { "schema": schema_ref(schema) } },
        }),
    }
}

/// `get_api_collections_name_search` and the like: unique per method and path.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for part in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !part.is_empty() {
            id.push('_');
            id.push_str(part);
        }
    }
    id
}

fn role() -> Value {
    json!({ "type": "string", "enum": ["viewer", "member", "admin"] })
}

fn timestamp() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn vector() -> Value {
    json!({ "type": "array", "items": { "type": "number" }, "minItems": 1, "maxItems": 2000 })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn list_of(field: &str, item: &str) -> Value {
    json!({
        "type": "object", "required": [field],
        "properties": { field: { "type": "array", "items": schema_ref(item) } },
    })
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An access JWT from /api/auth/login, or an API key (tpk_…)",
            },
        },
        "responses": {
            "Problem": {
                "description": "An error",
                "content": { "application/problem+json": { "schema": schema_ref("Problem") } },
            },
            "Unauthenticated": {
                "description": "No, or no valid, credentials",
                "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
                "content": { "application/problem+json": { "schema": schema_ref("Problem") } },
            },
            "RateLimited": {
                "description": "Over the rate limit",
                "headers": {
                    "Retry-After": { "schema": { "type": "integer" } },
                    "RateLimit-Limit": { "schema": { "type": "integer" } },
                    "RateLimit-Remaining": { "schema": { "type": "integer" } },
                    "RateLimit-Reset": { "schema": { "type": "integer" } },
                    "RateLimit-Policy": { "schema": { "type": "string" } },
                },
                "content": { "application/problem+json": { "schema": schema_ref("Problem") } },
            },
        },
        "schemas": schemas(),
    })
}

/// Every schema; in groups, as one `json!` of them all is too deep for the macro.
fn schemas() -> Value {
    let mut all = Map::new();
    for group in [
        platform_schemas(),
        auth_schemas(),
        admin_schemas(),
        vectors_schemas(),
    ] {
        if let Value::Object(map) = group {
            all.extend(map);
        }
    }
    Value::Object(all)
}

fn platform_schemas() -> Value {
    json!({
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "code", "request_id"],
        "properties": {
            "type": { "type": "string", "description": "urn:tenant-plane:problem:<code>" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "code": { "type": "string", "description": "Stable, machine-readable" },
            "request_id": { "type": "string" },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "plane", "version", "uptime_seconds", "db", "vector_db", "timestamp"],
        "properties": {
            "status": { "type": "string", "enum": ["ok", "degraded"] },
            "plane": { "const": "tenant" },
            "version": { "type": "string" },
            "uptime_seconds": { "type": "integer" },
            "db": {
                "type": "object", "required": ["enabled", "reachable"],
                "properties": { "enabled": { "type": "boolean" }, "reachable": { "type": "boolean" } },
            },
            "vector_db": { "type": "string", "enum": ["pgvector", "embedded"] },
            "timestamp": timestamp(),
            "ready": { "type": "boolean" },
            "draining": { "type": "boolean" },
            "migrations_pending": { "type": "boolean" },
        },
        "additionalProperties": {
            "description": "Components (redis, rate_limit, license): status and details",
        },
    },
    "Live": { "type": "object", "properties": { "status": { "const": "ok" } } },
    "Ready": {
        "type": "object",
        "properties": {
            "ready": { "type": "boolean" },
            "draining": { "type": "boolean" },
            "db": { "type": "object", "properties": { "reachable": { "type": "boolean" } } },
            "migrations_pending": { "type": "boolean" },
        },
    },
    "OpenApiDocument": { "type": "object" },
    })
}

fn auth_schemas() -> Value {
    json!({
    "Login": {
        "type": "object", "required": ["username", "password"], "additionalProperties": false,
        "properties": { "username": { "type": "string" }, "password": { "type": "string" } },
    },
    "Refresh": {
        "type": "object", "required": ["refresh_token"], "additionalProperties": false,
        "properties": { "refresh_token": { "type": "string" } },
    },
    "TokenPair": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in", "refresh_token", "session_id"],
        "properties": {
            "access_token": { "type": "string" },
            "token_type": { "const": "Bearer" },
            "expires_in": { "type": "integer", "description": "Seconds" },
            "refresh_token": { "type": "string", "description": "Single use" },
            "session_id": { "type": "string" },
        },
    },
    "Me": {
        "type": "object", "required": ["kind", "id", "role"],
        "properties": {
            "kind": { "type": "string", "enum": ["user", "api_key"] },
            "id": { "type": "string" },
            "username": { "type": "string" },
            "role": role(),
            "session_id": { "type": "string" },
        },
    },
    "NewUser": {
        "type": "object", "required": ["username", "password"], "additionalProperties": false,
        "properties": {
            "username": { "type": "string" },
            "password": { "type": "string" },
            "role": role(),
        },
    },
    "UserUpdate": {
        "type": "object", "additionalProperties": false,
        "properties": {
            "role": role(),
            "disabled": { "type": "boolean" },
            "password": { "type": "string" },
        },
    },
    "User": {
        "type": "object", "required": ["id", "username", "role", "disabled", "created_at"],
        "properties": {
            "id": { "type": "string" },
            "username": { "type": "string" },
            "role": role(),
            "disabled": { "type": "boolean" },
            "created_at": timestamp(),
        },
    },
    "UserList": list_of("users", "User"),
    "Session": {
        "type": "object", "required": ["id", "user_id", "created_at", "last_used_at", "expires_at"],
        "properties": {
            "id": { "type": "string" },
            "user_id": { "type": "string" },
            "created_at": timestamp(),
            "last_used_at": timestamp(),
            "expires_at": timestamp(),
            "revoked_at": { "type": ["string", "null"], "format": "date-time" },
            "revoked_reason": { "type": ["string", "null"] },
        },
    },
    "SessionList": list_of("sessions", "Session"),
    "NewApiKey": {
        "type": "object", "required": ["name"], "additionalProperties": false,
        "properties": {
            "name": { "type": "string" },
            "role": role(),
            "expires_in_days": { "type": "integer", "minimum": 1 },
        },
    },
    "ApiKey": {
        "type": "object", "required": ["id", "name", "role", "created_at"],
        "properties": {
            "id": { "type": "string" },
            "name": { "type": "string" },
            "role": role(),
            "created_by": { "type": ["string", "null"] },
            "created_at": timestamp(),
            "expires_at": { "type": ["string", "null"], "format": "date-time" },
            "revoked_at": { "type": ["string", "null"], "format": "date-time" },
        },
    },
    "CreatedApiKey": {
        "allOf": [
            schema_ref("ApiKey"),
            { "type": "object", "required": ["key"],
              "properties": { "key": { "type": "string", "description": "tpk_…, shown once" } } },
        ],
    },
    "ApiKeyList": list_of("api_keys", "ApiKey"),
    })
}

fn admin_schemas() -> Value {
    json!({
    "PutSecret": {
        "type": "object", "required": ["value"], "additionalProperties": false,
        "properties": { "value": { "type": "string", "maxLength": 65536 } },
    },
    "SecretMeta": {
        "type": "object", "required": ["name", "key_id", "created_at", "updated_at"],
        "properties": {
            "name": { "type": "string" },
            "key_id": { "type": "string" },
            "created_at": timestamp(),
            "updated_at": timestamp(),
            "updated_by": { "type": ["string", "null"] },
        },
    },
    "SecretValue": {
        "type": "object", "required": ["name", "value"],
        "properties": { "name": { "type": "string" }, "value": { "type": "string" } },
    },
    "SecretList": list_of("secrets", "SecretMeta"),
    "License": {
        "type": "object", "required": ["state", "required"],
        "properties": {
            "state": { "type": "string", "enum": ["valid", "grace", "expired", "unlicensed"] },
            "required": { "type": "boolean" },
            "tenant": { "type": "string" },
            "days_left": { "type": "integer" },
        },
    },
    })
}

fn vectors_schemas() -> Value {
    json!({
    "Metric": { "type": "string", "enum": ["cosine", "l2", "inner_product"] },
    "NewCollection": {
        "type": "object", "required": ["name", "dimension"], "additionalProperties": false,
        "properties": {
            "name": { "type": "string" },
            "dimension": { "type": "integer", "minimum": 1, "maximum": 2000 },
            "metric": schema_ref("Metric"),
        },
    },
    "Collection": {
        "type": "object", "required": ["name", "dimension", "metric", "created_at"],
        "properties": {
            "name": { "type": "string" },
            "dimension": { "type": "integer" },
            "metric": schema_ref("Metric"),
            "created_at": timestamp(),
            "document_count": { "type": "integer" },
        },
    },
    "CollectionList": list_of("collections", "Collection"),
    "NewDocument": {
        "type": "object", "required": ["id", "vector"], "additionalProperties": false,
        "properties": {
            "id": { "type": "string" },
            "vector": vector(),
            "content": { "type": ["string", "null"] },
            "metadata": { "description": "Any JSON; filters match it" },
        },
    },
    "Upsert": {
        "type": "object", "required": ["documents"], "additionalProperties": false,
        "properties": {
            "documents": { "type": "array", "items": schema_ref("NewDocument"), "minItems": 1, "maxItems": 1000 },
        },
    },
    "Upserted": {
        "type": "object", "required": ["upserted"],
        "properties": { "upserted": { "type": "integer" } },
    },
    "DeleteIds": {
        "type": "object", "required": ["ids"], "additionalProperties": false,
        "properties": { "ids": { "type": "array", "items": { "type": "string" } } },
    },
    "Deleted": {
        "type": "object", "required": ["deleted"],
        "properties": { "deleted": { "type": "integer" } },
    },
    "Document": {
        "type": "object", "required": ["id", "metadata"],
        "properties": {
            "id": { "type": "string" },
            "content": { "type": ["string", "null"] },
            "metadata": {},
            "vector": { "type": "array", "items": { "type": "number" } },
        },
    },
    "SearchRequest": {
        "type": "object", "required": ["vector"], "additionalProperties": false,
        "properties": {
            "vector": vector(),
            "k": { "type": "integer", "minimum": 1, "default": 10 },
            "filter": {
                "type": "object",
                "description": "Metadata filter: $eq $ne $gt $gte $lt $lte $in $nin $exists $contains $and $or $not; dots reach nested fields",
            },
            "include": {
                "type": "array",
                "items": { "type": "string", "enum": ["content", "metadata", "vector"] },
            },
            "ef_search": { "type": "integer", "description": "HNSW search breadth (PostgreSQL)" },
            "exact": { "type": "boolean", "default": false },
        },
    },
    "SearchHit": {
        "type": "object", "required": ["id", "score", "distance"],
        "properties": {
            "id": { "type": "string" },
            "score": { "type": "number", "description": "Higher is more similar" },
            "distance": { "type": "number", "description": "pgvector's operator; lower is closer" },
            "content": { "type": ["string", "null"] },
            "metadata": {},
            "vector": { "type": "array", "items": { "type": "number" } },
        },
    },
    "SearchResults": list_of("results", "SearchHit"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_described_and_every_reference_resolves() {
        let router = crate::handlers::routes();
        let undescribed: Vec<String> = router
            .list()
            .filter(|(m, r)| operation(m, r.pattern).is_none())
            .map(|(m, r)| format!("{m} {}", r.pattern))
            .collect();
        assert!(
            undescribed.is_empty(),
            "undescribed routes: {undescribed:?}"
        );

        let doc = document(&router);
        let operations: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| p.as_object().expect("path item").len())
            .sum();
        assert_eq!(operations, router.list().count());

        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for reference in found {
            let pointer = reference.strip_prefix('#').expect("local reference");
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|p| p.as_object().expect("path item").values())
            .map(|o| o["operationId"].as_str().expect("operationId"))
            .collect();
        let total = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "operation ids are unique");
    }

    #[test]
    fn roles_follow_the_routing_table() {
        let doc = document(&crate::handlers::routes());
        let search = &doc["paths"]["/api/collections/{name}/search"]["post"];
        assert_eq!(search["x-required-role"], "viewer");
        assert_eq!(search["security"], json!([{ "bearer": [] }]));
        let secret = &doc["paths"]["/api/secrets/{name}"]["put"];
        assert_eq!(secret["x-required-role"], "admin");
        assert_eq!(secret["parameters"][0]["name"], "name");
        let login = &doc["paths"]["/api/auth/login"]["post"];
        assert_eq!(login["security"], json!([]));
        assert!(login["responses"]["429"].is_object());
        assert!(doc["paths"]["/api/health"]["get"]["responses"]["429"].is_null());
    }
}
