//! Most tests run on [`ManualClock`], a virtual clock that jumps to the next timer whenever
//! nothing else can make progress (what tokio's paused clock does), driven by [`drive`]:
//! every schedule is checked exactly and no test sleeps for real. A few run on tokio's real
//! clock to cover the production path, with small numbers and lower bounds only.
//!
//! Retries in `retry.rs`, the circuit breaker in `breaker.rs`; the rate limit, shutdown and
//! the runs on tokio's clock here.

mod breaker;
mod retry;

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
