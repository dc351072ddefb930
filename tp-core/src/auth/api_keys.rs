//! API keys for service accounts: `tpk_<id>_<secret>`, shown once, stored hashed.

use std::time::Instant;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};

use super::revocation::{Revocation, key_subject};
use super::{Auth, KEY_CACHE_TTL, Principal, Role, digest, random_token};
use crate::db::schema::{api_keys, revocations};
use crate::db::{WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};

/// Every API key starts with this.
pub(super) const PREFIX: &str = "tpk_";

/// What creating a key takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// A label for people.
    pub name: String,
    /// The key's role (default viewer).
    #[serde(default = "default_role")]
    pub role: Role,
    /// Days until the key stops working (default: never).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

fn default_role() -> Role {
    Role::Viewer
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// Public id (part of the key).
    pub id: String,
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Who created it.
    pub created_by: Option<String>,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Stops working at, RFC 3339.
    pub expires_at: Option<String>,
    /// Revoked at, RFC 3339.
    pub revoked_at: Option<String>,
}

/// What verification needs, cached per key id.
#[derive(Debug, Clone)]
pub(super) struct KeyRecord {
    secret_hash: String,
    role: Role,
    expires_at: Option<i64>,
    revoked: bool,
}

type KeyRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

fn to_key(
    (id, name, role, _hash, created_by, created_at, expires_at, revoked_at): KeyRow,
) -> Result<ApiKey> {
    Ok(ApiKey {
        id,
        name,
        role: role.parse()?,
        created_by,
        created_at: rfc3339_ms(created_at),
        expires_at: expires_at.map(rfc3339_ms),
        revoked_at: revoked_at.map(rfc3339_ms),
    })
}

fn invalid_key() -> Error {
    Error::unauthenticated(
        "invalid_api_key",
        "the API key is invalid, expired or revoked",
    )
}

/// Equality in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Creates a key; the returned secret is never shown again.
    pub async fn create_api_key(
        &self,
        new: NewApiKey,
        created_by: Option<&str>,
    ) -> Result<(ApiKey, String)> {
        let name = new.name.trim().to_owned();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_name",
                "key names are 1 to 128 characters",
            ));
        }
        if new.expires_in_days.is_some_and(|d| d == 0 || d > 3650) {
            return Err(Error::invalid(
                "invalid_expiry",
                "expires_in_days is between 1 and 3650",
            ));
        }
        let id = hex::encode(uuid::Uuid::new_v4().as_bytes())[..16].to_owned();
        let secret = random_token(32)?;
        let key = format!("{PREFIX}{id}_{secret}");
        let now = now_ms();
        let expires_at = new.expires_in_days.map(|d| now + i64::from(d) * 86_400_000);
        let row: KeyRow = (
            id.clone(),
            name,
            new.role.as_str().to_owned(),
            digest(&secret),
            created_by.map(str::to_owned),
            now,
            expires_at,
            None,
        );
        let values = row.clone();
        with_conn!(&self.db, |conn| {
            Ok(diesel::insert_into(api_keys::table)
                .values((
                    api_keys::id.eq(&values.0),
                    api_keys::name.eq(&values.1),
                    api_keys::role.eq(&values.2),
                    api_keys::secret_hash.eq(&values.3),
                    api_keys::created_by.eq(&values.4),
                    api_keys::created_at.eq(values.5),
                    api_keys::expires_at.eq(values.6),
                ))
                .execute(conn)
                .await?)
        })?;
        tracing::info!(target: "audit", key_id = id.as_str(), role = new.role.as_str(), created_by, "api key created");
        Ok((to_key(row)?, key))
    }

    /// All keys, newest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows: Vec<KeyRow> = with_conn!(&self.db, |conn| {
            Ok(api_keys::table
                .order(api_keys::created_at.desc())
                .load::<KeyRow>(conn)
                .await?)
        })?;
        rows.into_iter().map(to_key).collect()
    }

    /// Revokes a key everywhere (instantly with Redis, within the poll interval without).
    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        let now = now_ms();
        let entry = Revocation {
            subject: key_subject(id),
            revoked_at: now,
            expires_at: now
                + i64::try_from(self.revocation_lifetime().as_millis()).unwrap_or(i64::MAX / 2),
        };
        let found: usize = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let found = diesel::update(api_keys::table.find(id))
                    .set(api_keys::revoked_at.eq(now))
                    .execute(c)
                    .await?;
                if found > 0 {
                    diesel::insert_into(revocations::table)
                        .values(&entry)
                        .on_conflict(revocations::subject)
                        .do_nothing()
                        .execute(c)
                        .await?;
                }
                Ok(found)
            })
            .await
        })?;
        if found == 0 {
            return Err(Error::not_found(
                "api_key_not_found",
                format!("API key {id:?} does not exist"),
            ));
        }
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        tracing::info!(target: "audit", key_id = id, "api key revoked");
        self.revocations.announce(vec![entry]).await;
        Ok(())
    }

    /// Verifies an API key: cached lookup, hash comparison, expiry, revoked set.
    pub(super) async fn authenticate_key(&self, key: &str) -> Result<Principal> {
        let rest = key.strip_prefix(PREFIX).ok_or_else(invalid_key)?;
        let (id, secret) = rest.split_once('_').ok_or_else(invalid_key)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() > 128 {
            return Err(invalid_key());
        }
        if self.revocations.is_revoked(&key_subject(id)) {
            return Err(invalid_key());
        }
        let record = self.key_record(id).await?.ok_or_else(invalid_key)?;
        let fresh = record.expires_at.is_none_or(|at| at > now_ms());
        if record.revoked
            || !fresh
            || !constant_time_eq(digest(secret).as_bytes(), record.secret_hash.as_bytes())
        {
            return Err(invalid_key());
        }
        Ok(Principal::ApiKey {
            key_id: id.to_owned(),
            role: record.role,
        })
    }

    async fn key_record(&self, id: &str) -> Result<Option<KeyRecord>> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, record)| record.clone());
        if let Some(record) = cached {
            return Ok(record);
        }
        let row: Option<(String, String, Option<i64>, Option<i64>)> =
            with_conn!(&self.db, |conn| {
                Ok(api_keys::table
                    .find(id)
                    .select((
                        api_keys::secret_hash,
                        api_keys::role,
                        api_keys::expires_at,
                        api_keys::revoked_at,
                    ))
                    .first(conn)
                    .await
                    .optional()?)
            })?;
        let record = row
            .map(
                |(secret_hash, role, expires_at, revoked_at)| -> Result<KeyRecord> {
                    Ok(KeyRecord {
                        secret_hash,
                        role: role.parse()?,
                        expires_at,
                        revoked: revoked_at.is_some(),
                    })
                },
            )
            .transpose()?;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() > 10_000 {
            keys.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
        }
        keys.insert(id.to_owned(), (Instant::now(), record.clone()));
        Ok(record)
    }
}
