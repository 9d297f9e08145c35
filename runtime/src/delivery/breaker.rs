//! The circuit breaker, one per binding, i.e. per action target. Closed, it counts calls and
//! target failures over a sliding window; at `minRequests` calls and `failureRatio` failures
//! it opens; after `openFor` it is half-open and lets one trial through at a time, which
//! closes it (success) or opens it again (failure). See the module docs of
//! [`delivery`](super) for what counts against the target.

use std::{fmt, pin::pin, sync::Mutex, time::Duration};

use inputbot_api::config::{BreakerPolicy, FailureClass};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{clock::Clock, lock, millis};

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

/// What an attempt says about the target's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The target answered normally (a success, or a status that is the event's fault).
    Healthy,
    /// The target failed: `5xx`, `429`, timeout, connection.
    TargetFailure,
    /// The call did not reach the target: says nothing.
    Unknown,
}

impl Verdict {
    pub(super) fn of(class: &FailureClass) -> Self {
        match class {
            FailureClass::Status(429 | 500..=599)
            | FailureClass::Timeout
            | FailureClass::Connection => Verdict::TargetFailure,
            FailureClass::Status(_) => Verdict::Healthy,
            FailureClass::Other => Verdict::Unknown,
        }
    }
}

pub(super) struct Breaker {
    pub(super) policy: BreakerPolicy,
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
    pub(super) fn new(policy: BreakerPolicy, now: Instant) -> Self {
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

    pub(super) fn state(&self, now: Instant) -> BreakerState {
        match lock(&self.inner).phase {
            Phase::Closed(_) => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Waits until a call may be made; `None` when shutdown came first.
    pub(super) async fn admit(
        &self,
        clock: &Clock,
        shutdown: &CancellationToken,
    ) -> Option<Permit<'_>> {
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
pub(super) struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    pub(super) fn settle(mut self, verdict: Verdict, now: Instant) {
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
