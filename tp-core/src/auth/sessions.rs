//! Sessions: login, refresh with rotation and reuse detection, logout and
//! forced termination.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::revocation::{Revocation, session_subject};
use super::users::UserRow;
use super::{Auth, Principal, Role, digest, password, random_token};
use crate::db::schema::{refresh_tokens, revocations, sessions, users};
use crate::db::{WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};

/// Refresh tokens start with this, so they are easy to spot in leaks.
const REFRESH_PREFIX: &str = "tpr_";

/// Where a request came from, recorded with the session.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    /// Client IP as the edge saw it.
    pub ip: Option<String>,
    /// `User-Agent`, truncated.
    pub user_agent: Option<String>,
}

/// What login and refresh return.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    /// Short-lived HS256 JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque, single-use token for `POST /api/auth/refresh`.
    pub refresh_token: String,
    /// The session both tokens belong to.
    pub session_id: String,
}

/// A session as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable)]
pub struct Session {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Created (Unix ms; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: i64,
    /// Last refresh.
    #[serde(serialize_with = "rfc3339")]
    pub last_used_at: i64,
    /// End of life unless refreshed.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: i64,
    /// When it was ended, if it was.
    #[serde(serialize_with = "rfc3339_opt")]
    pub revoked_at: Option<i64>,
    /// Why it was ended.
    pub revoked_reason: Option<String>,
    /// Client at login.
    pub user_agent: Option<String>,
    /// Client IP at login.
    pub client_ip: Option<String>,
}

fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*ms))
}

fn rfc3339_opt<S: serde::Serializer>(
    ms: &Option<i64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339_ms(*ms)),
        None => s.serialize_none(),
    }
}

fn bad_credentials() -> Error {
    Error::unauthenticated("invalid_credentials", "wrong username or password")
}

fn bad_refresh() -> Error {
    Error::unauthenticated(
        "invalid_refresh_token",
        "the refresh token is invalid, used or expired",
    )
}

fn clip(value: Option<String>, max: usize) -> Option<String> {
    value.map(|v| v.chars().filter(|c| !c.is_control()).take(max).collect())
}

