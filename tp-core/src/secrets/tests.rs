//! Sealing without a database, plus one SQLite smoke test of the service.

use std::time::Duration;

use super::*;
use crate::config::{DatabaseConfig, DatabaseUrl};

const KEY_A: [u8; 32] = [0xA1; 32];
const KEY_B: [u8; 32] = [0xB2; 32];

#[test]
fn seal_and_open_round_trip() {
    let keys = Keyring::new(&KEY_A, None);
    for value in ["", "hunter2", "ünïcødé ✓", &"x".repeat(MAX_SECRET_BYTES)] {
        let sealed = keys.seal("db/password", value.as_bytes()).unwrap();
        assert_eq!(sealed.key_id, keys.current_key_id());
        assert_eq!(sealed.nonce.len(), NONCE_LEN);
        assert_eq!(sealed.ciphertext[0], FORMAT_V1);
        assert_eq!(sealed.ciphertext.len(), 1 + value.len() + 16);
        if !value.is_empty() {
            let found = sealed
                .ciphertext
                .windows(value.len())
                .any(|w| w == value.as_bytes());
            assert!(!found, "plaintext visible in the ciphertext");
        }
        assert_eq!(keys.open("db/password", &sealed).unwrap(), value);
    }
}

#[test]
fn every_write_gets_a_fresh_nonce() {
    let keys = Keyring::new(&KEY_A, None);
    let a = keys.seal("n", b"same").unwrap();
    let b = keys.seal("n", b"same").unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn ciphertext_is_bound_to_its_name() {
    let keys = Keyring::new(&KEY_A, None);
    let row_a = keys.seal("service-a/token", b"value of a").unwrap();
    let err = keys.open("service-b/token", &row_a).unwrap_err();
    assert_eq!(err.code(), "decryption_failed");
    assert_eq!(keys.open("service-a/token", &row_a).unwrap(), "value of a");
}

#[test]
fn altered_rows_never_open() {
    let keys = Keyring::new(&KEY_A, None);
    let sealed = keys.seal("n", b"value").unwrap();
    let mut flipped = sealed.clone();
    flipped.ciphertext[3] ^= 0x01;
    let mut other_nonce = sealed.clone();
    other_nonce.nonce[0] ^= 0x01;
    let mut short_nonce = sealed.clone();
    short_nonce.nonce.truncate(8);
    let mut version = sealed.clone();
    version.ciphertext[0] = 2;
    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(10);
    let empty = Sealed {
        ciphertext: Vec::new(),
        ..sealed.clone()
    };
    for (what, row) in [
        ("flipped bit", flipped),
        ("other nonce", other_nonce),
        ("short nonce", short_nonce),
        ("unknown version", version),
        ("truncated", truncated),
        ("empty", empty),
    ] {
        let err = keys.open("n", &row).unwrap_err();
        assert_eq!(err.code(), "decryption_failed", "{what}");
    }
}

#[test]
fn wrong_or_missing_key_fails_with_the_right_code() {
    let old = Keyring::new(&KEY_A, None);
    let sealed = old.seal("n", b"value").unwrap();

    // Rotated to B without keeping A: the key is unavailable, data intact.
    let rotated_away = Keyring::new(&KEY_B, None);
    let err = rotated_away.open("n", &sealed).unwrap_err();
    assert_eq!(err.code(), "encryption_key_unavailable");
    let text = err.to_string();
    assert!(text.contains(&sealed.key_id), "{text}");
    assert!(text.contains("TP_ENCRYPTION_KEY_PREVIOUS"), "{text}");

    // With A as previous key it opens; new writes use B.
    let rotating = Keyring::new(&KEY_B, Some(&KEY_A));
    assert_eq!(rotating.open("n", &sealed).unwrap(), "value");
    assert_eq!(rotating.previous_key_id(), Some(old.current_key_id()));
    assert_eq!(
        rotating.seal("n", b"v").unwrap().key_id,
        rotating.current_key_id()
    );

    // A row claiming key B's id but sealed with A: authentication fails.
    let forged = Sealed {
        key_id: rotated_away.current_key_id().to_owned(),
        ..sealed
    };
    assert_eq!(
        rotated_away.open("n", &forged).unwrap_err().code(),
        "decryption_failed"
    );
}

#[test]
fn key_ids_are_stable_and_reveal_nothing() {
    let id = key_id(&KEY_A);
    assert_eq!(id.len(), KEY_ID_LEN);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(id, key_id(&[0xA1; 32]));
    assert_ne!(id, key_id(&KEY_B));
    // Pinned: stored rows name their key by this id, so it must never change.
    // (sha256("tenant-plane/secrets/key-id/v1\0" ‖ 32 zero bytes), computed independently)
    assert_eq!(key_id(&[0u8; 32]), "9f79d3357edbcdd2");
    assert!(!hex::encode(KEY_A).contains(&id));
    // The same key twice is one key.
    assert_eq!(Keyring::new(&KEY_A, Some(&KEY_A)).previous_key_id(), None);
    let debug = format!("{:?}", Keyring::new(&KEY_A, Some(&KEY_B)));
    assert!(
        !debug.contains(&hex::encode(KEY_A)) && debug.contains(&id),
        "{debug}"
    );
}

#[test]
fn names_and_sizes_are_checked() {
    for ok in [
        "a",
        "db/password",
        "A-Z_0.9",
        "team/app/api-key",
        &"n".repeat(128),
    ] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        &"n".repeat(129),
        "with space",
        "semi;colon",
        "ünicode",
        "/leading",
        "trailing/",
        "a//b",
        "a/../b",
        "./a",
        "..",
        "new\nline",
    ] {
        assert_eq!(
            validate_name(bad).unwrap_err().code(),
            "invalid_secret_name",
            "{bad:?}"
        );
    }
    assert!(validate_value(&"x".repeat(MAX_SECRET_BYTES)).is_ok());
    assert_eq!(
        validate_value(&"x".repeat(MAX_SECRET_BYTES + 1))
            .unwrap_err()
            .code(),
        "secret_too_large"
    );
}

