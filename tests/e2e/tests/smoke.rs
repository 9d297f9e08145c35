//! Smoke tests of the test environment itself: the control plane, our CRDs and examples, the
//! fake node, the third-party CRDs and the Kafka broker. Everything else in the e2e suite
//! builds on what these prove. Run with `scripts/test.sh` (see docs/testing.md).

use std::time::Duration;

use inputbot_e2e::{
    Cluster, TestNamespace, api_error_message, apply, apply_yaml, ensure_project_crds,
    ensure_thirdparty_crds, kafka_bootstrap, repo_root, setting, unique_suffix, wait_for,
    yaml_files,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

/// The oldest and newest Kubernetes minor versions k8s-openapi 0.29 supports.
const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 33..=37;

#[tokio::test]
async fn apiserver_reports_pinned_version() {
    let cluster = Cluster::connect().await;
    let info = cluster
        .client
        .apiserver_version()
        .await
        .expect("GET /version");
    match setting("INPUTBOT_K8S_VERSION") {
        // The harness says which release it built: it must be exactly that one.
        Some(expected) => assert_eq!(
            info.git_version, expected,
            "the harness API server runs another release"
        ),
        // Another cluster: any release k8s-openapi supports.
        None => {
            let minor: u32 = info
                .minor
                .trim_end_matches('+')
                .parse()
                .expect("a numeric minor version");
            assert!(
                info.major == "1" && SUPPORTED_MINORS.contains(&minor),
                "the cluster runs Kubernetes {}, outside the 1.33–1.37 range the project supports",
                info.git_version
            );
        }
    }
}

#[tokio::test]
async fn project_crds_install_and_become_established() {
    let cluster = Cluster::connect().await;
    let names = ensure_project_crds(&cluster.client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut kinds = Vec::new();
    for name in names {
        let crd = crds.get(name).await.expect("the installed CRD");
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        assert!(established, "CRD {name} is not Established");
        if crd.spec.group == "inputbot.dev" {
            kinds.push(crd.spec.names.kind.clone());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["ActionBinding", "InputBot", "Pipeline"],
        "the inputbot.dev kinds in crds/"
    );
}

#[tokio::test]
async fn every_example_applies_with_server_side_apply() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let examples = yaml_files(&repo_root().join("examples"));
    assert!(
        !examples.is_empty(),
        "no examples in {}",
        repo_root().join("examples").display()
    );
    let mut failures = Vec::new();
    for file in &examples {
        // One namespace per example: examples may reuse names.
        let ns = TestNamespace::create(&cluster, "e2e-example").await;
        let text = std::fs::read_to_string(file).expect("readable example");
        match apply_yaml(&cluster.client, Some(ns.name()), &text).await {
            Ok(objects) if objects.is_empty() => {
                failures.push(format!("{}: no documents", file.display()))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e:#}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "examples the API server refused:\n{}",
        failures.join("\n")
    );
}

/// Applies an InputBot with the given sources and returns the API server's error message.
async fn rejected_input_bot(cluster: &Cluster, ns: &str, sources: Value) -> String {
    let bot = json!({
        "apiVersion": "inputbot.dev/v1alpha1",
        "kind": "InputBot",
        "metadata": {"name": "rejected"},
        "spec": {"sources": sources},
    });
    match apply(&cluster.client, Some(ns), &bot).await {
        Ok(_) => panic!("the API server accepted an invalid InputBot: {bot}"),
        Err(e) => api_error_message(&e),
    }
}

#[tokio::test]
async fn input_bot_with_two_sources_of_the_same_name_is_rejected_with_the_rule_message() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-cel").await;
    let tick = json!({"name": "tick", "schedule": {"cron": "*/5 * * * *"}});
    let message = rejected_input_bot(&cluster, ns.name(), json!([tick, tick])).await;
    assert!(
        message.contains("spec.sources")
            && message.contains("source names must be unique within the bot"),
        "unexpected rejection: {message}"
    );
}

#[tokio::test]
async fn source_with_two_kinds_is_rejected_with_the_rule_message() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-cel").await;
    let both =
        json!({"name": "both", "schedule": {"cron": "0 * * * *"}, "kafka": {"topic": "orders"}});
    let message = rejected_input_bot(&cluster, ns.name(), json!([both])).await;
    assert!(
        message.contains("spec.sources[0]")
            && message.contains("set exactly one of webhook, poll, schedule or kafka"),
        "unexpected rejection: {message}"
    );
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "main",
                    // Never pulled: the fake node only pretends to run it.
                    "image": "registry.invalid/inputbot-e2e:never-pulled",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                }]},
            },
        },
    }))
    .expect("a Deployment")
}

