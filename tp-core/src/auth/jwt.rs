//! HS256 access tokens: issued with the current secret, verified with the
//! current or the previous one, and checked beyond what jsonwebtoken does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::Role;
use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// Largest token accepted; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an access token. Unknown claims are refused: the plane only
/// accepts tokens it issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Session id.
    pub sid: String,
    /// `admin`, `member` or `viewer`.
    pub role: String,
    /// Issued at (seconds).
    pub iat: i64,
    /// Expires at (seconds).
    pub exp: i64,
    /// Not before (seconds), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The user's token version when it was issued: a role change bumps
    /// it, and tokens of an older one are refused (absent: 0).
    #[serde(default)]
    pub ver: i64,
    /// Token id.
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

/// Signing and verification keys with the checks of one tenant.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: Vec<DecodingKey>,
    validation: Validation,
    tenant: String,
    issuer: String,
    audience: String,
    ttl: Duration,
    leeway: Duration,
    /// Tokens that passed every check, by their exact text: a token seen
    /// again costs a map lookup instead of two base64 and three JSON
    /// decodes. Expiry is re-checked on every hit; revocation is the
    /// caller's, as always. Emptied when it reaches [`VERIFIED_CACHE_MAX`].
    verified: Mutex<HashMap<Box<str>, Arc<Claims>>>,
}

/// Most verified tokens [`Jwt`] remembers.
const VERIFIED_CACHE_MAX: usize = 10_000;

fn invalid() -> Error {
    Error::unauthenticated("invalid_token", "the access token is invalid")
}

impl Jwt {
    /// Keys and rules from the configuration.
    pub fn new(config: &AuthConfig, tenant: &str) -> Self {
        let current = config.jwt_secret.expose_secret().as_bytes();
        let mut decoding = vec![DecodingKey::from_secret(current)];
        if let Some(previous) = &config.jwt_secret_previous {
            decoding.push(DecodingKey::from_secret(
                previous.expose_secret().as_bytes(),
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        Self {
            encoding: EncodingKey::from_secret(current),
            decoding,
            validation,
            tenant: tenant.to_owned(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: config.access_ttl,
            leeway: config.leeway,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Lifetime of issued tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for `user` in session `sid`, under the user's token
    /// `version`; returns it with its `exp`.
    pub fn issue(
        &self,
        user_id: &str,
        sid: &str,
        role: Role,
        version: i64,
    ) -> Result<(String, i64)> {
        let now = crate::time::now_secs();
        let exp = now + i64::try_from(self.ttl.as_secs()).unwrap_or(900);
        let claims = Claims {
            sub: user_id.to_owned(),
            tid: self.tenant.clone(),
            sid: sid.to_owned(),
            role: role.as_str().to_owned(),
            iat: now,
            exp,
            nbf: None,
            ver: version,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        let token = encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::internal(format!("jwt encode: {e}")))?;
        Ok((token, exp))
    }

    /// Verifies a token; no I/O. Revocation is checked by the caller.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        self.verify_shared(token).map(|claims| (*claims).clone())
    }

    /// [`verify`](Self::verify), sharing the claims with the cache of
    /// verified tokens instead of copying them.
    pub fn verify_shared(&self, token: &str) -> Result<Arc<Claims>> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid());
        }
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let now = crate::time::now_secs();
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            // The expiry rule of the full check (jsonwebtoken's, with leeway).
            .filter(|claims| claims.exp >= now - leeway)
            .cloned();
        if let Some(claims) = hit {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(token)?);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.clear();
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Every check, from scratch.
    fn verify_uncached(&self, token: &str) -> Result<Claims> {
        if token.len() > MAX_TOKEN_BYTES
            || token.split('.').count() != 3
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid());
        }
        let header = decode_header(token).map_err(|_| invalid())?;
        let header_ok = header.alg == Algorithm::HS256
            && header
                .typ
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("JWT"))
            && header.crit.is_none()
            && header.jku.is_none()
            && header.jwk.is_none()
            && header.url.is_none()
            && header.cty.is_none();
        if !header_ok {
            return Err(invalid());
        }
        let mut outcome = Err(invalid());
        for key in &self.decoding {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    match e.kind() {
                        // Try the previous secret on a signature mismatch only.
                        K::InvalidSignature => continue,
                        K::ExpiredSignature => {
                            return Err(Error::unauthenticated(
                                "token_expired",
                                "the access token has expired",
                            ));
                        }
                        _ => return Err(invalid()),
                    }
                }
            }
        }
        let claims = outcome?;
        let now = crate::time::now_secs();
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let strings = [
            &claims.sub,
            &claims.tid,
            &claims.sid,
            &claims.role,
            &claims.jti,
            &claims.iss,
            &claims.aud,
        ];
        if claims.tid != self.tenant
            || claims.iat > now + leeway
            || claims.exp <= claims.iat
            || strings
                .iter()
                .any(|s| s.is_empty() || s.len() > 256 || s.chars().any(char::is_control))
        {
            return Err(invalid());
        }
        claims.role.parse::<Role>().map_err(|_| invalid())?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Config;

    fn jwt() -> Jwt {
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("TENANT_ID", "acme"),
            ("JWT_SECRET", "unit-test-secret-unit-test-secret-0123"),
            (
                "ENCRYPTION_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            ),
            ("TENANT_PLANE_DATABASE_URL", "postgresql://u@h/db"),
        ]);
        let config = Config::from_env(&env).unwrap();
        Jwt::new(&config.auth, &config.tenant_id)
    }

    #[test]
    fn the_verified_cache_never_outlives_expiry_or_accepts_altered_tokens() {
        let jwt = jwt();
        let (token, _) = jwt.issue("user-1", "session-1", Role::Member, 0).unwrap();
        let first = jwt.verify(&token).unwrap();
        assert_eq!(
            jwt.verify(&token).unwrap(),
            first,
            "a cache hit gives the same claims"
        );
        assert_eq!(jwt.verified.lock().unwrap().len(), 1);

        // One character of the signature changed: a different key, fully checked.
        let mut altered = token.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(jwt.verify(&altered).is_err());

        // An entry past expiry (and leeway) is not trusted: the full check runs.
        let mut expired = first.clone();
        expired.exp = crate::time::now_secs() - 3600;
        jwt.verified
            .lock()
            .unwrap()
            .insert("not.a.token".into(), Arc::new(expired));
        assert!(jwt.verify("not.a.token").is_err());
        // The same entry within its lifetime is what the cache returns.
        jwt.verified
            .lock()
            .unwrap()
            .insert("not.a.token".into(), Arc::new(first.clone()));
        assert_eq!(jwt.verify("not.a.token").unwrap(), first);

        // Bounded.
        jwt.verified.lock().unwrap().clear();
        for i in 0..VERIFIED_CACHE_MAX + 5 {
            let (t, _) = jwt.issue(&format!("u{i}"), "s", Role::Viewer, 0).unwrap();
            jwt.verify(&t).unwrap();
        }
        assert!(jwt.verified.lock().unwrap().len() <= VERIFIED_CACHE_MAX);
    }
}
