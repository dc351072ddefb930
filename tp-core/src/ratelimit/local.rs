//! Per-replica GCRA limits with governor, keyed by principal, generic over a
//! clock so tests drive time by hand.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, Policy, Source};

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// One governor limiter per policy.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    clock: C,
    limiters: HashMap<&'static str, Keyed<C>>,
}

fn quota(policy: &Policy) -> Quota {
    let burst = NonZeroU32::new(policy.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(policy.interval())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LocalLimiter<DefaultClock> {
    /// Limiters for `policies` on the system clock.
    pub fn new(policies: &[Policy]) -> Self {
        Self::with_clock(policies, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    /// Limiters for `policies` on `clock`.
    pub fn with_clock(policies: &[Policy], clock: C) -> Self {
        let limiters = policies
            .iter()
            .map(|p| {
                let limiter = RateLimiter::dashmap_with_clock(quota(p), clock.clone())
                    .with_middleware::<StateInformationMiddleware>();
                (p.name, limiter)
            })
            .collect();
        Self { clock, limiters }
    }

    /// Decides one request of `key` under `policy`.
    pub fn check(&self, policy: &Policy, key: &str) -> Decision {
        let Some(limiter) = self.limiters.get(policy.name) else {
            return Decision::allow(policy, policy.burst, Duration::ZERO, Source::Local);
        };
        match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Until the bucket is full again: one interval per used slot.
                let used = policy.burst.saturating_sub(remaining);
                Decision::allow(policy, remaining, policy.interval() * used, Source::Local)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let reset = wait + policy.interval() * policy.burst.saturating_sub(1);
                Decision::deny(policy, wait, reset, Source::Local)
            }
        }
    }

    /// Forgets keys whose buckets are full again, bounding memory.
    pub fn evict_idle(&self) {
        for limiter in self.limiters.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.limiters.values().map(|l| l.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    const POLICY: Policy = Policy {
        name: "user",
        per_minute: 60,
        burst: 3,
    };

    #[test]
    fn burst_then_refill_at_the_emission_interval() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&[POLICY], clock.clone());
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                let d = limiter.check(&POLICY, "alice");
                assert!(d.allowed);
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);

        let denied = limiter.check(&POLICY, "alice");
        assert!(!denied.allowed);
        assert_eq!(
            denied.retry_after,
            Some(Duration::from_secs(1)),
            "one token per second"
        );

        // Other keys have their own buckets.
        assert!(limiter.check(&POLICY, "bob").allowed);

        clock.advance(Duration::from_millis(999));
        let still = limiter.check(&POLICY, "alice");
        assert!(!still.allowed);
        assert_eq!(still.retry_after, Some(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        let again = limiter.check(&POLICY, "alice");
        assert!(again.allowed);
        assert_eq!(again.remaining, 0);

        clock.advance(Duration::from_secs(3));
        let full = limiter.check(&POLICY, "alice");
        assert_eq!(
            (full.allowed, full.remaining),
            (true, 2),
            "refilled to the burst"
        );
        assert_eq!(full.reset_after, Duration::from_secs(1));
    }

    #[test]
    fn idle_keys_are_evicted() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&[POLICY], clock.clone());
        for i in 0..1000 {
            limiter.check(&POLICY, &format!("ip:{i}"));
        }
        assert_eq!(limiter.tracked_keys(), 1000);
        clock.advance(Duration::from_secs(10));
        limiter.evict_idle();
        assert_eq!(limiter.tracked_keys(), 0);
    }
}
