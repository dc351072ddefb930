//! Users, sessions, tokens, API keys and revocation.
//!
//! Any replica verifies any access token locally: HS256 with the shared
//! secret, then the in-memory revocation set. Nothing on that path touches
//! the database. API keys are looked up once and cached briefly; revoking
//! one goes through the same revocation feed as sessions.

mod api_keys;
pub mod jwt;
pub mod password;
pub mod revocation;
mod sessions;
mod users;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::redis::Redis;
use api_keys::KeyRecord;
pub use api_keys::{ApiKey, NewApiKey};
pub use jwt::{Claims, Jwt};
pub use revocation::Revocations;
pub use sessions::{ClientMeta, Session, TokenPair};
pub use users::{NewUser, User, UserUpdate};

/// What a principal may do. Ordered: each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and search.
    Viewer,
    /// Also write collections and documents.
    Member,
    /// Also manage users, sessions, API keys, secrets and the license.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(Error::invalid(
                "invalid_role",
                format!("role must be admin, member or viewer, got {other:?}"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// A user with a session.
    User {
        /// User id.
        user_id: String,
        /// Session id.
        session_id: String,
        /// Role at the time the token was issued.
        role: Role,
    },
    /// A service account.
    ApiKey {
        /// Key id (the public part).
        key_id: String,
        /// The key's role.
        role: Role,
    },
}

impl Principal {
    /// The principal's role.
    pub fn role(&self) -> Role {
        match self {
            Principal::User { role, .. } | Principal::ApiKey { role, .. } => *role,
        }
    }

    /// A stable key for rate limiting and audit (`u:<id>` or `k:<id>`).
    pub fn key(&self) -> String {
        match self {
            Principal::User { user_id, .. } => format!("u:{user_id}"),
            Principal::ApiKey { key_id, .. } => format!("k:{key_id}"),
        }
    }

    /// Who did it, for audit records: `user:<id>` or `api_key:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Principal::User { user_id, .. } => format!("user:{user_id}"),
            Principal::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
        }
    }

    /// Fails with 403 unless the role is at least `needed`.
    pub fn require(&self, needed: Role) -> Result<()> {
        if self.role() >= needed {
            Ok(())
        } else {
            Err(Error::forbidden(
                "insufficient_role",
                format!("this needs the {needed} role; you have {}", self.role()),
            ))
        }
    }
}

/// How long a looked-up API key is trusted before it is read again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Authentication and the user, session and key stores.
pub struct Auth {
    db: Arc<Database>,
    jwt: Jwt,
    revocations: Arc<Revocations>,
    refresh_ttl: Duration,
    refresh_reuse_grace: Duration,
    /// Derives a refresh token's successor, so a retry gets the same one.
    successor_key: hmac::Hmac<sha2::Sha256>,
    access_ttl: Duration,
    leeway: Duration,
    keys: Mutex<HashMap<String, (Instant, Option<KeyRecord>)>>,
    /// User id → username. Usernames never change, so entries never go
    /// stale; the map is emptied when it outgrows [`USERNAME_CACHE_MAX`].
    usernames: Mutex<HashMap<String, Arc<str>>>,
}

/// Most usernames [`Auth::username`] keeps in memory.
const USERNAME_CACHE_MAX: usize = 100_000;

impl Auth {
    /// The auth service; starts the revocation feeds.
    pub async fn start(
        config: &Config,
        db: Arc<Database>,
        redis: Option<Arc<Redis>>,
    ) -> Result<Auth> {
        let revocations = Arc::new(Revocations::new(db.clone(), redis, &config.tenant_id));
        if let Err(e) = revocations.load_all().await {
            // The poll keeps trying; until then only new revocations are known.
            tracing::warn!(error = %e, "revocations not loaded at start; the poll will retry");
        }
        revocations.spawn_feeds(config.auth.revocation_poll);
        Ok(Auth {
            db,
            jwt: Jwt::new(&config.auth, &config.tenant_id),
            revocations,
            refresh_ttl: config.auth.refresh_ttl,
            refresh_reuse_grace: config.auth.refresh_reuse_grace,
            successor_key: {
                use hmac::Mac;
                use secrecy::ExposeSecret;
                hmac::Hmac::new_from_slice(config.auth.jwt_secret.expose_secret().as_bytes())
                    .map_err(|e| Error::internal(format!("refresh key: {e}")))?
            },
            access_ttl: config.auth.access_ttl,
            leeway: config.auth.leeway,
            keys: Mutex::new(HashMap::new()),
            usernames: Mutex::new(HashMap::new()),
        })
    }

    /// The username of `user_id`, from memory after the first lookup (a
    /// username never changes; a disabled user's sessions are revoked, so
    /// their tokens never get this far).
    pub async fn username(&self, user_id: &str) -> Result<Arc<str>> {
        let cached = self
            .usernames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_id)
            .cloned();
        if let Some(name) = cached {
            return Ok(name);
        }
        let user = self.get_user(user_id).await?;
        let name: Arc<str> = user.username.into();
        let mut names = self.usernames.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= USERNAME_CACHE_MAX {
            names.clear();
        }
        names.insert(user.id, name.clone());
        Ok(name)
    }

    /// The revoked set (for health and metrics).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// How long a revocation must be remembered to cover every token it affects.
    fn revocation_lifetime(&self) -> Duration {
        (self.access_ttl + self.leeway).max(KEY_CACHE_TTL) + Duration::from_secs(5)
    }

    /// Authenticates an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(value) = authorization else {
            return Err(Error::unauthenticated(
                "missing_token",
                "an Authorization: Bearer token is required",
            ));
        };
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(Error::unauthenticated(
                "invalid_scheme",
                "use Authorization: Bearer <token>",
            ));
        }
        let token = token.trim();
        if token.starts_with(api_keys::PREFIX) {
            return self.authenticate_key(token).await;
        }
        self.authenticate_token(token)
    }

    /// Verifies an access token: signature, claims, then the revoked set. No I/O.
    pub fn authenticate_token(&self, token: &str) -> Result<Principal> {
        let claims = self.jwt.verify_shared(token)?;
        if self
            .revocations
            .is_revoked(&revocation::session_subject(&claims.sid))
        {
            return Err(Error::unauthenticated(
                "session_revoked",
                "this session has ended",
            ));
        }
        if claims.ver < self.revocations.least_token_version(&claims.sub) {
            return Err(Error::unauthenticated(
                "token_stale",
                "the user's role changed: refresh the session for a new access token",
            ));
        }
        Ok(Principal::User {
            user_id: claims.sub.clone(),
            session_id: claims.sid.clone(),
            role: claims.role.parse()?,
        })
    }
}

/// A random URL-safe token of `bytes` random bytes.
pub(crate) fn random_token(bytes: usize) -> Result<String> {
    use base64::Engine;
    use rand::TryRngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| Error::internal(format!("rng: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// SHA-256 of a secret, hex encoded (what is stored for refresh tokens and keys).
pub(crate) fn digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
