//! The Kafka source and the kafka action on the real broker (needs `KAFKA_BOOTSTRAP`; see
//! docs/runtime-kafka.md): records of an existing topic become the bot's events, the
//! source's offsets are committed once they are on the raw topic, and a binding writes the
//! processed events to another topic with its key template and the CloudEvents headers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use inputbot_e2e::runtime::{
    RoleProcess, all_topics, create_topics, read_topic, write_configs, write_secret,
};
use inputbot_e2e::stream::wait_until;
use inputbot_e2e::{kafka_bootstrap, unique_suffix};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

/// The offsets group `group` committed on `topic`, summed over its partitions.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_source_feeds_the_bot_and_a_kafka_action_writes_keyed_records_with_ce_headers() {
    let bootstrap = kafka_bootstrap();
    let ns = format!("e2e-{}", unique_suffix());
    let dir = std::env::temp_dir().join(format!("inputbot-e2e-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let secrets = dir.join("secrets");
    write_secret(&secrets, "unused", "k", "v");
    let orders = format!("{ns}.orders");
    let shipped = format!("{ns}.shipped");
    let yaml = format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: shop}}
spec:
  sources:
    - name: orders
      kafka: {{topic: {orders}, eventType: shop.order}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: ship}}
spec:
  botRef: {{name: shop}}
  steps:
    - filter: {{when: 'data.qty > 0'}}
    - transform: {{jq: '{{order: .id, customer: .customer, qty: .qty}}'}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: shipped}}
spec:
  pipelineRef: {{name: ship}}
  action:
    kafka: {{topic: {shipped}, key: '{{{{ data.customer }}}}'}}
"#
    );
    let resolved = write_configs(&dir, &yaml, &ns);
    let mut topics = all_topics(&resolved, 3);
    topics.push((orders.clone(), 2));
    topics.push((shipped.clone(), 1));
    let topics: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    create_topics(&bootstrap, &topics).await;

    // Records already on the topic before the bot starts: plain JSON, keyed by customer.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    const ORDERS: i64 = 30;
    for n in 0..ORDERS {
        let value = json!({"id": n, "customer": format!("c{}", n % 3), "qty": n % 5}).to_string();
        let key = format!("c{}", n % 3);
        producer
            .send(
                FutureRecord::to(&orders).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("an order produced");
    }
    let start = |role: &str, name: &str| {
        RoleProcess::start(
            role,
            &dir.join(format!("{role}-{name}.json")),
            &secrets,
            &bootstrap,
        )
    };
    let mut act = start("act", "shipped");
    let mut process = start("process", "ship");
    let mut ingest = start("ingest", "shop");
    for r in [&mut act, &mut process, &mut ingest] {
        r.wait_ready(READY).await;
    }
    let raw = resolved.ingest[0].topic.clone();
    wait_until(
        "every order on the raw topic",
        Duration::from_secs(30),
        || read_topic(&bootstrap, &raw).len() as i64 >= ORDERS,
    )
    .await;
    let group = format!("inputbot.{ns}.shop.orders");
    wait_until(
        "the source's offsets committed",
        Duration::from_secs(30),
        || committed(&bootstrap, &group, &orders, 2) == ORDERS,
    )
    .await;
    let on_raw = read_topic(&bootstrap, &raw);
    for r in &on_raw {
        assert_eq!(r.headers["ce_type"], "shop.order");
        assert_eq!(r.headers["ce_inputbotbot"], format!("{ns}/shop"));
        assert_eq!(r.headers["ce_inputbotsource"], "orders");
        let value: Value = serde_json::from_slice(&r.value).expect("json");
        assert_eq!(
            r.key.as_deref(),
            value["customer"].as_str(),
            "the record's key stays its key on the raw topic"
        );
    }

    let want: BTreeSet<i64> = (0..ORDERS).filter(|n| n % 5 > 0).collect();
    wait_until("the shipped records", Duration::from_secs(30), || {
        read_topic(&bootstrap, &shipped).len() >= want.len()
    })
    .await;
    let out = read_topic(&bootstrap, &shipped);
    let mut got = BTreeSet::new();
    for r in &out {
        let value: Value = serde_json::from_slice(&r.value).expect("json");
        let n = value["order"].as_i64().expect("order");
        assert_eq!(r.key.as_deref(), Some(format!("c{}", n % 3).as_str()));
        assert_eq!(r.headers["ce_type"], "shop.order");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers.contains_key("ce_id") && r.headers.contains_key("traceparent"));
        got.insert(n);
    }
    assert_eq!(got, want, "each kept order written once");
    assert_eq!(out.len(), want.len());

    // The source's group forgets its offsets (as after a member died before committing, or a
    // reset): the restarted source reads every record again and publishes it to the raw topic
    // again, but each is the same record (topic, partition, offset), so the process role drops
    // the copies and nothing is written twice.
    let status = ingest.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", ingest.log_text());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let deleted = admin
        .delete_groups(&[group.as_str()], &AdminOptions::new())
        .await
        .expect("delete_groups");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let mut ingest = start("ingest", "shop");
    ingest.wait_ready(READY).await;
    wait_until(
        "every order on the raw topic again",
        Duration::from_secs(30),
        || read_topic(&bootstrap, &raw).len() as i64 >= 2 * ORDERS,
    )
    .await;
    let client = reqwest::Client::new();
    let metrics = process.url("/metrics");
    let dropped = async || -> f64 {
        let text = client
            .get(&metrics)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with("inputbot_kafka_duplicates_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let started = Instant::now();
    while dropped().await < ORDERS as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copies read again were not dropped: {}",
            dropped().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_topic(&bootstrap, &shipped).len(),
        want.len(),
        "nothing written twice"
    );

    for r in [&mut ingest, &mut process, &mut act] {
        let status = r.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "inputbot {}: {}", r.role, r.log_text());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
