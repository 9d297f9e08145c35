//! The delivery policy of an ActionBinding: how one event reaches the action's target.
//!
//! A [`Deliverer`] is built once per binding from its resolved [`DeliveryPolicy`] and shared by
//! every event of that binding in flight. [`Deliverer::deliver`] runs one event's attempts:
//!
//! ```text
//!  deliver(event) ─▶ breaker ─▶ rate limit ─▶ attempt n ──ok──▶ Delivered { attempts: n }
//!                      ▲  │ open: wait out        │ err
//!                      │  │ openFor (no attempt   ▼
//!                      │  │ used, no dead letter) classify ─ target failure? ─▶ breaker window
//!                      │  │ half-open: one trial  │
//!                      │  │ at a time             ├─ not in retryOn ──▶ Failed { NotRetryable }
//!                      │                          ├─ n = maxAttempts ─▶ Failed { Exhausted }
//!                      │                          ▼
//!                      └──── n + 1 ◀──── backoff (exponential or fixed, equal jitter,
//!                                        Retry-After) ── shutdown ──▶ Failed { Shutdown }
//! ```
//!
//! - **Retries.** Only failures whose class is in `retryOn` are retried, at most until
//!   `maxAttempts` attempts were made in all. The delay before retry `r` is
//!   [`RetryPolicy::base_delay`] (the runtime's one exponential backoff,
//!   [`retry::exponential_backoff`]), drawn uniformly from `[d/2, d]` when jitter is on ("equal
//!   jitter"), and never shorter than the target's `Retry-After` (capped at `maxDelay`) when the
//!   policy honours it: see [`retry::retry_delay`].
//! - **Circuit breaker**, one per binding, i.e. per action target. Closed, it counts calls and
//!   target failures over a sliding `window`; once at least `minRequests` calls were made and the
//!   failure ratio reached `failureRatio`, it opens. While open no call is made: deliveries
//!   *wait* (backpressure during an outage; they neither burn attempts nor dead-letter) until
//!   `openFor` elapsed; then it is half-open and lets exactly one trial call through at a time.
//!   A trial that succeeds closes it (with a fresh window), one that fails opens it again.
//! - **What counts against the target.** Only `5xx`, `429`, timeouts and connection failures.
//!   Any other status (a `400`, a `404`, …) means the target answered and judged the *event*: the
//!   breaker records it as a healthy call, so a storm of bad events never cuts off good ones.
//!   [`FailureClass::Other`] (e.g. a body template that cannot render) never reached the target
//!   and is not recorded at all.
//! - **Rate limit**: a token bucket (GCRA, `governor`) awaited before every attempt, retries
//!   included, after the breaker admitted the call (so a long breaker wait does not hold a
//!   token). Fractional rates work (`0.5` is one call every two seconds); the burst defaults to
//!   the rate rounded up, at least 1.
//! - **Shutdown** cancels every wait (backoff, breaker, rate limit), never an attempt already
//!   running (each attempt has its own timeout). The event then ends as
//!   `Failed { reason: Shutdown }`: the caller must neither dead-letter it nor commit its
//!   offset, so that it is consumed again after the restart (at-least-once).
//!
//! All timing uses `tokio::time` (sleeps, and [`tokio::time::Instant`] for the breaker and the
//! rate limiter's clock), so the engine follows tokio's clock wherever it runs.
//!
//! ```text
//!  delivery/
//!   mod.rs         AttemptError, Outcome, Deliverer: one event's attempts
//!   retry.rs       the backoff, retry_delay (jitter, Retry-After), until_stored
//!   breaker.rs     the circuit breaker and its sliding window
//!   rate_limit.rs  the token bucket on the engine's clock
//!   clock.rs       where the engine reads time and sleeps (tokio, or a test clock)
//! ```

