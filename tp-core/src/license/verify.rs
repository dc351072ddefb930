//! Verifying a license token: RS256 only, a strict header, typed claims.
//!
//! jsonwebtoken checks the signature; this module refuses everything it would
//! let through that a license must not have (critical or key-carrying
//! headers, other algorithms) and gives each refusal one clear reason.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde_json::{Map, Value};

use super::License;
use crate::error::{Error, Result};

/// Largest license token accepted; longer ones are refused before any decoding.
pub const MAX_LICENSE_BYTES: usize = 16 * 1024;

/// Clock skew tolerated on `nbf`, so a replica whose clock runs a little
/// behind the issuer's still starts.
pub(super) const NBF_LEEWAY_SECS: i64 = 300;

/// The last second humantime can format (9999-12-31T23:59:59Z).
const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// Smallest RSA modulus accepted for the license key.
const MIN_RSA_BITS: usize = 2048;

/// Header parameters that would carry or point at a verification key. The
/// license key is configured, never taken from (or fetched for) the token.
const KEY_HEADERS: &[&str] = &["jku", "jwk", "x5u", "x5c"];

/// Header parameters of encrypted or nested tokens, which a license is not.
const UNSUPPORTED_HEADERS: &[&str] = &["cty", "enc", "zip"];

/// The RSA public key that verifies licenses (`CP_LICENSE_PUBLIC_KEY`).
#[derive(Clone)]
pub struct LicensePublicKey {
    key: DecodingKey,
    bits: usize,
}

impl std::fmt::Debug for LicensePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicensePublicKey")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

fn key_error(reason: impl std::fmt::Display) -> Error {
    Error::invalid(
        "license_public_key_invalid",
        format!("{}: {reason}", crate::config::vars::LICENSE_PUBLIC_KEY),
    )
}

impl LicensePublicKey {
    /// Parses an RSA public key in PEM: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`), at least 2048 bits. A one-line PEM with
    /// literal `\n` escapes (as in an environment variable) is accepted too.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let unescaped;
        let mut pem = pem.trim();
        if !pem.contains('\n') && pem.contains("\\n") {
            unescaped = pem.replace("\\n", "\n");
            pem = unescaped.trim();
        }
        let blocks = pem.matches("-----BEGIN ").count();
        if blocks != 1 {
            return Err(key_error(format!(
                "must hold exactly one PEM block (-----BEGIN PUBLIC KEY-----), found {blocks}"
            )));
        }
        let label = pem
            .split_once("-----BEGIN ")
            .and_then(|(_, rest)| rest.split_once("-----"))
            .map(|(label, _)| label)
            .unwrap_or_default();
        match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            l if l.contains("PRIVATE") => {
                return Err(key_error(
                    "is a private key; give the public key (openssl pkey -pubout)",
                ));
            }
            "CERTIFICATE" => {
                return Err(key_error(
                    "is a certificate; give its public key (openssl x509 -pubkey -noout)",
                ));
            }
            _ => {
                return Err(key_error(
                    "must be a PEM RSA public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
                ));
            }
        }
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| key_error("is not a readable RSA public key"))?;
        let bits = match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => rsa_modulus_bits(der),
            DecodingKeyKind::RsaModulusExponent { .. } => None,
        }
        .ok_or_else(|| key_error("is not a readable RSA public key"))?;
        if bits < MIN_RSA_BITS {
            return Err(key_error(format!(
                "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            )));
        }
        Ok(Self { key, bits })
    }

    /// Size of the RSA modulus in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }
}

/// One DER item: its tag, its content and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// Bits of the modulus of a PKCS#1 `RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }`.
pub(super) fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    let (tag, body, rest) = der_item(der)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (tag, modulus, rest) = der_item(body)?;
    if tag != INTEGER {
        return None;
    }
    let (tag, exponent, rest) = der_item(rest)?;
    if tag != INTEGER || !rest.is_empty() || exponent.is_empty() {
        return None;
    }
    let start = modulus.iter().position(|b| *b != 0)?;
    let significant = &modulus[start..];
    let leading = usize::try_from(significant[0].leading_zeros()).ok()?;
    Some(significant.len() * 8 - leading)
}

/// Why a token was refused, without the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub code: &'static str,
    pub reason: String,
}

impl Rejection {
    fn invalid(reason: impl Into<String>) -> Self {
        Self {
            code: "license_invalid",
            reason: reason.into(),
        }
    }

    /// The error for `subject` (the variable or file the token came from).
    pub fn into_error(self, subject: &str) -> Error {
        Error::LicenseRequired {
            code: self.code,
            message: format!("{subject}: {}", self.reason),
        }
    }
}

/// What the header said, beyond the algorithm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HeaderInfo {
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// Text from the token echoed in a reason: short and printable only.
fn shown(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    format!("{clean:?}")
}

fn check_header(encoded: &str) -> Result<HeaderInfo, Rejection> {
    let malformed = || Rejection::invalid("the token header is not base64url-encoded JSON");
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(alg)) => {
            return Err(Rejection::invalid(format!(
                "the token is signed with {}; licenses must be signed with RS256",
                shown(alg)
            )));
        }
        _ => return Err(Rejection::invalid("the token header names no algorithm")),
    }
    if header.contains_key("crit") {
        return Err(Rejection::invalid(
            "the token header lists critical parameters (crit), which are not supported",
        ));
    }
    if let Some(name) = KEY_HEADERS.iter().find(|h| header.contains_key(**h)) {
        return Err(Rejection::invalid(format!(
            "the token header carries a key source ({name}); the license key is configured, \
             never taken from the token"
        )));
    }
    if let Some(name) = UNSUPPORTED_HEADERS
        .iter()
        .find(|h| header.contains_key(**h))
    {
        return Err(Rejection::invalid(format!(
            "the token header has {name}; a license is a plain signed JWT"
        )));
    }
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("JWT") => Some(t.clone()),
        Some(_) => return Err(Rejection::invalid("the token type (typ) must be JWT")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 && !k.chars().any(char::is_control) => {
            Some(k.clone())
        }
        Some(_) => return Err(Rejection::invalid("the key id (kid) is not a short string")),
    };
    Ok(HeaderInfo { kid, typ })
}

