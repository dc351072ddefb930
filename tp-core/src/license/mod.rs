//! On-prem license: an RS256 JWT (`ATLASAI_LICENSE_KEY`) verified against
//! `CP_LICENSE_PUBLIC_KEY` and bound to `TENANT_ID`.
//!
//! An invalid license stops the start with one clear reason. An expired one
//! keeps serving, reported `degraded` with the days of grace left; past the
//! grace period API calls are refused ([`LicenseMonitor::gate`]) while health
//! keeps answering. The state is computed from the clock on every call, so a
//! long-running replica notices expiry without a restart. Without a license
//! and without `TP_LICENSE_REQUIRED` the plane runs unlicensed.

mod verify;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Config, vars};
use crate::error::{Error, Result};
use crate::health::{ComponentHealth, HealthContributor, Status};
use crate::time::now_secs;
pub use verify::{LicensePublicKey, MAX_LICENSE_BYTES};

/// Grace period assumed by [`inspect`] (the default of `TP_LICENSE_GRACE_DAYS`).
pub const DEFAULT_GRACE_DAYS: u64 = 14;

const DAY_SECS: i64 = 86_400;

/// The claims of a verified license.
///
/// Unknown claims are ignored, so an issuer may add claims that older
/// replicas do not know; anything that must be understood belongs in `crit`,
/// which is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    /// Tenant the license is for; must equal `TENANT_ID`.
    pub tid: String,
    /// Licensee name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Not valid before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Plan name.
    pub plan: String,
    /// Licensed features.
    #[serde(default)]
    pub features: Vec<String>,
    /// Largest number of replicas the license covers (reported, not enforced here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// License id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Where a license stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LicenseState {
    /// Not expired; `days_left` whole days until `exp`.
    Valid {
        /// Whole days until expiry (0 on the last day).
        days_left: i64,
    },
    /// Expired, still serving; `days_left` whole days of grace remain.
    Grace {
        /// Whole days until the grace period ends (0 on its last day).
        days_left: i64,
    },
    /// Expired past the grace period: API calls are refused.
    Expired,
}

impl LicenseState {
    /// `valid`, `grace` or `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LicenseState::Valid { .. } => "valid",
            LicenseState::Grace { .. } => "grace",
            LicenseState::Expired => "expired",
        }
    }

    /// Days left in the current state (0 once expired).
    pub fn days_left(&self) -> i64 {
        match self {
            LicenseState::Valid { days_left } | LicenseState::Grace { days_left } => *days_left,
            LicenseState::Expired => 0,
        }
    }
}

fn grace_secs(grace: Duration) -> i64 {
    i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
}

impl License {
    /// Verifies `token` with `key`; `tenant`, when given, must equal `tid`.
    ///
    /// Refuses anything but a well-formed RS256 JWT of at most
    /// [`MAX_LICENSE_BYTES`] signed by `key` with a plain header, an integer
    /// `exp`, and `nbf` (if any) not in the future. Expiry is not an error:
    /// see [`state_at`](Self::state_at). Errors name the problem, never the token.
    pub fn verify(
        token: &str,
        key: &LicensePublicKey,
        tenant: Option<&str>,
        now_secs: i64,
    ) -> Result<License> {
        verify::verify(token, key, tenant, now_secs)
            .map(|(license, _)| license)
            .map_err(|r| r.into_error(vars::LICENSE_KEY))
    }

    /// The state at `now_secs` with `grace` after expiry.
    pub fn state_at(&self, now_secs: i64, grace: Duration) -> LicenseState {
        let grace_end = self.exp.saturating_add(grace_secs(grace));
        if now_secs < self.exp {
            LicenseState::Valid {
                days_left: (self.exp - now_secs).div_euclid(DAY_SECS),
            }
        } else if now_secs < grace_end {
            LicenseState::Grace {
                days_left: (grace_end - now_secs).div_euclid(DAY_SECS),
            }
        } else {
            LicenseState::Expired
        }
    }

    /// Everything about the license and its state, for people (no secret in it).
    fn describe(&self, now_secs: i64, grace: Duration) -> serde_json::Map<String, Value> {
        let state = self.state_at(now_secs, grace);
        let mut out = serde_json::Map::new();
        out.insert("licensed".into(), json!(true));
        out.insert("state".into(), json!(state.as_str()));
        out.insert("days_left".into(), json!(state.days_left()));
        out.insert("tenant".into(), json!(self.tid));
        out.insert("licensee".into(), json!(self.sub));
        out.insert("plan".into(), json!(self.plan));
        out.insert("features".into(), json!(self.features));
        out.insert("max_replicas".into(), json!(self.max_replicas));
        out.insert("issuer".into(), json!(self.iss));
        out.insert("license_id".into(), json!(self.jti));
        out.insert("issued_at".into(), json!(rfc3339_secs(self.iat)));
        out.insert("not_before".into(), json!(self.nbf.map(rfc3339_secs)));
        out.insert("expires_at".into(), json!(rfc3339_secs(self.exp)));
        out.insert("grace_days".into(), json!(grace.as_secs() / 86_400));
        out.insert(
            "grace_ends_at".into(),
            json!(rfc3339_secs(self.exp.saturating_add(grace_secs(grace)))),
        );
        out
    }
}

