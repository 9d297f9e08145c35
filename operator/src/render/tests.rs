//! The pure render step, from inline YAML fixtures: what each resource renders to, in which
//! order, with which labels, security settings, autoscalers and topics.

use std::collections::BTreeMap;

use inputbot_api::{
    config::ComponentConfig,
    manifest::{self, ResourceSet},
    resolve,
};
use serde_json::{Value, json};

use super::*;
use crate::settings::Settings;
use crate::topics::TopicRequest;

const NO_KEDA: Capabilities = Capabilities { keda: false };
const KEDA: Capabilities = Capabilities { keda: true };

fn load(yaml: &str) -> ResourceSet {
    let mut set = ResourceSet::default();
    if let Err(e) = manifest::load_str(&mut set, "fixture.yaml", yaml, "default") {
        panic!("the fixture does not load: {e:#?}");
    }
    set
}

fn bot_plan_with(yaml: &str, settings: &Settings, caps: Capabilities) -> Plan {
    let set = load(yaml);
    plan_bot(&set.bots[0], settings, caps).unwrap_or_else(|e| panic!("{e}"))
}

fn bot_plan(yaml: &str) -> Plan {
    bot_plan_with(yaml, &Settings::defaults(), NO_KEDA)
}

fn pipeline_plan(yaml: &str, caps: Capabilities) -> Plan {
    let set = load(yaml);
    plan_pipeline(&set.pipelines[0], &set.bots[0], &Settings::defaults(), caps)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn binding_to_bot_plan(yaml: &str) -> Plan {
    let set = load(yaml);
    plan_binding(
        &set.bindings[0],
        BindingInputs::Bot(&set.bots[0]),
        &Settings::defaults(),
        NO_KEDA,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn objects(plan: &Plan) -> Vec<Value> {
    plan.children.iter().map(Child::to_json).collect()
}

fn kinds_and_names(plan: &Plan) -> Vec<(ChildKind, String)> {
    plan.children.iter().map(|c| (c.kind(), c.name())).collect()
}

/// The one child of `kind` named `name`, as JSON.
fn child(plan: &Plan, kind: ChildKind, name: &str) -> Value {
    let found: Vec<Value> = plan
        .children
        .iter()
        .filter(|c| c.kind() == kind && c.name() == name)
        .map(Child::to_json)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind:?} {name}: {:?}",
        kinds_and_names(plan)
    );
    found.into_iter().next().unwrap()
}

fn count(plan: &Plan, kind: ChildKind) -> usize {
    plan.children.iter().filter(|c| c.kind() == kind).count()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The resolved config in a component's ConfigMap.
fn config_of(configmap: &Value) -> Value {
    let text = configmap["data"]["component.json"]
        .as_str()
        .expect("the ConfigMap holds component.json");
    serde_json::from_str(text).expect("component.json is JSON")
}

fn config_hash(deployment: &Value) -> String {
    deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .expect("the pod template carries the config hash")
        .to_owned()
}

fn source_names(config: &Value) -> Vec<&str> {
    config["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

const SECRET_VALUE: &str = "sup3r-s3cret-hmac-key-do-not-leak";

/// A webhook bot with a uid (as read from the cluster) and the Secret its HMAC auth names.
fn webhook_bot() -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: gh
  namespace: team-a
stringData:
  webhook-secret: {SECRET_VALUE}
  previous-secret: an-older-key-still-accepted
  unrelated: {SECRET_VALUE}-unrelated
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: hooks
  namespace: team-a
  uid: 6f1c3b2e-0000-4000-8000-000000000001
spec:
  sources:
    - name: github
      webhook:
        path: /github
        auth:
          hmac:
            preset: github
            secretRef: {{name: gh, key: webhook-secret}}
            additionalSecretRefs:
              - {{name: gh, key: previous-secret}}
"#
    )
}

const POLL_BOT: &str = r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: timed
spec:
  sources:
    - name: incidents
      poll:
        url: https://status.example.com/api/incidents.json
        interval: 60s
    - name: nightly
      schedule:
        cron: "0 2 * * *"
"#;

const WEBHOOK_AND_POLL_BOT: &str = r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: mixed
spec:
  sources:
    - name: hook
      webhook:
        path: /hook
        auth: {none: {}}
    - name: incidents
      poll:
        url: https://status.example.com/api/incidents.json
        interval: 60s
"#;

fn open_bot(ingest: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: hooks
spec:
  sources:
    - name: github
      webhook:
        path: /github
        auth: {{none: {{}}}}
    - name: stripe
      webhook:
        path: /stripe
        auth: {{none: {{}}}}
  ingest:
{ingest}
"#
    )
}

/// A bot (with `bot_topic` under its spec) and a pipeline (with `processing` under its spec).
fn pipeline(bot_topic: &str, processing: &str, step: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: hooks
spec:
  sources:
    - name: github
      webhook:
        path: /github
        auth: {{none: {{}}}}
{bot_topic}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata:
  name: triage
spec:
  botRef: {{name: hooks}}
  steps:
    - name: shape
      transform:
        jq: '{step}'
{processing}
"#
    )
}

