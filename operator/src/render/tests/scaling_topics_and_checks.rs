//! Autoscaling and its caps, topics, invalid specs and the examples.

use super::*;

// --- autoscaling -----------------------------------------------------------------------------

#[test]
fn cpu_autoscaling_renders_an_autoscaling_v2_hpa_and_leaves_replicas_to_it() {
    let plan = bot_plan(&open_bot(
        "    autoscaling: {minReplicas: 2, maxReplicas: 5, targetCPUUtilization: 60}",
    ));
    assert_eq!(plan.autoscaling, AutoscalingState::Rendered);
    let hpa = child(&plan, ChildKind::HorizontalPodAutoscaler, "hooks-ingest");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"],
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hooks-ingest"},
            "minReplicas": 2,
            "maxReplicas": 5,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }],
        })
    );
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HPA owns the replica count: {}",
        deployment["spec"]
    );
    assert_eq!(
        plan.children.last().map(Child::kind),
        Some(ChildKind::HorizontalPodAutoscaler),
        "autoscalers are applied last"
    );
}

#[test]
fn cpu_autoscaling_targets_70_percent_by_default() {
    let plan = pipeline_plan(
        &pipeline(
            "",
            "  processing:\n    autoscaling: {minReplicas: 1, maxReplicas: 3}",
            ".",
        ),
        NO_KEDA,
    );
    let hpa = child(&plan, ChildKind::HorizontalPodAutoscaler, "triage-process");
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
}

#[test]
fn max_replicas_above_the_input_topics_partitions_is_capped_with_a_warning() {
    let plan = pipeline_plan(
        &pipeline(
            "  topic: {partitions: 3}",
            "  processing:\n    autoscaling: {minReplicas: 1, maxReplicas: 10}",
            ".",
        ),
        NO_KEDA,
    );
    let hpa = child(&plan, ChildKind::HorizontalPodAutoscaler, "triage-process");
    assert_eq!(hpa["spec"]["maxReplicas"], 3);
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].contains("maxReplicas 10 capped at 3"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn replicas_above_the_input_topics_partitions_are_capped_with_a_warning() {
    let plan = binding_to_bot_plan(&binding_to_bot(
        "  topic: {partitions: 2}",
        "  workers: {replicas: 5}",
    ));
    let deployment = child(&plan, ChildKind::Deployment, "notify-act");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].contains("replicas 5 capped at 2"),
        "{:?}",
        plan.warnings
    );

    // Without topic settings the cap is the settings' default partitions.
    let plan = binding_to_bot_plan(&binding_to_bot("", "  workers: {replicas: 7}"));
    let expected = Settings::defaults().default_partitions;
    assert_eq!(
        child(&plan, ChildKind::Deployment, "notify-act")["spec"]["replicas"],
        expected
    );
    assert_eq!(plan.warnings.len(), 1);
}

#[test]
fn replicas_within_the_partitions_are_not_capped() {
    let plan = binding_to_bot_plan(&binding_to_bot(
        "  topic: {partitions: 4}",
        "  workers: {replicas: 4}",
    ));
    assert_eq!(
        child(&plan, ChildKind::Deployment, "notify-act")["spec"]["replicas"],
        4
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

const LAG: &str =
    "  processing:\n    autoscaling: {minReplicas: 2, maxReplicas: 4, lag: {target: 500}}";

#[test]
fn lag_autoscaling_renders_a_keda_scaled_object_when_keda_is_installed() {
    let plan = pipeline_plan(&pipeline("", LAG, "."), KEDA);
    assert_eq!(plan.autoscaling, AutoscalingState::Rendered);
    assert_eq!(count(&plan, ChildKind::HorizontalPodAutoscaler), 0);
    let so = child(&plan, ChildKind::ScaledObject, "triage-process");
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["kind"], "ScaledObject");
    assert_eq!(
        so["metadata"]["ownerReferences"],
        Value::Null,
        "no uid, no owner"
    );
    assert_eq!(
        so["metadata"]["labels"]["app.kubernetes.io/component"],
        "process"
    );
    assert_eq!(
        so["spec"],
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triage-process"},
            "minReplicaCount": 2,
            "maxReplicaCount": 4,
            "triggers": [{
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": Settings::defaults().kafka.bootstrap,
                    "consumerGroup": "inputbot.default.triage.process",
                    "topic": "inputbot.default.hooks.raw",
                    "lagThreshold": "500",
                    "allowIdleConsumers": "false",
                },
            }],
        })
    );
    let deployment = child(&plan, ChildKind::Deployment, "triage-process");
    assert!(deployment["spec"].get("replicas").is_none());
}

