//! Per-caller rate limits of the hub: a token bucket per authenticated
//! device, per admin token (tenant) and, for routes without a token
//! (enrolment), per client IP address. Buckets live in memory in each hub
//! process; several processes on one PostgreSQL database each allow the
//! rate, which is what a limit against one misbehaving till needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;
use uuid::Uuid;

/// How fast callers may send requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateOptions {
    /// Sustained requests per second per caller; 0 turns rate limiting off.
    pub rate_per_s: u32,
    /// Requests a caller may send at once after being quiet (the bucket size).
    pub burst_len: u32,
    /// Most callers tracked at once; past it, buckets that are full again are
    /// dropped (they hold nothing a new bucket would not).
    pub callers_len_max: usize,
}

impl Default for RateOptions {
    /// Generous: a till's sync round is a handful of requests, a catch-up
    /// of a large log a few pages per second.
    fn default() -> Self {
        RateOptions { rate_per_s: 100, burst_len: 1_000, callers_len_max: 100_000 }
    }
}

/// Who a bucket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    Device(Uuid),
    Admin(Uuid),
    Ip(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, bounded in number.
#[derive(Debug)]
pub struct RateLimiter {
    options: RateOptions,
    buckets: Mutex<HashMap<RateKey, Bucket>>,
}

impl RateLimiter {
    /// A limiter with these options.
    pub fn new(options: RateOptions) -> Self {
        RateLimiter { options, buckets: Mutex::new(HashMap::new()) }
    }

    /// The options it runs with.
    pub fn options(&self) -> RateOptions {
        self.options
    }

    /// Takes one request from `key`'s bucket: `Ok` when allowed, else the
    /// whole seconds to wait before the next request is allowed (at least 1).
    pub fn check(&self, key: RateKey) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: RateKey, now: Instant) -> Result<(), u64> {
        let o = self.options;
        if o.rate_per_s == 0 {
            return Ok(());
        }
        let rate = f64::from(o.rate_per_s);
        let burst = f64::from(o.burst_len.max(1));
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) && map.len() >= o.callers_len_max {
            map.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= o.callers_len_max {
                // Every tracked caller is busy: let a new one through rather
                // than grow without bound or refuse callers never seen.
                tracing::warn!(callers = map.len(), "rate limiter full: a new caller is not limited");
                return Ok(());
            }
        }
        let b = map.entry(key).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Callers tracked.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no caller is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_empties_refills_and_says_how_long_to_wait() {
        let l = RateLimiter::new(RateOptions { rate_per_s: 2, burst_len: 3, callers_len_max: 10 });
        let t0 = Instant::now();
        let k = RateKey::Device(Uuid::nil());
        for _ in 0..3 {
            assert_eq!(l.check_at(k, t0), Ok(()));
        }
        assert_eq!(l.check_at(k, t0), Err(1));
        // Another caller has a bucket of its own.
        assert_eq!(l.check_at(RateKey::Admin(Uuid::nil()), t0), Ok(()));
        // Half a second refills one request at 2 per second.
        assert_eq!(l.check_at(k, t0 + Duration::from_millis(500)), Ok(()));
        assert_eq!(l.check_at(k, t0 + Duration::from_millis(500)), Err(1));
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = RateLimiter::new(RateOptions { rate_per_s: 1, burst_len: 2, callers_len_max: 4 });
        let t0 = Instant::now();
        for i in 0..4u8 {
            let k = RateKey::Ip(IpAddr::from([10, 0, 0, i]));
            l.check_at(k, t0).unwrap();
        }
        // All four are busy: a fifth is let through but not tracked.
        assert_eq!(l.check_at(RateKey::Ip(IpAddr::from([10, 0, 1, 0])), t0), Ok(()));
        assert_eq!(l.len(), 4);
        // Once their buckets are full again they are dropped for new callers.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.check_at(RateKey::Ip(IpAddr::from([10, 0, 1, 0])), later), Ok(()));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_turns_it_off() {
        let l = RateLimiter::new(RateOptions { rate_per_s: 0, burst_len: 0, callers_len_max: 1 });
        for _ in 0..10_000 {
            assert_eq!(l.check(RateKey::Device(Uuid::nil())), Ok(()));
        }
        assert!(l.is_empty());
    }
}