mod breaker;
mod clock;
mod rate_limit;
pub mod retry;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    future::Future,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use governor::RateLimiter;
use inputbot_api::config::{DeliveryPolicy, FailureClass, RetryPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::{
    breaker::BreakerState,
    retry::{retry_delay, until_stored},
};
use self::{
    breaker::{Breaker, Verdict},
    clock::Clock,
    rate_limit::{Limiter, RateClock, Tick, quota},
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// How it failed: decides whether it is retried and whether it counts against the target.
    pub class: FailureClass,
    /// The HTTP status the target answered with, if any.
    pub status: Option<u16>,
    /// What went wrong, for logs and the dead-letter record.
    pub message: String,
    /// The target's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl AttemptError {
    /// A failure of class `class` with no status and no `Retry-After`.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The target answered with `status`.
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: Some(status),
            ..Self::new(FailureClass::Status(status), message)
        }
    }

    /// The same error, carrying the target's `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

/// Why a delivery gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// The failure is not in the policy's `retryOn`.
    NotRetryable,
    /// `maxAttempts` attempts failed.
    Exhausted,
    /// The process is shutting down: the event must be consumed again, not dead-lettered.
    Shutdown,
}

impl GiveUp {
    /// A stable label for metrics and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::Exhausted => "exhausted",
            GiveUp::Shutdown => "shutdown",
        }
    }

    /// Whether an event that ended this way belongs in the dead-letter topic (when the binding
    /// has one). A shutdown does not: its offset stays uncommitted and it is delivered again.
    pub fn dead_letters(self) -> bool {
        !matches!(self, GiveUp::Shutdown)
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The end of a delivery.
#[must_use]
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The action succeeded on attempt `attempts`.
    Delivered {
        /// Attempts made, the successful one included.
        attempts: u32,
    },
    /// Give up: not retryable, attempts exhausted, or shutdown while waiting. Carries what a
    /// dead-letter record needs.
    Failed {
        /// Attempts made (0 when shutdown came before the first one).
        attempts: u32,
        /// The last attempt's error. When shutdown came before any attempt, a synthetic error
        /// of class [`FailureClass::Other`] saying so.
        error: AttemptError,
        /// When the first attempt failed.
        first_failure: DateTime<Utc>,
        /// When the last attempt failed.
        last_failure: DateTime<Utc>,
        /// Why the delivery stopped.
        reason: GiveUp,
    },
}

impl Outcome {
    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Delivered { attempts } | Outcome::Failed { attempts, .. } => *attempts,
        }
    }

    /// Whether the action succeeded.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    /// Whether the event belongs in the dead-letter topic (see [`GiveUp::dead_letters`]).
    pub fn should_dead_letter(&self) -> bool {
        matches!(self, Outcome::Failed { reason, .. } if reason.dead_letters())
    }
}

