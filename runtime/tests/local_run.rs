//! A whole bot in one process on the embedded bus, over real HTTP on ephemeral ports, with a
//! real local HTTP server as the action target.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{signed_bot::*, *};

#[tokio::test]
async fn an_event_flows_from_webhook_through_the_steps_to_the_target_with_the_rendered_body() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    let response = post_signed(&client(), &url, &json!({"kind": "ticket", "n": 7})).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(engine.settle(Duration::from_secs(10)).await);
    let received = target.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, r#"{"ticket":7,"text":"ticket 7"}"#);
    assert_eq!(received[0].event_id, id);
    assert_eq!(received[0].headers["authorization"], "tok-123");
    assert_eq!(received[0].headers["ce-id"], id.as_str());
    engine.shutdown().await;
}

#[tokio::test]
async fn intake_answers_404_405_413_400_and_401_with_json_errors() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let base = format!("http://{}", engine.addr().unwrap());
    let c = client();

    let r = c
        .post(format!("{base}/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["reason"],
        "not_found"
    );

    let r = c.get(format!("{base}/gh")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    let big = json!({"kind": "ticket", "pad": "x".repeat(5000)});
    let r = post_signed(&c, &format!("{base}/gh"), &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["reason"],
        "too_large"
    );

    let r = post_signed(
        &c,
        &format!("{base}/gh"),
        &json!({"kind": "ticket", "n": "seven"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["error"]["reason"], "schema");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("/n"),
        "{body}"
    );

    let r = c
        .post(format!("{base}/gh"))
        .header("content-type", "application/json")
        .header("x-github-delivery", "d-wrong")
        .header(
            "x-hub-signature-256",
            github_signature("wrong", b"{\"kind\":\"ticket\"}"),
        )
        .body("{\"kind\":\"ticket\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let bytes = br#"{"kind":"ticket","n":1}"#;
    let r = c
        .post(format!("{base}/gh"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", github_signature(SECRET, bytes))
        .header("x-github-delivery", "d-tampered")
        .body(&br#"{"kind":"ticket","n":2}"#[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a tampered body must not pass");

    let body = r#"{"kind":"ticket","n":3}"#;
    let r = c
        .post(format!("{base}/gh"))
        .header("content-type", "text/plain")
        .header("x-github-delivery", "d-text")
        .header(
            "x-hub-signature-256",
            github_signature(SECRET, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "inputbot_events_rejected_total") >= 5,
        "{metrics}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_repeated_github_delivery_is_answered_202_as_a_duplicate() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    let bytes = br#"{"kind":"ticket","n":1}"#.to_vec();
    let send = || {
        client()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .header("x-hub-signature-256", github_signature(SECRET, &bytes))
            .body(bytes.clone())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202);
    assert!(engine.settle(Duration::from_secs(10)).await);
    assert_eq!(send().await.unwrap().status(), 202);
    assert!(engine.settle(Duration::from_secs(10)).await);
    assert_eq!(target.delivered_ids().len(), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let target = Target::start(Behaviour::Ok).await;
    let source = r#"    - name: limited
      webhook:
        path: /limited
        auth: {none: {}}
        rateLimit: {perSecond: 1, burst: 2}"#;
    let (engine, _dir) = start(&bot(&target.url("/leads"), source, FAST_RETRY)).await;
    let url = format!("http://{}/limited", engine.addr().unwrap());
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = c
            .post(&url)
            .json(&json!({"kind": "skip"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(after >= 1);
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 429, 429]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_full_bus_answers_503_with_retry_after_and_accepts_nothing_it_cannot_keep() {
    // The target hangs, so deliveries pile up; with a queue of 1 the bus fills quickly.
    let target = Target::start(Behaviour::Ok).await;
    let source = r#"    - name: open
      webhook:
        path: /open
        auth: {none: {}}"#;
    let yaml = bot(&target.url("/leads"), source, FAST_RETRY)
        .replace("pipelineRef: {name: flow}", "botRef: {name: intake}")
        .replace(
            &format!("url: {}", target.url("/leads")),
            "url: http://127.0.0.1:9/unreachable",
        )
        .replace(
            "maxAttempts: 3, initialDelay: 1ms, maxDelay: 5ms",
            "maxAttempts: 100, initialDelay: 1s, maxDelay: 1s",
        );
    let (engine, dir) = start_with(&yaml, |o| {
        o.queue_capacity = 1;
        o.publish_timeout = Duration::from_millis(50);
        o.drain_timeout = Duration::from_millis(200);
    })
    .await;
    let url = format!("http://{}/open", engine.addr().unwrap());
    let c = client();
    let mut accepted = 0;
    let mut unavailable = 0;
    for i in 0..200 {
        let r = c
            .post(&url)
            .json(&json!({"kind": "ticket", "n": i}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                unavailable += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        unavailable > 0,
        "the bus never filled ({accepted} accepted)"
    );
    // Every accepted event is accounted for at shutdown: deliveries still retrying are cut
    // short and dead-lettered with class "shutdown", ready for `dlq redrive`.
    let report = engine.shutdown().await;
    assert_eq!(report.outstanding, 0);
    assert!(!report.drained);
    let dead =
        inputbot_runtime::dlq::read(&dir.path().join("dlq/inputbot.default.crm.act.dlq.jsonl"))
            .unwrap();
    assert_eq!(
        dead.len(),
        accepted,
        "accepted {accepted}, dead-lettered {}",
        dead.len()
    );
    assert!(dead.iter().all(|r| r.error.class == "shutdown"));
}

#[tokio::test]
async fn a_cloudevent_in_binary_and_structured_mode_keeps_its_id_and_type() {
    let target = Target::start(Behaviour::Ok).await;
    let source = r#"    - name: ce
      webhook:
        path: /ce
        auth: {none: {}}"#;
    let (engine, _dir) = start(&bot(&target.url("/leads"), source, FAST_RETRY)).await;
    let url = format!("http://{}/ce", engine.addr().unwrap());
    let c = client();
    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "evt-binary-1")
        .header("ce-source", "/billing")
        .header("ce-type", "com.example.ticket")
        .header("content-type", "application/json")
        .body(r#"{"kind":"ticket","n":4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "evt-binary-1");
    let structured = json!({"specversion": "1.0", "id": "evt-structured-1", "source": "/billing",
        "type": "com.example.ticket", "datacontenttype": "application/json", "data": {"kind": "ticket", "n": 6}});
    let r = c
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "a binary CloudEvent without id/source/type is invalid"
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let mut ids: Vec<String> = target.received().into_iter().map(|r| r.event_id).collect();
    ids.sort();
    assert_eq!(ids, ["evt-binary-1", "evt-structured-1"]);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_circuit_breaker_opens_on_failures_and_recovers() {
    let target = Target::start(Behaviour::Always(503)).await;
    let delivery = "    retry: {maxAttempts: 100, initialDelay: 10ms, maxDelay: 20ms, jitter: false}\n    circuitBreaker: {failureRatio: 0.5, minRequests: 4, openFor: 1s, window: 10s}";
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", delivery)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 1}))
            .await
            .status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Open: the first failures opened it and no call was made since.
    let calls_while_open = target.received().len();
    assert!(
        (4..=6).contains(&calls_while_open),
        "{calls_while_open} calls"
    );
    target.set(Behaviour::Ok);
    assert!(
        engine.settle(Duration::from_secs(5)).await,
        "the breaker never let a trial through"
    );
    let received = target.received();
    let last = received.last().unwrap();
    assert_eq!(last.status, 200);
    let pause = last.at.duration_since(received[received.len() - 2].at);
    assert!(
        pause >= Duration::from_millis(900),
        "the trial came after {pause:?}, before openFor"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn redrive_delivers_dead_letters_once_the_target_is_healthy() {
    let target = Target::start(Behaviour::Always(503)).await;
    let yaml = bot(&target.url("/leads"), "", FAST_RETRY);
    let (engine, dir) = start(&yaml).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    for n in 0..5 {
        assert_eq!(
            post_signed(&client(), &url, &json!({"kind": "ticket", "n": n}))
                .await
                .status(),
            202
        );
    }
    assert!(engine.settle(Duration::from_secs(10)).await);
    engine.shutdown().await;
    let file = dir.path().join("dlq/inputbot.default.crm.act.dlq.jsonl");
    let dead = inputbot_runtime::dlq::read(&file).unwrap();
    assert_eq!(dead.len(), 5);
    assert_eq!(dead[0].error.status, Some(503));
    assert_eq!(dead[0].error.attempts, 3);
    assert_eq!(dead[0].failed_at.stage, "action");

    target.set(Behaviour::Ok);
    let before = target.received().len();
    let report = inputbot_runtime::local::redrive(
        resources(&yaml),
        dir.path(),
        &inputbot_runtime::local::RedriveOptions {
            topic: None,
            filter: Some("data.n < 3".into()),
            rate: 1000.0,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.redriven, report.failed_again, report.kept),
        (3, 0, 2)
    );
    let after: Vec<_> = target.received()[before..]
        .iter()
        .map(|r| r.event_id.clone())
        .collect();
    assert_eq!(after.len(), 3);
    let left = inputbot_runtime::dlq::read(&file).unwrap();
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|r| r.event.data["n"].as_i64().unwrap() >= 3)
    );
}

#[tokio::test]
async fn a_step_failure_is_dead_lettered_with_the_step_and_reason() {
    let target = Target::start(Behaviour::Ok).await;
    let yaml = bot(&target.url("/leads"), "", FAST_RETRY).replace(
        "transform: {jq: '{n: .n, text: (\"ticket \" + (.n | tostring))}'}",
        "transform: {jq: '{n: .n, text: (\"ticket \" + .n)}'}",
    );
    let (engine, dir) = start(&yaml).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 1}))
            .await
            .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    engine.shutdown().await;
    let dead = inputbot_runtime::dlq::read(&dir.path().join("dlq/inputbot.default.flow.dlq.jsonl"))
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].failed_at.name, "shape");
    assert_eq!(dead[0].failed_at.stage, "step");
    assert_eq!(dead[0].error.class, "transform");
    assert!(target.received().is_empty());
}

#[tokio::test]
async fn a_duplicate_idempotency_key_is_answered_202_and_published_once() {
    let target = Target::start(Behaviour::Ok).await;
    let source = r#"    - name: keyed
      webhook:
        path: /keyed
        auth: {none: {}}
        idempotencyKey: "string(data.n)""#;
    let (engine, _dir) = start(&bot(&target.url("/leads"), source, FAST_RETRY)).await;
    let url = format!("http://{}/keyed", engine.addr().unwrap());
    let c = client();
    let first = c
        .post(&url)
        .json(&json!({"kind": "ticket", "n": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = c
        .post(&url)
        .json(&json!({"kind": "ticket", "n": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    assert!(engine.settle(Duration::from_secs(10)).await);
    assert_eq!(target.received().len(), 1, "published twice");
    let metrics = engine.metrics().encode();
    assert_eq!(metric(&metrics, "inputbot_events_duplicate_total"), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_and_readiness_fails_while_draining() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let base = format!("http://{}", engine.addr().unwrap());
    let c = client();
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post_signed(
            &c,
            &format!("{base}/gh"),
            &json!({"kind": "ticket", "n": 2})
        )
        .await
        .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"inputbot_events_accepted_total{bot="default/intake",source="gh"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"inputbot_events_delivered_total{resource="default/crm",stage="http"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("inputbot_stage_duration_seconds_bucket"),
        "{text}"
    );
    engine.health().drain();
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let r = post_signed(
        &c,
        &format!("{base}/gh"),
        &json!({"kind": "ticket", "n": 3}),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "liveness stays up while draining"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn enrich_merges_the_response_under_its_field_and_caches_it() {
    let target = Target::start(Behaviour::Ok).await;
    // A lookup service on 127.0.0.1 answering with the customer for an id.
    let lookups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = lookups.clone();
    let app = axum::Router::new().route(
        "/customers/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { axum::Json(json!({"id": id, "tier": "gold"})) }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lookup = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let yaml = bot(&target.url("/leads"), "", FAST_RETRY)
        .replace(
            "    - classify:",
            &format!("    - enrich: {{http: {{url: 'http://{lookup}/customers/{{{{ data.n }}}}', resultField: customer, cacheTTL: 1m}}}}\n    - classify:"),
        )
        .replace("body: {jq: '{ticket: .n, text: .text}'}", "body: {jq: '{ticket: .n, tier: .customer.tier}'}");
    let (engine, _dir) = start(&yaml).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    for _ in 0..3 {
        assert_eq!(
            post_signed(&client(), &url, &json!({"kind": "ticket", "n": 9}))
                .await
                .status(),
            202
        );
        // One at a time: concurrent lookups of one key are not coalesced.
        assert!(engine.settle(Duration::from_secs(10)).await);
    }
    assert!(engine.settle(Duration::from_secs(10)).await);
    let bodies: Vec<String> = target.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, vec![r#"{"ticket":9,"tier":"gold"}"#; 3]);
    assert!(
        lookups.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "the cache was not used"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_notifies_a_person_with_the_error() {
    let target = Target::start(Behaviour::Always(500)).await;
    let chat = Target::start(Behaviour::Ok).await;
    let yaml = bot(&target.url("/leads"), "", FAST_RETRY).replace(
        "stringData: {hmac: s3cret-for-tests, token: tok-123}",
        &format!(
            "stringData: {{hmac: s3cret-for-tests, token: tok-123, chat: '{}'}}",
            chat.url("/notify")
        ),
    ) + "  notify:\n    onDeadLetter:\n      slack: {webhookSecretRef: {name: creds, key: chat}, text: 'ticket {{ data.n }} failed {{ error.attempts }} times: HTTP {{ error.status }}'}\n";
    let (engine, _dir) = start(&yaml).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 11}))
            .await
            .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let notices = chat.received();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        notices[0].body,
        r#"{"text":"ticket 11 failed 3 times: HTTP 500"}"#
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_kafka_source_is_refused_locally_naming_the_source() {
    let yaml = bot(
        "http://127.0.0.1:9/x",
        "    - name: orders\n      kafka: {topic: orders}",
        FAST_RETRY,
    );
    let dir = tempfile::tempdir().unwrap();
    let err = inputbot_runtime::local::Engine::start(
        resources(&yaml),
        inputbot_runtime::local::LocalOptions::new(None, dir.path()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("InputBot default/intake: spec.sources[1].kafka"),
        "{err}"
    );
    assert!(err.contains("needs the Kafka bus"), "{err}");
}

#[tokio::test]
async fn no_secret_value_reaches_logs_metrics_or_dead_letters() {
    let target = Target::start(Behaviour::Always(401)).await;
    let (engine, dir) = start(&bot(&target.url("/leads"), "", FAST_RETRY)).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 1}))
            .await
            .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let metrics = engine.metrics().encode();
    engine.shutdown().await;
    let dead =
        std::fs::read_to_string(dir.path().join("dlq/inputbot.default.crm.act.dlq.jsonl")).unwrap();
    assert!(dead.contains("\"status\":401"), "{dead}");
    for secret in [SECRET, "tok-123"] {
        assert!(
            !dead.contains(secret),
            "a secret reached the dead letter: {dead}"
        );
        assert!(!metrics.contains(secret), "a secret reached the metrics");
    }
}

#[tokio::test]
async fn a_long_multibyte_payload_failing_the_schema_gets_400_not_a_crash() {
    let target = Target::start(Behaviour::Ok).await;
    let source = r#"    - name: strict
      webhook:
        path: /strict
        auth: {none: {}}
        schema: {type: object, properties: {kind: {enum: [a]}}}"#;
    let (engine, _dir) = start(&bot(&target.url("/leads"), source, FAST_RETRY)).await;
    let url = format!("http://{}/strict", engine.addr().unwrap());
    for pad in ["€", "é", "😀"] {
        let r = client()
            .post(&url)
            .json(&json!({"kind": pad.repeat(3000)}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "schema");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn without_dead_letters_a_failing_when_is_dropped_loudly_and_deliveries_retry_until_they_succeed()
 {
    let target = Target::start(Behaviour::FailFirst(2)).await;
    let delivery = "    retry: {maxAttempts: 1, initialDelay: 10ms, maxDelay: 50ms, jitter: false}\n    deadLetter: {enabled: false}";
    let yaml = bot(&target.url("/leads"), "", delivery).replace(
        "  pipelineRef: {name: flow}",
        "  pipelineRef: {name: flow}\n  when: 'data.n == 1 || data.missing > 0'",
    );
    let (engine, dir) = start(&yaml).await;
    let url = format!("http://{}/gh", engine.addr().unwrap());
    // n = 1 matches `when` and is delivered on the third round.
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 1}))
            .await
            .status(),
        202
    );
    assert!(
        engine.settle(Duration::from_secs(10)).await,
        "the undeliverable event was never finished"
    );
    let statuses: Vec<u16> = target.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    // For n = 2 the `when` reads a missing field and fails: dropped, counted, and it does not
    // hold up shutdown.
    assert_eq!(
        post_signed(&client(), &url, &json!({"kind": "ticket", "n": 2}))
            .await
            .status(),
        202
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    assert_eq!(
        metric(&engine.metrics().encode(), "inputbot_events_dropped_total"),
        1
    );
    let report = engine.shutdown().await;
    assert!(report.drained && report.outstanding == 0, "{report:?}");
    assert!(
        !dir.path().join("dlq").exists()
            || inputbot_runtime::dlq::files(&dir.path().join("dlq")).is_empty()
    );
}