fn binding_to_bot(bot_topic: &str, binding_spec: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata:
  name: hooks
spec:
  sources:
    - name: github
      webhook:
        path: /github
        auth: {{none: {{}}}}
{bot_topic}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata:
  name: notify
spec:
  botRef: {{name: hooks}}
  action:
    log: {{}}
{binding_spec}
"#
    )
}

// --- a webhook bot ---------------------------------------------------------------------------

#[test]
fn a_webhook_bot_renders_a_configmap_a_deployment_and_a_service_in_apply_order() {
    let plan = bot_plan(&webhook_bot());
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "hooks-ingest".to_owned()),
            (ChildKind::Deployment, "hooks-ingest".to_owned()),
            (ChildKind::Service, "hooks-ingest".to_owned()),
        ]
    );
    assert_eq!(plan.deployments, vec!["hooks-ingest".to_owned()]);
    assert_eq!(plan.autoscaling, AutoscalingState::Off);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    for object in objects(&plan) {
        assert_eq!(object["metadata"]["namespace"], "team-a");
    }
}

#[test]
fn every_child_of_a_resource_with_a_uid_has_a_controller_owner_reference() {
    let plan = bot_plan(&webhook_bot());
    for object in objects(&plan) {
        assert_eq!(
            object["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "inputbot.dev/v1alpha1",
                "kind": "InputBot",
                "name": "hooks",
                "uid": "6f1c3b2e-0000-4000-8000-000000000001",
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{}",
            object["kind"]
        );
    }
}

#[test]
fn children_of_a_resource_without_a_uid_have_no_owner_reference() {
    let plan = bot_plan(WEBHOOK_AND_POLL_BOT);
    for object in objects(&plan) {
        assert!(
            object["metadata"].get("ownerReferences").is_none(),
            "{object}"
        );
    }
}

#[test]
fn every_child_carries_the_five_app_kubernetes_io_labels_and_the_owner_labels() {
    let plan = bot_plan(&webhook_bot());
    let expected = json!({
        "app.kubernetes.io/name": "inputbot",
        "app.kubernetes.io/instance": "hooks",
        "app.kubernetes.io/component": "ingest",
        "app.kubernetes.io/part-of": "hooks",
        "app.kubernetes.io/managed-by": "inputbot-operator",
        "inputbot.dev/owner-kind": "inputbot",
        "inputbot.dev/owner-name": "hooks",
    });
    for object in objects(&plan) {
        assert_eq!(object["metadata"]["labels"], expected, "{}", object["kind"]);
    }
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"],
        expected
    );
}

