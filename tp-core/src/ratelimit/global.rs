//! Global limits: GCRA in one atomic Lua script on Redis, on Redis's clock,
//! with short local leases of global quota for busy keys.
//!
//! A request of a key that this replica holds no lease for costs one round
//! trip. A key that keeps using its leases up gets bigger ones (doubling up
//! to the configured most, and never more than an eighth of the burst), so
//! a busy principal costs one round trip per lease instead of one per
//! request. A lease is quota already taken from the global bucket: leases
//! never let a key past its global limit. Tokens left in a lease when it
//! expires ([`LEASE_TTL`]) go back to the bucket with the key's next round
//! trip. What leases cost is that quota one replica holds, for 50 ms at
//! most, another cannot use. Near the limit the bucket has few tokens, so
//! leases shrink to what is free and the decision is as exact as without
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::types::scripts::Script;

use super::{Decision, Policy, Source};
use crate::error::{Error, Result};
use crate::redis::Redis;

/// GCRA with the same semantics as the local limiter: a bucket of `burst`
/// slots refilled one per `interval` (µs). First gives back `refund` slots
/// of an expired lease, then takes up to `want` slots at once (at least
/// one, or none when the bucket is empty). The theoretical arrival time is
/// stored per key with a TTL of its remaining life. Returns
/// `{granted, remaining, retry_after_us, reset_after_us}`.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now) - refund * interval
if tat < now then tat = now end
local free = math.floor((now + tau - tat) / interval) + 1
if free < 1 then
  return {0, 0, tat - tau - now, tat - now}
end
local granted = math.min(want, free)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {granted, free - granted, 0, new_tat - now}
"#;

/// How long leased quota may be used.
pub const LEASE_TTL: Duration = Duration::from_millis(50);

/// Leases kept before expired ones are dropped.
const LEASES_MAX: usize = 10_000;

/// Quota this replica took for one key and has not used yet.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Requests it still admits.
    tokens: u32,
    /// How many the last round trip asked for.
    size: u32,
    granted_at: Instant,
    /// The global bucket's remaining slots and reset when granted.
    remaining: u32,
    reset_after: Duration,
    /// Refused by Redis until then: nobody can be admitted earlier, so
    /// requests until then are refused here without a round trip.
    denied_until: Option<Instant>,
}

impl Lease {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.granted_at) < LEASE_TTL
    }

    /// What to ask for next: double after a lease used up while live,
    /// halve after one that expired with tokens left.
    fn next_size(&self, now: Instant, cap: u32) -> u32 {
        if self.live(now) {
            self.size.saturating_mul(2).min(cap)
        } else if self.tokens > 0 {
            (self.size / 2).max(1)
        } else {
            self.size.min(cap)
        }
    }
}

/// The Redis-backed limiter.
pub struct GlobalLimiter {
    redis: Arc<Redis>,
    script: Script,
    prefix: String,
    lease_max: u32,
    leases: Mutex<HashMap<String, Lease>>,
}

