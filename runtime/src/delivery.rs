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
//!   [`RetryPolicy::base_delay`], drawn uniformly from `[d/2, d]` when jitter is on ("equal
//!   jitter"), and never shorter than the target's `Retry-After` (capped at `maxDelay`) when the
//!   policy honours it: see [`retry_delay`].
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

use std::{
    fmt,
    future::Future,
    num::NonZeroU32,
    ops::Add,
    pin::pin,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use governor::{
    Quota, RateLimiter,
    clock::Reference,
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use inputbot_api::{
    common::RateLimit,
    config::{BreakerPolicy, DeliveryPolicy, FailureClass, RetryPolicy},
};
use rand::Rng;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

/// What one attempt of an action returned when it failed.
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

/// The state of a binding's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// No call is made until `openFor` elapsed.
    Open,
    /// One trial call at a time decides between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delay before retry number `retry` (1 for the first retry, i.e. before attempt 2).
///
/// The policy's backoff ([`RetryPolicy::base_delay`], exponential or fixed, capped at
/// `maxDelay`), drawn uniformly from `[d/2, d]` when `jitter` is on. When the policy honours
/// `Retry-After` and the target sent one, the delay is at least that long, capped at
/// `maxDelay`: a target is never called earlier than it asked, nor later than the policy allows.
/// `Retry-After` is not jittered: it is the target's explicit instruction.
pub fn retry_delay(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let base = policy.base_delay(retry.max(1));
    let backoff = if policy.jitter {
        equal_jitter(base, rng)
    } else {
        base
    };
    match retry_after {
        Some(asked) if policy.honor_retry_after => backoff.max(asked.min(policy.max_delay)),
        _ => backoff,
    }
}

/// Uniform in `[d/2, d]`.
fn equal_jitter(delay: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(nanos / 2..=nanos))
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

// ---------------------------------------------------------------------------------------------
// Circuit breaker

/// What an attempt says about the target's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The target answered normally (a success, or a status that is the event's fault).
    Healthy,
    /// The target failed: `5xx`, `429`, timeout, connection.
    TargetFailure,
    /// The call did not reach the target: says nothing.
    Unknown,
}

impl Verdict {
    fn of(class: &FailureClass) -> Self {
        match class {
            FailureClass::Status(429 | 500..=599)
            | FailureClass::Timeout
            | FailureClass::Connection => Verdict::TargetFailure,
            FailureClass::Status(_) => Verdict::Healthy,
            FailureClass::Other => Verdict::Unknown,
        }
    }
}

struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<BreakerInner>,
    /// Signalled on every transition out of half-open (and when a trial slot frees up).
    changed: Notify,
}

struct BreakerInner {
    phase: Phase,
    /// Bumped on every transition, so that results of calls admitted in an earlier phase are
    /// ignored.
    generation: u64,
}

enum Phase {
    Closed(Window),
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

enum Wait {
    Until(Instant),
    Trial,
}

impl Breaker {
    fn new(policy: BreakerPolicy, now: Instant) -> Self {
        let window = Window::new(policy.window, now);
        Self {
            policy,
            inner: Mutex::new(BreakerInner {
                phase: Phase::Closed(window),
                generation: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self, now: Instant) -> BreakerState {
        match lock(&self.inner).phase {
            Phase::Closed(_) => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Waits until a call may be made; `None` when shutdown came first.
    async fn admit(&self, clock: &Clock, shutdown: &CancellationToken) -> Option<Permit<'_>> {
        loop {
            // Registered before looking at the state, so that no transition is missed.
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            match self.try_admit(clock.now()) {
                Ok(permit) => return Some(permit),
                Err(Wait::Until(until)) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = clock.sleep_until(until) => {}
                    () = changed => {}
                },
                Err(Wait::Trial) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = changed => {}
                },
            }
        }
    }

    fn try_admit(&self, now: Instant) -> Result<Permit<'_>, Wait> {
        let mut inner = lock(&self.inner);
        let trial = match inner.phase {
            Phase::Closed(_) => false,
            Phase::Open { until } if now < until => return Err(Wait::Until(until)),
            Phase::Open { .. } => {
                tracing::info!("circuit breaker half-open: letting one trial call through");
                inner.generation += 1;
                true
            }
            Phase::HalfOpen {
                trial_running: true,
            } => return Err(Wait::Trial),
            Phase::HalfOpen {
                trial_running: false,
            } => true,
        };
        if trial {
            inner.phase = Phase::HalfOpen {
                trial_running: true,
            };
        }
        Ok(Permit {
            breaker: self,
            generation: inner.generation,
            trial,
            settled: false,
        })
    }

    fn record(&self, generation: u64, trial: bool, verdict: Verdict, now: Instant) {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return; // admitted before the last transition: its result is stale
        }
        let policy = &self.policy;
        let next = match &mut inner.phase {
            Phase::Closed(window) if !trial => {
                if verdict == Verdict::Unknown {
                    return;
                }
                let (calls, failures) = window.record(now, verdict == Verdict::TargetFailure);
                let ratio = f64::from(failures) / f64::from(calls);
                if calls < policy.min_requests.max(1)
                    || failures == 0
                    || ratio < policy.failure_ratio
                {
                    return;
                }
                tracing::warn!(
                    calls,
                    failures,
                    open_for_ms = millis(policy.open_for),
                    "circuit breaker open: the action's target is failing"
                );
                Phase::Open {
                    until: now + policy.open_for,
                }
            }
            Phase::HalfOpen { .. } if trial => match verdict {
                Verdict::Healthy => {
                    tracing::info!("circuit breaker closed: the trial call succeeded");
                    Phase::Closed(Window::new(policy.window, now))
                }
                Verdict::TargetFailure => {
                    tracing::warn!("circuit breaker open again: the trial call failed");
                    Phase::Open {
                        until: now + policy.open_for,
                    }
                }
                // The trial never reached the target: let another one try.
                Verdict::Unknown => Phase::HalfOpen {
                    trial_running: false,
                },
            },
            _ => return,
        };
        inner.phase = next;
        inner.generation += 1;
        drop(inner);
        self.changed.notify_waiters();
    }

