//! Many writers at once: every write is acknowledged or refused with a
//! retryable code, and every acknowledged one is there afterwards.

use std::sync::Arc;
use std::time::Duration;

use tp_core::auth::{NewUser, Role};
use tp_core::vector::{Metric, NewCollection, NewDocument};
use tp_core::{Error, TenantPlane};

/// Concurrent writers, each with its own session chain, secret and documents.
const WRITERS: usize = 12;
/// Rounds each writer does; bounded in count, and the whole run in time.
const ROUNDS: usize = 20;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What one writer saw: every failure's code, and what was acknowledged.
#[derive(Default)]
struct Seen {
    failures: Vec<String>,
    documents: usize,
    last_secret: Option<String>,
    logged_out: Vec<String>,
}

impl Seen {
    fn check<T>(&mut self, what: &str, outcome: Result<T, Error>) -> Option<T> {
        outcome
            .map_err(|e| self.failures.push(format!("{what}: {} ({e})", e.code())))
            .ok()
    }
}

async fn writer(plane: Arc<TenantPlane>, n: usize) -> Seen {
    let auth = plane.auth();
    let username = format!("writer-{n}");
    let mut seen = Seen::default();
    let Some(mut pair) = seen.check("session", auth.open_session_for(&username).await) else {
        return seen;
    };
    for round in 0..ROUNDS {
        if let Some(next) = seen.check("refresh", auth.refresh(&pair.refresh_token).await) {
            pair = next;
        }
        let value = format!("value {n}/{round}");
        let secret = format!("writer-{n}");
        if seen
            .check(
                "secret put",
                plane.secrets().put(&secret, value.clone(), &username).await,
            )
            .is_some()
        {
            seen.last_secret = Some(value);
        }
        let doc = NewDocument {
            id: format!("{n}-{round}"),
            vector: vec![n as f32 + 1.0, round as f32 + 1.0],
            content: Some(format!("round {round} of writer {n}")),
            metadata: None,
        };
        if let Some(written) = seen.check("upsert", plane.vectors().upsert("busy", vec![doc]).await)
        {
            seen.documents += written;
        }
        // A second session, opened and ended at once: a logout that fails
        // would leave it valid.
        if round % 4 == 0
            && let Some(other) = seen.check("session", auth.open_session_for(&username).await)
            && let Some(principal) = seen.check(
                "authenticate",
                auth.authenticate(Some(&bearer(&other.access_token))).await,
            )
            && seen
                .check("logout", auth.logout(&principal).await)
                .is_some()
        {
            seen.logged_out.push(other.access_token);
        }
    }
    seen
}

pub async fn concurrent_writes_are_acknowledged_and_kept(plane: &Arc<TenantPlane>) {
    for n in 0..WRITERS {
        let new = NewUser {
            username: format!("writer-{n}"),
            password: "a long enough password".into(),
            role: Role::Member,
        };
        plane.auth().create_user(new).await.unwrap();
    }
    plane
        .vectors()
        .create_collection(NewCollection {
            name: "busy".into(),
            dimension: 2,
            metric: Metric::L2,
        })
        .await
        .unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|n| tokio::spawn(writer(plane.clone(), n)))
        .collect();
    let mut seen = Vec::new();
    for handle in writers {
        let result = tokio::time::timeout(Duration::from_secs(120), handle)
            .await
            .expect("writers finish in bounded time");
        seen.push(result.expect("writer task"));
    }

    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(
        failures.is_empty(),
        "{} of the writes failed, first ones: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let acknowledged: usize = seen.iter().map(|s| s.documents).sum();
    assert_eq!(acknowledged, WRITERS * ROUNDS);
    let stored = plane.vectors().get_collection("busy").await.unwrap();
    assert_eq!(
        stored.document_count,
        Some((WRITERS * ROUNDS) as u64),
        "documents kept"
    );
    for (n, s) in seen.iter().enumerate() {
        let value = plane
            .secrets()
            .get(&format!("writer-{n}"), "checker")
            .await
            .unwrap();
        assert_eq!(
            Some(value),
            s.last_secret,
            "last acknowledged secret of {n}"
        );
        for token in &s.logged_out {
            let refused = plane
                .auth()
                .authenticate(Some(&bearer(token)))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "session_revoked");
        }
    }
}
