//! A tunnel's request rate limit: a token bucket (GCRA, from `governor`)
//! that refills at `per_second` and holds at most `burst` requests. Each
//! tunnel has its own bucket, made when the tunnel is granted and dropped
//! with it, so memory grows with live tunnels only, never with visitors.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// How many requests a tunnel takes: `per_second` on average, with bursts
/// of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    /// The sustained rate.
    pub per_second: NonZeroU32,
    /// The most requests let through at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl RequestRate {
    /// `per_second`, with bursts of `burst` (default: the rate). `None`
    /// when either is zero.
    pub fn new(per_second: u32, burst: Option<u32>) -> Option<RequestRate> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = match burst {
            Some(b) => NonZeroU32::new(b)?,
            None => per_second,
        };
        Some(RequestRate { per_second, burst })
    }
}

/// One tunnel's bucket (the clock is a parameter for the tests).
pub struct Limiter<C: Clock = DefaultClock> {
    bucket: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// A full bucket.
    pub fn new(rate: RequestRate) -> Limiter {
        Limiter::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    fn with_clock(rate: RequestRate, clock: C) -> Limiter<C> {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Limiter {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes one request from the bucket, or says how long until one is
    /// there.
    pub fn check(&self) -> Result<(), Duration> {
        self.bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_burst_passes_then_the_bucket_refuses_with_a_wait() {
        let rate = RequestRate::new(5, None).unwrap();
        assert_eq!(rate.burst.get(), 5);
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(rate, clock.clone());
        for i in 0..5 {
            assert_eq!(limiter.check(), Ok(()), "request {i} is within the burst");
        }
        // One request comes back every 200 ms at 5 per second.
        assert_eq!(limiter.check(), Err(Duration::from_millis(200)));
        clock.advance(Duration::from_millis(150));
        assert_eq!(limiter.check(), Err(Duration::from_millis(50)));
        assert_eq!(retry_after_secs(Duration::from_millis(50)), 1);
        clock.advance(Duration::from_millis(50));
        assert_eq!(limiter.check(), Ok(()));
        assert!(limiter.check().is_err());
        // A quiet spell refills the bucket to the burst, no further.
        clock.advance(Duration::from_secs(60));
        let passed = (0..20).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(passed, 5);
        // The real clock works too.
        assert_eq!(Limiter::new(rate).check(), Ok(()));
    }

    #[test]
    fn the_burst_can_differ_from_the_rate_and_zero_is_refused() {
        let limiter = Limiter::with_clock(
            RequestRate::new(1, Some(3)).unwrap(),
            FakeRelativeClock::default(),
        );
        let passed = (0..10).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(passed, 3);
        assert_eq!(RequestRate::new(0, None), None);
        assert_eq!(RequestRate::new(5, Some(0)), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
