//! Retries: backoff (exponential, fixed, jitter), `Retry-After`, what is retried, exhaustion.

use super::*;

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
