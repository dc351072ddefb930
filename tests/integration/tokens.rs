//! Access-token hardening and role checks, in-process through the HTTP service.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use sha2::Sha256;
use tp_core::TenantPlane;
use tp_core::auth::{NewUser, Role};
use tp_tests::replica::JWT_SECRET;

use crate::conformance::plane_with;

const PREVIOUS_SECRET: &str = "previous-secret-previous-secret-previous-secret!!";

struct Reply {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

async fn call(
    api: &tp_http::Api,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let bytes = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(body).unwrap())
        }
        None => Bytes::new(),
    };
    let response = api.handle(builder.body(Full::new(bytes)).unwrap()).await;
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        challenge,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT from raw header and payload JSON, HMAC-SHA256-signed with `secret`.
fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn now() -> i64 {
    tp_core::time::now_secs()
}

/// Valid claims for `user_id`, with `changes` applied (`null` removes a claim).
fn claims(user_id: &str, changes: Value) -> String {
    let mut base = json!({
        "sub": user_id, "tid": "acme-corp", "sid": "crafted-session", "role": "admin",
        "iat": now(), "exp": now() + 300, "jti": "j1",
        "iss": "tenant-plane", "aud": "tenant-plane:acme-corp",
    });
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            base.as_object_mut().unwrap().remove(key);
        } else {
            base[key] = value.clone();
        }
    }
    base.to_string()
}

