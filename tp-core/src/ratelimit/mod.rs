//! Rate limiting: GCRA per principal, per replica or global through Redis,
//! and honest about which one decided.
//!
//! With `REDIS_URL` decisions are one Lua script on Redis, so the limit is
//! global; a busy key is admitted from short local leases of its global
//! quota (see [`global`]). When Redis does not answer within its timeout the request is
//! decided by the configured fallback (this replica's own limiter by
//! default), health reports `degraded`, and a circuit breaker keeps the
//! next requests off Redis for a moment before trying it again.

pub mod global;
mod local;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use global::GlobalLimiter;
pub use local::LocalLimiter;

use crate::config::{RateLimitConfig, RedisFallback};
use crate::health::{ComponentHealth, HealthContributor, Status};
use crate::redis::Redis;

/// How long the breaker keeps requests off Redis after a failure.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(1);

/// A named GCRA policy: `per_minute` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `user`, `anon` or `login`.
    pub name: &'static str,
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

impl Policy {
    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(60_000_000 / u64::from(self.per_minute.max(1)))
    }
}

/// Which limiter made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Limits are off.
    Disabled,
    /// This replica's limiter (no Redis configured).
    Local,
    /// Redis: the limit is global.
    Global,
    /// Redis failed; this replica's limiter decided.
    LocalFallback,
    /// Redis failed; admitted without limiting.
    FailOpen,
    /// Redis failed; refused.
    FailClosed,
}

impl Source {
    /// Name in metrics and health.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Disabled => "disabled",
            Source::Local => "local",
            Source::Global => "global",
            Source::LocalFallback => "local_fallback",
            Source::FailOpen => "fail_open",
            Source::FailClosed => "fail_closed",
        }
    }
}

/// The outcome for one request, with what the rate limit headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admit the request.
    pub allowed: bool,
    /// The policy applied.
    pub policy: Policy,
    /// Requests left in the current burst.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: how long until a request would be admitted.
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub source: Source,
}

impl Decision {
    pub(crate) fn allow(
        policy: &Policy,
        remaining: u32,
        reset_after: Duration,
        source: Source,
    ) -> Self {
        Self {
            allowed: true,
            policy: *policy,
            remaining,
            reset_after,
            retry_after: None,
            source,
        }
    }

    pub(crate) fn deny(
        policy: &Policy,
        retry_after: Duration,
        reset_after: Duration,
        source: Source,
    ) -> Self {
        Self {
            allowed: false,
            policy: *policy,
            remaining: 0,
            reset_after,
            retry_after: Some(retry_after),
            source,
        }
    }
}

/// Which policy applies to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitClass {
    /// An authenticated principal.
    User,
    /// An anonymous client, by IP.
    Anonymous,
    /// Login attempts, by IP.
    Login,
    /// Failed authentications (bad tokens, unknown keys), by IP.
    AuthFailure,
}

/// The limiter of one replica.
pub struct RateLimiter {
    enabled: bool,
    fallback: RedisFallback,
    user: Policy,
    anon: Policy,
    login: Policy,
    auth_failure: Policy,
    local: LocalLimiter,
    global: Option<(GlobalLimiter, Duration)>,
    open_until: Mutex<Option<Instant>>,
    fallbacks: AtomicU64,
    refused: AtomicU64,
}