    /// A trial whose delivery was dropped mid-call frees its slot.
    fn abandon_trial(&self, generation: u64) {
        let mut inner = lock(&self.inner);
        if inner.generation == generation
            && matches!(
                inner.phase,
                Phase::HalfOpen {
                    trial_running: true
                }
            )
        {
            inner.phase = Phase::HalfOpen {
                trial_running: false,
            };
            drop(inner);
            self.changed.notify_waiters();
        }
    }
}

/// Leave to make one call; reports its verdict to the breaker.
struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    fn settle(mut self, verdict: Verdict, now: Instant) {
        self.settled = true;
        self.breaker
            .record(self.generation, self.trial, verdict, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.trial {
            self.breaker.abandon_trial(self.generation);
        }
    }
}

/// Calls and target failures over a sliding window, kept as [`Window::SLICES`] slices so that
/// memory stays bounded whatever the call rate: a call counts for between 90 % and 100 % of
/// the window.
struct Window {
    origin: Instant,
    slice: Duration,
    slices: [Slice; Window::SLICES],
}

#[derive(Clone, Copy, Default)]
struct Slice {
    index: u64,
    calls: u32,
    failures: u32,
}

impl Window {
    const SLICES: usize = 10;

    fn new(window: Duration, now: Instant) -> Self {
        Self {
            origin: now,
            slice: (window / Self::SLICES as u32).max(Duration::from_millis(1)),
            slices: [Slice::default(); Self::SLICES],
        }
    }

    /// Records a call and returns the window's (calls, failures).
    fn record(&mut self, now: Instant, failure: bool) -> (u32, u32) {
        let index = self.index(now);
        let slice = &mut self.slices[(index % Self::SLICES as u64) as usize];
        if slice.index != index || slice.calls == 0 {
            *slice = Slice {
                index,
                calls: 0,
                failures: 0,
            };
        }
        slice.calls = slice.calls.saturating_add(1);
        slice.failures = slice.failures.saturating_add(u32::from(failure));
        self.slices
            .iter()
            .filter(|s| s.calls > 0 && s.index <= index && index - s.index < Self::SLICES as u64)
            .fold((0u32, 0u32), |(calls, failures), s| {
                (
                    calls.saturating_add(s.calls),
                    failures.saturating_add(s.failures),
                )
            })
    }

