//! Reading the files a user would `kubectl apply`: multi-document YAML holding InputBots,
//! Pipelines, ActionBindings and Secrets.
//!
//! Loading never panics. Each document is first read as plain JSON, checked against the CRD
//! schema (unknown fields, types, patterns, bounds) and the CRD's CEL rules — the same checks
//! the API server runs at apply time — and only then deserialized into the typed resource.
//! Every problem names the file, the document's index and the field path.

use std::{collections::BTreeMap, fmt, path::Path};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde_json::Value;

use crate::{ActionBinding, InputBot, Pipeline, crd};

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// File name as given.
    pub file: String,
    /// Zero-based index of the document in the file.
    pub index: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file, self.index + 1)
    }
}

/// A problem found while loading one document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", resource.as_ref().map(|r| format!("{r}: ")).unwrap_or_default())]
pub struct LoadError {
    /// Where the document is.
    pub origin: Origin,
    /// `Kind namespace/name` when the document got that far.
    pub resource: Option<String>,
    /// What is wrong, with the field path where there is one.
    pub message: String,
}

/// The resources of one or more files, with defaults for namespaces applied.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    /// InputBots.
    pub bots: Vec<InputBot>,
    /// Pipelines.
    pub pipelines: Vec<Pipeline>,
    /// ActionBindings.
    pub bindings: Vec<ActionBinding>,
    /// Secrets, whose values are only used locally (never logged).
    pub secrets: Vec<Secret>,
    /// Where each resource came from, by `Kind namespace/name`.
    pub origins: BTreeMap<String, Origin>,
}

impl ResourceSet {
    /// The value of a Secret key, if the set holds it (`stringData` wins over `data`).
    pub fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let secret = self.secrets.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref() == Some(namespace)
        })?;
        if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.as_bytes().to_vec());
        }
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
    }

    /// Whether the set holds a Secret with this name (with or without the key).
    pub fn has_secret(&self, namespace: &str, name: &str) -> bool {
        self.secrets.iter().any(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref() == Some(namespace)
        })
    }
}

/// The API version of the three resources.
pub const API_VERSION: &str = "inputbot.dev/v1alpha1";

/// Reads files into a set; problems of every document are collected, not just the first.
pub fn load_files(
    paths: &[impl AsRef<Path>],
    default_namespace: &str,
) -> Result<ResourceSet, Vec<LoadError>> {
    let mut set = ResourceSet::default();
    let mut errors = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Err(mut e) = load_str(&mut set, &file, &text, default_namespace) {
                    errors.append(&mut e);
                }
            }
            Err(e) => errors.push(LoadError {
                origin: Origin { file, index: 0 },
                resource: None,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Adds the documents of one YAML text to `set`.
pub fn load_str(
    set: &mut ResourceSet,
    file: &str,
    text: &str,
    default_namespace: &str,
) -> Result<(), Vec<LoadError>> {
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            index,
        };
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(LoadError {
                    origin,
                    resource: None,
                    message: format!("not valid YAML: {e}"),
                });
                // After a syntax error the YAML stream cannot be trusted any further.
                break;
            }
        };
        if let Err(e) = load_value(set, origin, value, default_namespace) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn load_value(
    set: &mut ResourceSet,
    origin: Origin,
    mut value: Value,
    default_namespace: &str,
) -> Result<(), LoadError> {
    let fail = |resource: Option<String>, message: String| LoadError {
        origin: origin.clone(),
        resource,
        message,
    };
    let obj = match &mut value {
        Value::Null => return Ok(()), // an empty document, e.g. after a trailing `---`
        Value::Object(obj) => obj,
        other => {
            return Err(fail(
                None,
                format!(
                    "expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
                    json_type(other)
                ),
            ));
        }
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(fail(
            None,
            "apiVersion and kind must both be set to strings".to_owned(),
        ));
    }
    let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
    let known = matches!(
        (api_version.as_str(), kind.as_str()),
        (API_VERSION, "InputBot" | "Pipeline" | "ActionBinding") | ("v1", "Secret")
    );
    if !known {
        let hint = if ["InputBot", "Pipeline", "ActionBinding"].contains(&kind.as_str()) {
            format!("; {kind} is served as apiVersion {API_VERSION}")
        } else {
            String::new()
        };
        return Err(fail(
            None,
            format!(
                "unsupported object {api_version}/{kind}: expected InputBot, Pipeline or ActionBinding ({API_VERSION}) or Secret (v1){hint}"
            ),
        ));
    }
    // metadata: a name is required, the namespace defaults.
    let metadata = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(fail(None, "metadata must be a mapping".to_owned()));
    };
    let name = match metadata.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(fail(
                None,
                format!("{kind}: metadata.name must be set to a non-empty string"),
            ));
        }
    };
    let namespace = match metadata.get("namespace") {
        None | Some(Value::Null) => default_namespace.to_owned(),
        Some(Value::String(ns)) => ns.clone(),
        Some(_) => {
            return Err(fail(
                None,
                format!("{kind} {name}: metadata.namespace must be a string"),
            ));
        }
    };
    metadata.insert("namespace".into(), Value::String(namespace.clone()));
    let resource = format!("{kind} {namespace}/{name}");
    if let Some(previous) = set.origins.get(&resource) {
        return Err(fail(
            Some(resource),
            format!("defined twice: also at {previous}"),
        ));
    }

    if kind != "Secret" {
        let problems = crd::check_document(&kind, &value);
        if !problems.is_empty() {
            return Err(fail(Some(resource), problems.join("; ")));
        }
    }
    let typed = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    };
    match kind.as_str() {
        "InputBot" => set.bots.push(
            serde_path_to_error::deserialize(value)
                .map_err(|e| fail(Some(resource.clone()), typed(e)))?,
        ),
        "Pipeline" => set.pipelines.push(
            serde_path_to_error::deserialize(value)
                .map_err(|e| fail(Some(resource.clone()), typed(e)))?,
        ),
        "ActionBinding" => set.bindings.push(
            serde_path_to_error::deserialize(value)
                .map_err(|e| fail(Some(resource.clone()), typed(e)))?,
        ),
        _ => set
            .secrets
            .push(secret(value).map_err(|m| fail(Some(resource.clone()), m))?),
    }
    set.origins.insert(resource, origin);
    Ok(())
}