fn from_jwt_error(e: &jsonwebtoken::errors::Error) -> Rejection {
    match e.kind() {
        JwtErrorKind::InvalidSignature => Rejection::invalid(format!(
            "the signature does not verify with {} (the token was altered or signed with another key)",
            crate::config::vars::LICENSE_PUBLIC_KEY
        )),
        JwtErrorKind::MissingRequiredClaim(claim) | JwtErrorKind::InvalidClaimFormat(claim) => {
            Rejection::invalid(format!(
                "claim {} is missing or not a number of seconds",
                shown(claim)
            ))
        }
        JwtErrorKind::Json(_) => Rejection::invalid("the token claims are not a JSON object"),
        JwtErrorKind::InvalidAlgorithm | JwtErrorKind::UnsupportedAlgorithm => {
            Rejection::invalid("licenses must be signed with RS256")
        }
        JwtErrorKind::InvalidRsaKey(_) | JwtErrorKind::InvalidKeyFormat => {
            Rejection::invalid(format!(
                "{} cannot verify RS256",
                crate::config::vars::LICENSE_PUBLIC_KEY
            ))
        }
        _ => Rejection::invalid("the token is not a well-formed JWT"),
    }
}

/// A claim string: non-empty, at most `max` bytes, no control characters.
fn check_text(name: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Rejection::invalid(format!(
            "claim {name} must be 1 to {max} printable characters"
        )));
    }
    Ok(())
}

fn check_claims(license: &License) -> Result<(), Rejection> {
    check_text("tid", &license.tid, 64)?;
    check_text("plan", &license.plan, 64)?;
    for (name, value) in [
        ("sub", &license.sub),
        ("iss", &license.iss),
        ("jti", &license.jti),
    ] {
        if let Some(value) = value {
            check_text(name, value, 256)?;
        }
    }
    if license.features.len() > 256 {
        return Err(Rejection::invalid(
            "claim features lists more than 256 entries",
        ));
    }
    for feature in &license.features {
        check_text("features", feature, 128)?;
    }
    let in_range = |t: i64| (0..=MAX_TIMESTAMP).contains(&t);
    if !in_range(license.iat) || !in_range(license.exp) || !license.nbf.is_none_or(in_range) {
        return Err(Rejection::invalid(
            "claims iat, exp and nbf must be seconds between 1970 and 9999",
        ));
    }
    if license.exp <= license.iat {
        return Err(Rejection::invalid(
            "the license expires (exp) before it was issued (iat)",
        ));
    }
    if license.max_replicas == Some(0) {
        return Err(Rejection::invalid("claim max_replicas must be at least 1"));
    }
    Ok(())
}

/// Verifies `token` with `key` and checks its claims; `tenant`, when given,
/// must equal the `tid` claim. Expiry is not a failure here: the caller
/// computes the state from the clock.
pub(super) fn verify(
    token: &str,
    key: &LicensePublicKey,
    tenant: Option<&str>,
    now: i64,
) -> Result<(License, HeaderInfo), Rejection> {
    let token = token.trim();
    if token.is_empty() {
        return Err(Rejection::invalid("is empty"));
    }
    if token.len() > MAX_LICENSE_BYTES {
        return Err(Rejection::invalid(format!(
            "is {} bytes long; a license is at most {MAX_LICENSE_BYTES}",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let well_formed = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        });
    if !well_formed {
        return Err(Rejection::invalid(
            "is not a JWT (three base64url parts separated by '.')",
        ));
    }
    let info = check_header(parts[0])?;

    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms = vec![Algorithm::RS256];
    // Expiry is a state (valid, grace, expired), not a verification failure.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    // Claims as a map first, so jsonwebtoken reports a missing or non-numeric
    // `exp` as such; then typed, after the signature is known good.
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        .map_err(|e| from_jwt_error(&e))?;
    // jsonwebtoken's own view of the header must agree with the check above.
    let header = &data.header;
    if header.alg != Algorithm::RS256
        || header.crit.is_some()
        || header.jku.is_some()
        || header.jwk.is_some()
        || header.x5u.is_some()
        || header.x5c.is_some()
    {
        return Err(Rejection::invalid("the token header is not acceptable"));
    }
    let license: License = serde_json::from_value(Value::Object(data.claims)).map_err(|e| {
        let text: String = e.to_string().chars().take(160).collect();
        Rejection::invalid(format!("the claims are not a valid license: {text}"))
    })?;
    check_claims(&license)?;
    if let Some(tenant) = tenant
        && license.tid != tenant
    {
        return Err(Rejection {
            code: "license_tenant_mismatch",
            reason: format!(
                "the license is for tenant {:?}, not {}={tenant:?}",
                license.tid,
                crate::config::vars::TENANT_ID
            ),
        });
    }
    if let Some(nbf) = license.nbf
        && nbf > now.saturating_add(NBF_LEEWAY_SECS)
    {
        return Err(Rejection {
            code: "license_not_yet_valid",
            reason: format!(
                "the license is not valid before {}",
                super::rfc3339_secs(nbf)
            ),
        });
    }
    Ok((license, info))
}
