//! The rate limit: a token bucket (GCRA, `governor`) awaited before every attempt, on the
//! engine's [`Clock`] so that it follows tokio's clock (and the tests' virtual one).

use std::{num::NonZeroU32, ops::Add, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::Reference,
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use inputbot_api::common::RateLimit;
use tokio::time::Instant;

use super::clock::Clock;

pub(super) type Limiter = RateLimiter<NotKeyed, InMemoryState, RateClock, NoOpMiddleware<Tick>>;

/// The smallest rate the API accepts; a non-positive rate (which validation rejects) is treated
/// as this rather than as no limit.
const MIN_PER_SECOND: f64 = 0.001;

/// The token bucket for `rate`: one token every `1 / perSecond` seconds, `burst` at once
/// (default: the rate rounded up, at least 1). `None` when the rate is too high to limit.
pub(super) fn quota(rate: &RateLimit) -> Option<Quota> {
    let per_second = if rate.per_second > 0.0 {
        rate.per_second
    } else {
        MIN_PER_SECOND
    };
    let period = Duration::try_from_secs_f64(per_second.recip()).ok()?;
    // In range: `per_second` is positive and the cast saturates.
    let default_burst = per_second.ceil() as u32;
    let burst = NonZeroU32::new(rate.burst.unwrap_or(default_burst).max(1))?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// The rate limiter's clock: the engine's, so that the limit follows tokio's clock.
pub(super) struct RateClock(pub(super) Clock);

impl governor::clock::Clock for RateClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        Tick(self.0.now())
    }
}

/// A [`tokio::time::Instant`] as the rate limiter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tick(pub(super) Instant);

impl Add<Nanos> for Tick {
    type Output = Tick;

    fn add(self, nanos: Nanos) -> Tick {
        Tick(self.0 + Duration::from(nanos))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Tick(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}
