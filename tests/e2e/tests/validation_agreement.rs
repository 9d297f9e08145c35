//! `inputbot validate` promises the checks the API server runs at apply time. This suite holds
//! it to that against the real API server: for the examples and for mutations touching every
//! kind of schema rule (patterns, enums, bounds, unknown fields, and each CEL rule), the
//! client-side verdict (`inputbot_api::crd::check_document`) and the server's (server-side
//! apply, dry run, strict field validation) must agree.

use inputbot_e2e::*;
use kube::{
    ResourceExt,
    api::{Api, DynamicObject, Patch, PatchParams},
};
use serde_json::Value;

/// (kind, JSON pointer, new value) — each one breaks a rule of the schema.
const MUTATIONS: &[(&str, &str, &str)] = &[
    (
        "InputBot",
        "/metadata/name",
        r#""a-very-long-bot-name-that-does-not-fit-in-a-service-name-xx""#,
    ),
    ("InputBot", "/spec/sources/0/name", r#""Helpdesk""#),
    ("InputBot", "/spec/sources/0/webhook/path", r#""tickets""#),
    ("InputBot", "/spec/sources/0/webhook/path", r#""/metrics""#),
    ("InputBot", "/spec/sources/0/webhook/auth", "{}"),
    ("InputBot", "/spec/sources/0/webhook/auth/none", "{}"),
    (
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/preset",
        r#""gitlab""#,
    ),
    ("InputBot", "/spec/sources/0/webhook/maxBodyBytes", "0"),
    (
        "InputBot",
        "/spec/sources/0/schedule",
        r#"{"cron": "* * * * *"}"#,
    ),
    (
        "InputBot",
        "/spec/sources/1",
        r#"{"name": "helpdesk", "webhook": {"path": "/tickets", "auth": {"none": {}}}}"#,
    ),
    ("InputBot", "/spec/ingest/autoscaling/minReplicas", "9"),
    ("InputBot", "/spec/deletionPolicy", r#""Keep""#),
    ("InputBot", "/spec/sorces", "[]"),
    ("InputBot", "/spec/topic/retention", r#""7 days""#),
    ("Pipeline", "/spec/steps/0/filter", r#"{"when": "true"}"#),
    ("Pipeline", "/spec/steps/0/name", r#""Require""#),
    ("Pipeline", "/spec/steps", "[]"),
    ("Pipeline", "/spec/processing/maxInFlight", "0"),
    (
        "ActionBinding",
        "/spec/botRef",
        r#"{"name": "support-intake"}"#,
    ),
    ("ActionBinding", "/spec/action/log", "{}"),
    (
        "ActionBinding",
        "/spec/delivery/retry/retryOn/0",
        r#""6xx""#,
    ),
    (
        "ActionBinding",
        "/spec/delivery/circuitBreaker/failureRatio",
        "1.5",
    ),
    ("ActionBinding", "/spec/action/http/method", r#""FETCH""#),
    ("ActionBinding", "/spec/action/http/body/template", r#""x""#),
    (
        "ActionBinding",
        "/spec/action/http/headers/Authorization/value",
        r#""x""#,
    ),
];

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"))
    {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
        }
        Value::Array(items) => {
            let i: usize = last.parse().unwrap();
            if i < items.len() {
                items[i] = value;
            } else {
                items.push(value);
            }
        }
        other => panic!("cannot set {pointer} in {other}"),
    }
}

/// The server's verdict: `Ok` when a dry-run server-side apply with strict field validation
/// succeeds, the server's message otherwise.
async fn server_verdict(cluster: &Cluster, ns: &str, doc: &Value) -> Result<(), String> {
    let gvk = gvk_of(doc).map_err(|e| e.to_string())?;
    let (resource, _) = kube::discovery::pinned_kind(&cluster.client, &gvk)
        .await
        .map_err(|e| e.to_string())?;
    let mut obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    obj.metadata.namespace = Some(ns.to_owned());
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns, &resource);
    let params = PatchParams::apply("inputbot-e2e")
        .force()
        .dry_run()
        .validation_strict();
    api.patch(&obj.name_any(), &params, &Patch::Apply(&obj))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })
}

fn client_verdict(doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let problems = inputbot_api::crd::check_document(kind, doc);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[tokio::test]
async fn client_side_validation_and_the_api_server_agree_on_examples_and_broken_specs() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "e2e-agree").await;

    let mut disagreements = Vec::new();
    let mut checked = 0;
    // Every resource of every example: both accept.
    for file in yaml_files(&repo_root().join("examples")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in yaml_documents(&text).unwrap() {
            if doc["apiVersion"] != "inputbot.dev/v1alpha1" {
                continue;
            }
            checked += 1;
            let (client, server) = (
                client_verdict(&doc),
                server_verdict(&cluster, ns.name(), &doc).await,
            );
            if client.is_err() || server.is_err() {
                disagreements.push(format!(
                    "{}: {} {}: client {client:?}, server {server:?}",
                    file.display(),
                    doc["kind"],
                    doc["metadata"]["name"]
                ));
            }
        }
    }
    // Each mutation of the support example: both refuse.
    let text = std::fs::read_to_string(repo_root().join("examples/support-to-crm.yaml")).unwrap();
    let docs = yaml_documents(&text).unwrap();
    for (kind, pointer, value) in MUTATIONS {
        let mut doc = docs.iter().find(|d| d["kind"] == *kind).unwrap().clone();
        set(&mut doc, pointer, serde_json::from_str(value).unwrap());
        checked += 1;
        let (client, server) = (
            client_verdict(&doc),
            server_verdict(&cluster, ns.name(), &doc).await,
        );
        if client.is_ok() || server.is_ok() {
            disagreements.push(format!(
                "{kind} {pointer} = {value}: client {client:?}, server {server:?}"
            ));
        }
    }
    assert!(checked >= 35, "only {checked} documents checked");
    assert!(
        disagreements.is_empty(),
        "client-side validation and the API server disagree:\n{}\n{}",
        disagreements.join("\n"),
        ns.dump(&cluster.client).await
    );
}