/// A Secret document, with errors that never show a value: a type error from serde quotes the
/// value it found (`invalid type: integer `8675309``), and that value is a secret.
fn secret(value: Value) -> Result<Secret, String> {
    for field in ["stringData", "data"] {
        let Some(entries) = value.get(field) else {
            continue;
        };
        let Some(entries) = entries.as_object() else {
            return Err(format!(
                "{field}: expected a mapping of keys to strings, found {}",
                json_type(entries)
            ));
        };
        if let Some((key, v)) = entries.iter().find(|(_, v)| !v.is_string()) {
            return Err(format!(
                "{field}.{key}: expected a string, found {} (quote it; the value is not shown)",
                json_type(v)
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        format!(
            "{}: does not match a v1 Secret (the value is not shown)",
            e.path()
        )
    })
}

/// `object`, `array`, `string`, … for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ResourceSet, Vec<LoadError>> {
        let mut set = ResourceSet::default();
        load_str(&mut set, "t.yaml", text, "default").map(|()| set)
    }

    fn first_error(text: &str) -> String {
        load(text).unwrap_err()[0].to_string()
    }

    #[test]
    fn a_secret_value_of_the_wrong_type_is_named_by_its_key_and_never_shown() {
        let doc =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {token: 8675309}\n";
        let message = first_error(doc);
        assert!(
            message.contains("stringData.token: expected a string, found a number"),
            "{message}"
        );
        assert!(!message.contains("8675309"), "{message}");
        let doc = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: [8675309]}\n";
        let message = first_error(doc);
        assert!(
            message.contains("data.token: expected a string, found a list"),
            "{message}"
        );
        assert!(!message.contains("8675309"), "{message}");
        let doc = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: {t: 8675309}\n";
        let message = first_error(doc);
        assert!(
            message.contains("type: does not match a v1 Secret"),
            "{message}"
        );
        assert!(!message.contains("8675309"), "{message}");
    }

    #[test]
    fn reads_secrets_from_string_data_and_data() {
        let set = load(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: x}\ndata: {b: eQ==}\n",
        )
        .unwrap();
        assert_eq!(set.secret_value("default", "s", "a").unwrap(), b"x");
        assert_eq!(set.secret_value("default", "s", "b").unwrap(), b"y");
        assert!(set.secret_value("default", "s", "c").is_none());
    }

    #[test]
    fn names_file_and_document_for_unknown_kinds() {
        let err = first_error("---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
        assert!(
            err.starts_with("t.yaml (document 1): unsupported object apps/v1/Deployment"),
            "{err}"
        );
    }

    #[test]
    fn hints_at_the_right_api_version() {
        let err = first_error("apiVersion: inputbot.dev/v1\nkind: InputBot\nmetadata: {name: x}\n");
        assert!(
            err.contains("served as apiVersion inputbot.dev/v1alpha1"),
            "{err}"
        );
    }

    #[test]
    fn reports_broken_yaml_and_non_objects() {
        assert!(first_error("a: [1, 2\n").contains("not valid YAML"));
        assert!(first_error("- 1\n- 2\n").contains("found a list"));
        assert!(first_error("apiVersion: v1\n").contains("apiVersion and kind"));
    }

    #[test]
    fn rejects_a_resource_defined_twice() {
        let doc = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
        let err = first_error(&format!("{doc}---\n{doc}"));
        assert!(
            err.contains(
                "t.yaml (document 2): Secret default/s: defined twice: also at t.yaml (document 1)"
            ),
            "{err}"
        );
    }

    #[test]
    fn skips_empty_documents() {
        assert!(load("---\n---\n").unwrap().bots.is_empty());
    }
}
