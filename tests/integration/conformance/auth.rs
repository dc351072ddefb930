//! Users, sessions, refresh rotation, API keys: the behaviour both backends share.

use tp_core::TenantPlane;
use tp_core::auth::{ClientMeta, NewApiKey, NewUser, Principal, Role, UserUpdate};

const PASSWORD: &str = "a long enough password";

async fn user(plane: &TenantPlane, name: &str, role: Role) -> String {
    let new = NewUser {
        username: name.into(),
        password: PASSWORD.into(),
        role,
    };
    plane.auth().create_user(new).await.unwrap().id
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub async fn users_are_validated(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "alice", Role::Member).await;
    let cases = [
        (
            NewUser {
                username: "alice".into(),
                password: PASSWORD.into(),
                role: Role::Viewer,
            },
            "username_taken",
        ),
        (
            NewUser {
                username: "bob".into(),
                password: "short".into(),
                role: Role::Viewer,
            },
            "weak_password",
        ),
        (
            NewUser {
                username: "has space".into(),
                password: PASSWORD.into(),
                role: Role::Viewer,
            },
            "invalid_username",
        ),
        (
            NewUser {
                username: "".into(),
                password: PASSWORD.into(),
                role: Role::Viewer,
            },
            "invalid_username",
        ),
        (
            NewUser {
                username: "big".into(),
                password: "x".repeat(2000),
                role: Role::Viewer,
            },
            "invalid_password",
        ),
    ];
    for (new, code) in cases {
        assert_eq!(auth.create_user(new).await.unwrap_err().code(), code);
    }
    let users = auth.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(
        (users[0].username.as_str(), users[0].role),
        ("alice", Role::Member)
    );
    let json = serde_json::to_string(&users).unwrap();
    assert!(
        !json.contains("argon2"),
        "password hashes never leave the store: {json}"
    );
}

pub async fn login_checks_the_password_the_same_way_for_unknown_users(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "carol", Role::Viewer).await;
    let wrong = auth
        .login("carol", "not the password!", ClientMeta::default())
        .await
        .unwrap_err();
    let unknown = auth
        .login("nobody-here", PASSWORD, ClientMeta::default())
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), "invalid_credentials");
    assert_eq!(
        (wrong.code(), wrong.to_string()),
        (unknown.code(), unknown.to_string())
    );
    let pair = auth
        .login("carol", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let principal = auth
        .authenticate(Some(&bearer(&pair.access_token)))
        .await
        .unwrap();
    assert!(matches!(
        principal,
        Principal::User {
            role: Role::Viewer,
            ..
        }
    ));
}

pub async fn refresh_rotates_and_reuse_ends_the_session(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "dave", Role::Member).await;
    let first = auth
        .login("dave", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let second = auth.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    auth.authenticate(Some(&bearer(&second.access_token)))
        .await
        .unwrap();

    // A retry within the grace window (the answer was lost, another tab
    // refreshed too) gets the same successor while it is unused.
    let retried = auth.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(retried.refresh_token, second.refresh_token);
    auth.authenticate(Some(&bearer(&retried.access_token)))
        .await
        .unwrap();
    let third = auth.refresh(&second.refresh_token).await.unwrap();

    // Once its successor has been used, replaying the first refresh token
    // is theft: the whole session ends.
    assert_eq!(
        auth.refresh(&first.refresh_token).await.unwrap_err().code(),
        "invalid_refresh_token"
    );
    let second = third;
    assert_eq!(
        auth.authenticate(Some(&bearer(&second.access_token)))
            .await
            .unwrap_err()
            .code(),
        "session_revoked"
    );
    assert_eq!(
        auth.refresh(&second.refresh_token)
            .await
            .unwrap_err()
            .code(),
        "invalid_refresh_token"
    );
    for junk in ["", "tpr_", "tpr_nonexistent", "not-a-refresh-token"] {
        assert_eq!(
            auth.refresh(junk).await.unwrap_err().code(),
            "invalid_refresh_token"
        );
    }
    let sessions = auth.list_sessions(None).await.unwrap();
    assert_eq!(
        sessions[0].revoked_reason.as_deref(),
        Some("refresh_token_reused")
    );
}