#[test]
fn the_deployment_and_service_select_pods_by_the_selector_labels_only() {
    let plan = bot_plan(&webhook_bot());
    let selector = json!({
        "app.kubernetes.io/name": "inputbot",
        "app.kubernetes.io/instance": "hooks",
        "app.kubernetes.io/component": "ingest",
    });
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], selector);
    let service = child(&plan, ChildKind::Service, "hooks-ingest");
    assert_eq!(service["spec"]["selector"], selector);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}])
    );
}

#[test]
fn the_ingest_deployment_rolls_out_without_taking_a_pod_away() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
}

#[test]
fn the_pod_template_carries_the_digest_of_the_configmaps_config() {
    let plan = bot_plan(&webhook_bot());
    let configmap = child(&plan, ChildKind::ConfigMap, "hooks-ingest");
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let hash = config_hash(&deployment);
    assert_eq!(hash, digest(&config_of(&configmap)));
    assert_eq!(hash.len(), 24, "12 bytes, hex: {hash}");
}

#[test]
fn the_runtime_runs_with_a_restricted_security_context() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let security = &container(&deployment)["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(
        security["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn the_runtime_is_probed_on_healthz_and_readyz_and_runs_its_role_on_the_mounted_config() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let c = container(&deployment);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["image"], Settings::defaults().runtime_image);

    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(3)
            .any(|w| w == ["ingest", "--config", "/etc/inputbot/component.json"]),
        "{args:?}"
    );

    let mounts = c["volumeMounts"].as_array().unwrap();
    let config_mount = mounts.iter().find(|m| m["name"] == "config").unwrap();
    assert_eq!(config_mount["mountPath"], "/etc/inputbot");
    assert_eq!(config_mount["readOnly"], true);
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let config_volume = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config_volume["configMap"]["name"], "hooks-ingest");
}

// --- config and Secrets ----------------------------------------------------------------------

#[test]
fn the_configmap_holds_the_resolved_config_as_json() {
    let set = load(&webhook_bot());
    let plan = plan_bot(&set.bots[0], &Settings::defaults(), NO_KEDA).unwrap();
    let configmap = child(&plan, ChildKind::ConfigMap, "hooks-ingest");
    let expected =
        serde_json::to_value(ComponentConfig::Ingest(resolve::resolve_bot(&set.bots[0]))).unwrap();
    assert_eq!(config_of(&configmap), expected);
    assert_eq!(config_of(&configmap)["role"], "ingest");
    assert_eq!(
        configmap["data"].as_object().unwrap().len(),
        1,
        "only component.json"
    );
}

#[test]
fn no_secret_value_appears_in_any_rendered_object() {
    let set = load(&webhook_bot());
    assert!(
        set.has_secret("team-a", "gh"),
        "the fixture holds the Secret"
    );
    let rendered = render_files(&set, &Settings::defaults(), NO_KEDA).unwrap();
    assert!(!rendered.is_empty());
    let plan = plan_bot(&set.bots[0], &Settings::defaults(), NO_KEDA).unwrap();
    let texts = rendered
        .iter()
        .chain(objects(&plan).iter())
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>();
    for text in texts {
        assert!(
            !text.contains(SECRET_VALUE),
            "a Secret value leaked: {text}"
        );
        assert!(!text.contains("an-older-key-still-accepted"), "{text}");
    }
}

#[test]
fn a_referenced_secret_is_mounted_read_only_with_only_the_referenced_keys() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let secrets: Vec<&Value> = volumes
        .iter()
        .filter(|v| v.get("secret").is_some())
        .collect();
    assert_eq!(secrets.len(), 1, "{volumes:?}");
    let secret = &secrets[0]["secret"];
    assert_eq!(secret["secretName"], "gh");
    assert_eq!(
        secret["items"],
        json!([
            {"key": "previous-secret", "path": "previous-secret"},
            {"key": "webhook-secret", "path": "webhook-secret"},
        ]),
        "the unrelated key is not mounted"
    );
    assert_eq!(secret["optional"], false);
    let mount = container(&deployment)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == secrets[0]["name"])
        .cloned()
        .unwrap();
    assert_eq!(mount["mountPath"], "/var/run/inputbot/secrets/gh");
    assert_eq!(mount["readOnly"], true);
}