#[test]
fn lag_autoscaling_without_keda_renders_no_autoscaler_and_runs_the_minimum_replicas() {
    let plan = pipeline_plan(&pipeline("", LAG, "."), NO_KEDA);
    assert_eq!(plan.autoscaling, AutoscalingState::KedaMissing);
    assert_eq!(count(&plan, ChildKind::ScaledObject), 0);
    assert_eq!(count(&plan, ChildKind::HorizontalPodAutoscaler), 0);
    let deployment = child(&plan, ChildKind::Deployment, "triage-process");
    assert_eq!(deployment["spec"]["replicas"], 2);
}

// --- topics ----------------------------------------------------------------------------------

/// A bot's deduplication window: the raw topic's partitions and retention, compacted.
fn dedupe_request(
    name: &str,
    partitions: i32,
    replication: i16,
    retention_ms: &str,
) -> TopicRequest {
    let mut t = topic_request(name, partitions, replication, retention_ms);
    t.config
        .insert("cleanup.policy".to_owned(), "compact,delete".to_owned());
    t
}

fn topic_request(
    name: &str,
    partitions: i32,
    replication: i16,
    retention_ms: &str,
) -> TopicRequest {
    TopicRequest {
        name: name.to_owned(),
        partitions,
        replication_factor: replication,
        config: BTreeMap::from([("retention.ms".to_owned(), retention_ms.to_owned())]),
    }
}

#[test]
fn a_bot_requests_its_raw_topic_with_the_settings_of_its_spec() {
    let plan = bot_plan(&format!(
        "{}  topic: {{partitions: 12, replicationFactor: 2, retention: 1d}}\n",
        open_bot("    replicas: 1")
    ));
    assert_eq!(
        plan.topics,
        vec![
            topic_request("inputbot.default.hooks.raw", 12, 2, "86400000"),
            dedupe_request("inputbot.default.hooks.dedupe", 12, 2, "86400000"),
        ]
    );
    assert_eq!(
        plan.output_topic.as_deref(),
        Some("inputbot.default.hooks.raw")
    );
    assert_eq!(plan.input_topic, None);
}

#[test]
fn a_bot_without_topic_settings_requests_the_settings_defaults() {
    let plan = bot_plan(&open_bot("    replicas: 1"));
    assert_eq!(
        plan.topics,
        vec![
            topic_request("inputbot.default.hooks.raw", 6, 3, "604800000"),
            dedupe_request("inputbot.default.hooks.dedupe", 6, 3, "604800000"),
        ]
    );

    let mut settings = Settings::defaults();
    settings.default_partitions = 9;
    settings.default_replication_factor = 1;
    settings.default_retention = "2h".into();
    let plan = bot_plan_with(&open_bot("    replicas: 1"), &settings, NO_KEDA);
    assert_eq!(
        plan.topics,
        vec![
            topic_request("inputbot.default.hooks.raw", 9, 1, "7200000"),
            dedupe_request("inputbot.default.hooks.dedupe", 9, 1, "7200000"),
        ]
    );
}

#[test]
fn a_bot_with_poll_or_schedule_sources_requests_a_compacted_state_topic_for_its_poller() {
    let plan = bot_plan(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: timed}
spec:
  sources:
    - name: hook
      webhook: {path: /h, auth: {none: {}}}
    - name: nightly
      schedule: {cron: "0 2 * * *"}
  topic: {replicationFactor: 2}
"#,
    );
    let names: Vec<&str> = plan.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "inputbot.default.timed.raw",
            "inputbot.default.timed.dedupe",
            "inputbot.default.timed.state"
        ]
    );
    assert_eq!(
        plan.topics[2],
        TopicRequest {
            name: "inputbot.default.timed.state".into(),
            partitions: 1,
            replication_factor: 2,
            config: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
        }
    );
    // The poller's config names the state topic; the webhook intake has no state to keep.
    let config = |name: &str| config_of(&child(&plan, ChildKind::ConfigMap, name));
    assert_eq!(
        config("timed-poller")["stateTopic"],
        "inputbot.default.timed.state"
    );
    assert!(config("timed-ingest").get("stateTopic").is_none());
}