pub async fn logout_and_termination_end_sessions(plane: &TenantPlane) {
    let auth = plane.auth();
    let id = user(plane, "erin", Role::Viewer).await;
    let a = auth
        .login("erin", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let b = auth
        .login("erin", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let principal = auth
        .authenticate(Some(&bearer(&a.access_token)))
        .await
        .unwrap();
    auth.logout(&principal).await.unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&a.access_token)))
            .await
            .unwrap_err()
            .code(),
        "session_revoked"
    );
    assert_eq!(
        auth.refresh(&a.refresh_token).await.unwrap_err().code(),
        "invalid_refresh_token"
    );
    auth.authenticate(Some(&bearer(&b.access_token)))
        .await
        .unwrap();

    auth.terminate_session(&b.session_id).await.unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&b.access_token)))
            .await
            .unwrap_err()
            .code(),
        "session_revoked"
    );
    assert_eq!(
        auth.terminate_session("no-such-session")
            .await
            .unwrap_err()
            .code(),
        "session_not_found"
    );
    let sessions = auth.list_sessions(Some(&id)).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.revoked_at.is_some()));
}

pub async fn disabling_a_user_ends_every_session(plane: &TenantPlane) {
    let auth = plane.auth();
    let id = user(plane, "frank", Role::Member).await;
    let pairs = [
        auth.login("frank", PASSWORD, ClientMeta::default())
            .await
            .unwrap(),
        auth.login("frank", PASSWORD, ClientMeta::default())
            .await
            .unwrap(),
    ];
    let disabled = auth
        .update_user(
            &id,
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(disabled.disabled);
    for pair in &pairs {
        assert_eq!(
            auth.authenticate(Some(&bearer(&pair.access_token)))
                .await
                .unwrap_err()
                .code(),
            "session_revoked"
        );
        assert!(auth.refresh(&pair.refresh_token).await.is_err());
    }
    assert_eq!(
        auth.login("frank", PASSWORD, ClientMeta::default())
            .await
            .unwrap_err()
            .code(),
        "user_disabled"
    );

    auth.update_user(
        &id,
        UserUpdate {
            disabled: Some(false),
            role: Some(Role::Admin),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pair = auth
        .login("frank", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let principal = auth
        .authenticate(Some(&bearer(&pair.access_token)))
        .await
        .unwrap();
    assert_eq!(principal.role(), Role::Admin);

    let new_password = "another long password";
    auth.update_user(
        &id,
        UserUpdate {
            password: Some(new_password.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        auth.authenticate(Some(&bearer(&pair.access_token)))
            .await
            .is_err(),
        "password change ends sessions"
    );
    assert!(
        auth.login("frank", PASSWORD, ClientMeta::default())
            .await
            .is_err()
    );
    auth.login("frank", new_password, ClientMeta::default())
        .await
        .unwrap();
    assert_eq!(
        auth.update_user("missing", UserUpdate::default())
            .await
            .unwrap_err()
            .code(),
        "user_not_found"
    );
}

pub async fn api_keys_verify_until_revoked(plane: &TenantPlane) {
    let auth = plane.auth();
    let new = NewApiKey {
        name: "indexer".into(),
        role: Role::Member,
        expires_in_days: Some(30),
    };
    let (key, secret) = auth.create_api_key(new, Some("test")).await.unwrap();
    assert!(secret.starts_with("tpk_"));
    let principal = auth.authenticate(Some(&bearer(&secret))).await.unwrap();
    assert_eq!(
        principal,
        Principal::ApiKey {
            key_id: key.id.clone(),
            role: Role::Member
        }
    );
    assert_eq!(
        principal.require(Role::Admin).unwrap_err().code(),
        "insufficient_role"
    );

    let tampered = format!("{}x", &secret[..secret.len() - 1]);
    assert_eq!(
        auth.authenticate(Some(&bearer(&tampered)))
            .await
            .unwrap_err()
            .code(),
        "invalid_api_key"
    );
    let other_id = format!("tpk_0000000000000000_{}", &secret[21..]);
    assert_eq!(
        auth.authenticate(Some(&bearer(&other_id)))
            .await
            .unwrap_err()
            .code(),
        "invalid_api_key"
    );

    let listed = serde_json::to_string(&auth.list_api_keys().await.unwrap()).unwrap();
    assert!(
        listed.contains(&key.id) && !listed.contains(&secret[21..]),
        "secrets are never listed"
    );

    auth.revoke_api_key(&key.id).await.unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&secret)))
            .await
            .unwrap_err()
            .code(),
        "invalid_api_key"
    );
    assert_eq!(
        auth.revoke_api_key("ffffffffffffffff")
            .await
            .unwrap_err()
            .code(),
        "api_key_not_found"
    );
    let bad = NewApiKey {
        name: " ".into(),
        role: Role::Viewer,
        expires_in_days: None,
    };
    assert_eq!(
        auth.create_api_key(bad, None).await.unwrap_err().code(),
        "invalid_name"
    );
}

fn is_role(principal: &Principal, want: Role) -> bool {
    matches!(principal, Principal::User { role, .. } if *role == want)
}

pub async fn a_role_change_takes_effect_on_the_next_request(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "root", Role::Admin).await;
    let id = user(plane, "mallory", Role::Admin).await;
    let before = auth
        .login("mallory", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let principal = auth
        .authenticate(Some(&bearer(&before.access_token)))
        .await
        .unwrap();
    assert!(is_role(&principal, Role::Admin));

    let demote = UserUpdate {
        role: Some(Role::Member),
        ..UserUpdate::default()
    };
    auth.update_user(&id, demote).await.unwrap();
    // The admin token is refused at once; the session lives on.
    let stale = auth
        .authenticate(Some(&bearer(&before.access_token)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), "token_stale");
    let after = auth.refresh(&before.refresh_token).await.unwrap();
    let principal = auth
        .authenticate(Some(&bearer(&after.access_token)))
        .await
        .unwrap();
    assert!(is_role(&principal, Role::Member), "{principal:?}");

    // Setting the same role again changes nothing.
    let same = UserUpdate {
        role: Some(Role::Member),
        ..UserUpdate::default()
    };
    auth.update_user(&id, same).await.unwrap();
    auth.authenticate(Some(&bearer(&after.access_token)))
        .await
        .unwrap();
}

pub async fn the_last_admin_cannot_be_demoted_or_disabled(plane: &TenantPlane) {
    let auth = plane.auth();
    let only = user(plane, "only-admin", Role::Admin).await;
    for update in [
        UserUpdate {
            role: Some(Role::Viewer),
            ..UserUpdate::default()
        },
        UserUpdate {
            disabled: Some(true),
            ..UserUpdate::default()
        },
    ] {
        let refused = auth.update_user(&only, update).await.unwrap_err();
        assert_eq!(refused.code(), "last_admin");
    }
    assert_eq!(auth.get_user(&only).await.unwrap().role, Role::Admin);

    // Two admins demoting each other at once: exactly one goes through.
    let other = user(plane, "second-admin", Role::Admin).await;
    let demote = || UserUpdate {
        role: Some(Role::Member),
        ..UserUpdate::default()
    };
    let (a, b) = tokio::join!(
        auth.update_user(&only, demote()),
        auth.update_user(&other, demote())
    );
    assert_eq!(
        usize::from(a.is_ok()) + usize::from(b.is_ok()),
        1,
        "{a:?} {b:?}"
    );
    let admins = auth
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == Role::Admin && !u.disabled)
        .count();
    assert_eq!(admins, 1);
}

pub async fn usernames_are_unique_regardless_of_case(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "Grace", Role::Viewer).await;
    let new = NewUser {
        username: "grace".into(),
        password: PASSWORD.into(),
        role: Role::Viewer,
    };
    assert_eq!(
        auth.create_user(new).await.unwrap_err().code(),
        "username_taken"
    );
    for name in ["grace", "GRACE", "Grace"] {
        auth.login(name, PASSWORD, ClientMeta::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

pub async fn concurrent_refreshes_of_one_token_share_its_successor(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "two-tabs", Role::Viewer).await;
    let login = auth
        .login("two-tabs", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let mut token = login.refresh_token.clone();
    for _ in 0..5 {
        let (a, b, c) = tokio::join!(
            auth.refresh(&token),
            auth.refresh(&token),
            auth.refresh(&token)
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(a.refresh_token, b.refresh_token);
        assert_eq!(b.refresh_token, c.refresh_token);
        for pair in [&a, &b, &c] {
            auth.authenticate(Some(&bearer(&pair.access_token)))
                .await
                .unwrap();
        }
        // The session goes on from the shared successor.
        let next = auth.refresh(&a.refresh_token).await.unwrap();
        auth.authenticate(Some(&bearer(&next.access_token)))
            .await
            .unwrap();
        token = next.refresh_token;
    }
}

pub async fn without_grace_a_replayed_refresh_token_ends_the_session(plane: &TenantPlane) {
    let auth = plane.auth();
    user(plane, "no-grace", Role::Viewer).await;
    let first = auth
        .login("no-grace", PASSWORD, ClientMeta::default())
        .await
        .unwrap();
    let second = auth.refresh(&first.refresh_token).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        auth.refresh(&first.refresh_token).await.unwrap_err().code(),
        "invalid_refresh_token"
    );
    assert_eq!(
        auth.authenticate(Some(&bearer(&second.access_token)))
            .await
            .unwrap_err()
            .code(),
        "session_revoked"
    );
}
