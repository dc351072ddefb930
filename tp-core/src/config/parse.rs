//! Small typed readers over an [`EnvSource`]; every error names its variable.

use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, EnvSource};

/// The value of `var`, with surrounding whitespace trimmed; empty counts as unset.
pub(crate) fn optional(env: &dyn EnvSource, var: &'static str) -> Option<String> {
    env.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// An integer in `min..=max`, or `default` when unset.
pub(crate) fn number<T>(
    env: &dyn EnvSource,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let Some(raw) = optional(env, var) else {
        return Ok(default);
    };
    let out_of_range =
        || ConfigError::new(var, format!("must be between {min} and {max}, got {raw}"));
    let value: T = match raw.parse() {
        Ok(value) => value,
        // A whole number too large or too small for the type.
        Err(_) if raw.parse::<i128>().is_ok() => return Err(out_of_range()),
        Err(_) => {
            return Err(ConfigError::new(
                var,
                format!("must be a whole number, got {raw:?}"),
            ));
        }
    };
    if value < min || value > max {
        return Err(ConfigError::new(
            var,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

/// A duration given in whole milliseconds, within `min_ms..=max_ms`.
pub(crate) fn millis(
    env: &dyn EnvSource,
    var: &'static str,
    default_ms: u64,
    min_ms: u64,
    max_ms: u64,
) -> Result<Duration, ConfigError> {
    number(env, var, default_ms, min_ms, max_ms).map(Duration::from_millis)
}

/// A duration given in whole seconds, within `min..=max`.
pub(crate) fn seconds(
    env: &dyn EnvSource,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(env, var, default, min, max).map(Duration::from_secs)
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `default` when unset.
pub(crate) fn boolean(
    env: &dyn EnvSource,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(raw) = optional(env, var) else {
        return Ok(default);
    };
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            format!("must be true or false, got {raw:?}"),
        )),
    }
}

/// Exactly 64 hexadecimal characters, decoded to a 32-byte key.
pub(crate) fn hex_key(var: &'static str, raw: &str) -> Result<[u8; 32], ConfigError> {
    let mut key = [0u8; 32];
    if raw.len() != 64 {
        return Err(ConfigError::new(
            var,
            format!(
                "must be 64 hex characters (openssl rand -hex 32), got {} characters",
                raw.len()
            ),
        ));
    }
    hex::decode_to_slice(raw, &mut key).map_err(|_| {
        ConfigError::new(
            var,
            "must be 64 hex characters (openssl rand -hex 32), found a non-hex character",
        )
    })?;
    Ok(key)
}

/// A JWT signing secret: at least 32 bytes.
pub(crate) fn jwt_secret(var: &'static str, raw: &str) -> Result<(), ConfigError> {
    if raw.len() < 32 {
        return Err(ConfigError::new(
            var,
            format!(
                "must be at least 32 bytes (openssl rand -hex 32), got {}",
                raw.len()
            ),
        ));
    }
    Ok(())
}

/// Replaces literal `\n` escapes with newlines, as `.env` files carry PEM keys.
pub(crate) fn unescape_newlines(raw: &str) -> String {
    raw.replace("\\n", "\n")
}

/// Removes the password from a URL's user info, for logs and health output.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:***@{hosts}")
        }
        None => authority.to_owned(),
    };
    // Query parameters may hold passwords too (`?password=`); drop them all.
    let path = tail.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_and_query() {
        assert_eq!(
            redact_url("postgresql://u:secret@h1:5432,h2:5433/db?password=x&sslmode=require"),
            "postgresql://u:***@h1:5432,h2:5433/db"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("nonsense"), "<unparseable url>");
    }

    #[test]
    fn hex_key_requires_64_hex_chars() {
        assert!(hex_key("K", &"ab".repeat(32)).is_ok());
        let err = hex_key("K", "abc").unwrap_err();
        assert!(err.to_string().starts_with("K: must be 64 hex"));
        let err = hex_key("K", &"zz".repeat(32)).unwrap_err();
        assert!(err.to_string().contains("non-hex"));
    }
}
