//! Most tests run on [`ManualClock`], a virtual clock that jumps to the next timer whenever
//! nothing else can make progress (what tokio's paused clock does), driven by [`drive`]:
//! every schedule is checked exactly and no test sleeps for real. A few run on tokio's real
//! clock to cover the production path, with small numbers and lower bounds only.

use std::{
    cell::RefCell,
    future::Future,
    pin::{Pin, pin},
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
use inputbot_api::{
    binding::Backoff,
    common::RateLimit,
    config::{BreakerPolicy, RetryOn},
};
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

    fn call(&self, h: &Harness, _attempt: u32) -> impl Future<Output = Result<(), AttemptError>> {
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
    let slow_down = AttemptError::status(429, "429 Too Many Requests").with_retry_after(secs(7));
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
