//! The operator's topic provisioners against the harness's real Kafka broker (admin mode) and
//! real API server with Strimzi's real `KafkaTopic` CRD (strimzi mode). No Strimzi topic
//! operator runs here: the tests play its part by patching the KafkaTopic status.
//!
//! Needs the harness (or `KUBECONFIG` plus `KAFKA_BOOTSTRAP`): see docs/testing.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use inputbot_e2e::{
    Cluster, TestNamespace, ensure_thirdparty_crds, kafka_bootstrap, unique_suffix, wait_for,
};
use inputbot_operator::topics::admin::AdminProvisioner;
use inputbot_operator::topics::strimzi::{KafkaTopic, StrimziProvisioner, kafka_topic_object_name};
use inputbot_operator::topics::{TopicOutcome, TopicOwner, TopicProvisioner, TopicRequest};
use kube::api::{Api, Patch, PatchParams};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::json;

const RETENTION: &str = "3600000";

fn owner(namespace: &str, name: &str) -> TopicOwner {
    TopicOwner {
        api_version: "inputbot.dev/v1alpha1".into(),
        kind: "InputBot".into(),
        namespace: namespace.into(),
        name: name.into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
    }
}

fn request(name: &str, partitions: i32) -> TopicRequest {
    TopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 1,
        config: BTreeMap::from([("retention.ms".into(), RETENTION.into())]),
    }
}

/// A topic name of inputbot's shape, unique to this run.
fn topic_name(suffix: &str) -> String {
    format!("inputbot.e2e-{}.bot.{suffix}", unique_suffix())
}

// ------------------------------------------------------------------- admin mode ---

fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka_bootstrap());
    config
}

fn admin_provisioner() -> AdminProvisioner {
    AdminProvisioner::new(&kafka_config(), Duration::from_secs(30)).expect("an admin client")
}

/// The test's own view of the broker, independent of the provisioner.
struct Broker {
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
}

impl Broker {
    fn connect() -> Broker {
        let admin = kafka_config()
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a test admin client");
        Broker {
            admin: std::sync::Arc::new(admin),
        }
    }

    /// Partitions of `topic`, `None` when the broker does not know it.
    async fn partitions(&self, topic: &str) -> Option<usize> {
        let admin = self.admin.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("metadata");
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
        })
        .await
        .expect("metadata task")
    }

    /// A topic-level config value.
    async fn config(&self, topic: &str, key: &str) -> Option<String> {
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let described = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .expect("describe configs");
        let resource = described.into_iter().next()?.expect("the topic's config");
        resource.get(key).and_then(|e| e.value.clone())
    }

    async fn wait_partitions(&self, topic: &str, want: Option<usize>) {
        wait_for(
            &format!("topic {topic} to have {want:?} partitions in the metadata"),
            Duration::from_secs(30),
            || async { (self.partitions(topic).await == want).then_some(()) },
        )
        .await;
    }

    /// Waits until a topic-level config reads `want`: the broker applies a committed change
    /// (creation or AlterConfigs) a moment after the admin call returns, later on a loaded
    /// machine.
    async fn wait_config(&self, topic: &str, key: &str, want: &str) {
        wait_for(
            &format!("topic {topic}'s {key} to be {want}"),
            Duration::from_secs(30),
            || async { (self.config(topic, key).await.as_deref() == Some(want)).then_some(()) },
        )
        .await;
    }
}

fn ready(name: &str, partitions: i32) -> TopicOutcome {
    TopicOutcome {
        name: name.into(),
        partitions: Some(partitions),
        ready: true,
        message: None,
    }
}