/// Compile-time check: the service's futures can be spawned (Send + 'static
/// once the service is in an Arc), as hyper handlers need.
#[allow(dead_code)]
fn futures_are_send(secrets: Arc<Secrets>) {
    tokio::spawn(async move {
        let name = String::from("n");
        let actor = String::from("user:1");
        let _ = secrets.put(&name, String::new(), &actor).await;
        let _ = secrets.get(&name, &actor).await;
        let _ = secrets.list().await;
        let _ = secrets.delete(&name, &actor).await;
        let _ = secrets.rotate(10).await;
    });
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Compile-time check: the futures borrow their arguments and are still
/// `Send` in a higher-ranked context, as a boxed handler future is.
#[allow(dead_code)]
fn borrowed_futures_are_send<'a>(
    secrets: &'a Secrets,
    name: &'a str,
    actor: &'a str,
) -> BoxFuture<'a, Result<()>> {
    fn handler<F>(f: F) -> F
    where
        F: for<'x> Fn(&'x Secrets, &'x str) -> BoxFuture<'x, Result<String>>,
    {
        f
    }
    let _ = handler(|s, n| Box::pin(s.get(n, "user:1")));
    Box::pin(async move {
        secrets.put(name, String::new(), actor).await?;
        secrets.get(name, actor).await?;
        secrets.delete(name, actor).await?;
        secrets.rotate(10).await?;
        Ok(())
    })
}

async fn sqlite() -> (Arc<Database>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tp-secrets-{}", uuid::Uuid::new_v4()));
    let config = DatabaseConfig {
        url: DatabaseUrl::Sqlite(dir.join("tp.db")),
        pool_min: 1,
        pool_max: 4,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        query_timeout: Duration::from_secs(10),
        auto_migrate: true,
        pooler: crate::config::Pooler::None,
    };
    let db = Arc::new(Database::open(&config).unwrap());
    db.migrate().await.unwrap();
    (db, dir)
}

