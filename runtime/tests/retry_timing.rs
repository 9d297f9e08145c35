//! Retry timing on its own: the only test in this process, so no other test's events share
//! the expression threads or the bus with it and the gaps measure the policy, not a queue.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{signed_bot::*, *};

#[tokio::test]
async fn retry_timings_follow_the_policy_within_ten_percent() {
    let target = Target::start(Behaviour::FailFirst(3)).await;
    let delivery = "    retry: {maxAttempts: 4, initialDelay: 200ms, maxDelay: 2s, jitter: false}\n    circuitBreaker: {minRequests: 100000}";
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", delivery)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 1}))
            .await
            .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let received = target.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    let gaps: Vec<f64> = received
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64() * 1000.0)
        .collect();
    for (gap, expected) in gaps.iter().zip([200.0, 400.0, 800.0]) {
        assert!(
            (gap - expected).abs() <= expected * 0.10,
            "gap {gap:.0}ms, expected {expected}ms ± 10% (all gaps {gaps:?})"
        );
    }
    engine.shutdown().await;
}
