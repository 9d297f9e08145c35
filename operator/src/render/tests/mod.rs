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

/// The examples a user applies.
fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

mod bot;
mod scaling_topics_and_checks;
