//! Retries: the runtime's one exponential backoff, the delay before a delivery retry (jitter,
//! `Retry-After`), and [`until_stored`], which retries a bus write until it succeeds or the
//! role stops. What is *retriable* is decided elsewhere (the binding's `retryOn`, the poll's
//! failure streak); how long to wait is decided here.

use std::{future::Future, time::Duration};

use inputbot_api::config::RetryPolicy;
pub use inputbot_api::config::exponential_backoff;
use rand::Rng;
use tokio_util::sync::CancellationToken;

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

/// First wait of [`until_stored`].
const STORE_RETRY_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait of [`until_stored`].
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Retries a bus write (any write whose error can be shown) until it succeeds or `shutdown` fires; returns whether it succeeded.
/// Waits 50 ms after the first failure, doubling up to 5 s.
pub async fn until_stored<F, Fut, E>(what: &str, shutdown: &CancellationToken, mut write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut failures = 0;
    loop {
        match write().await {
            Ok(()) => return true,
            Err(e) => {
                let delay = exponential_backoff(STORE_RETRY_INITIAL, failures, STORE_RETRY_MAX);
                failures += 1;
                tracing::warn!(target: "inputbot::stage", "{what} failed, retrying in {delay:?}: {e}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
