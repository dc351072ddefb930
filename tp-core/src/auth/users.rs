//! User accounts.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};

use super::revocation::{Revocation, session_subject};
use super::{Auth, Role, password};
use crate::db::schema::{revocations, sessions, users};
use crate::db::{WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};

/// What creating a user takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique login name.
    pub username: String,
    /// Initial password.
    pub password: String,
    /// Role (default viewer).
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Viewer
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// New role (takes effect at the next token refresh).
    pub role: Option<Role>,
    /// Disable (ends every session) or re-enable.
    pub disabled: Option<bool>,
    /// New password (ends every session).
    pub password: Option<String>,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Disabled users cannot log in or refresh.
    pub disabled: bool,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

#[derive(Queryable)]
pub(super) struct UserRow {
    pub(super) id: String,
    pub(super) username: String,
    pub(super) password_hash: String,
    pub(super) role: String,
    pub(super) disabled: bool,
    pub(super) created_at: i64,
    pub(super) _updated_at: i64,
}

impl UserRow {
    pub(super) fn to_user(&self) -> Result<User> {
        Ok(User {
            id: self.id.clone(),
            username: self.username.clone(),
            role: self.role.parse()?,
            disabled: self.disabled,
            created_at: rfc3339_ms(self.created_at),
        })
    }
}

fn check_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_username",
            "usernames are 1 to 64 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

fn user_not_found(id: &str) -> Error {
    Error::not_found("user_not_found", format!("user {id:?} does not exist"))
}

impl Auth {
    /// Creates a user.
    pub async fn create_user(&self, new: NewUser) -> Result<User> {
        check_username(&new.username)?;
        password::check_policy(&new.password)?;
        let hash = password::hash(new.password).await?;
        let now = now_ms();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let role = new.role.as_str();
        let result: Result<usize> = with_conn!(&self.db, |conn| {
            Ok(diesel::insert_into(users::table)
                .values((
                    users::id.eq(&id),
                    users::username.eq(&new.username),
                    users::password_hash.eq(&hash),
                    users::role.eq(role),
                    users::disabled.eq(false),
                    users::created_at.eq(now),
                    users::updated_at.eq(now),
                ))
                .execute(conn)
                .await?)
        });
        match result {
            Err(e) if e.code() == "already_exists" => {
                return Err(Error::conflict(
                    "username_taken",
                    format!("user {:?} already exists", new.username),
                ));
            }
            other => other?,
        };
        tracing::info!(target: "audit", user_id = id.as_str(), role, "user created");
        Ok(User {
            id,
            username: new.username,
            role: new.role,
            disabled: false,
            created_at: rfc3339_ms(now),
        })
    }

    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows: Vec<UserRow> = with_conn!(&self.db, |conn| {
            Ok(users::table
                .order(users::username)
                .load::<UserRow>(conn)
                .await?)
        })?;
        rows.iter().map(UserRow::to_user).collect()
    }

    /// Number of users (to bootstrap an empty plane).
    pub async fn count_users(&self) -> Result<i64> {
        with_conn!(&self.db, |conn| Ok(users::table
            .count()
            .get_result::<i64>(conn)
            .await?))
    }

    pub(super) async fn user_row(&self, id: &str) -> Result<Option<UserRow>> {
        with_conn!(&self.db, |conn| {
            Ok(users::table
                .find(id)
                .first::<UserRow>(conn)
                .await
                .optional()?)
        })
    }

    pub(super) async fn user_row_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        with_conn!(&self.db, |conn| {
            Ok(users::table
                .filter(users::username.eq(username))
                .first::<UserRow>(conn)
                .await
                .optional()?)
        })
    }

    /// One user.
    pub async fn get_user(&self, id: &str) -> Result<User> {
        self.user_row(id)
            .await?
            .ok_or_else(|| user_not_found(id))?
            .to_user()
    }

    /// Changes a user. Disabling or a new password ends every session of the
    /// user, in the same transaction, and revokes their tokens everywhere.
    pub async fn update_user(&self, id: &str, update: UserUpdate) -> Result<User> {
        if let Some(password) = &update.password {
            password::check_policy(password)?;
        }
        let hash = match update.password.clone() {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let ends_sessions = update.disabled == Some(true) || hash.is_some();
        let now = now_ms();
        let expires_at =
            now + i64::try_from(self.revocation_lifetime().as_millis()).unwrap_or(i64::MAX / 2);
        let role = update.role.map(Role::as_str);
        let (row, revoked): (Option<UserRow>, Vec<Revocation>) = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                let found = diesel::update(users::table.find(id))
                    .set(users::updated_at.eq(now))
                    .execute(c)
                    .await?;
                if found == 0 {
                    return Ok((None, Vec::new()));
                }
                if let Some(role) = role {
                    diesel::update(users::table.find(id))
                        .set(users::role.eq(role))
                        .execute(c)
                        .await?;
                }
                if let Some(disabled) = update.disabled {
                    diesel::update(users::table.find(id))
                        .set(users::disabled.eq(disabled))
                        .execute(c)
                        .await?;
                }
                if let Some(hash) = &hash {
                    diesel::update(users::table.find(id))
                        .set(users::password_hash.eq(hash))
                        .execute(c)
                        .await?;
                }
                let mut revoked = Vec::new();
                if ends_sessions {
                    let ended: Vec<String> = sessions::table
                        .filter(sessions::user_id.eq(id))
                        .filter(sessions::revoked_at.is_null())
                        .select(sessions::id)
                        .load(c)
                        .await?;
                    let reason = if hash.is_some() {
                        "password_changed"
                    } else {
                        "user_disabled"
                    };
                    diesel::update(sessions::table.filter(sessions::id.eq_any(&ended)))
                        .set((
                            sessions::revoked_at.eq(now),
                            sessions::revoked_reason.eq(reason),
                        ))
                        .execute(c)
                        .await?;
                    revoked = ended
                        .iter()
                        .map(|sid| Revocation {
                            subject: session_subject(sid),
                            revoked_at: now,
                            expires_at,
                        })
                        .collect();
                    for r in &revoked {
                        diesel::insert_into(revocations::table)
                            .values(r)
                            .on_conflict(revocations::subject)
                            .do_nothing()
                            .execute(c)
                            .await?;
                    }
                }
                let row = users::table.find(id).first::<UserRow>(c).await?;
                Ok((Some(row), revoked))
            })
            .await
        })?;
        let row = row.ok_or_else(|| user_not_found(id))?;
        let ended = revoked.len();
        self.revocations.announce(revoked).await;
        tracing::info!(target: "audit", user_id = id, ?role, disabled = ?update.disabled, sessions_ended = ended, "user updated");
        row.to_user()
    }
}