impl Auth {
    /// Checks a password and opens a session.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        meta: ClientMeta,
    ) -> Result<TokenPair> {
        if password.len() > password::MAX_PASSWORD_BYTES || username.len() > 256 {
            return Err(bad_credentials());
        }
        let row = self.user_row_by_name(username).await?;
        let stored = row.as_ref().map(|r| r.password_hash.clone());
        let matches = password::verify(password.to_owned(), stored).await?;
        let Some(row) = row.filter(|_| matches) else {
            tracing::info!(target: "audit", "login failed");
            return Err(bad_credentials());
        };
        if row.disabled {
            return Err(Error::unauthenticated(
                "user_disabled",
                "this user is disabled",
            ));
        }
        let pair = self.open_session(&row, meta).await?;
        tracing::info!(target: "audit", user_id = row.id.as_str(), session_id = pair.session_id.as_str(), "login");
        Ok(pair)
    }

    /// Opens a session for a user without a password (admin command line).
    pub async fn open_session_for(&self, username: &str) -> Result<TokenPair> {
        let row = self.user_row_by_name(username).await?.ok_or_else(|| {
            Error::not_found(
                "user_not_found",
                format!("user {username:?} does not exist"),
            )
        })?;
        if row.disabled {
            return Err(Error::unauthenticated(
                "user_disabled",
                "this user is disabled",
            ));
        }
        self.open_session(&row, ClientMeta::default()).await
    }

    async fn open_session(&self, user: &UserRow, meta: ClientMeta) -> Result<TokenPair> {
        let now = now_ms();
        let session_id = uuid::Uuid::now_v7().simple().to_string();
        let refresh = format!("{REFRESH_PREFIX}{}", random_token(32)?);
        let refresh_hash = digest(&refresh);
        let expires_at = now + i64::try_from(self.refresh_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let ip = clip(meta.ip, 64);
        let agent = clip(meta.user_agent, 256);
        with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                diesel::insert_into(sessions::table)
                    .values((
                        sessions::id.eq(&session_id),
                        sessions::user_id.eq(&user.id),
                        sessions::created_at.eq(now),
                        sessions::last_used_at.eq(now),
                        sessions::expires_at.eq(expires_at),
                        sessions::user_agent.eq(&agent),
                        sessions::client_ip.eq(&ip),
                    ))
                    .execute(c)
                    .await?;
                diesel::insert_into(refresh_tokens::table)
                    .values((
                        refresh_tokens::token_hash.eq(&refresh_hash),
                        refresh_tokens::session_id.eq(&session_id),
                        refresh_tokens::issued_at.eq(now),
                    ))
                    .execute(c)
                    .await?;
                Ok(())
            })
            .await
        })?;
        let role: Role = user.role.parse()?;
        self.pair(&user.id, &session_id, role, user.token_version, refresh)
    }

    fn pair(
        &self,
        user_id: &str,
        session_id: &str,
        role: Role,
        version: i64,
        refresh: String,
    ) -> Result<TokenPair> {
        let (access_token, _exp) = self.jwt.issue(user_id, session_id, role, version)?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: self.jwt.ttl().as_secs(),
            refresh_token: refresh,
            session_id: session_id.to_owned(),
        })
    }

    /// The refresh token that `refresh_token` is exchanged for: derived
    /// from it with a server key, so a retry of the same exchange computes
    /// the same one and nothing secret needs storing.
    fn successor(&self, refresh_token: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = self.successor_key.clone();
        mac.update(b"tenant-plane refresh successor\0");
        mac.update(refresh_token.as_bytes());
        let bytes = mac.finalize().into_bytes();
        format!(
            "{REFRESH_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..32])
        )
    }

    /// Exchanges a refresh token for a new pair. Each refresh token works
    /// once; presenting it again within the grace window (a retry after a
    /// lost answer, a second tab) answers with the same successor, as long
    /// as that one is still unused. Later, it ends the session: it was
    /// stolen or replayed.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
            return Err(bad_refresh());
        }
        let hash = digest(refresh_token);
        let now = now_ms();
        let next = self.successor(refresh_token);
        let next_hash = digest(&next);
        let grace = i64::try_from(self.refresh_reuse_grace.as_millis()).unwrap_or(0);
        let revocation_expires =
            now + i64::try_from(self.revocation_lifetime().as_millis()).unwrap_or(i64::MAX / 2);
        enum Outcome {
            Rotated(String, String, String, i64),
            Reused(Revocation),
            Refused,
        }
        let outcome: Outcome = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let found: Option<(String, Option<i64>)> = refresh_tokens::table
                    .find(&hash)
                    .select((refresh_tokens::session_id, refresh_tokens::used_at))
                    .first(c)
                    .await
                    .optional()?;
                let Some((session_id, used_at)) = found else {
                    return Ok(Outcome::Refused);
                };
                let session: (String, i64, Option<i64>) = sessions::table
                    .find(&session_id)
                    .select((
                        sessions::user_id,
                        sessions::expires_at,
                        sessions::revoked_at,
                    ))
                    .first(c)
                    .await?;
                let (user_id, expires_at, revoked_at) = session;
                if revoked_at.is_some() || expires_at <= now {
                    return Ok(Outcome::Refused);
                }
                let user: (String, bool, i64) = users::table
                    .find(&user_id)
                    .select((users::role, users::disabled, users::token_version))
                    .first(c)
                    .await?;
                if user.1 {
                    return Ok(Outcome::Refused);
                }
                // Claimed here, or by a concurrent exchange of the same token.
                let claimed = if used_at.is_none() {
                    diesel::update(
                        refresh_tokens::table
                            .find(&hash)
                            .filter(refresh_tokens::used_at.is_null()),
                    )
                    .set(refresh_tokens::used_at.eq(now))
                    .execute(c)
                    .await?
                } else {
                    0
                };
                let reused_in_grace = claimed == 0 && {
                    let used_at: Option<i64> = refresh_tokens::table
                        .find(&hash)
                        .select(refresh_tokens::used_at)
                        .first(c)
                        .await?;
                    let successor_unused: Option<Option<i64>> = refresh_tokens::table
                        .find(&next_hash)
                        .select(refresh_tokens::used_at)
                        .first(c)
                        .await
                        .optional()?;
                    used_at.is_some_and(|at| now - at <= grace) && successor_unused == Some(None)
                };
                if reused_in_grace {
                    // The same successor again, with a fresh access token.
                    return Ok(Outcome::Rotated(user_id, session_id, user.0, user.2));
                }
                if claimed == 0 {
                    let entry = Revocation {
                        subject: session_subject(&session_id),
                        revoked_at: now,
                        expires_at: revocation_expires,
                    };
                    diesel::update(sessions::table.find(&session_id))
                        .set((
                            sessions::revoked_at.eq(now),
                            sessions::revoked_reason.eq("refresh_token_reused"),
                        ))
                        .execute(c)
                        .await?;
                    diesel::insert_into(revocations::table)
                        .values(&entry)
                        .on_conflict(revocations::subject)
                        .do_nothing()
                        .execute(c)
                        .await?;
                    return Ok(Outcome::Reused(entry));
                }
                diesel::insert_into(refresh_tokens::table)
                    .values((
                        refresh_tokens::token_hash.eq(&next_hash),
                        refresh_tokens::session_id.eq(&session_id),
                        refresh_tokens::issued_at.eq(now),
                    ))
                    .execute(c)
                    .await?;
                diesel::update(sessions::table.find(&session_id))
                    .set(sessions::last_used_at.eq(now))
                    .execute(c)
                    .await?;
                Ok(Outcome::Rotated(user_id, session_id, user.0, user.2))
            })
            .await
        })?;
        match outcome {
            Outcome::Rotated(user_id, session_id, role, version) => {
                self.pair(&user_id, &session_id, role.parse()?, version, next)
            }
            Outcome::Reused(entry) => {
                tracing::warn!(target: "audit", subject = entry.subject.as_str(), "refresh token reused; session ended");
                self.revocations.announce(vec![entry]).await;
                Err(bad_refresh())
            }
            Outcome::Refused => Err(bad_refresh()),
        }
    }

    /// Ends the caller's own session.
    pub async fn logout(&self, principal: &Principal) -> Result<()> {
        match principal {
            Principal::User { session_id, .. } => {
                self.end_session(session_id, "logout").await.map(drop)
            }
            Principal::ApiKey { .. } => Err(Error::invalid(
                "not_a_session",
                "API keys have no session; revoke the key instead",
            )),
        }
    }

    /// Ends any session (admin). Effective on every replica at once with
    /// Redis, within the poll interval without.
    pub async fn terminate_session(&self, session_id: &str) -> Result<()> {
        if self.end_session(session_id, "terminated").await? {
            Ok(())
        } else {
            Err(Error::not_found(
                "session_not_found",
                format!("session {session_id:?} does not exist"),
            ))
        }
    }

    /// Marks a session ended and records the revocation, in one transaction;
    /// false if there is no such session.
    async fn end_session(&self, session_id: &str, reason: &str) -> Result<bool> {
        let now = now_ms();
        let entry = Revocation {
            subject: session_subject(session_id),
            revoked_at: now,
            expires_at: now
                + i64::try_from(self.revocation_lifetime().as_millis()).unwrap_or(i64::MAX / 2),
        };
        let found: bool = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let exists: i64 = sessions::table
                    .filter(sessions::id.eq(session_id))
                    .count()
                    .get_result(c)
                    .await?;
                if exists == 0 {
                    return Ok(false);
                }
                diesel::update(
                    sessions::table
                        .find(session_id)
                        .filter(sessions::revoked_at.is_null()),
                )
                .set((
                    sessions::revoked_at.eq(now),
                    sessions::revoked_reason.eq(reason),
                ))
                .execute(c)
                .await?;
                diesel::insert_into(revocations::table)
                    .values(&entry)
                    .on_conflict(revocations::subject)
                    .do_nothing()
                    .execute(c)
                    .await?;
                Ok(true)
            })
            .await
        })?;
        if found {
            tracing::info!(target: "audit", session_id, reason, "session ended");
            self.revocations.announce(vec![entry]).await;
        }
        Ok(found)
    }

    /// Sessions, newest first; all users' or one user's.
    pub async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>> {
        with_conn!(&self.db, |conn| {
            let mut query = sessions::table
                .order(sessions::created_at.desc())
                .into_boxed();
            if let Some(user_id) = user_id {
                query = query.filter(sessions::user_id.eq(user_id));
            }
            Ok(query.limit(1000).load::<Session>(conn).await?)
        })
    }
}
