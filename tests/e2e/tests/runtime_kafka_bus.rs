//! The runtime's Kafka bus against the real broker (needs `KAFKA_BOOTSTRAP`; see
//! docs/testing.md): the CloudEvents binary-mode round trip, the contiguous watermark, and
//! readiness when topics or the broker are missing.

use std::time::{Duration, Instant};

use inputbot_e2e::runtime::{create_topics, free_port, read_topic};
use inputbot_e2e::{kafka_bootstrap, unique_suffix};
use inputbot_runtime::bus::{
    Bus, BusError, Consumer, KafkaBus, KafkaOptions, KafkaSettings, Message,
};
use inputbot_runtime::event::Event;
use serde_json::json;

async fn bus(bootstrap: &str, topics: &[String]) -> std::sync::Arc<KafkaBus> {
    KafkaBus::connect(
        KafkaSettings::plaintext(bootstrap, "inputbot-e2e"),
        KafkaOptions::default(),
        topics,
    )
    .await
    .expect("the bus connects")
}

async fn next(consumer: &mut Box<dyn Consumer>) -> Message {
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a message within 30 s")
        .expect("the consumer is open")
}

#[tokio::test]
async fn an_event_round_trips_with_ce_headers_key_and_traceparent() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("inputbot.e2e.bus-rt-{}", unique_suffix());
    create_topics(&bootstrap, &[(&topic, 3)]).await;
    let bus = bus(&bootstrap, std::slice::from_ref(&topic)).await;
    assert!(bus.healthy(), "{:?}", bus.unhealthy_reason());

    let mut event = Event::new(
        "e2e/bot",
        "hook",
        "com.example.created",
        json!({"n": 1, "s": "ü"}),
    );
    event.labels = vec!["billing".into()];
    event.subject = Some("ticket-1".into());
    event
        .extensions
        .insert("partitionkey".into(), "order-42".into());
    bus.publish(&topic, &event)
        .await
        .expect("published after the delivery report");

    let records = read_topic(&bootstrap, &topic);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.key.as_deref(), Some("order-42"));
    assert_eq!(r.headers["ce_specversion"], "1.0");
    assert_eq!(r.headers["ce_id"], event.id);
    assert_eq!(r.headers["ce_type"], "com.example.created");
    assert_eq!(r.headers["ce_source"], "/inputbot/e2e/bot/hook");
    assert_eq!(r.headers["ce_subject"], "ticket-1");
    assert_eq!(r.headers["ce_inputbotbot"], "e2e/bot");
    assert_eq!(r.headers["ce_inputbotlabels"], r#"["billing"]"#);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(Some(&r.headers["traceparent"]), event.traceparent.as_ref());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.value).unwrap(),
        event.data
    );

    let mut consumer = bus
        .subscribe(&topic, &format!("inputbot-e2e-{}", unique_suffix()))
        .expect("joins the group");
    let m = next(&mut consumer).await;
    assert_eq!(m.event, event);
    m.ack();
    consumer.close().await;
}

#[tokio::test]
async fn only_the_contiguous_prefix_is_committed_and_a_restarted_consumer_resumes_there() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("inputbot.e2e.bus-wm-{}", unique_suffix());
    let group = format!("inputbot-e2e-{}", unique_suffix());
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    let bus = bus(&bootstrap, std::slice::from_ref(&topic)).await;
    let mut sent = Vec::new();
    for n in 0..6 {
        let e = Event::new("e2e/bot", "hook", "t", json!({"n": n}));
        bus.publish(&topic, &e).await.expect("published");
        sent.push(e.id);
    }

    let mut consumer = bus.subscribe(&topic, &group).expect("joins");
    let mut messages = Vec::new();
    for _ in 0..6 {
        messages.push(next(&mut consumer).await);
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.event.id.as_str()).collect();
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    // Finish out of order: 1, 0, 3, 5 — but not 2 and 4. Only offsets 0 and 1 form a
    // contiguous handled prefix, so the committed position is 2.
    let mut by_offset: Vec<Option<Message>> = messages.into_iter().map(Some).collect();
    for o in [1usize, 0, 3, 5] {
        by_offset[o].take().expect("once").ack();
    }
    drop(by_offset); // 2 and 4 are abandoned, as at a crash
    consumer.close().await;

    // The group's committed offset, as the broker has it.
    let committed = committed_offset(&bootstrap, &group, &topic);
    assert_eq!(
        committed,
        Some(2),
        "the watermark, not the highest acknowledged offset"
    );

    // A new member of the group resumes at offset 2: events 2..6 again (3 and 5 are the
    // bounded duplicates of at-least-once).
    let mut again = bus.subscribe(&topic, &group).expect("joins again");
    let mut resumed = Vec::new();
    for _ in 0..4 {
        let m = next(&mut again).await;
        resumed.push(m.event.id.clone());
        m.ack();
    }
    assert_eq!(resumed, sent[2..].to_vec());
    again.close().await;
    assert_eq!(committed_offset(&bootstrap, &group, &topic), Some(6));
}

/// The group's committed offset of partition 0, if it has one.
fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::{
        ClientConfig, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer as _},
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[tokio::test]
async fn a_missing_topic_makes_the_bus_unready_and_publish_fail_at_once() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("inputbot.e2e.bus-missing-{}", unique_suffix());
    let bus = bus(&bootstrap, std::slice::from_ref(&topic)).await;
    assert!(!bus.healthy());
    let why = bus.unhealthy_reason().unwrap_or_default();
    assert!(why.contains(&topic), "{why}");
    let started = Instant::now();
    let e = Event::new("e2e/bot", "hook", "t", json!({}));
    let err = bus.publish(&topic, &e).await.unwrap_err();
    assert!(matches!(err, BusError::Kafka(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The runtime never creates topics: still missing.
    assert!(read_topic_exists(&bootstrap, &topic).is_none());

    // Once the operator creates it, the bus becomes ready by itself.
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !bus.healthy() {
        assert!(Instant::now() < deadline, "the bus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bus.publish(&topic, &e)
        .await
        .expect("published once the topic exists");
}

fn read_topic_exists(bootstrap: &str, topic: &str) -> Option<()> {
    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer as _},
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics().iter().any(|t| t.name() == topic).then_some(())
}

#[tokio::test]
async fn an_unreachable_broker_makes_the_bus_unready() {
    let closed = format!("127.0.0.1:{}", free_port());
    let bus = bus(&closed, &["inputbot.e2e.none".to_owned()]).await;
    assert!(!bus.healthy());
    let e = Event::new("e2e/bot", "hook", "t", json!({}));
    let started = Instant::now();
    assert!(bus.publish("inputbot.e2e.none", &e).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn acknowledged_offsets_are_committed_while_the_consumer_runs() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("inputbot.e2e.bus-auto-{}", unique_suffix());
    let group = format!("inputbot-e2e-{}", unique_suffix());
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    let bus = bus(&bootstrap, std::slice::from_ref(&topic)).await;
    for n in 0..3 {
        let e = Event::new("e2e/bot", "hook", "t", json!({"n": n}));
        bus.publish(&topic, &e).await.expect("published");
    }
    let mut consumer = bus.subscribe(&topic, &group).expect("joins");
    for _ in 0..3 {
        next(&mut consumer).await.ack();
    }
    // Not closed: the stored watermark is committed by the periodic commit (1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let committed = committed_offset(&bootstrap, &group, &topic);
        if committed == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not committed while running: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    consumer.close().await;
}