impl RateLimiter {
    /// The limiter from configuration; global when `redis` is given.
    pub fn new(config: &RateLimitConfig, redis: Option<Arc<Redis>>, tenant: &str) -> Arc<Self> {
        let user = Policy {
            name: "user",
            per_minute: config.per_minute,
            burst: config.burst,
        };
        let anon = Policy {
            name: "anon",
            per_minute: config.anon_per_minute,
            burst: (config.anon_per_minute / 6).clamp(1, config.burst.max(1)),
        };
        let login = Policy {
            name: "login",
            per_minute: config.login_per_minute,
            burst: config.login_per_minute.clamp(1, 5),
        };
        let auth_failure = Policy {
            name: "auth_failure",
            per_minute: config.auth_failures_per_minute,
            burst: (config.auth_failures_per_minute / 3).clamp(1, 20),
        };
        let limiter = Arc::new(Self {
            enabled: config.enabled,
            fallback: config.fallback,
            user,
            anon,
            login,
            auth_failure,
            local: LocalLimiter::new(&[user, anon, login, auth_failure]),
            global: redis.map(|r| {
                let timeout = r.timeout();
                (GlobalLimiter::new(r, tenant, config.lease_max), timeout)
            }),
            open_until: Mutex::new(None),
            fallbacks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        tokio::spawn(evict_loop(Arc::downgrade(&limiter)));
        limiter
    }

    /// The policy of a class.
    pub fn policy(&self, class: LimitClass) -> Policy {
        match class {
            LimitClass::User => self.user,
            LimitClass::Anonymous => self.anon,
            LimitClass::Login => self.login,
            LimitClass::AuthFailure => self.auth_failure,
        }
    }

    /// Decides one request of `key` (a principal or `ip:<addr>`).
    pub async fn check(&self, class: LimitClass, key: &str) -> Decision {
        let policy = self.policy(class);
        if !self.enabled {
            return Decision::allow(&policy, policy.burst, Duration::ZERO, Source::Disabled);
        }
        let decision = match &self.global {
            None => self.local.check(&policy, key),
            Some((global, timeout)) => {
                if self.breaker_open() {
                    self.fall_back(&policy, key)
                } else {
                    match tokio::time::timeout(*timeout, global.check(&policy, key)).await {
                        Ok(Ok(decision)) => {
                            self.close_breaker();
                            decision
                        }
                        Ok(Err(e)) => self.trip(&policy, key, &e.to_string()),
                        Err(_) => self.trip(&policy, key, "timed out"),
                    }
                }
            }
        };
        if !decision.allowed {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }

    fn breaker_open(&self) -> bool {
        self.open_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    fn close_breaker(&self) {
        let mut open = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        if open.take().is_some() {
            tracing::info!("redis answers again; rate limits are global again");
        }
    }

    fn trip(&self, policy: &Policy, key: &str, why: &str) -> Decision {
        let mut open = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        if open.is_none() {
            tracing::warn!(error = why, fallback = ?self.fallback, "redis rate limiter failed; falling back");
        }
        *open = Some(Instant::now() + BREAKER_OPEN_FOR);
        drop(open);
        self.fall_back(policy, key)
    }

    fn fall_back(&self, policy: &Policy, key: &str) -> Decision {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.fallback {
            RedisFallback::Local => Decision {
                source: Source::LocalFallback,
                ..self.local.check(policy, key)
            },
            RedisFallback::Open => {
                Decision::allow(policy, policy.burst, Duration::ZERO, Source::FailOpen)
            }
            RedisFallback::Closed => Decision::deny(
                policy,
                Duration::from_secs(1),
                Duration::from_secs(1),
                Source::FailClosed,
            ),
        }
    }

    /// Decisions made by the fallback since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Keys tracked by the local limiter.
    pub fn tracked_keys(&self) -> usize {
        self.local.tracked_keys()
    }

    /// False when limits are turned off (`TP_RATE_LIMIT_DISABLED`).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `disabled`, `local` or `global`.
    pub fn mode(&self) -> &'static str {
        match (self.enabled, &self.global) {
            (false, _) => "disabled",
            (true, None) => "local",
            (true, Some(_)) => "global",
        }
    }
}

impl HealthContributor for RateLimiter {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn check(&self) -> ComponentHealth {
        let falling_back = self.global.is_some() && self.breaker_open();
        ComponentHealth {
            status: if falling_back {
                Status::Degraded
            } else {
                Status::Ok
            },
            detail: [
                ("mode", serde_json::json!(self.mode())),
                (
                    "deciding",
                    serde_json::json!(if falling_back {
                        match self.fallback {
                            RedisFallback::Local => "local_fallback",
                            RedisFallback::Open => "fail_open",
                            RedisFallback::Closed => "fail_closed",
                        }
                    } else {
                        self.mode()
                    }),
                ),
                ("fallbacks", serde_json::json!(self.fallbacks())),
            ]
            .into_iter()
            .collect(),
        }
    }
}

async fn evict_loop(limiter: std::sync::Weak<RateLimiter>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.local.evict_idle();
    }
}
