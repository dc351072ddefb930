//! User accounts.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};

use super::revocation::{Revocation, session_subject, version_subject};
use super::{Auth, Role, password};
use crate::db::schema::{revocations, sessions, users};
use crate::db::{LockUsers, WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};

diesel::define_sql_function! {
    /// SQL `lower`; usernames are ASCII, where both backends agree.
    fn lower(text: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// What creating a user takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name, unique regardless of case.
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
    /// New role: access tokens issued before are refused on every replica,
    /// and the next refresh carries the new role.
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
    /// Access tokens issued under an older version are refused.
    pub(super) token_version: i64,
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

    /// The user whose name is `username`, whatever its case.
    pub(super) async fn user_row_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        let folded = username.to_ascii_lowercase();
        with_conn!(&self.db, |conn| {
            Ok(users::table
                .filter(lower(users::username).eq(&folded))
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
    /// user, in the same transaction, and revokes their tokens everywhere; a
    /// new role makes their access tokens stale everywhere (the next refresh
    /// carries it). The last enabled admin cannot be demoted or disabled.
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
                c.lock_users().await?;
                let Some(current) = users::table.find(id).first::<UserRow>(c).await.optional()?
                else {
                    return Ok((None, Vec::new()));
                };
                let stays_admin =
                    role.is_none_or(|r| r == "admin") && update.disabled.is_none_or(|d| !d);
                if current.role == "admin" && !current.disabled && !stays_admin {
                    let other_admins: i64 = users::table
                        .filter(users::role.eq("admin"))
                        .filter(users::disabled.eq(false))
                        .filter(users::id.ne(id))
                        .count()
                        .get_result(c)
                        .await?;
                    if other_admins == 0 {
                        return Err(Error::conflict(
                            "last_admin",
                            "this is the only enabled admin: make another user admin first",
                        ));
                    }
                }
                diesel::update(users::table.find(id))
                    .set(users::updated_at.eq(now))
                    .execute(c)
                    .await?;
                let mut revoked = Vec::new();
                if let Some(role) = role.filter(|r| *r != current.role) {
                    // Access tokens issued under the old role are refused
                    // everywhere; the next refresh carries the new one.
                    let version = current.token_version + 1;
                    diesel::update(users::table.find(id))
                        .set((users::role.eq(role), users::token_version.eq(version)))
                        .execute(c)
                        .await?;
                    let entry = Revocation {
                        subject: version_subject(id, version),
                        revoked_at: now,
                        expires_at,
                    };
                    diesel::insert_into(revocations::table)
                        .values(&entry)
                        .on_conflict(revocations::subject)
                        .do_nothing()
                        .execute(c)
                        .await?;
                    revoked.push(entry);
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
                    let sessions_ended: Vec<Revocation> = ended
                        .iter()
                        .map(|sid| Revocation {
                            subject: session_subject(sid),
                            revoked_at: now,
                            expires_at,
                        })
                        .collect();
                    for r in &sessions_ended {
                        diesel::insert_into(revocations::table)
                            .values(r)
                            .on_conflict(revocations::subject)
                            .do_nothing()
                            .execute(c)
                            .await?;
                    }
                    revoked.extend(sessions_ended);
                }
                let row = users::table.find(id).first::<UserRow>(c).await?;
                Ok((Some(row), revoked))
            })
            .await
        })?;
        let row = row.ok_or_else(|| user_not_found(id))?;
        let ended = revoked
            .iter()
            .filter(|r| r.subject.starts_with("s:"))
            .count();
        self.revocations.announce(revoked).await;
        tracing::info!(target: "audit", user_id = id, ?role, disabled = ?update.disabled, sessions_ended = ended, "user updated");
        row.to_user()
    }
}
