//! Client addresses that failed authentication too often, answered 429 for
//! a while without verifying anything, so guessing tokens or API keys costs
//! the guesser, not the database.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tp_core::Error;

/// Most addresses remembered; past it the expired ones go, then all.
const MAX_BLOCKED: usize = 100_000;

/// Addresses refused until a moment, after their failures ran out of quota.
#[derive(Default)]
pub(crate) struct AuthFailures {
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthFailures {
    /// How long `ip` is still refused, if it is.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        match blocked.get(&ip) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Refuses `ip` for `retry_after`.
    pub(crate) fn block(&self, ip: IpAddr, retry_after: Duration) {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.len() >= MAX_BLOCKED {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_BLOCKED {
                blocked.clear();
            }
        }
        blocked.insert(ip, now + retry_after);
    }
}

/// Whether a failed authentication looks like guessing: a token or key
/// that does not verify. An expired token, an ended session or a missing
/// header is what honest clients send, and costs no lookup.
pub(crate) fn is_guess(error: &Error) -> bool {
    matches!(
        error.code(),
        "invalid_token" | "invalid_api_key" | "invalid_scheme"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_lasts_its_time_and_then_goes() {
        let failures = AuthFailures::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(failures.blocked(ip), None);
        failures.block(ip, Duration::from_millis(30));
        assert!(
            failures
                .blocked(ip)
                .is_some_and(|d| d <= Duration::from_millis(30))
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(failures.blocked(ip), None);
    }
}
