//! Accounting under load on its own: 10,000 signed webhooks against a target failing 30 % —
//! accepted = delivered + dead-lettered + filtered, no duplicate. Alone in its process, so its
//! load does not slow the timing tests of `local_run` (which share the expression threads).

mod support;

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};
use support::{signed_bot::*, *};

#[tokio::test]
async fn accounting_holds_over_ten_thousand_events_with_a_target_failing_thirty_percent() {
    let target = Target::start(Behaviour::FailRatio(0.3)).await;
    let (engine, dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    let c = client();
    let total = 10_000usize;
    // Every tenth event is filtered by the pipeline.
    let kind = |i: usize| {
        if i.is_multiple_of(10) {
            "skip"
        } else {
            "ticket"
        }
    };
    let skipped = (0..total).filter(|i| kind(*i) == "skip").count();
    use futures::StreamExt;
    // Bounded concurrency: 32 requests in flight.
    let accepted: Vec<String> = futures::stream::iter(0..total)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let r = post_signed(&c, &url, &json!({"kind": kind(i), "n": i})).await;
                let status = r.status().as_u16();
                let body = r.json::<Value>().await.unwrap();
                assert_eq!(status, 202, "{body}");
                body["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        engine.settle(Duration::from_secs(120)).await,
        "not every event was handled"
    );
    let metrics = engine.metrics().encode();
    let delivered: HashSet<String> = target.delivered_ids().into_iter().collect();
    let received = target.received();
    let duplicates = received.iter().filter(|r| r.status < 300).count() - delivered.len();
    let dead: HashSet<String> =
        inputbot_runtime::dlq::read(&dir.path().join("dlq/inputbot.default.crm.act.dlq.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| r.event.id)
            .collect();
    let filtered = metric(&metrics, "inputbot_events_filtered_total") as usize;
    let accepted_set: HashSet<String> = accepted.iter().cloned().collect();
    assert_eq!(accepted_set.len(), total, "every request was accepted once");
    assert!(
        delivered.is_disjoint(&dead),
        "an event was both delivered and dead-lettered"
    );
    assert!(delivered.is_subset(&accepted_set) && dead.is_subset(&accepted_set));
    // accepted = delivered + dead-lettered + filtered
    assert_eq!(filtered, skipped);
    assert_eq!(
        delivered.len() + dead.len() + filtered,
        total,
        "delivered {} + dead {} + filtered {filtered}",
        delivered.len(),
        dead.len()
    );
    assert_eq!(
        duplicates, 0,
        "the target saw {duplicates} duplicate deliveries"
    );
    assert_eq!(
        metric(&metrics, "inputbot_events_delivered_total") as usize,
        delivered.len()
    );
    assert_eq!(
        metric(&metrics, "inputbot_events_dead_lettered_total") as usize,
        dead.len()
    );
    // With 3 attempts at 30 % failure about 2.7 % are dead-lettered.
    assert!(
        dead.len() > 50 && dead.len() < 600,
        "{} dead letters",
        dead.len()
    );
    let report = engine.shutdown().await;
    assert_eq!(report.outstanding, 0);
}