#[test]
fn a_pipeline_requests_its_output_and_dead_letter_topics() {
    let plan = pipeline_plan(
        &format!(
            "{}  topic: {{partitions: 4, retention: 3d}}\n",
            pipeline("  topic: {partitions: 8}", "", ".")
        ),
        NO_KEDA,
    );
    assert_eq!(
        plan.topics,
        vec![
            topic_request("inputbot.default.triage.out", 4, 3, "259200000"),
            topic_request("inputbot.default.triage.dlq", 4, 3, "259200000"),
        ]
    );
    assert_eq!(
        plan.input_topic.as_deref(),
        Some("inputbot.default.hooks.raw")
    );
    assert_eq!(
        plan.output_topic.as_deref(),
        Some("inputbot.default.triage.out")
    );
    assert_eq!(
        plan.dead_letter_topic.as_deref(),
        Some("inputbot.default.triage.dlq")
    );
    assert_eq!(
        child(&plan, ChildKind::ConfigMap, "triage-process")["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "hooks"
    );
}

#[test]
fn a_binding_requests_its_dead_letter_topic_unless_dead_letter_is_disabled() {
    let enabled = binding_to_bot_plan(&binding_to_bot("", ""));
    assert_eq!(
        enabled.topics,
        vec![topic_request(
            "inputbot.default.notify.act.dlq",
            6,
            3,
            "604800000"
        )]
    );
    assert_eq!(
        enabled.dead_letter_topic.as_deref(),
        Some("inputbot.default.notify.act.dlq")
    );

    let disabled = binding_to_bot_plan(&binding_to_bot(
        "",
        "  delivery:\n    deadLetter: {enabled: false}",
    ));
    assert!(disabled.topics.is_empty(), "{:?}", disabled.topics);
    assert_eq!(disabled.dead_letter_topic, None);
    assert_eq!(
        disabled.input_topic.as_deref(),
        Some("inputbot.default.hooks.raw")
    );
}

// --- errors ----------------------------------------------------------------------------------

#[test]
fn a_classify_rule_with_invalid_cel_is_invalid_naming_the_field() {
    let set = load(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: hooks}
spec:
  sources:
    - name: github
      webhook: {path: /github, auth: {none: {}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: triage}
spec:
  botRef: {name: hooks}
  steps:
    - name: labels
      classify:
        rules:
          - {when: 'data.title.contains("ok")', label: fine}
          - {when: 'data.title ==== (', label: broken}
"#,
    );
    let err = plan_pipeline(
        &set.pipelines[0],
        &set.bots[0],
        &Settings::defaults(),
        NO_KEDA,
    )
    .expect_err("invalid CEL must not render");
    let PlanError::Invalid(problems) = &err;
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.steps[0].classify.rules[1].when"], "{err}");
    assert!(
        problems
            .iter()
            .all(|p| p.resource == "Pipeline default/triage"),
        "{problems:?}"
    );
    assert!(
        err.to_string()
            .starts_with("spec.steps[0].classify.rules[1].when: "),
        "{err}"
    );
    // The same error stops `render -f`.
    let errors = render_files(&set, &Settings::defaults(), NO_KEDA).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("Pipeline default/triage: spec.steps[0].classify.rules[1].when"),
        "{errors:?}"
    );
}

#[test]
fn render_files_reports_a_pipeline_whose_bot_is_missing() {
    let set = load(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: orphan}
spec:
  botRef: {name: nowhere}
  steps:
    - filter: {when: "true"}
"#,
    );
    let errors = render_files(&set, &Settings::defaults(), NO_KEDA).unwrap_err();
    assert_eq!(
        errors,
        vec![r#"Pipeline default/orphan: spec.botRef: InputBot "nowhere" is not in the files"#]
    );
}

// --- examples --------------------------------------------------------------------------------

#[test]
fn every_example_renders_without_error() {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let set = manifest::load_files(std::slice::from_ref(file), "default")
            .unwrap_or_else(|e| panic!("{}: {e:#?}", file.display()));
        for caps in [NO_KEDA, KEDA] {
            let rendered = render_files(&set, &Settings::defaults(), caps)
                .unwrap_or_else(|e| panic!("{}: {e:#?}", file.display()));
            let deployments = rendered
                .iter()
                .filter(|o| o["kind"] == "Deployment")
                .count();
            assert!(
                deployments >= set.bots.len() + set.pipelines.len() + set.bindings.len(),
                "{}: {deployments} Deployments",
                file.display()
            );
            for object in &rendered {
                assert!(
                    object["metadata"]["annotations"][HASH_ANNOTATION].is_string(),
                    "{}: {object}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_poller_takes_the_bots_resources_but_never_its_replicas() {
    let yaml = POLL_BOT.replace(
        "spec:\n",
        "spec:\n  ingest:\n    replicas: 3\n    resources: {limits: {memory: 1Gi}}\n",
    );
    let plan = bot_plan(&yaml);
    let d = child(&plan, ChildKind::Deployment, "timed-poller");
    assert_eq!(container(&d)["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
}
