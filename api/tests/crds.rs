//! The generated CRDs: `crds/` must match the types, each schema is snapshotted for review, and
//! the CEL rules compile, accept the examples and reject violations with their messages.

use std::path::PathBuf;

use inputbot_api::crd;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn crds_directory_matches_the_types() {
    for c in crd::crds() {
        let path = repo().join("crds").join(crd::file_name(&c));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd::to_yaml(&c),
            "{} is out of date with api/src. Regenerate it with:\n    cargo run -p inputbot-operator -- crds --out-dir crds",
            path.display()
        );
    }
}

#[test]
fn api_reference_matches_the_types() {
    let path = repo().join("docs/api.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == crd::reference_markdown(),
        "{} is out of date with api/src. Regenerate it with:\n    cargo run -p inputbot-operator -- api-docs > docs/api.md",
        path.display()
    );
}

#[test]
fn crd_schemas_match_their_snapshots() {
    for kind in ["InputBot", "Pipeline", "ActionBinding"] {
        insta::assert_yaml_snapshot!(kind, crd::schema(kind).unwrap());
    }
}

/// Every property a user can set is documented (it becomes `kubectl explain`).
#[test]
fn every_schema_property_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                // Kubernetes' own types (ResourceRequirements, Condition) document themselves
                // in the upstream API; metadata is Kubernetes'.
                let upstream =
                    p.contains(".resources.") || p.contains(".conditions.") || name == "metadata";
                if prop.get("description").is_none() && !upstream {
                    missing.push(p.clone());
                }
                walk(&p, prop, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = schema.get(key) {
                walk(path, child, missing);
            }
        }
    }
    let mut missing = Vec::new();
    for kind in ["InputBot", "Pipeline", "ActionBinding"] {
        walk(kind, crd::schema(kind).unwrap(), &mut missing);
    }
    missing.retain(|p| !p.ends_with(".apiVersion") && !p.ends_with(".kind"));
    assert!(missing.is_empty(), "undocumented fields: {missing:#?}");
}

#[test]
fn every_cel_rule_compiles() {
    for kind in ["InputBot", "Pipeline", "ActionBinding"] {
        let compiled = kube_cel::compile_schema(crd::schema(kind).unwrap());
        let errors = compiled.compilation_errors();
        assert!(errors.is_empty(), "{kind}: {errors:?}");
    }
}

fn cel_errors(kind: &str, object: &Value) -> Vec<String> {
    match kube_cel::Validator::new().validate(crd::schema(kind).unwrap(), object, None) {
        Ok(()) => vec![],
        Err(e) => e.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn cel_rules_accept_every_example() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            if crd::schema(&kind).is_none() {
                continue;
            }
            let errors = cel_errors(&kind, &value);
            assert!(errors.is_empty(), "{}: {kind}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} resources in examples/");
}

fn bot(sources: Value) -> Value {
    json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "InputBot",
           "metadata": {"name": "b"}, "spec": {"sources": sources}})
}

#[test]
fn cel_rules_reject_violations_with_their_messages() {
    let none = json!({"none": {}});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": none}},
                                  {"name": "a", "webhook": {"path": "/b", "auth": none}}]),
            ),
            "source names must be unique within the bot",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": none}},
                                  {"name": "b", "webhook": {"path": "/a", "auth": none}}]),
            ),
            "webhook paths must be unique within the bot",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": none},
                                  "schedule": {"cron": "* * * * *"}}]),
            ),
            "set exactly one of webhook, poll, schedule or kafka",
        ),
        (
            "InputBot",
            bot(json!([{"name": "a", "webhook": {"path": "a", "auth": none}}])),
            "path must start with '/'",
        ),
        (
            "InputBot",
            bot(json!([{"name": "a", "webhook": {"path": "/a", "auth": {}}}])),
            "set exactly one of hmac, bearer, basic, jwt, apiKey or none",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": {"jwt": {
                "issuer": "https://i.test", "audience": ["a"], "algorithms": ["RS256", "HS256"],
                "jwks": {"url": "https://i.test/jwks"}}}}}]),
            ),
            "HS256, HS384 and HS512 need sharedSecretRefs",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": {"jwt": {
                "issuer": "https://i.test", "audience": ["a"],
                "sharedSecretRefs": [{"name": "s", "key": "k"}]}}}}]),
            ),
            "sharedSecretRefs need algorithms, and only HS256, HS384 or HS512",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": {"jwt": {
                "issuer": "https://i.test", "audience": ["a"]}}}}]),
            ),
            "set exactly one of jwks, keySecretRefs or sharedSecretRefs",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "webhook": {"path": "/a", "auth": {"jwt": {
                "issuer": "https://i.test", "audience": ["a"], "algorithms": ["ES256", "ES256"],
                "jwks": {"url": "https://i.test/jwks"}}}}}]),
            ),
            "algorithms must not repeat",
        ),
        (
            "InputBot",
            bot(
                json!([{"name": "a", "poll": {"url": "https://f.test", "interval": "1m",
                "oauth2": {"tokenUrl": "https://t.test", "clientId": "c",
                           "clientIdSecretRef": {"name": "s", "key": "id"},
                           "clientSecretRef": {"name": "s", "key": "k"}}}}]),
            ),
            "set exactly one of clientId or clientIdSecretRef",
        ),
        (
            "InputBot",
            json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "InputBot",
                            "metadata": {"name": "b"},
                            "spec": {"sources": [{"name": "a", "schedule": {"cron": "* * * * *"}}],
                                     "ingest": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}}}),
            "minReplicas must be less than or equal to maxReplicas",
        ),
        (
            "ActionBinding",
            json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "ActionBinding",
                                 "metadata": {"name": "x"},
                                 "spec": {"botRef": {"name": "b"}, "pipelineRef": {"name": "p"},
                                          "action": {"log": {}}}}),
            "set exactly one of pipelineRef or botRef",
        ),
        (
            "ActionBinding",
            json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "ActionBinding",
                                 "metadata": {"name": "x"},
                                 "spec": {"botRef": {"name": "b"}, "action": {"log": {}, "kafka": {"topic": "t"}}}}),
            "set exactly one of http, slack, email, kafka, log, teams or sms",
        ),
        (
            "Pipeline",
            json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
                            "metadata": {"name": "p"},
                            "spec": {"botRef": {"name": "b"}, "steps": [{"filter": {"when": "true"}, "transform": {"jq": "."}}]}}),
            "set exactly one of validate, transform, enrich, classify, filter or ai",
        ),
        (
            "Pipeline",
            json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
                            "metadata": {"name": "p".repeat(56)},
                            "spec": {"botRef": {"name": "b"}, "steps": [{"filter": {"when": "true"}}]}}),
            "metadata.name must be at most 55 characters",
        ),
    ];
    for (kind, object, message) in cases {
        let errors = cel_errors(kind, &object);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{kind} {object}: expected {message:?}, got {errors:?}"
        );
    }
}
