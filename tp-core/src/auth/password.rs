//! argon2id password hashing, off the async threads.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore;

use crate::error::{Error, Result};

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest accepted password, in bytes (bounds hashing work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password against the policy.
pub fn check_policy(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(
            "weak_password",
            format!("passwords need at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "invalid_password",
            format!("passwords are at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Hashes a password into a PHC string.
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| Error::internal(format!("rng: {e}")))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| Error::internal(format!("salt: {e}")))?;
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| Error::internal(format!("hash task: {e}")))?
}

/// Whether `password` matches `stored` (a PHC string). With `stored` absent
/// (unknown user) a dummy hash is checked, so timing does not reveal which
/// usernames exist.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let (phc, real) = match &stored {
            Some(phc) => (phc.as_str(), true),
            None => (dummy_hash(), false),
        };
        let parsed =
            PasswordHash::new(phc).map_err(|e| Error::internal(format!("stored hash: {e}")))?;
        let ok = argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && real)
    })
    .await
    .map_err(|e| Error::internal(format!("verify task: {e}")))?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"tenant-plane-dummy").unwrap_or_else(|_| {
            SaltString::from_b64("dGVuYW50cGxhbmVkdW1teQ").expect("static salt")
        });
        argon2()
            .hash_password(b"no user has this password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}