    fn index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.slice.as_nanos()).unwrap_or(u64::MAX)
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limit and clock

type Limiter = RateLimiter<NotKeyed, InMemoryState, RateClock, NoOpMiddleware<Tick>>;

/// The smallest rate the API accepts; a non-positive rate (which validation rejects) is treated
/// as this rather than as no limit.
const MIN_PER_SECOND: f64 = 0.001;

/// The token bucket for `rate`: one token every `1 / perSecond` seconds, `burst` at once
/// (default: the rate rounded up, at least 1). `None` when the rate is too high to limit.
fn quota(rate: &RateLimit) -> Option<Quota> {
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

/// Where the engine reads time and sleeps.
#[derive(Clone)]
enum Clock {
    /// `tokio::time`: real time, or tokio's paused clock in tests that use it.
    Tokio,
    /// A virtual clock driven by the tests.
    #[cfg(test)]
    Manual(std::sync::Arc<tests::ManualClock>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::Tokio => Instant::now(),
            #[cfg(test)]
            Clock::Manual(clock) => clock.now(),
        }
    }

    async fn sleep_until(&self, deadline: Instant) {
        match self {
            Clock::Tokio => tokio::time::sleep_until(deadline).await,
            #[cfg(test)]
            Clock::Manual(clock) => clock.sleep_until(deadline).await,
        }
    }
}

/// The rate limiter's clock: the engine's, so that the limit follows tokio's clock.
struct RateClock(Clock);

impl governor::clock::Clock for RateClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        Tick(self.0.now())
    }
}

/// A [`tokio::time::Instant`] as the rate limiter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(Instant);

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

#[cfg(test)]
mod tests {
    //! Most tests run on [`ManualClock`], a virtual clock that jumps to the next timer whenever
    //! nothing else can make progress (what tokio's paused clock does), driven by [`drive`]:
    //! every schedule is checked exactly and no test sleeps for real. A few run on tokio's real
    //! clock to cover the production path, with small numbers and lower bounds only.

    use std::{
        cell::RefCell,
        future::Future,
        pin::Pin,
        rc::Rc,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        task::{Context, Poll, Waker},
    };

    use futures::{
        future::{join, join_all},
        task::ArcWake,
    };
    use inputbot_api::{binding::Backoff, config::RetryOn};
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    // -- the virtual clock --------------------------------------------------------------------

    pub(super) struct ManualClock {
        inner: Mutex<ManualInner>,
    }