/// Unix seconds as RFC 3339 (`2026-01-31T00:00:00Z`), clamped to years 1970–9999.
pub(crate) fn rfc3339_secs(secs: i64) -> String {
    const MAX: u64 = 253_402_300_799;
    let secs = u64::try_from(secs).unwrap_or(0).min(MAX);
    let at = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The license of this replica (or its absence) with the rules to apply.
///
/// Cheap to query: no I/O, only the clock. Register it with
/// [`Health::register`](crate::health::Health::register) and call
/// [`gate`](Self::gate) before serving an API call.
#[derive(Debug)]
pub struct LicenseMonitor {
    license: Option<License>,
    tenant: String,
    grace: Duration,
    required: bool,
    /// Last state seen, to log each transition once.
    last: AtomicU8,
}

const SEEN_NONE: u8 = 0;

fn state_code(state: Option<LicenseState>) -> u8 {
    match state {
        None => 1,
        Some(LicenseState::Valid { .. }) => 2,
        Some(LicenseState::Grace { .. }) => 3,
        Some(LicenseState::Expired) => 4,
    }
}

impl LicenseMonitor {
    /// Verifies the configured license at `now`.
    ///
    /// No license and not required: unlicensed mode. No license but
    /// required, or a license that does not verify: an error with one
    /// reason. An expired license is accepted (grace, then API calls refused).
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::from_config_at(config, now_secs())
    }

    /// [`from_config`](Self::from_config) at a given time.
    pub fn from_config_at(config: &Config, now_secs: i64) -> Result<Self> {
        let settings = &config.license;
        let Some(token) = &settings.key else {
            if settings.required {
                return Err(Error::LicenseRequired {
                    code: "license_missing",
                    message: format!(
                        "{}: is required because {}=true",
                        vars::LICENSE_KEY,
                        vars::LICENSE_REQUIRED
                    ),
                });
            }
            tracing::info!("no license configured; running unlicensed");
            return Ok(Self::unlicensed(&config.tenant_id));
        };
        let Some(pem) = &settings.public_key else {
            return Err(Error::invalid(
                "license_public_key_missing",
                format!(
                    "{}: is required to verify {}",
                    vars::LICENSE_PUBLIC_KEY,
                    vars::LICENSE_KEY
                ),
            ));
        };
        let key = LicensePublicKey::from_pem(pem)?;
        let license = License::verify(
            token.expose_secret(),
            &key,
            Some(&config.tenant_id),
            now_secs,
        )?;
        let monitor = Self::licensed(license, settings.grace, settings.required);
        let state = monitor.state_at(now_secs);
        if let Some(license) = &monitor.license {
            tracing::info!(
                plan = license.plan.as_str(),
                expires_at = rfc3339_secs(license.exp).as_str(),
                state = state.map_or("unlicensed", |s| s.as_str()),
                "license verified"
            );
        }
        monitor.observe(state);
        Ok(monitor)
    }

    /// No license: everything allowed, reported as `unlicensed`.
    pub fn unlicensed(tenant: &str) -> Self {
        Self {
            license: None,
            tenant: tenant.to_owned(),
            grace: Duration::ZERO,
            required: false,
            last: AtomicU8::new(SEEN_NONE),
        }
    }

    /// A verified license with its grace period.
    pub fn licensed(license: License, grace: Duration, required: bool) -> Self {
        Self {
            tenant: license.tid.clone(),
            license: Some(license),
            grace,
            required,
            last: AtomicU8::new(SEEN_NONE),
        }
    }

    /// The verified license, if any.
    pub fn license(&self) -> Option<&License> {
        self.license.as_ref()
    }

    /// The license state at `now_secs`; `None` when unlicensed.
    pub fn state_at(&self, now_secs: i64) -> Option<LicenseState> {
        self.license
            .as_ref()
            .map(|l| l.state_at(now_secs, self.grace))
    }

    /// The license state now; `None` when unlicensed.
    pub fn state(&self) -> Option<LicenseState> {
        self.state_at(now_secs())
    }

    /// Whether API calls may be served at `now_secs`: refused with
    /// `license_expired` once the grace period is over.
    pub fn gate_at(&self, now_secs: i64) -> Result<()> {
        let state = self.state_at(now_secs);
        self.observe(state);
        match (state, &self.license) {
            (Some(LicenseState::Expired), Some(license)) => Err(Error::LicenseRequired {
                code: "license_expired",
                message: format!(
                    "the license expired on {} and its grace period ended on {}; \
                     install a renewed license ({})",
                    rfc3339_secs(license.exp),
                    rfc3339_secs(license.exp.saturating_add(grace_secs(self.grace))),
                    vars::LICENSE_KEY
                ),
            }),
            _ => Ok(()),
        }
    }

    /// [`gate_at`](Self::gate_at) now.
    pub fn gate(&self) -> Result<()> {
        self.gate_at(now_secs())
    }

    /// The health component at `now_secs`.
    pub fn health_at(&self, now_secs: i64) -> ComponentHealth {
        let state = self.state_at(now_secs);
        self.observe(state);
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("tenant", json!(self.tenant));
        let status = match (&self.license, state) {
            (Some(license), Some(state)) => {
                detail.insert("state", json!(state.as_str()));
                detail.insert("plan", json!(license.plan));
                detail.insert("expires_at", json!(rfc3339_secs(license.exp)));
                detail.insert("days_left", json!(state.days_left()));
                match state {
                    LicenseState::Valid { .. } => Status::Ok,
                    LicenseState::Grace { .. } | LicenseState::Expired => Status::Degraded,
                }
            }
            _ => {
                detail.insert("state", json!("unlicensed"));
                Status::Ok
            }
        };
        ComponentHealth { status, detail }
    }

    /// The body of `GET /api/license` at `now_secs`: claims and state, never the token.
    pub fn summary_at(&self, now_secs: i64) -> Value {
        let mut out = match &self.license {
            Some(license) => license.describe(now_secs, self.grace),
            None => {
                let mut out = serde_json::Map::new();
                out.insert("licensed".into(), json!(false));
                out.insert("state".into(), json!("unlicensed"));
                out.insert("tenant".into(), json!(self.tenant));
                out
            }
        };
        out.insert("required".into(), json!(self.required));
        Value::Object(out)
    }

    /// [`summary_at`](Self::summary_at) now.
    pub fn summary(&self) -> Value {
        self.summary_at(now_secs())
    }

    /// Logs a change of state once per transition.
    fn observe(&self, state: Option<LicenseState>) {
        let code = state_code(state);
        // A plain load on the hot path (every API call); a write only on change.
        if self.last.load(Ordering::Relaxed) == code {
            return;
        }
        let previous = self.last.swap(code, Ordering::Relaxed);
        if previous == code {
            return;
        }
        let Some(license) = &self.license else {
            return;
        };
        let expires_at = rfc3339_secs(license.exp);
        match state {
            Some(LicenseState::Grace { days_left }) => tracing::warn!(
                expires_at = expires_at.as_str(),
                grace_days_left = days_left,
                "license expired; serving during the grace period"
            ),
            Some(LicenseState::Expired) => tracing::error!(
                expires_at = expires_at.as_str(),
                "license expired and its grace period is over; API calls are refused"
            ),
            Some(LicenseState::Valid { .. }) if previous != SEEN_NONE => {
                tracing::info!(expires_at = expires_at.as_str(), "license valid")
            }
            _ => {}
        }
    }
}

