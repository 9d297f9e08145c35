//! An ActionBinding with `deadLetter.enabled: false` whose target refuses an event for good
//! (a `4xx` the retry policy does not retry): the event is dropped loudly and the binding goes
//! on, instead of retrying it forever.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn a_4xx_without_dead_letters_is_dropped_loudly_and_does_not_stall_the_binding() {
    let target = Target::start(Behaviour::Always(400)).await;
    let yaml = format!(
        "{}{}",
        open_webhook("open"),
        pass_through(
            "open",
            &format!("{{http: {{url: '{}'}}}}", target.url("/x")),
            "{retry: {maxAttempts: 3, initialDelay: 10ms, maxDelay: 20ms, jitter: false}, deadLetter: {enabled: false}}",
        )
    );
    let (engine, _dir) = start(&yaml).await;
    let url = format!("http://{}/hook", engine.addr().unwrap());
    let status = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    assert!(
        engine.settle(Duration::from_secs(3)).await,
        "the refused event was retried instead of dropped"
    );
    assert_eq!(target.received().len(), 1, "a 400 is not retried");
    assert_eq!(
        metric(&engine.metrics().encode(), "inputbot_events_dropped_total"),
        1
    );
    let report = engine.shutdown().await;
    assert!(report.drained && report.outstanding == 0, "{report:?}");
}