impl GlobalLimiter {
    /// A limiter whose keys live under `tp:<tenant>:rl:`, admitting at most
    /// `lease_max` requests of a key per round trip.
    pub fn new(redis: Arc<Redis>, tenant: &str, lease_max: u32) -> Self {
        Self {
            redis,
            script: Script::from_lua(GCRA),
            prefix: format!("tp:{tenant}:rl:"),
            lease_max: lease_max.max(1),
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Decides one request of `key` under `policy`: from this replica's
    /// lease, or a refusal it remembers, when it holds one; else one round
    /// trip (EVALSHA, loading on a miss).
    pub async fn check(&self, policy: &Policy, key: &str) -> Result<Decision> {
        let cap = lease_cap(self.lease_max, policy.burst);
        let lease_key = format!("{}:{key}", policy.name);
        let Ask { want, refund } = match self.take(&lease_key, cap, Instant::now()) {
            Take::Admit {
                remaining,
                reset_after,
            } => {
                return Ok(Decision::allow(
                    policy,
                    remaining,
                    reset_after,
                    Source::Global,
                ));
            }
            Take::Refuse { retry_after } => {
                let reset = retry_after + policy.interval() * policy.burst.saturating_sub(1);
                return Ok(Decision::deny(policy, retry_after, reset, Source::Global));
            }
            Take::Ask(ask) => ask,
        };
        let redis_key = format!("{}{}:{key}", self.prefix, policy.name);
        let interval = i64::try_from(policy.interval().as_micros()).unwrap_or(i64::MAX);
        let args = vec![
            interval,
            i64::from(policy.burst.max(1)),
            i64::from(want),
            i64::from(refund),
        ];
        let reply: std::result::Result<Vec<i64>, _> = self
            .script
            .evalsha_with_reload(self.redis.client(), vec![redis_key], args)
            .await;
        let reply = reply.map_err(|e| {
            self.redis.record_failure();
            Error::unavailable("redis_unavailable", format!("rate limit script: {e}"), None)
        })?;
        let [granted, remaining, retry_us, reset_us] = reply[..] else {
            return Err(Error::internal(format!(
                "rate limit script returned {reply:?}"
            )));
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let granted = u32::try_from(granted).unwrap_or(0);
        let remaining = u32::try_from(remaining).unwrap_or(0);
        if granted == 0 {
            self.refused(lease_key, want, micros(retry_us));
            return Ok(Decision::deny(
                policy,
                micros(retry_us),
                micros(reset_us),
                Source::Global,
            ));
        }
        self.keep(lease_key, want, granted - 1, remaining, micros(reset_us));
        Ok(Decision::allow(
            policy,
            remaining + granted - 1,
            micros(reset_us),
            Source::Global,
        ))
    }

    /// A request decided from what this replica holds, or what to ask Redis for.
    fn take(&self, key: &str, cap: u32, now: Instant) -> Take {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = leases.get_mut(key) else {
            return Take::Ask(Ask { want: 1, refund: 0 });
        };
        if let Some(until) = lease.denied_until {
            if now < until {
                return Take::Refuse {
                    retry_after: until - now,
                };
            }
            lease.denied_until = None;
        }
        if lease.live(now) && lease.tokens > 0 {
            lease.tokens -= 1;
            return Take::Admit {
                remaining: lease.remaining + lease.tokens,
                reset_after: lease.reset_after,
            };
        }
        let want = lease.next_size(now, cap);
        // An expired lease's rest goes back with this round trip, once.
        let refund = if lease.live(now) { 0 } else { lease.tokens };
        lease.tokens = 0;
        Take::Ask(Ask { want, refund })
    }

    /// Remembers a refusal until the bucket has a slot again (1 s at most).
    fn refused(&self, key: String, size: u32, retry_after: Duration) {
        self.update(key, size, |lease, now| {
            lease.denied_until = Some(now + retry_after.min(Duration::from_secs(1)));
        });
    }

    /// Keeps what a round trip granted beyond the request that asked.
    fn keep(&self, key: String, size: u32, tokens: u32, remaining: u32, reset_after: Duration) {
        self.update(key, size, |lease, now| {
            // Concurrent round trips of one key add up; an expired rest is lost.
            let left = if lease.live(now) { lease.tokens } else { 0 };
            *lease = Lease {
                tokens: left + tokens,
                size,
                granted_at: now,
                remaining,
                reset_after,
                denied_until: None,
            };
        });
    }

    /// Changes the lease of `key` (an empty one when there is none), unless
    /// the table is full of live entries.
    fn update(&self, key: String, size: u32, change: impl FnOnce(&mut Lease, Instant)) {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() >= LEASES_MAX && !leases.contains_key(&key) {
            leases.retain(|_, l| l.live(now) || l.denied_until.is_some_and(|until| now < until));
            if leases.len() >= LEASES_MAX {
                return;
            }
        }
        let lease = leases.entry(key).or_insert(Lease {
            tokens: 0,
            size,
            granted_at: now,
            remaining: 0,
            reset_after: Duration::ZERO,
            denied_until: None,
        });
        change(lease, now);
    }

    /// Leases held now (for tests and health).
    pub fn leases(&self) -> usize {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The largest lease under `lease_max` for a policy of `burst`: an eighth
/// of the burst at most, so replicas sharing a key never hold much of it.
fn lease_cap(lease_max: u32, burst: u32) -> u32 {
    lease_max.min(burst / 8).max(1)
}

/// What this replica can decide alone.
enum Take {
    /// Admitted from a live lease.
    Admit {
        remaining: u32,
        reset_after: Duration,
    },
    /// Refused: Redis said no slot before then.
    Refuse { retry_after: Duration },
    /// Ask Redis.
    Ask(Ask),
}

/// What one round trip asks for.
struct Ask {
    /// Slots to take (this request and the lease).
    want: u32,
    /// Slots of an expired lease to give back first.
    refund: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(tokens: u32, size: u32, age: Duration, now: Instant) -> Lease {
        Lease {
            tokens,
            size,
            granted_at: now - age,
            remaining: 100,
            reset_after: Duration::from_millis(10),
            denied_until: None,
        }
    }

    #[test]
    fn leases_grow_while_used_up_and_shrink_when_they_expire_unused() {
        let now = Instant::now();
        let young = Duration::from_millis(5);
        let old = LEASE_TTL + Duration::from_millis(1);
        // Used up while live: twice as big, up to the cap.
        assert_eq!(lease(0, 4, young, now).next_size(now, 32), 8);
        assert_eq!(lease(0, 32, young, now).next_size(now, 32), 32);
        // Expired with tokens left: half.
        assert_eq!(lease(3, 8, old, now).next_size(now, 32), 4);
        assert_eq!(lease(1, 1, old, now).next_size(now, 32), 1);
        // Expired used up: the same again, within a cap that may have shrunk.
        assert_eq!(lease(0, 16, old, now).next_size(now, 32), 16);
        assert_eq!(lease(0, 16, old, now).next_size(now, 4), 4);
    }

    #[test]
    fn a_lease_holds_at_most_an_eighth_of_the_burst() {
        assert_eq!(
            lease_cap(32, 10),
            1,
            "small bursts are decided by Redis every time"
        );
        assert_eq!(lease_cap(32, 100), 12);
        assert_eq!(lease_cap(32, 1_000_000), 32);
        assert_eq!(lease_cap(1, 1_000_000), 1);
    }
}