impl HealthContributor for LicenseMonitor {
    fn name(&self) -> &'static str {
        "license"
    }

    fn check(&self) -> ComponentHealth {
        self.health_at(now_secs())
    }
}

/// Decodes and verifies a license for `tenant-plane license inspect`: its
/// header, claims and state now, assuming the default grace period.
/// `tenant`, when given, must match. The token itself is never part of the output.
pub fn inspect(token: &str, public_key_pem: &str, tenant: Option<&str>) -> Result<Value> {
    inspect_at(
        token,
        public_key_pem,
        tenant,
        Duration::from_secs(DEFAULT_GRACE_DAYS * 86_400),
        now_secs(),
    )
}

/// [`inspect`] with an explicit grace period and time.
pub fn inspect_at(
    token: &str,
    public_key_pem: &str,
    tenant: Option<&str>,
    grace: Duration,
    now_secs: i64,
) -> Result<Value> {
    let key = LicensePublicKey::from_pem(public_key_pem)?;
    let (license, header) =
        verify::verify(token, &key, tenant, now_secs).map_err(|r| r.into_error("license"))?;
    let mut out = license.describe(now_secs, grace);
    out.insert(
        "signature".into(),
        json!({
            "alg": "RS256",
            "verified": true,
            "kid": header.kid,
            "typ": header.typ,
            "public_key_bits": key.bits(),
        }),
    );
    out.insert("tenant_checked".into(), json!(tenant.is_some()));
    out.insert("claims".into(), serde_json::to_value(&license)?);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests;