async fn audit_actions(db: &Database) -> Result<Vec<(String, String, String)>> {
    with_conn!(db, |conn| {
        Ok(audit_log::table
            .order(audit_log::id)
            .select((audit_log::actor, audit_log::action, audit_log::target))
            .load::<(String, String, String)>(conn)
            .await?)
    })
}

/// The service end to end on SQLite (PostgreSQL is covered by the integration tests).
#[tokio::test]
async fn sqlite_put_get_list_delete_rotate() {
    let (db, dir) = sqlite().await;
    exercise(db).await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn exercise(db: Arc<Database>) {
    let old = Secrets::with_keys(db.clone(), Keyring::new(&KEY_A, None));
    let meta = old
        .put("db/password", "s3cret".into(), "user:1")
        .await
        .unwrap();
    assert_eq!(meta.key_id, key_id(&KEY_A));
    assert_eq!(meta.updated_by.as_deref(), Some("user:1"));
    let created = meta.created_at.clone();
    let meta = old
        .put("db/password", "s3cret-2".into(), "user:2")
        .await
        .unwrap();
    assert_eq!(meta.created_at, created);
    assert_eq!(old.get("db/password", "user:3").await.unwrap(), "s3cret-2");
    for i in 0..5 {
        old.put(&format!("batch/{i}"), format!("v{i}"), "user:1")
            .await
            .unwrap();
    }
    assert_eq!(
        old.get("nope", "user:1").await.unwrap_err().code(),
        "secret_not_found"
    );
    assert_eq!(
        old.put("big", "x".repeat(MAX_SECRET_BYTES + 1), "user:1")
            .await
            .unwrap_err()
            .code(),
        "secret_too_large"
    );

    // Rotation to B, with A kept as previous: two pages of 4.
    let new = Secrets::with_keys(db.clone(), Keyring::new(&KEY_B, Some(&KEY_A)));
    new.put("fresh", "under b".into(), "user:1").await.unwrap();
    let report = new.rotate(4).await.unwrap();
    assert_eq!(
        report,
        RotationReport {
            rotated: 6,
            already_current: 1,
            failed: 0
        }
    );
    let again = new.rotate(4).await.unwrap();
    assert_eq!(again.rotated, 0);
    assert_eq!(again.already_current, 7);
    assert!(
        new.list()
            .await
            .unwrap()
            .iter()
            .all(|m| m.key_id == key_id(&KEY_B))
    );
    assert_eq!(new.get("batch/3", "user:1").await.unwrap(), "v3");
    assert_eq!(new.get("db/password", "user:1").await.unwrap(), "s3cret-2");

    // Without the key: a clear error, rows untouched, rotation reports them failed.
    let lost = Secrets::with_keys(db.clone(), Keyring::new(&[0xC3; 32], None));
    assert_eq!(
        lost.get("batch/3", "user:1").await.unwrap_err().code(),
        "encryption_key_unavailable"
    );
    let report = lost.rotate(100).await.unwrap();
    assert_eq!(report.failed, 7);
    assert_eq!(new.get("batch/3", "user:1").await.unwrap(), "v3");

    new.delete("batch/3", "user:1").await.unwrap();
    assert_eq!(
        new.delete("batch/3", "user:1").await.unwrap_err().code(),
        "secret_not_found"
    );
    let names: Vec<String> = new
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names.len(), 6);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");

    let audit = audit_actions(&db).await.unwrap();
    let count = |action: &str| audit.iter().filter(|(_, a, _)| a == action).count();
    assert_eq!(count("secret.put"), 8);
    assert_eq!(count("secret.rotate"), 6);
    assert_eq!(count("secret.delete"), 1);
    // Successful reads and the read that failed to decrypt; not the missing name.
    assert_eq!(count("secret.get"), 5);
    assert!(audit.contains(&(
        ROTATION_ACTOR.to_owned(),
        "secret.rotate".to_owned(),
        "db/password".to_owned()
    )));
}