#[tokio::test]
async fn admin_mode_creates_topics_with_the_requested_partitions_and_retention() {
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let raw = topic_name("raw");
    let dlq = topic_name("dlq");
    let owner = owner("e2e", "bot");

    let outcomes = provisioner
        .ensure(&owner, &[request(&raw, 3), request(&dlq, 1)])
        .await
        .expect("ensure creates the topics");
    assert_eq!(outcomes, [ready(&raw, 3), ready(&dlq, 1)]);

    broker.wait_partitions(&raw, Some(3)).await;
    broker.wait_partitions(&dlq, Some(1)).await;
    broker.wait_config(&raw, "retention.ms", RETENTION).await;
    broker.wait_config(&dlq, "retention.ms", RETENTION).await;

    provisioner
        .delete(&owner, &[raw, dlq])
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn admin_mode_grows_partitions_and_refuses_to_shrink() {
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let topic = topic_name("out");
    let owner = owner("e2e", "pipeline");

    provisioner
        .ensure(&owner, &[request(&topic, 2)])
        .await
        .expect("create");
    broker.wait_partitions(&topic, Some(2)).await;

    let grown = provisioner
        .ensure(&owner, &[request(&topic, 4)])
        .await
        .expect("grow");
    assert_eq!(grown, [ready(&topic, 4)]);
    broker.wait_partitions(&topic, Some(4)).await;

    let shrunk = provisioner
        .ensure(&owner, &[request(&topic, 1)])
        .await
        .expect("no shrink");
    assert_eq!(
        shrunk,
        [TopicOutcome {
            message: Some(
                "has 4 partitions, more than the 1 requested; Kafka cannot shrink".into()
            ),
            ..ready(&topic, 4)
        }]
    );
    broker.wait_partitions(&topic, Some(4)).await;

    provisioner.delete(&owner, &[topic]).await.expect("cleanup");
}

#[tokio::test]
async fn admin_mode_second_ensure_changes_nothing_and_keeps_config_set_by_others() {
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let topic = topic_name("raw");
    let owner = owner("e2e", "bot");

    let first = provisioner
        .ensure(&owner, &[request(&topic, 2)])
        .await
        .expect("create");
    broker.wait_partitions(&topic, Some(2)).await;
    let second = provisioner
        .ensure(&owner, &[request(&topic, 2)])
        .await
        .expect("again");
    assert_eq!(first, second);
    broker.wait_partitions(&topic, Some(2)).await;
    broker.wait_config(&topic, "retention.ms", RETENTION).await;

    // A changed retention is written back, and a config someone else set survives it
    // (AlterConfigs replaces the whole topic config; the provisioner carries it along).
    let mut other = request(&topic, 2);
    other.config = BTreeMap::from([
        ("retention.ms".into(), "7200000".into()),
        ("max.message.bytes".into(), "65536".into()),
    ]);
    provisioner
        .ensure(&owner, &[other])
        .await
        .expect("someone else's config");
    // Seen by the broker before the next ensure reads it (else that ensure could read the
    // old value, change nothing, and the broker apply this one after it).
    broker.wait_config(&topic, "retention.ms", "7200000").await;
    broker
        .wait_config(&topic, "max.message.bytes", "65536")
        .await;
    let changed = provisioner
        .ensure(&owner, &[request(&topic, 2)])
        .await
        .expect("retention back");
    assert_eq!(changed, [ready(&topic, 2)]);
    broker.wait_config(&topic, "retention.ms", RETENTION).await;
    broker
        .wait_config(&topic, "max.message.bytes", "65536")
        .await;

    provisioner.delete(&owner, &[topic]).await.expect("cleanup");
}

#[tokio::test]
async fn admin_mode_two_ensures_racing_to_create_a_topic_both_succeed() {
    // Two provisioners (two operator replicas, or a restart mid-create): both read "missing",
    // both create; the loser's "already exists" is success.
    let first = admin_provisioner();
    let second = admin_provisioner();
    let broker = Broker::connect();
    let topic = topic_name("raw");
    let owner = owner("e2e", "bot");
    let wanted = [request(&topic, 3)];

    let (a, b) = tokio::join!(
        first.ensure(&owner, &wanted),
        second.ensure(&owner, &wanted)
    );
    assert_eq!(a.expect("the first ensure"), [ready(&topic, 3)]);
    assert_eq!(b.expect("the second ensure"), [ready(&topic, 3)]);
    broker.wait_partitions(&topic, Some(3)).await;

    first.delete(&owner, &[topic]).await.expect("cleanup");
}

#[tokio::test]
async fn admin_mode_creates_the_topics_of_concurrent_reconciles_in_shared_requests() {
    // 60 resources with 5 topics each, ensured at once as 60 reconciles would: the broker's
    // controller commits one CreateTopics at a time, so they must share requests. One topic is
    // asked for by two owners in the same wave: created once, and both are told so.
    const OWNERS: usize = 60;
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let run = unique_suffix();
    let shared = format!("inputbot.e2e-{run}.shared.out");
    let wanted: Vec<Vec<TopicRequest>> = (0..OWNERS)
        .map(|i| {
            let mut topics: Vec<TopicRequest> = ["raw", "dedupe", "out", "dlq", "act-dlq"]
                .iter()
                .map(|kind| request(&format!("inputbot.e2e-{run}.bot{i}.{kind}"), 2))
                .collect();
            if i < 2 {
                topics.push(request(&shared, 2));
            }
            topics
        })
        .collect();
    let owners: Vec<TopicOwner> = (0..OWNERS)
        .map(|i| owner("e2e", &format!("bot{i}")))
        .collect();

    let started = Instant::now();
    let outcomes = futures::future::join_all(
        owners
            .iter()
            .zip(&wanted)
            .map(|(owner, topics)| provisioner.ensure(owner, topics)),
    )
    .await;
    let took = started.elapsed();
    for (topics, outcome) in wanted.iter().zip(outcomes) {
        let expected: Vec<TopicOutcome> = topics.iter().map(|t| ready(&t.name, 2)).collect();
        assert_eq!(outcome.expect("every ensure succeeds"), expected);
    }
    let requests = provisioner.create_requests();
    assert!(
        requests < (OWNERS as u64) / 2,
        "{OWNERS} concurrent ensures sent {requests} CreateTopics requests; they must share them"
    );
    for topic in wanted.iter().flatten() {
        broker.wait_partitions(&topic.name, Some(2)).await;
    }
    eprintln!(
        "{} topics for {OWNERS} owners in {requests} requests, {took:?}",
        wanted.iter().map(Vec::len).sum::<usize>()
    );

    for (owner, topics) in owners.iter().zip(&wanted) {
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        provisioner.delete(owner, &names).await.expect("cleanup");
    }
}

#[tokio::test]
async fn admin_mode_delete_removes_topics_and_a_second_delete_succeeds() {
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let topic = topic_name("dlq");
    let owner = owner("e2e", "binding");

    provisioner
        .ensure(&owner, &[request(&topic, 1)])
        .await
        .expect("create");
    broker.wait_partitions(&topic, Some(1)).await;

    provisioner
        .delete(&owner, std::slice::from_ref(&topic))
        .await
        .expect("delete");
    broker.wait_partitions(&topic, None).await;
    provisioner
        .delete(&owner, std::slice::from_ref(&topic))
        .await
        .expect("deleting a deleted topic succeeds");
    provisioner
        .delete(&owner, &[])
        .await
        .expect("deleting nothing succeeds");
}

#[tokio::test]
async fn admin_mode_reports_a_replication_factor_the_broker_cannot_meet_as_permanent() {
    let provisioner = admin_provisioner();
    let broker = Broker::connect();
    let topic = topic_name("raw");
    let mut wanted = request(&topic, 1);
    // The harness runs a single broker.
    wanted.replication_factor = 3;

    let err = provisioner
        .ensure(&owner("e2e", "bot"), &[wanted])
        .await
        .expect_err("three replicas on one broker");
    assert!(err.is_permanent(), "not permanent: {err}");
    assert!(err.to_string().contains(&topic), "{err}");
    broker.wait_partitions(&topic, None).await;
}

#[tokio::test]
async fn admin_mode_against_an_unreachable_broker_fails_transiently_without_hanging() {
    let mut config = ClientConfig::new();
    // Port 1 on loopback: nothing listens there.
    config.set("bootstrap.servers", "127.0.0.1:1");
    let provisioner = AdminProvisioner::new(&config, Duration::from_secs(2)).expect("a client");
    let started = Instant::now();
    let err = provisioner
        .ensure(
            &owner("e2e", "bot"),
            &[request("inputbot.e2e.unreachable.raw", 1)],
        )
        .await
        .expect_err("no broker");
    assert!(!err.is_permanent(), "permanent: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

// ----------------------------------------------------------------- strimzi mode ---

const STRIMZI_CLUSTER: &str = "e2e-kafka";

/// Plays Strimzi's topic operator: marks the KafkaTopic Ready for its current generation.
async fn mark_ready(api: &Api<KafkaTopic>, object: &str) {
    let current = api.get(object).await.expect("the KafkaTopic");
    let status = json!({"status": {
        "observedGeneration": current.metadata.generation,
        "topicName": current.spec.as_ref().and_then(|s| s.topic_name.clone()),
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }],
    }});
    api.patch_status(object, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch the KafkaTopic status");
}

#[tokio::test]
async fn strimzi_mode_creates_kafka_topics_valid_under_the_real_crd_ready_once_the_topic_operator_says_so()
 {
    let cluster = Cluster::connect().await;
    ensure_thirdparty_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-topics").await;
    let provisioner = StrimziProvisioner::new(
        cluster.client.clone(),
        STRIMZI_CLUSTER,
        Some(ns.name().to_string()),
    );
    let api: Api<KafkaTopic> = Api::namespaced(cluster.client.clone(), ns.name());
    let owner = owner("shop", "orders");
    let raw = topic_name("raw");
    // Kafka allows upper case and `_`; Kubernetes names do not: the object name is mapped.
    let odd = format!("inputbot.e2e.Mixed_Case-{}.out", unique_suffix());

    let outcomes = provisioner
        .ensure(&owner, &[request(&raw, 3), request(&odd, 2)])
        .await
        .expect("the API server accepts the KafkaTopics");
    for (outcome, topic) in outcomes.iter().zip([&raw, &odd]) {
        assert_eq!(&outcome.name, topic);
        assert!(
            !outcome.ready,
            "ready before the topic operator: {outcome:?}"
        );
        assert_eq!(outcome.partitions, None);
        let message = outcome.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("waiting for Strimzi's topic operator"),
            "{message}"
        );
    }

    let object = kafka_topic_object_name(&raw);
    assert_eq!(object, raw);
    let stored = api.get(&object).await.expect("the KafkaTopic");
    let labels = stored.metadata.labels.clone().unwrap_or_default();
    for (key, value) in [
        ("strimzi.io/cluster", STRIMZI_CLUSTER),
        ("app.kubernetes.io/managed-by", "inputbot-operator"),
        ("inputbot.dev/owner-kind", "InputBot"),
        ("inputbot.dev/owner-name", "orders"),
        ("inputbot.dev/owner-namespace", "shop"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    assert!(
        stored.metadata.owner_references.is_none(),
        "an owner reference"
    );
    let spec = stored.spec.clone().expect("a spec");
    assert_eq!(spec.topic_name.as_deref(), Some(raw.as_str()));
    assert_eq!((spec.partitions, spec.replicas), (Some(3), Some(1)));
    assert_eq!(
        spec.config.unwrap_or_default().get("retention.ms"),
        Some(&json!(RETENTION))
    );
    let odd_object = kafka_topic_object_name(&odd);
    assert_ne!(odd_object, odd);
    let stored_odd = api.get(&odd_object).await.expect("the mapped KafkaTopic");
    assert_eq!(stored_odd.topic_name(), Some(odd.as_str()));

    // Nothing changed: the second ensure writes nothing.
    let version = stored.metadata.resource_version.clone();
    provisioner
        .ensure(&owner, &[request(&raw, 3)])
        .await
        .expect("again");
    let again = api.get(&object).await.expect("the KafkaTopic");
    assert_eq!(again.metadata.resource_version, version);

    mark_ready(&api, &object).await;
    mark_ready(&api, &odd_object).await;
    let outcomes = provisioner
        .ensure(&owner, &[request(&raw, 3), request(&odd, 2)])
        .await
        .expect("ensure");
    assert_eq!(outcomes, [ready(&raw, 3), ready(&odd, 2)]);
}

#[tokio::test]
async fn strimzi_mode_shows_the_not_ready_condition_message() {
    let cluster = Cluster::connect().await;
    ensure_thirdparty_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-topics").await;
    let provisioner = StrimziProvisioner::new(cluster.client.clone(), STRIMZI_CLUSTER, None);
    let api: Api<KafkaTopic> = Api::namespaced(cluster.client.clone(), ns.name());
    let owner = owner(ns.name(), "bot");
    let topic = topic_name("raw");
    provisioner
        .ensure(&owner, &[request(&topic, 1)])
        .await
        .expect("create");

    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "KafkaError",
        "message": "Replication factor: 3 larger than available brokers: 1.",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    api.patch_status(&topic, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch the status");
    let outcome = provisioner
        .ensure(&owner, &[request(&topic, 1)])
        .await
        .expect("ensure");
    assert!(!outcome[0].ready);
    assert_eq!(
        outcome[0].message.as_deref(),
        Some(
            format!(
                "KafkaTopic {}/{topic} is not ready: Replication factor: 3 larger than available brokers: 1.",
                ns.name()
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn strimzi_mode_grows_partitions_and_keeps_more_than_requested() {
    let cluster = Cluster::connect().await;
    ensure_thirdparty_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-topics").await;
    let provisioner = StrimziProvisioner::new(
        cluster.client.clone(),
        STRIMZI_CLUSTER,
        Some(ns.name().to_string()),
    );
    let api: Api<KafkaTopic> = Api::namespaced(cluster.client.clone(), ns.name());
    let owner = owner("shop", "triage");
    let topic = topic_name("out");

    provisioner
        .ensure(&owner, &[request(&topic, 2)])
        .await
        .expect("create");
    mark_ready(&api, &topic).await;
    assert_eq!(
        provisioner
            .ensure(&owner, &[request(&topic, 2)])
            .await
            .expect("ready"),
        [ready(&topic, 2)]
    );

    // Growing makes a new generation: not ready until the topic operator has reconciled it.
    let grown = provisioner
        .ensure(&owner, &[request(&topic, 5)])
        .await
        .expect("grow");
    assert!(!grown[0].ready, "{grown:?}");
    assert!(
        grown[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("generation 2"),
        "{grown:?}"
    );
    let stored = api.get(&topic).await.expect("the KafkaTopic");
    assert_eq!(stored.spec.and_then(|s| s.partitions), Some(5));
    mark_ready(&api, &topic).await;

    let kept = provisioner
        .ensure(&owner, &[request(&topic, 3)])
        .await
        .expect("no shrink");
    assert_eq!(
        kept,
        [TopicOutcome {
            message: Some(
                "has 5 partitions, more than the 3 requested; Kafka cannot shrink".into()
            ),
            ..ready(&topic, 5)
        }]
    );
    let stored = api.get(&topic).await.expect("the KafkaTopic");
    assert_eq!(stored.spec.and_then(|s| s.partitions), Some(5));
}

#[tokio::test]
async fn strimzi_mode_delete_removes_kafka_topics_and_a_second_delete_succeeds() {
    let cluster = Cluster::connect().await;
    ensure_thirdparty_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-topics").await;
    // No namespace configured: the KafkaTopics go to the owner's namespace.
    let provisioner = StrimziProvisioner::new(cluster.client.clone(), STRIMZI_CLUSTER, None);
    let api: Api<KafkaTopic> = Api::namespaced(cluster.client.clone(), ns.name());
    let owner = owner(ns.name(), "bot");
    let raw = topic_name("raw");
    let dlq = topic_name("dlq");

    provisioner
        .ensure(&owner, &[request(&raw, 1), request(&dlq, 1)])
        .await
        .expect("create");
    assert!(api.get_opt(&raw).await.expect("get").is_some());
    assert!(api.get_opt(&dlq).await.expect("get").is_some());

    let topics = [raw.clone(), dlq.clone()];
    provisioner.delete(&owner, &topics).await.expect("delete");
    for object in [&raw, &dlq] {
        wait_for(
            &format!("KafkaTopic {object} to be gone"),
            Duration::from_secs(30),
            || async {
                api.get_opt(object)
                    .await
                    .expect("get")
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }
    provisioner
        .delete(&owner, &topics)
        .await
        .expect("deleting deleted KafkaTopics succeeds");
}