async fn plane_and_api() -> (Arc<TenantPlane>, tp_http::Api, String) {
    let dir = tp_tests::temp_dir("tokens");
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    let plane = plane_with(&url, &[("TP_JWT_SECRET_PREVIOUS", PREVIOUS_SECRET)]).await;
    let admin = plane
        .auth()
        .create_user(NewUser {
            username: "root".into(),
            password: "a long enough password".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    let api = tp_http::Api::new(plane.clone());
    (plane, api, admin.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_malicious_tokens_get_401_with_a_challenge() {
    let (_plane, api, user) = plane_and_api().await;
    let secret = JWT_SECRET.as_bytes();
    let me = "/api/auth/me";

    // Positive controls: the crafting is right, so each refusal below is for its reason.
    let valid = sign(HS256, &claims(&user, json!({})), secret);
    assert_eq!(
        call(
            &api,
            Method::GET,
            me,
            Some(&format!("Bearer {valid}")),
            None
        )
        .await
        .status,
        200
    );
    let rotated = sign(HS256, &claims(&user, json!({})), PREVIOUS_SECRET.as_bytes());
    assert_eq!(
        call(
            &api,
            Method::GET,
            me,
            Some(&format!("bearer {rotated}")),
            None
        )
        .await
        .status,
        200
    );

    let huge = sign(
        HS256,
        &claims(&user, json!({"jti": "x".repeat(5000)})),
        secret,
    );
    let duplicate = {
        let payload = claims(&user, json!({}));
        let payload = format!("{{\"sub\":\"someone-else\",{}", &payload[1..]);
        sign(HS256, &payload, secret)
    };
    let mut tampered = valid.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims(&user, json!({})).as_bytes())
            ),
        ),
        (
            "alg none signed",
            sign(r#"{"alg":"none"}"#, &claims(&user, json!({})), secret),
        ),
        (
            "HS512",
            sign(
                r#"{"alg":"HS512","typ":"JWT"}"#,
                &claims(&user, json!({})),
                secret,
            ),
        ),
        (
            "RS256 header with HMAC",
            sign(
                r#"{"alg":"RS256","typ":"JWT"}"#,
                &claims(&user, json!({})),
                secret,
            ),
        ),
        ("tampered signature", tampered),
        (
            "wrong secret",
            sign(
                HS256,
                &claims(&user, json!({})),
                b"some-other-secret-some-other-secret!!",
            ),
        ),
        (
            "expired",
            sign(
                HS256,
                &claims(&user, json!({"iat": now() - 7200, "exp": now() - 3600})),
                secret,
            ),
        ),
        (
            "not yet valid",
            sign(HS256, &claims(&user, json!({"nbf": now() + 3600})), secret),
        ),
        (
            "issued in the future",
            sign(
                HS256,
                &claims(&user, json!({"iat": now() + 3600, "exp": now() + 7200})),
                secret,
            ),
        ),
        (
            "wrong tenant",
            sign(HS256, &claims(&user, json!({"tid": "other-corp"})), secret),
        ),
        (
            "wrong issuer",
            sign(HS256, &claims(&user, json!({"iss": "evil"})), secret),
        ),
        (
            "wrong audience",
            sign(
                HS256,
                &claims(&user, json!({"aud": "tenant-plane:other"})),
                secret,
            ),
        ),
        (
            "string exp",
            sign(
                HS256,
                &claims(&user, json!({"exp": (now() + 300).to_string()})),
                secret,
            ),
        ),
        ("duplicate claim", duplicate),
        (
            "missing exp",
            sign(HS256, &claims(&user, json!({"exp": null})), secret),
        ),
        (
            "missing sid",
            sign(HS256, &claims(&user, json!({"sid": null})), secret),
        ),
        (
            "unknown claim",
            sign(HS256, &claims(&user, json!({"admin": true})), secret),
        ),
        (
            "unknown role",
            sign(HS256, &claims(&user, json!({"role": "superadmin"})), secret),
        ),
        (
            "control character",
            sign(HS256, &claims(&user, json!({"sub": "root\u{0}"})), secret),
        ),
        (
            "crit header",
            sign(
                r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#,
                &claims(&user, json!({})),
                secret,
            ),
        ),
        (
            "jku header",
            sign(
                r#"{"alg":"HS256","jku":"http://127.0.0.1:1/keys"}"#,
                &claims(&user, json!({})),
                secret,
            ),
        ),
        (
            "wrong typ",
            sign(
                r#"{"alg":"HS256","typ":"at+jwt+evil"}"#,
                &claims(&user, json!({})),
                secret,
            ),
        ),
        ("huge", huge),
        ("garbage", "abc.def.ghi".into()),
        ("two parts", "abc.def".into()),
        ("not base64", "!!!.???.***".into()),
        ("refresh token as access token", "tpr_abcdef".into()),
    ];
    for (name, token) in cases {
        let reply = call(
            &api,
            Method::GET,
            me,
            Some(&format!("Bearer {token}")),
            None,
        )
        .await;
        assert_eq!(reply.status, 401, "{name}: {:?}", reply.body);
        let challenge = reply
            .challenge
            .unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        assert!(
            challenge.starts_with("Bearer realm=\"tenant-plane\""),
            "{name}: {challenge}"
        );
        assert_eq!(reply.body["status"], 401, "{name}");
    }
    for header in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        &format!("Bearer{valid}"),
    ] {
        let reply = call(&api, Method::GET, me, Some(header), None).await;
        assert_eq!(reply.status, 401, "header {header:?}");
        assert!(reply.challenge.is_some());
    }
    let reply = call(&api, Method::GET, me, None, None).await;
    assert_eq!(
        (reply.status, reply.challenge.as_deref()),
        (
            StatusCode::UNAUTHORIZED,
            Some("Bearer realm=\"tenant-plane\"")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_its_role() {
    let (plane, api, _admin) = plane_and_api().await;
    for (name, role) in [("viewer1", Role::Viewer), ("member1", Role::Member)] {
        let new = NewUser {
            username: name.into(),
            password: "a long enough password".into(),
            role,
        };
        plane.auth().create_user(new).await.unwrap();
    }
    let callers = [
        (Role::Viewer, "viewer1"),
        (Role::Member, "member1"),
        (Role::Admin, "root"),
    ];
    let routes = api.routes();
    assert!(
        routes.len() >= 25,
        "route table looks incomplete: {}",
        routes.len()
    );
    let mut checked = 0;
    for route in routes {
        let path = route
            .pattern
            .replace("{name}", "probe")
            .replace("{id}", "probe-id");
        let body =
            matches!(route.method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
        let anonymous = call(&api, route.method.clone(), &path, None, body.as_ref()).await;
        match route.role {
            None => assert!(
                ![401, 403, 500].contains(&anonymous.status.as_u16()),
                "{} {path}: {}",
                route.method,
                anonymous.status
            ),
            Some(_) => assert_eq!(
                anonymous.status, 401,
                "{} {path} without a token",
                route.method
            ),
        }
        let Some(needed) = route.role else { continue };
        for (role, username) in callers {
            // A fresh session per call: logout must not spoil the next check.
            let token = plane
                .auth()
                .open_session_for(username)
                .await
                .unwrap()
                .access_token;
            let reply = call(
                &api,
                route.method.clone(),
                &path,
                Some(&format!("Bearer {token}")),
                body.as_ref(),
            )
            .await;
            if role < needed {
                assert_eq!(
                    reply.status, 403,
                    "{} {path} as {role}: {:?}",
                    route.method, reply.body
                );
                assert_eq!(reply.body["code"], "insufficient_role");
            } else {
                assert!(
                    ![401, 403, 500].contains(&reply.status.as_u16()),
                    "{} {path} as {role}: {} {:?}",
                    route.method,
                    reply.status,
                    reply.body
                );
            }
            checked += 1;
        }
    }
    println!("role checks: {checked} (route, role) pairs");
}
