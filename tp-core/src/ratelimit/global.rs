//! Global limits: GCRA in one atomic Lua script on Redis, on Redis's clock.

use std::sync::Arc;
use std::time::Duration;

use fred::types::scripts::Script;

use super::{Decision, Policy, Source};
use crate::error::{Error, Result};
use crate::redis::Redis;

/// GCRA with the same semantics as the local limiter: a bucket of `burst`
/// slots refilled one per `interval` (µs). The theoretical arrival time is
/// stored per key with a TTL of its remaining life. Returns
/// `{allowed, remaining, retry_after_us, reset_after_us}`.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now + tau - new_tat) / interval) + 1
return {1, remaining, 0, new_tat - now}
"#;

/// The Redis-backed limiter.
pub struct GlobalLimiter {
    redis: Arc<Redis>,
    script: Script,
    prefix: String,
}

impl GlobalLimiter {
    /// A limiter whose keys live under `tp:<tenant>:rl:`.
    pub fn new(redis: Arc<Redis>, tenant: &str) -> Self {
        Self {
            redis,
            script: Script::from_lua(GCRA),
            prefix: format!("tp:{tenant}:rl:"),
        }
    }

    /// Decides one request of `key` under `policy` (one round trip; EVALSHA, loading on a miss).
    pub async fn check(&self, policy: &Policy, key: &str) -> Result<Decision> {
        let redis_key = format!("{}{}:{key}", self.prefix, policy.name);
        let interval = i64::try_from(policy.interval().as_micros()).unwrap_or(i64::MAX);
        let args = vec![interval, i64::from(policy.burst.max(1))];
        let reply: std::result::Result<Vec<i64>, _> = self
            .script
            .evalsha_with_reload(self.redis.client(), vec![redis_key], args)
            .await;
        let reply = reply.map_err(|e| {
            self.redis.record_failure();
            Error::unavailable("redis_unavailable", format!("rate limit script: {e}"), None)
        })?;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return Err(Error::internal(format!(
                "rate limit script returned {reply:?}"
            )));
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(if allowed == 1 {
            Decision::allow(
                policy,
                u32::try_from(remaining).unwrap_or(0),
                micros(reset_us),
                Source::Global,
            )
        } else {
            Decision::deny(policy, micros(retry_us), micros(reset_us), Source::Global)
        })
    }
}