#[tokio::test]
async fn deployment_gets_a_pod_that_is_scheduled_and_becomes_ready() {
    let cluster = Cluster::connect().await;
    let ns = TestNamespace::create(&cluster, "e2e-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns.name());
    deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create Deployment");

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns.name());
    let pod = wait_for(
        "a Running, Ready pod of Deployment web",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                let status = p.status.as_ref();
                status.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && status
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            })
        },
    )
    .await;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    assert!(
        node.is_some(),
        "a Running pod without a node: the scheduler did not bind it"
    );

    wait_for(
        "Deployment web to report 1 available replica",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("web").await.ok()?;
            (d.status?.available_replicas == Some(1)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn autoscaling_v2_hpa_is_accepted_and_targets_its_deployment() {
    let cluster = Cluster::connect().await;
    let ns = TestNamespace::create(&cluster, "e2e-hpa").await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns.name());
    deployments
        .create(&PostParams::default(), &deployment("scaled"))
        .await
        .expect("create Deployment");

    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }))
    .expect("an HPA");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), ns.name());
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("the API server accepts an autoscaling/v2 HPA");

    let stored = hpas.get("scaled").await.expect("the HPA");
    let spec = stored.spec.expect("HPA spec");
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, "scaled");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));

    // The controller-manager's HPA controller picks it up (it cannot scale without a metrics
    // API, but it reports that in the status conditions).
    wait_for(
        "the HPA controller to report conditions",
        Duration::from_secs(90),
        || async {
            let status = hpas.get("scaled").await.ok()?.status?;
            status.conditions.filter(|c| !c.is_empty())
        },
    )
    .await;
}

#[tokio::test]
async fn strimzi_kafka_topic_applies_against_its_crd() {
    let cluster = Cluster::connect().await;
    let installed = ensure_thirdparty_crds(&cluster.client).await;
    assert!(
        installed
            .iter()
            .any(|n| n == "kafkatopics.kafka.strimzi.io"),
        "installed: {installed:?}"
    );
    let ns = TestNamespace::create(&cluster, "e2e-strimzi").await;
    let topic = json!({
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "inputbot.e2e.bot.raw", "labels": {"strimzi.io/cluster": "kafka"}},
        "spec": {"topicName": "inputbot.e2e.bot.raw", "partitions": 3, "replicas": 1,
                 "config": {"retention.ms": 604800000}},
    });
    apply(&cluster.client, Some(ns.name()), &topic)
        .await
        .expect("a valid KafkaTopic applies");

    // The real schema is enforced: partitions is an integer.
    let mut bad = topic.clone();
    bad["metadata"]["name"] = json!("bad-topic");
    bad["spec"]["partitions"] = json!("three");
    let err = apply(&cluster.client, Some(ns.name()), &bad)
        .await
        .expect_err("a bad KafkaTopic is refused");
    let message = api_error_message(&err);
    assert!(
        message.contains("spec.partitions"),
        "unexpected rejection: {message}"
    );
}

#[tokio::test]
async fn keda_scaled_object_applies_against_its_crd() {
    let cluster = Cluster::connect().await;
    let installed = ensure_thirdparty_crds(&cluster.client).await;
    assert!(
        installed.iter().any(|n| n == "scaledobjects.keda.sh"),
        "installed: {installed:?}"
    );
    let ns = TestNamespace::create(&cluster, "e2e-keda").await;
    let scaled = json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "triage-process"},
        "spec": {
            "scaleTargetRef": {"name": "triage-process"},
            "minReplicaCount": 1,
            "maxReplicaCount": 6,
            "triggers": [{"type": "kafka", "metadata": {
                "bootstrapServers": "kafka:9092", "consumerGroup": "inputbot.triage",
                "topic": "inputbot.e2e.triage.out", "lagThreshold": "1000"}}],
        },
    });
    apply(&cluster.client, Some(ns.name()), &scaled)
        .await
        .expect("a valid ScaledObject applies");

    let mut bad = scaled.clone();
    bad["metadata"]["name"] = json!("no-triggers");
    bad["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("triggers");
    let err = apply(&cluster.client, Some(ns.name()), &bad)
        .await
        .expect_err("a ScaledObject without triggers is refused");
    let message = api_error_message(&err);
    assert!(
        message.contains("spec.triggers"),
        "unexpected rejection: {message}"
    );
}

#[tokio::test]
async fn record_produced_with_rdkafka_is_consumed_back_through_a_consumer_group() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("inputbot.e2e.smoke-{}", unique_suffix());
    let group = format!("inputbot-e2e-{}", unique_suffix());

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic} on {bootstrap}: {e}"));
    for result in created {
        result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let payload = format!(r#"{{"hello":"kafka","topic":"{topic}"}}"#);
    let headers = OwnedHeaders::new().insert(Header {
        key: "ce_id",
        value: Some("smoke-1"),
    });
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .key("k1")
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic} on {bootstrap}: {e}"));
    assert_eq!((delivered.partition, delivered.offset), (0, 0));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no record consumed from {topic} within 60s (group {group})"))
        .expect("consume");
    assert_eq!(message.payload_view::<str>(), Some(Ok(payload.as_str())));
    assert_eq!(message.key(), Some(&b"k1"[..]));
    let header = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "ce_id"))
        .and_then(|h| h.value);
    assert_eq!(header, Some(&b"smoke-1"[..]));

    // The group's offset is stored by the broker: a commit the coordinator acknowledges.
    consumer
        .commit_message(&message, CommitMode::Sync)
        .expect("commit the offset");
    drop(message);
    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    let offset = committed.find_partition(&topic, 0).map(|p| p.offset());
    // A partition list can hold references into the client: release it before the client,
    // or librdkafka's destroy waits for them forever.
    drop(committed);
    assert_eq!(offset, Some(rdkafka::Offset::Offset(1)));
    drop(consumer);

    admin
        .delete_topics(&[&topic], &opts)
        .await
        .expect("delete the test topic");
}
