//! Shutdown of a local run while a poll source is still emitting: the poll in flight is
//! finished, and every item it marked seen (and persisted) is processed before the process
//! stops.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const ITEMS: usize = 3000;

fn bot(feed: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: feed}}
spec:
  sources:
    - name: items
      poll: {{url: '{feed}', interval: 1h, idField: /id}}
{}"#,
        pass_through("feed", "{log: {template: 'item {{ data.id }}'}}", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_poll_in_flight_and_finishes_every_item_it_marked_seen() {
    let items: Vec<Value> = (0..ITEMS).map(|i| json!({"id": i})).collect();
    let body = Value::Array(items).to_string();
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed = format!("http://{}/feed", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (engine, dir) = start(&bot(&feed)).await;
    let metrics = engine.metrics().clone();
    // Shut down while the poll is part way through the feed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&metrics.encode(), "inputbot_events_delivered_total") < 20 {
        assert!(Instant::now() < deadline, "the poll never started emitting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let report = engine.shutdown().await;
    assert_eq!(report.outstanding, 0, "accepted events left unfinished");

    let state: Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("state/inputbot.default.feed.items.poll.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let seen = state["seen"].as_array().unwrap().len();
    let delivered = metric(&metrics.encode(), "inputbot_events_delivered_total") as usize;
    // The poll in flight when shutdown began was finished, not cut off by a closed bus.
    assert_eq!(seen, ITEMS);
    assert_eq!(
        delivered, seen,
        "{seen} items were marked seen but {delivered} delivered"
    );
}
