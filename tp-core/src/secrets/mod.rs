//! Secrets at rest: AES-256-GCM under `ENCRYPTION_KEY`, audited, rotatable.
//!
//! Values are sealed by [`Keyring`] (fresh nonce per write, the name as
//! associated data) and never listed, logged or returned by anything but
//! [`Secrets::get`]. Every put, get, delete and rotation writes an
//! `audit_log` row in the same transaction as the change, and an `audit`
//! tracing event.
//!
//! Rotation re-encrypts rows sealed by the previous key, one row per
//! transaction with a compare-and-swap on the row's key id, `updated_at` and
//! nonce: safe while other replicas serve traffic, and resumable.
//!
//! Transactions begin with their write, never read-then-write, so SQLite's
//! WAL mode cannot refuse their upgrade with `SQLITE_BUSY_SNAPSHOT`.

mod cipher;

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use secrecy::zeroize::Zeroizing;
use serde::Serialize;

pub use cipher::{FORMAT_V1, KEY_ID_LEN, Keyring, NONCE_LEN, Sealed, key_id};

use crate::config::EncryptionConfig;
use crate::db::schema::{audit_log, secrets};
use crate::db::{Database, WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};

/// Largest secret value in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Longest secret name in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Actor recorded for rotations.
pub const ROTATION_ACTOR: &str = "system:rotation";

/// Attempts per row when concurrent writers keep winning the swap.
const ROTATE_ATTEMPTS: usize = 3;

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretMeta {
    /// Name.
    pub name: String,
    /// Id of the key that encrypts it.
    pub key_id: String,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Last written, RFC 3339 (a rotation does not change it).
    pub updated_at: String,
    /// Who wrote it last.
    pub updated_by: Option<String>,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Rows re-encrypted under the current key.
    pub rotated: u64,
    /// Rows found already under the current key (including rows another
    /// replica rotated or rewrote meanwhile).
    pub already_current: u64,
    /// Rows left as they were: their key is not configured, their
    /// ciphertext does not authenticate, or writers kept changing them.
    pub failed: u64,
}

type MetaRow = (String, String, i64, i64, Option<String>);

fn to_meta((name, key_id, created_at, updated_at, updated_by): MetaRow) -> SecretMeta {
    SecretMeta {
        name,
        key_id,
        created_at: rfc3339_ms(created_at),
        updated_at: rfc3339_ms(updated_at),
        updated_by,
    }
}

/// One `audit_log` row.
#[derive(Insertable)]
#[diesel(table_name = audit_log)]
struct AuditEntry<'a> {
    at: i64,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
}

/// Checks a secret name: 1–128 characters of `[A-Za-z0-9._/-]`, with no
/// empty, `.` or `..` path segment (names appear in URLs).
pub fn validate_name(name: &str) -> Result<()> {
    let chars_ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    let segments_ok = name
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..");
    if chars_ok && segments_ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_secret_name",
            format!(
                "secret names are 1 to {MAX_NAME_LEN} characters of letters, digits, \
                 '.', '_', '-' and '/', with no empty, '.' or '..' segment"
            ),
        ))
    }
}

fn validate_value(value: &str) -> Result<()> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(Error::invalid(
            "secret_too_large",
            format!(
                "secret values are at most {MAX_SECRET_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn validate_actor(actor: &str) -> Result<()> {
    if actor.is_empty() || actor.len() > 256 || actor.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid_actor",
            "the actor of a secret operation is 1 to 256 printable characters",
        ));
    }
    Ok(())
}

fn not_found(name: &str) -> Error {
    Error::not_found(
        "secret_not_found",
        format!("secret {name:?} does not exist"),
    )
}

/// How one row's rotation ended.
enum RowRotation {
    Rotated,
    AlreadyCurrent,
    Gone,
    Failed,
}

/// Encrypted secrets in the database.
pub struct Secrets {
    db: Arc<Database>,
    keys: Keyring,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Secrets in `db` under the configured keys.
    pub fn new(db: Arc<Database>, config: &EncryptionConfig) -> Self {
        Self::with_keys(db, Keyring::from_config(config))
    }

    /// Secrets in `db` under `keys`.
    pub fn with_keys(db: Arc<Database>, keys: Keyring) -> Self {
        Self { db, keys }
    }