// --- hashes and determinism ------------------------------------------------------------------

#[test]
fn changing_a_pipeline_step_changes_the_config_hash() {
    let before = pipeline_plan(&pipeline("", "", "{a: .x}"), NO_KEDA);
    let after = pipeline_plan(&pipeline("", "", "{a: .y}"), NO_KEDA);
    let hash = |p: &Plan| config_hash(&child(p, ChildKind::Deployment, "triage-process"));
    assert_ne!(hash(&before), hash(&after));
    let again = pipeline_plan(&pipeline("", "", "{a: .x}"), NO_KEDA);
    assert_eq!(hash(&before), hash(&again));
}

#[test]
fn an_unchanged_spec_renders_byte_identical_output() {
    let yaml = format!(
        "{}---\n{}",
        webhook_bot(),
        std::fs::read_to_string(examples_dir().join("support-to-crm.yaml")).unwrap()
    );
    let render = || {
        let rendered = render_files(&load(&yaml), &Settings::defaults(), KEDA).unwrap();
        serde_json::to_string(&rendered).unwrap()
    };
    let first = render();
    assert_eq!(first, render());
    assert_eq!(first, render());
}

// --- poll and schedule -----------------------------------------------------------------------

#[test]
fn poll_and_schedule_sources_run_in_a_single_replica_poller_deployment_that_recreates() {
    let plan = bot_plan(POLL_BOT);
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "timed-poller".to_owned()),
            (ChildKind::Deployment, "timed-poller".to_owned()),
        ],
        "no Service: nothing is pushed to a poller"
    );
    assert_eq!(plan.deployments, vec!["timed-poller".to_owned()]);
    assert!(plan.endpoints.is_empty());
    let deployment = child(&plan, ChildKind::Deployment, "timed-poller");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "poller"
    );
    let config = config_of(&child(&plan, ChildKind::ConfigMap, "timed-poller"));
    assert_eq!(source_names(&config), ["incidents", "nightly"]);
    let args = &container(&deployment)["args"];
    assert!(
        args.as_array().unwrap().contains(&json!("ingest")),
        "{args}"
    );
}

#[test]
fn a_bot_with_webhook_and_poll_sources_gets_both_an_ingest_and_a_poller_deployment() {
    let plan = bot_plan(WEBHOOK_AND_POLL_BOT);
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "mixed-ingest".to_owned()),
            (ChildKind::ConfigMap, "mixed-poller".to_owned()),
            (ChildKind::Deployment, "mixed-ingest".to_owned()),
            (ChildKind::Deployment, "mixed-poller".to_owned()),
            (ChildKind::Service, "mixed-ingest".to_owned()),
        ]
    );
    assert_eq!(
        plan.deployments,
        vec!["mixed-ingest".to_owned(), "mixed-poller".to_owned()]
    );
    let ingest = config_of(&child(&plan, ChildKind::ConfigMap, "mixed-ingest"));
    let poller = config_of(&child(&plan, ChildKind::ConfigMap, "mixed-poller"));
    assert_eq!(source_names(&ingest), ["hook"]);
    assert_eq!(source_names(&poller), ["incidents"]);
    let ingest = child(&plan, ChildKind::Deployment, "mixed-ingest");
    let poller = child(&plan, ChildKind::Deployment, "mixed-poller");
    assert_eq!(ingest["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(poller["spec"]["strategy"]["type"], "Recreate");
    assert_ne!(config_hash(&ingest), config_hash(&poller));
}

// --- disruption budget, Ingress, endpoints ---------------------------------------------------

#[test]
fn more_than_one_ingest_replica_adds_a_pod_disruption_budget() {
    let one = bot_plan(&open_bot("    replicas: 1"));
    assert_eq!(count(&one, ChildKind::PodDisruptionBudget), 0);

    let two = bot_plan(&open_bot("    replicas: 2"));
    let pdb = child(&two, ChildKind::PodDisruptionBudget, "hooks-ingest");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        child(&two, ChildKind::Deployment, "hooks-ingest")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        child(&two, ChildKind::Deployment, "hooks-ingest")["spec"]["replicas"],
        2
    );

    let autoscaled = bot_plan(&open_bot(
        "    autoscaling: {minReplicas: 2, maxReplicas: 4}",
    ));
    assert_eq!(count(&autoscaled, ChildKind::PodDisruptionBudget), 1);
}

