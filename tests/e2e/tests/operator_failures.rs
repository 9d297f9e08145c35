//! Failures a person must act on reach the status and a Warning Event, not only the log:
//! the operator running as a ServiceAccount (impersonation) whose Role lacks one permission.

use std::time::Duration;

use inputbot_e2e::identity::{service_account_user, write_impersonating_kubeconfig};
use inputbot_e2e::operator::OperatorProcess;
use inputbot_e2e::{
    Cluster, TestNamespace, apply_yaml, ensure_project_crds, kafka_bootstrap, wait_for,
};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the operator needs in one namespace, except writing Services.
fn role_without_service_writes(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: limited, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: limited, namespace: {ns}}}
rules:
  - apiGroups: [inputbot.dev]
    resources: [inputbots, pipelines, actionbindings, inputbots/status, pipelines/status, actionbindings/status]
    verbs: [get, list, watch, patch, update]
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [""]
    resources: [services]
    verbs: [get, list, watch]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [policy]
    resources: [poddisruptionbudgets]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [autoscaling]
    resources: [horizontalpodautoscalers]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: limited, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited}}
subjects: [{{kind: ServiceAccount, name: limited, namespace: {ns}}}]
"#
    )
}

#[tokio::test]
async fn a_forbidden_child_write_is_reported_in_the_status_and_a_warning_event() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "op-forbidden").await;
    let (client, n) = (&cluster.client, ns.name());
    apply_yaml(client, Some(n), &role_without_service_writes(n))
        .await
        .expect("the ServiceAccount and its Role");
    let kubeconfig = std::env::temp_dir().join(format!("inputbot-limited-{n}.kubeconfig"));
    write_impersonating_kubeconfig(&service_account_user(n, "limited"), &kubeconfig)
        .expect("an impersonating kubeconfig");
    let args = [
        "--log-format",
        "text",
        "run",
        "--watch-namespace",
        n,
        "--leader-elect",
        "false",
        "--kafka-bootstrap",
        &kafka_bootstrap(),
        "--default-replication-factor",
        "1",
        "--default-partitions",
        "1",
        "--runtime-image",
        "inputbot/inputbot:e2e",
    ];
    let op = OperatorProcess::start_with_kubeconfig(
        args.iter().map(|s| s.to_string()).collect(),
        &kubeconfig,
    );
    let bot = json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "InputBot",
        "metadata": {"name": "b"},
        "spec": {"sources": [{"name": "hook", "webhook": {"path": "/hook", "auth": {"none": {}}}}]}});
    apply_yaml(client, Some(n), &serde_yaml::to_string(&bot).unwrap())
        .await
        .expect("the bot");

    let bots: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        n,
        &ApiResource::erase::<inputbot_api::InputBot>(&()),
    );
    let ready = wait_for(
        "Ready=False naming the forbidden Service write",
        TIMEOUT,
        || async {
            let obj = serde_json::to_value(bots.get_opt("b").await.ok()??).ok()?;
            let c = obj["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (c["status"] == "False" && c["reason"] == "KubernetesApiError").then_some(c)
        },
    )
    .await;
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Service")
            && message.contains("b-ingest")
            && message.contains("forbidden"),
        "the message names the child and the refusal: {message}\n{}",
        op.log()
    );
    // A Warning a person sees with `kubectl get events` (or `kubectl describe`).
    let events: Api<Event> = Api::namespaced(client.clone(), n);
    let warning = wait_for("a Warning event on the bot", TIMEOUT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("KubernetesApiError")
                    && e.involved_object.name.as_deref() == Some("b")
            })
    })
    .await;
    assert!(
        warning.message.unwrap_or_default().contains("forbidden"),
        "the event says why"
    );
    // What it could write, it wrote: the ConfigMap and the Deployment exist.
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        n,
        &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    assert!(cms.get_opt("b-ingest").await.unwrap().is_some());
    let _ = std::fs::remove_file(&kubeconfig);
}