    /// The keys in use.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Creates or replaces a secret, sealed under the current key.
    pub async fn put(&self, name: &str, value: String, actor: &str) -> Result<SecretMeta> {
        // Wiped on every path out of here, errors included.
        let value = Zeroizing::new(value);
        validate_name(name)?;
        validate_actor(actor)?;
        validate_value(&value)?;
        let sealed = self.keys.seal(name, value.as_bytes())?;
        drop(value);
        let now = now_ms();
        let entry = AuditEntry {
            at: now,
            actor,
            action: "secret.put",
            target: name,
        };
        let row: MetaRow = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let row = diesel::insert_into(secrets::table)
                    .values((
                        secrets::name.eq(name),
                        secrets::ciphertext.eq(&sealed.ciphertext),
                        secrets::nonce.eq(&sealed.nonce),
                        secrets::key_id.eq(&sealed.key_id),
                        secrets::created_at.eq(now),
                        secrets::updated_at.eq(now),
                        secrets::updated_by.eq(actor),
                    ))
                    .on_conflict(secrets::name)
                    .do_update()
                    .set((
                        secrets::ciphertext.eq(&sealed.ciphertext),
                        secrets::nonce.eq(&sealed.nonce),
                        secrets::key_id.eq(&sealed.key_id),
                        secrets::updated_at.eq(now),
                        secrets::updated_by.eq(actor),
                    ))
                    .returning((
                        secrets::name,
                        secrets::key_id,
                        secrets::created_at,
                        secrets::updated_at,
                        secrets::updated_by,
                    ))
                    .get_result::<MetaRow>(c)
                    .await?;
                diesel::insert_into(audit_log::table)
                    .values(&entry)
                    .execute(c)
                    .await?;
                Ok(row)
            })
            .await
        })?;
        tracing::info!(
            target: "audit",
            action = "secret.put",
            secret = name,
            actor,
            key_id = sealed.key_id.as_str(),
            "secret written"
        );
        Ok(to_meta(row))
    }

    /// The value of a secret. The read is audited before the value is returned:
    /// if the audit row cannot be written, the value is not returned.
    pub async fn get(&self, name: &str, actor: &str) -> Result<String> {
        validate_name(name)?;
        validate_actor(actor)?;
        let entry = AuditEntry {
            at: now_ms(),
            actor,
            action: "secret.get",
            target: name,
        };
        // Read, then audit: two statements rather than a read-then-write
        // transaction (see the module docs); a read changes nothing.
        let row: Option<(Vec<u8>, Vec<u8>, String)> = with_conn!(&self.db, |conn| {
            let row = secrets::table
                .find(name)
                .select((secrets::ciphertext, secrets::nonce, secrets::key_id))
                .first::<(Vec<u8>, Vec<u8>, String)>(conn)
                .await
                .optional()?;
            if row.is_some() {
                diesel::insert_into(audit_log::table)
                    .values(&entry)
                    .execute(conn)
                    .await?;
            }
            Ok(row)
        })?;
        let (ciphertext, nonce, key_id) = row.ok_or_else(|| not_found(name))?;
        let sealed = Sealed {
            ciphertext,
            nonce,
            key_id,
        };
        tracing::info!(
            target: "audit",
            action = "secret.get",
            secret = name,
            actor,
            key_id = sealed.key_id.as_str(),
            "secret read"
        );
        self.keys.open(name, &sealed).inspect_err(|e| {
            tracing::error!(
                secret = name,
                key_id = sealed.key_id.as_str(),
                code = e.code(),
                "secret cannot be decrypted"
            );
        })
    }

    /// Every secret's name, key id and timestamps, by name; never values.
    pub async fn list(&self) -> Result<Vec<SecretMeta>> {
        let rows: Vec<MetaRow> = with_conn!(&self.db, |conn| {
            Ok(secrets::table
                .order(secrets::name)
                .select((
                    secrets::name,
                    secrets::key_id,
                    secrets::created_at,
                    secrets::updated_at,
                    secrets::updated_by,
                ))
                .load::<MetaRow>(conn)
                .await?)
        })?;
        Ok(rows.into_iter().map(to_meta).collect())
    }

    /// Deletes a secret.
    pub async fn delete(&self, name: &str, actor: &str) -> Result<()> {
        validate_name(name)?;
        validate_actor(actor)?;
        let entry = AuditEntry {
            at: now_ms(),
            actor,
            action: "secret.delete",
            target: name,
        };
        with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let deleted = diesel::delete(secrets::table.find(name)).execute(c).await?;
                if deleted == 0 {
                    return Err(not_found(name));
                }
                diesel::insert_into(audit_log::table)
                    .values(&entry)
                    .execute(c)
                    .await?;
                Ok(())
            })
            .await
        })?;
        tracing::info!(target: "audit", action = "secret.delete", secret = name, actor, "secret deleted");
        Ok(())
    }

    /// Re-encrypts under the current key every row sealed by another key,
    /// scanning names `batch_size` at a time.
    ///
    /// Each row is its own transaction, guarded by a compare-and-swap on the
    /// row as read (key id, `updated_at`, nonce): a concurrent write wins and
    /// the row is re-examined. Rows that cannot be opened are counted as
    /// failed and left intact. Safe to interrupt and run again; a database
    /// error stops the run with that error.
    pub async fn rotate(&self, batch_size: usize) -> Result<RotationReport> {
        if batch_size == 0 {
            return Err(Error::invalid(
                "invalid_batch_size",
                "the rotation batch size must be at least 1",
            ));
        }
        let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
        let current = self.keys.current_key_id().to_owned();
        let mut report = RotationReport::default();
        // Names are never empty, so "" sorts before all of them.
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = with_conn!(&self.db, |conn| {
                Ok(secrets::table
                    .filter(secrets::name.gt(&after))
                    .order(secrets::name)
                    .select((secrets::name, secrets::key_id))
                    .limit(limit)
                    .load::<(String, String)>(conn)
                    .await?)
            })?;
            let full_page = page.len() == batch_size;
            for (name, key_id) in &page {
                if *key_id == current {
                    report.already_current += 1;
                    continue;
                }
                match self.rotate_row(name).await? {
                    RowRotation::Rotated => report.rotated += 1,
                    RowRotation::AlreadyCurrent => report.already_current += 1,
                    RowRotation::Gone => {}
                    RowRotation::Failed => report.failed += 1,
                }
            }
            match page.into_iter().next_back() {
                Some((last, _)) if full_page => after = last,
                _ => break,
            }
        }
        tracing::info!(
            target: "audit",
            action = "secret.rotate",
            key_id = current.as_str(),
            rotated = report.rotated,
            already_current = report.already_current,
            failed = report.failed,
            "secret rotation finished"
        );
        Ok(report)
    }

    /// Re-encrypts one row if it is still under another key.
    async fn rotate_row(&self, name: &str) -> Result<RowRotation> {
        let current = self.keys.current_key_id();
        for _ in 0..ROTATE_ATTEMPTS {
            let row: Option<(Vec<u8>, Vec<u8>, String, i64)> = with_conn!(&self.db, |conn| {
                Ok(secrets::table
                    .find(name)
                    .select((
                        secrets::ciphertext,
                        secrets::nonce,
                        secrets::key_id,
                        secrets::updated_at,
                    ))
                    .first::<(Vec<u8>, Vec<u8>, String, i64)>(conn)
                    .await
                    .optional()?)
            })?;
            let Some((ciphertext, nonce, key_id, updated_at)) = row else {
                return Ok(RowRotation::Gone);
            };
            if key_id == current {
                return Ok(RowRotation::AlreadyCurrent);
            }
            let old = Sealed {
                ciphertext,
                nonce,
                key_id,
            };
            let value = match self.keys.open(name, &old) {
                Ok(value) => Zeroizing::new(value),
                Err(e) => {
                    tracing::error!(
                        secret = name,
                        key_id = old.key_id.as_str(),
                        code = e.code(),
                        "secret not rotated: it cannot be decrypted"
                    );
                    return Ok(RowRotation::Failed);
                }
            };
            let fresh = self.keys.seal(name, value.as_bytes())?;
            drop(value);
            let entry = AuditEntry {
                at: now_ms(),
                actor: ROTATION_ACTOR,
                action: "secret.rotate",
                target: name,
            };
            let swapped: usize = with_conn!(&self.db, |conn| {
                conn.write_transaction(async |c| {
                    let swapped = diesel::update(
                        secrets::table
                            .filter(secrets::name.eq(name))
                            .filter(secrets::key_id.eq(&old.key_id))
                            .filter(secrets::updated_at.eq(updated_at))
                            .filter(secrets::nonce.eq(&old.nonce)),
                    )
                    .set((
                        secrets::ciphertext.eq(&fresh.ciphertext),
                        secrets::nonce.eq(&fresh.nonce),
                        secrets::key_id.eq(&fresh.key_id),
                    ))
                    .execute(c)
                    .await?;
                    if swapped == 1 {
                        diesel::insert_into(audit_log::table)
                            .values(&entry)
                            .execute(c)
                            .await?;
                    }
                    Ok(swapped)
                })
                .await
            })?;
            if swapped == 1 {
                tracing::info!(
                    target: "audit",
                    action = "secret.rotate",
                    secret = name,
                    from_key_id = old.key_id.as_str(),
                    key_id = fresh.key_id.as_str(),
                    "secret re-encrypted"
                );
                return Ok(RowRotation::Rotated);
            }
            // Another writer changed the row since it was read: look again.
        }
        tracing::warn!(
            secret = name,
            "secret not rotated: it kept changing; run the rotation again"
        );
        Ok(RowRotation::Failed)
    }
}

#[cfg(test)]
mod tests;
