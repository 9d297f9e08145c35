//! The circuit breaker: opening at the ratio, waiting while open, half-open trials, what
//! counts against the target, the sliding window.

use super::*;

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