    struct ManualInner {
        now: Instant,
        next_id: u64,
        timers: Vec<(Instant, u64, Waker)>,
    }

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                inner: Mutex::new(ManualInner {
                    now: Instant::now(),
                    next_id: 0,
                    timers: Vec::new(),
                }),
            })
        }

        pub(super) fn now(&self) -> Instant {
            lock(&self.inner).now
        }

        pub(super) fn sleep_until(self: &Arc<Self>, deadline: Instant) -> ManualSleep {
            let mut inner = lock(&self.inner);
            inner.next_id += 1;
            ManualSleep {
                clock: Arc::clone(self),
                deadline,
                id: inner.next_id,
            }
        }

        fn sleep(self: &Arc<Self>, duration: Duration) -> ManualSleep {
            let deadline = self.now() + duration;
            self.sleep_until(deadline)
        }

        /// Jumps to the earliest timer and wakes every timer due; `false` when there is none.
        fn advance(&self) -> bool {
            let mut inner = lock(&self.inner);
            let Some(next) = inner.timers.iter().map(|t| t.0).min() else {
                return false;
            };
            inner.now = inner.now.max(next);
            let now = inner.now;
            let (due, waiting): (Vec<_>, Vec<_>) = inner.timers.drain(..).partition(|t| t.0 <= now);
            inner.timers = waiting;
            drop(inner);
            for (_, _, waker) in due {
                waker.wake();
            }
            true
        }
    }

    pub(super) struct ManualSleep {
        clock: Arc<ManualClock>,
        deadline: Instant,
        id: u64,
    }

    impl Future for ManualSleep {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut inner = lock(&self.clock.inner);
            inner.timers.retain(|t| t.1 != self.id);
            if inner.now >= self.deadline {
                return Poll::Ready(());
            }
            inner
                .timers
                .push((self.deadline, self.id, cx.waker().clone()));
            Poll::Pending
        }
    }

    impl Drop for ManualSleep {
        fn drop(&mut self) {
            lock(&self.clock.inner).timers.retain(|t| t.1 != self.id);
        }
    }

    struct Woken(AtomicBool);

    impl ArcWake for Woken {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Runs `fut` to completion on the virtual clock: polls while something was woken, and
    /// advances the clock to the next timer when nothing was.
    fn drive<F: Future>(clock: &ManualClock, fut: F) -> F::Output {
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = futures::task::waker(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        for _ in 0..100_000 {
            woken.0.store(false, Ordering::SeqCst);
            if let Poll::Ready(output) = fut.as_mut().poll(&mut cx) {
                return output;
            }
            if !woken.0.load(Ordering::SeqCst) {
                assert!(clock.advance(), "stuck: nothing woken and no timer pending");
            }
        }
        panic!("did not finish within 100000 steps");
    }

    // -- fixtures ------------------------------------------------------------------------------

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            retry: RetryPolicy {
                max_attempts: 5,
                backoff: Backoff::Exponential,
                initial_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
                jitter: false,
                retry_on: vec![
                    RetryOn::Status(429),
                    RetryOn::Class(5),
                    RetryOn::Timeout,
                    RetryOn::Connection,
                ],
                honor_retry_after: true,
            },
            circuit_breaker: BreakerPolicy {
                failure_ratio: 0.5,
                min_requests: 10,
                window: Duration::from_secs(60),
                open_for: Duration::from_secs(30),
            },
            rate_limit: None,
            dead_letter: true,
        }
    }

    /// A policy whose breaker opens after 4 calls at 50 % failures, with no retries.
    fn breaker_policy() -> DeliveryPolicy {
        let mut p = policy();
        p.retry.max_attempts = 1;
        p.circuit_breaker.min_requests = 4;
        p
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    struct Harness {
        clock: Arc<ManualClock>,
        start: Instant,
        deliverer: Deliverer,
        shutdown: CancellationToken,
    }

    impl Harness {
        fn new(policy: &DeliveryPolicy) -> Self {
            let clock = ManualClock::new();
            Self {
                start: clock.now(),
                deliverer: Deliverer::with_clock(policy, Clock::Manual(Arc::clone(&clock))),
                clock,
                shutdown: CancellationToken::new(),
            }
        }

        fn elapsed(&self) -> Duration {
            self.clock.now() - self.start
        }

        fn drive<F: Future>(&self, fut: F) -> F::Output {
            drive(&self.clock, fut)
        }

        /// Delivers once against `target`, recording the time of each attempt in `calls`.
        async fn deliver(&self, target: &Target) -> Outcome {
            self.deliverer
                .deliver(|n| target.call(self, n), &self.shutdown)
                .await
        }
    }

    /// A scripted target: answers from `script` in order (then succeeds), optionally taking
    /// `latency`, and records when each call started and how many ran at once.
    #[derive(Default)]
    struct Target {
        script: RefCell<Vec<Result<(), AttemptError>>>,
        latency: Duration,
        calls: RefCell<Vec<Duration>>,
        running: RefCell<(u32, u32)>,
    }

    impl Target {
        fn scripted(script: Vec<Result<(), AttemptError>>) -> Self {
            let mut script = script;
            script.reverse();
            Self {
                script: RefCell::new(script),
                ..Self::default()
            }
        }

        fn failing(error: AttemptError, times: usize) -> Self {
            Self::scripted(vec![Err(error); times])
        }

        fn call(
            &self,
            h: &Harness,
            _attempt: u32,
        ) -> impl Future<Output = Result<(), AttemptError>> {
            self.calls.borrow_mut().push(h.elapsed());
            let result = self.script.borrow_mut().pop().unwrap_or(Ok(()));
            let clock = Arc::clone(&h.clock);
            let latency = self.latency;
            async move {
                {
                    let mut running = self.running.borrow_mut();
                    running.0 += 1;
                    running.1 = running.1.max(running.0);
                }
                if !latency.is_zero() {
                    clock.sleep(latency).await;
                }
                self.running.borrow_mut().0 -= 1;
                result
            }
        }

        fn calls(&self) -> Vec<Duration> {
            self.calls.borrow().clone()
        }

        fn gaps(&self) -> Vec<Duration> {
            self.calls().windows(2).map(|w| w[1] - w[0]).collect()
        }

        fn most_at_once(&self) -> u32 {
            self.running.borrow().1
        }
    }

    fn unavailable() -> AttemptError {
        AttemptError::status(503, "503 Service Unavailable")
    }

    fn bad_request() -> AttemptError {
        AttemptError::status(400, "400 Bad Request")
    }

    /// Makes the breaker of `h` open with four failed deliveries (breaker_policy).
    fn open_breaker(h: &Harness) {
        let target = Target::failing(unavailable(), 4);
        for _ in 0..4 {
            assert!(!h.drive(h.deliver(&target)).is_delivered());
        }
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
    }

    // -- retries -------------------------------------------------------------------------------

    #[test]
    fn retries_a_503_with_exponential_backoff_then_delivers() {
        let h = Harness::new(&policy());
        let target = Target::failing(unavailable(), 3);
        let outcome = h.drive(h.deliver(&target));
        assert_eq!(outcome, Outcome::Delivered { attempts: 4 });
        assert_eq!(target.gaps(), [secs(1), secs(2), secs(4)]);
    }

    #[test]
    fn fixed_backoff_waits_the_same_delay_before_every_retry() {
        let mut p = policy();
        p.retry.backoff = Backoff::Fixed;
        p.retry.initial_delay = secs(2);
        let h = Harness::new(&p);
        let target = Target::failing(AttemptError::new(FailureClass::Timeout, "timed out"), 3);
        let outcome = h.drive(h.deliver(&target));
        assert_eq!(outcome, Outcome::Delivered { attempts: 4 });
        assert_eq!(target.gaps(), [secs(2), secs(2), secs(2)]);
    }

    #[test]
    fn exponential_backoff_stops_growing_at_max_delay() {
        let mut p = policy();
        p.retry.max_attempts = 6;
        p.retry.max_delay = secs(3);
        let h = Harness::new(&p);
        let target = Target::failing(unavailable(), 10);
        let outcome = h.drive(h.deliver(&target));
        assert_eq!(outcome.attempts(), 6);
        assert_eq!(target.gaps(), [secs(1), secs(2), secs(3), secs(3), secs(3)]);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_delay() {
        let mut p = policy().retry;
        p.jitter = true;
        let mut rng = StdRng::seed_from_u64(7);
        for retry in 1..=7 {
            let d = p.base_delay(retry);
            let draws: Vec<Duration> = (0..2_000)
                .map(|_| retry_delay(&p, retry, None, &mut rng))
                .collect();
            assert!(
                draws.iter().all(|x| *x >= d / 2 && *x <= d),
                "retry {retry}"
            );
            let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert!(
                *lo < d.mul_f64(0.52) && *hi > d.mul_f64(0.98),
                "spread {lo:?}..{hi:?} of {d:?}"
            );
        }
    }

    #[test]
    fn jittered_retries_wait_between_half_and_all_of_the_delay() {
        let mut p = policy();
        p.retry.jitter = true;
        let h = Harness::new(&p);
        let target = Target::failing(unavailable(), 4);
        assert!(h.drive(h.deliver(&target)).is_delivered());
        for (gap, d) in target.gaps().into_iter().zip([1, 2, 4, 8].map(secs)) {
            assert!(
                gap >= d / 2 && gap <= d,
                "{gap:?} not in [{:?}, {d:?}]",
                d / 2
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let h = Harness::new(&policy());
        let slow_down =
            AttemptError::status(429, "429 Too Many Requests").with_retry_after(secs(7));
        let target = Target::scripted(vec![Err(slow_down), Err(unavailable())]);
        assert_eq!(
            h.drive(h.deliver(&target)),
            Outcome::Delivered { attempts: 3 }
        );
        // 7 s as asked, then the backoff's 2 s for the 503 without Retry-After.
        assert_eq!(target.gaps(), [secs(7), secs(2)]);
    }

    #[test]
    fn retry_after_is_capped_at_max_delay() {
        let mut p = policy();
        p.retry.max_delay = secs(10);
        let h = Harness::new(&p);
        let target = Target::failing(unavailable().with_retry_after(secs(3600)), 1);
        assert!(h.drive(h.deliver(&target)).is_delivered());
        assert_eq!(target.gaps(), [secs(10)]);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            retry_delay(&p.retry, 1, Some(secs(3600)), &mut rng),
            secs(10)
        );
    }

    #[test]
    fn retry_after_never_shortens_the_backoff_and_is_ignored_unless_honoured() {
        let mut p = policy().retry;
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(retry_delay(&p, 3, Some(secs(1)), &mut rng), secs(4));
        p.honor_retry_after = false;
        assert_eq!(retry_delay(&p, 1, Some(secs(30)), &mut rng), secs(1));
    }

    #[test]
    fn a_400_is_not_retried() {
        let h = Harness::new(&policy());
        let target = Target::failing(bad_request(), 5);
        let outcome = h.drive(h.deliver(&target));
        let Outcome::Failed {
            attempts,
            error,
            reason,
            first_failure,
            last_failure,
        } = outcome
        else {
            panic!("delivered a 400");
        };
        assert_eq!((attempts, reason), (1, GiveUp::NotRetryable));
        assert_eq!(error.status, Some(400));
        assert_eq!(first_failure, last_failure);
        assert_eq!(target.calls().len(), 1);
    }

    #[test]
    fn a_failure_that_never_reached_the_target_is_not_retried() {
        let h = Harness::new(&policy());
        let target = Target::failing(AttemptError::new(FailureClass::Other, "bad template"), 1);
        let outcome = h.drive(h.deliver(&target));
        assert!(matches!(
            outcome,
            Outcome::Failed {
                attempts: 1,
                reason: GiveUp::NotRetryable,
                ..
            }
        ));
    }

    #[test]
    fn exhausting_the_attempts_fails_with_the_first_and_last_failure_times() {
        let mut p = policy();
        p.retry.max_attempts = 3;
        p.retry.backoff = Backoff::Fixed;
        p.retry.initial_delay = secs(5);
        let h = Harness::new(&p);
        let before = Utc::now();
        let target = Target::scripted(vec![
            Err(AttemptError::new(FailureClass::Connection, "refused")),
            Err(AttemptError::new(FailureClass::Timeout, "timed out")),
            Err(unavailable()),
            Ok(()),
        ]);
        let outcome = h.drive(h.deliver(&target));
        assert!(outcome.should_dead_letter());
        let Outcome::Failed {
            attempts,
            error,
            first_failure,
            last_failure,
            reason,
        } = outcome
        else {
            panic!("delivered");
        };
        assert_eq!((attempts, reason), (3, GiveUp::Exhausted));
        assert_eq!(error, unavailable());
        assert_eq!(last_failure - first_failure, chrono::TimeDelta::seconds(10));
        assert!(first_failure >= before && first_failure <= Utc::now());
        assert_eq!(target.calls().len(), 3);
    }

    // -- circuit breaker -----------------------------------------------------------------------

    #[test]
    fn the_breaker_opens_at_the_failure_ratio_and_makes_no_calls_while_open() {
        let h = Harness::new(&breaker_policy());
        // 2 successes, then 2 failures: 4 calls at 50 % → open.
        let target = Target::scripted(vec![Ok(()), Ok(()), Err(unavailable())]);
        for expected in [true, true, false] {
            assert_eq!(h.drive(h.deliver(&target)).is_delivered(), expected);
            assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
        }
        let failing = Target::failing(unavailable(), 1);
        assert!(!h.drive(h.deliver(&failing)).is_delivered());
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
        let opened = h.elapsed();

        // A delivery now waits the breaker out: no call at 29 s, its trial at 30 s.
        let next = Target::default();
        let probe = async {
            h.clock.sleep(secs(29)).await;
            assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
            assert!(next.calls().is_empty(), "called while open");
        };
        let (outcome, ()) = h.drive(join(h.deliver(&next), probe));
        assert_eq!(outcome, Outcome::Delivered { attempts: 1 });
        assert_eq!(next.calls(), [opened + secs(30)]);
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn waiting_on_an_open_breaker_uses_no_attempts() {
        let mut p = breaker_policy();
        p.retry.max_attempts = 2;
        p.circuit_breaker.min_requests = 2;
        p.circuit_breaker.failure_ratio = 1.0;
        let h = Harness::new(&p);
        // Attempt 1 fails (1 call), its retry fails too (2 calls, all failed: open).
        let target = Target::failing(unavailable(), 2);
        let outcome = h.drive(h.deliver(&target));
        assert_eq!(outcome.attempts(), 2);
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
        // Another event: its first attempt waits out the breaker and still has its retry.
        let next = Target::failing(unavailable(), 1);
        let outcome = h.drive(h.deliver(&next));
        assert_eq!(outcome, Outcome::Delivered { attempts: 2 });
        assert_eq!(next.calls()[0], target.calls()[1] + secs(30));
    }

    #[test]
    fn the_half_open_breaker_lets_one_trial_through_and_closes_on_success() {
        let h = Harness::new(&breaker_policy());
        open_breaker(&h);
        let opened = h.elapsed();
        let target = Target {
            latency: secs(2),
            ..Target::default()
        };
        let outcomes = h.drive(join_all((0..3).map(|_| h.deliver(&target))));
        assert!(outcomes.iter().all(Outcome::is_delivered));
        // The trial at 30 s alone; the others once it succeeded, 2 s later.
        let calls = target.calls();
        assert_eq!(
            calls,
            [opened + secs(30), opened + secs(32), opened + secs(32)]
        );
        assert_eq!(target.most_at_once(), 2);
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_trial_opens_the_breaker_again() {
        let h = Harness::new(&breaker_policy());
        open_breaker(&h);
        let opened = h.elapsed();
        let target = Target::scripted(vec![Err(unavailable())]);
        let outcome = h.drive(h.deliver(&target));
        assert!(!outcome.is_delivered());
        assert_eq!(target.calls(), [opened + secs(30)]);
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
        // The next trial comes a full open period after the failed one.
        assert!(h.drive(h.deliver(&target)).is_delivered());
        assert_eq!(target.calls()[1], opened + secs(60));
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn while_a_trial_runs_other_deliveries_wait_and_a_failed_trial_keeps_them_waiting() {
        let h = Harness::new(&breaker_policy());
        open_breaker(&h);
        let opened = h.elapsed();
        let target = Target {
            latency: secs(1),
            ..Target::scripted(vec![Err(unavailable())])
        };
        let outcomes = h.drive(join_all((0..3).map(|_| h.deliver(&target))));
        assert_eq!(outcomes.iter().filter(|o| o.is_delivered()).count(), 2);
        assert_eq!(target.most_at_once(), 1);
        // Failed trial at 30 s (ends 31 s, reopens until 61 s); next trial at 61 s; then the last.
        assert_eq!(
            target.calls(),
            [opened + secs(30), opened + secs(61), opened + secs(62)]
        );
    }

    #[test]
    fn a_dropped_trial_frees_the_half_open_slot() {
        let h = Harness::new(&breaker_policy());
        open_breaker(&h);
        let hanging = Target {
            latency: secs(3600),
            ..Target::default()
        };
        let cancelled = async {
            tokio::select! {
                biased;
                _ = h.deliver(&hanging) => panic!("the trial should still be running"),
                () = h.clock.sleep(secs(31)) => {}
            }
        };
        h.drive(cancelled);
        assert_eq!(h.deliverer.breaker_state(), BreakerState::HalfOpen);
        let next = Target::default();
        assert!(h.drive(h.deliver(&next)).is_delivered());
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn a_storm_of_400s_does_not_open_the_breaker() {
        let h = Harness::new(&breaker_policy());
        let target = Target::failing(bad_request(), 50);
        for _ in 0..50 {
            let outcome = h.drive(h.deliver(&target));
            assert!(matches!(
                outcome,
                Outcome::Failed {
                    reason: GiveUp::NotRetryable,
                    ..
                }
            ));
        }
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
        assert_eq!(target.calls().len(), 50);
    }

    #[test]
    fn timeouts_and_429s_count_against_the_target() {
        let h = Harness::new(&breaker_policy());
        let target = Target::scripted(vec![
            Err(AttemptError::new(FailureClass::Timeout, "timed out")),
            Err(AttemptError::new(FailureClass::Connection, "reset")),
            Err(AttemptError::status(429, "slow down")),
            Err(bad_request()),
        ]);
        for _ in 0..4 {
            let _ = h.drive(h.deliver(&target));
        }
        // 3 target failures out of 4 calls (the 400 counts as a healthy answer).
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Open);
    }

    #[test]
    fn failures_older_than_the_window_no_longer_count() {
        let h = Harness::new(&breaker_policy());
        let target = Target::failing(unavailable(), 4);
        for _ in 0..3 {
            let _ = h.drive(h.deliver(&target));
        }
        h.drive(h.clock.sleep(secs(61)));
        let _ = h.drive(h.deliver(&target));
        assert_eq!(h.deliverer.breaker_state(), BreakerState::Closed);
    }

    // -- rate limit ----------------------------------------------------------------------------

    fn rate_limited(per_second: f64, burst: Option<u32>) -> DeliveryPolicy {
        let mut p = policy();
        p.rate_limit = Some(RateLimit { per_second, burst });
        p
    }

    #[test]
    fn the_rate_limit_spaces_attempts() {
        let h = Harness::new(&rate_limited(20.0, Some(1)));
        let target = Target::default();
        for _ in 0..10 {
            assert!(h.drive(h.deliver(&target)).is_delivered());
        }
        assert_eq!(target.gaps(), vec![ms(50); 9]);
        assert_eq!(h.elapsed(), ms(450));
    }

    #[test]
    fn a_fractional_rate_allows_one_call_every_two_seconds() {
        let h = Harness::new(&rate_limited(0.5, None));
        let target = Target::default();
        for _ in 0..3 {
            assert!(h.drive(h.deliver(&target)).is_delivered());
        }
        assert_eq!(target.calls(), [secs(0), secs(2), secs(4)]);
    }

    #[test]
    fn the_burst_defaults_to_the_rate_rounded_up() {
        let h = Harness::new(&rate_limited(2.5, None));
        let target = Target::default();
        let outcomes = h.drive(join_all((0..4).map(|_| h.deliver(&target))));
        assert!(outcomes.iter().all(Outcome::is_delivered));
        assert_eq!(target.calls(), [ms(0), ms(0), ms(0), ms(400)]);
    }

    #[test]
    fn retries_wait_for_the_rate_limit_too() {
        let mut p = rate_limited(1.0, Some(1));
        p.retry.initial_delay = ms(100);
        let h = Harness::new(&p);
        let target = Target::failing(unavailable(), 2);
        assert!(h.drive(h.deliver(&target)).is_delivered());
        assert_eq!(target.gaps(), [secs(1), secs(1)]);
    }

    // -- shutdown ------------------------------------------------------------------------------

    #[test]
    fn shutdown_during_a_backoff_fails_promptly_without_dead_lettering() {
        let mut p = policy();
        p.retry.initial_delay = secs(60);
        let h = Harness::new(&p);
        let target = Target::failing(unavailable(), 5);
        let stop = async {
            h.clock.sleep(secs(1)).await;
            h.shutdown.cancel();
        };
        let (outcome, ()) = h.drive(join(h.deliver(&target), stop));
        assert_eq!(h.elapsed(), secs(1));
        assert!(!outcome.should_dead_letter());
        assert!(matches!(
            outcome,
            Outcome::Failed {
                attempts: 1,
                reason: GiveUp::Shutdown,
                error: AttemptError {
                    status: Some(503),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn shutdown_while_the_breaker_is_open_gives_up_without_calling() {
        let h = Harness::new(&breaker_policy());
        open_breaker(&h);
        let opened = h.elapsed();
        let target = Target::default();
        let stop = async {
            h.clock.sleep(secs(5)).await;
            h.shutdown.cancel();
        };
        let (outcome, ()) = h.drive(join(h.deliver(&target), stop));
        assert_eq!(h.elapsed(), opened + secs(5));
        assert!(target.calls().is_empty());
        assert!(matches!(
            outcome,
            Outcome::Failed {
                attempts: 0,
                reason: GiveUp::Shutdown,
                error: AttemptError {
                    class: FailureClass::Other,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn a_delivery_started_after_shutdown_makes_no_attempt() {
        let h = Harness::new(&policy());
        h.shutdown.cancel();
        let target = Target::default();
        let outcome = h.drive(h.deliver(&target));
        assert_eq!(outcome.attempts(), 0);
        assert!(target.calls().is_empty());
    }

    // -- on tokio's clock ----------------------------------------------------------------------

    #[test]
    fn deliverer_is_send_and_sync_and_its_delivery_is_send() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let deliverer = Deliverer::new(&policy());
        send_sync(&deliverer);
        let shutdown = CancellationToken::new();
        send(deliverer.deliver(|_| async { Ok(()) }, &shutdown));
    }

    #[tokio::test]
    async fn retries_on_tokio_time_then_delivers() {
        let mut p = policy();
        p.retry.initial_delay = ms(5);
        let deliverer = Deliverer::new(&p);
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let calls = Rc::new(RefCell::new(0));
        let outcome = deliverer
            .deliver(
                |n| {
                    *calls.borrow_mut() += 1;
                    async move { if n < 3 { Err(unavailable()) } else { Ok(()) } }
                },
                &shutdown,
            )
            .await;
        assert_eq!(outcome, Outcome::Delivered { attempts: 3 });
        assert_eq!(*calls.borrow(), 3);
        assert!(started.elapsed() >= ms(15), "5 ms + 10 ms of backoff");
    }

    #[tokio::test]
    async fn the_rate_limit_holds_on_tokio_time() {
        let deliverer = Deliverer::new(&rate_limited(20.0, Some(1)));
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        for _ in 0..10 {
            let outcome = deliverer.deliver(|_| async { Ok(()) }, &shutdown).await;
            assert!(outcome.is_delivered());
        }
        assert!(started.elapsed() >= ms(450), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn shutdown_on_tokio_time_cuts_a_long_backoff_short() {
        let mut p = policy();
        p.retry.initial_delay = secs(3600);
        let deliverer = Deliverer::new(&p);
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(20)).await;
            stopper.cancel();
        });
        let delivery = deliverer.deliver(|_| async { Err(unavailable()) }, &shutdown);
        let outcome = tokio::time::timeout(secs(30), delivery)
            .await
            .expect("shutdown did not end the backoff");
        assert!(matches!(
            outcome,
            Outcome::Failed {
                reason: GiveUp::Shutdown,
                ..
            }
        ));
    }
}