/// Runs deliveries under one binding's [`DeliveryPolicy`]. One per ActionBinding; shared (by
/// reference or `Arc`) by all of the binding's events in flight, since the breaker and the rate
/// limit are per target.
pub struct Deliverer {
    retry: RetryPolicy,
    breaker: Breaker,
    limiter: Option<Limiter>,
    clock: Clock,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("retry", &self.retry)
            .field("breaker", &self.breaker.policy)
            .field("breaker_state", &self.breaker_state())
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl Deliverer {
    /// A deliverer for `policy`, on tokio's clock.
    pub fn new(policy: &DeliveryPolicy) -> Self {
        Self::with_clock(policy, Clock::Tokio)
    }

    fn with_clock(policy: &DeliveryPolicy, clock: Clock) -> Self {
        let limiter = policy
            .rate_limit
            .as_ref()
            .and_then(quota)
            .map(|q| RateLimiter::direct_with_clock(q, RateClock(clock.clone())));
        Self {
            retry: policy.retry.clone(),
            breaker: Breaker::new(policy.circuit_breaker.clone(), clock.now()),
            limiter,
            clock,
        }
    }

    /// Runs `attempt` under the policy: rate limit before every attempt, circuit breaker around
    /// it, retries with backoff (exponential or fixed, equal jitter when enabled: a delay `d`
    /// becomes uniform in `[d/2, d]`), honouring `Retry-After` (capped at `maxDelay`) when the
    /// policy says so, only for failures the policy retries. `attempt` gets the attempt number,
    /// 1-based. `shutdown` cancels waiting (never a running attempt).
    pub async fn deliver<F, Fut>(&self, mut attempt: F, shutdown: &CancellationToken) -> Outcome
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<(), AttemptError>>,
    {
        let max_attempts = self.retry.max_attempts.max(1);
        let mut failures = FailureTimes::start(self.clock.now());
        let mut last: Option<AttemptError> = None;
        let mut made = 0;
        loop {
            if shutdown.is_cancelled() {
                return failures.shut_down(made, last, self.clock.now());
            }
            let Some(permit) = self.breaker.admit(&self.clock, shutdown).await else {
                return failures.shut_down(made, last, self.clock.now());
            };
            if !self.take_token(shutdown).await {
                return failures.shut_down(made, last, self.clock.now());
            }
            made += 1;
            let result = attempt(made).await;
            let now = self.clock.now();
            let error = match result {
                Ok(()) => {
                    permit.settle(Verdict::Healthy, now);
                    return Outcome::Delivered { attempts: made };
                }
                Err(error) => error,
            };
            permit.settle(Verdict::of(&error.class), now);
            failures.failed(now);
            if !self.retry.retries(&error.class) {
                return failures.give_up(made, error, GiveUp::NotRetryable);
            }
            if made >= max_attempts {
                return failures.give_up(made, error, GiveUp::Exhausted);
            }
            // The thread-local generator is not `Send`: it lives only for this statement.
            let delay = retry_delay(&self.retry, made, error.retry_after, &mut rand::rng());
            tracing::debug!(
                attempt = made,
                status = error.status,
                error = %error.message,
                delay_ms = millis(delay),
                "delivery attempt failed, retrying"
            );
            last = Some(error);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return failures.shut_down(made, last, self.clock.now()),
                () = self.clock.sleep_until(now + delay) => {}
            }
        }
    }

    /// The breaker's state now (`Open` turns into `HalfOpen` once `openFor` elapsed).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(self.clock.now())
    }

    /// Waits for a rate-limit token; `false` when shutdown came first.
    async fn take_token(&self, shutdown: &CancellationToken) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        loop {
            let Err(not_until) = limiter.check() else {
                return true;
            };
            let now = self.clock.now();
            // At least a nanosecond, so that a rounding edge can never spin.
            let wait = not_until
                .wait_time_from(Tick(now))
                .max(Duration::from_nanos(1));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = self.clock.sleep_until(now + wait) => {}
            }
        }
    }
}

/// Wall-clock failure times, derived from the delivery's monotonic clock so that they agree
/// with the waits actually made (and with tokio's clock wherever it runs).
struct FailureTimes {
    wall_start: DateTime<Utc>,
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl FailureTimes {
    fn start(now: Instant) -> Self {
        Self {
            wall_start: Utc::now(),
            start: now,
            first: None,
            last: None,
        }
    }

    fn failed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        chrono::TimeDelta::from_std(at.saturating_duration_since(self.start))
            .ok()
            .and_then(|d| self.wall_start.checked_add_signed(d))
            .unwrap_or(self.wall_start)
    }

    fn give_up(&self, attempts: u32, error: AttemptError, reason: GiveUp) -> Outcome {
        let last = self.last.unwrap_or(self.start);
        let first = self.first.unwrap_or(last);
        Outcome::Failed {
            attempts,
            error,
            first_failure: self.wall(first),
            last_failure: self.wall(last),
            reason,
        }
    }

    fn shut_down(&mut self, attempts: u32, last: Option<AttemptError>, now: Instant) -> Outcome {
        let error = last.unwrap_or_else(|| {
            self.failed(now);
            AttemptError::new(
                FailureClass::Other,
                "shutting down before the first delivery attempt",
            )
        });
        self.give_up(attempts, error, GiveUp::Shutdown)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