#[test]
fn expose_adds_an_ingress_with_an_exact_path_per_webhook_and_tls() {
    let plan = bot_plan(&open_bot(
        r#"    expose:
      host: hooks.example.com
      ingressClassName: nginx
      tls: {secretName: hooks-tls}
      annotations: {cert-manager.io/cluster-issuer: letsencrypt}"#,
    ));
    assert_eq!(
        plan.children.iter().map(Child::kind).collect::<Vec<_>>(),
        [
            ChildKind::ConfigMap,
            ChildKind::Deployment,
            ChildKind::Service,
            ChildKind::Ingress
        ]
    );
    let ingress = child(&plan, ChildKind::Ingress, "hooks-ingest");
    assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        ingress["metadata"]["annotations"],
        json!({"cert-manager.io/cluster-issuer": "letsencrypt"})
    );
    let spec = &ingress["spec"];
    assert_eq!(spec["ingressClassName"], "nginx");
    assert_eq!(
        spec["tls"],
        json!([{"hosts": ["hooks.example.com"], "secretName": "hooks-tls"}])
    );
    assert_eq!(spec["rules"][0]["host"], "hooks.example.com");
    let backend = json!({"service": {"name": "hooks-ingest", "port": {"name": "http"}}});
    assert_eq!(
        spec["rules"][0]["http"]["paths"],
        json!([
            {"path": "/github", "pathType": "Exact", "backend": backend},
            {"path": "/stripe", "pathType": "Exact", "backend": backend},
        ])
    );
}

#[test]
fn endpoints_are_the_service_url_or_the_exposed_url() {
    let internal = bot_plan(&open_bot("    replicas: 1"));
    assert_eq!(
        internal.endpoints,
        vec![
            (
                "github".to_owned(),
                "http://hooks-ingest.default.svc:8080/github".to_owned()
            ),
            (
                "stripe".to_owned(),
                "http://hooks-ingest.default.svc:8080/stripe".to_owned()
            ),
        ]
    );
    assert_eq!(count(&internal, ChildKind::Ingress), 0);

    let tls = bot_plan(&open_bot(
        "    expose: {host: hooks.example.com, tls: {secretName: hooks-tls}}",
    ));
    assert_eq!(
        tls.endpoints[0],
        (
            "github".to_owned(),
            "https://hooks.example.com/github".to_owned()
        )
    );
    let plain = bot_plan(&open_bot("    expose: {host: hooks.example.com}"));
    assert_eq!(
        plain.endpoints[1],
        (
            "stripe".to_owned(),
            "http://hooks.example.com/stripe".to_owned()
        )
    );
    assert!(
        child(&plain, ChildKind::Ingress, "hooks-ingest")["spec"]
            .get("tls")
            .is_none()
    );
}

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
        vec![topic_request(
            "inputbot.default.hooks.raw",
            12,
            2,
            "86400000"
        )]
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
        vec![topic_request(
            "inputbot.default.hooks.raw",
            6,
            3,
            "604800000"
        )]
    );

    let mut settings = Settings::defaults();
    settings.default_partitions = 9;
    settings.default_replication_factor = 1;
    settings.default_retention = "2h".into();
    let plan = bot_plan_with(&open_bot("    replicas: 1"), &settings, NO_KEDA);
    assert_eq!(
        plan.topics,
        vec![topic_request("inputbot.default.hooks.raw", 9, 1, "7200000")]
    );
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

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

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
