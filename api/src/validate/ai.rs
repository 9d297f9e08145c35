//! The `ai` step: the endpoint URL, the API key's Secret and header, the prompt templates, the
//! answer's JSON Schema (an object schema; with `strict`, a warning where OpenAI's strict mode
//! would refuse it), the timeout, the retry policy and the cache.

use serde_json::Value;

use super::{Checker, Severity, fields::is_header_name};
use crate::{ai::AiStep, expr::Scope};

impl Checker<'_> {
    pub(super) fn ai(&mut self, f: &str, ai: &AiStep) {
        self.url(&format!("{f}.url"), &ai.url, false);
        if ai.model.trim().is_empty() {
            self.error(&format!("{f}.model"), "expected a model name, found blanks");
        }
        if let Some(r) = &ai.api_key_secret_ref {
            self.secret(&format!("{f}.apiKeySecretRef"), r);
        }
        if let Some(h) = &ai.api_key_header {
            if ai.api_key_secret_ref.is_none() {
                self.error(
                    &format!("{f}.apiKeyHeader"),
                    "a header for the API key needs apiKeySecretRef",
                );
            }
            if !is_header_name(h) {
                self.error(
                    &format!("{f}.apiKeyHeader"),
                    format!("expected an HTTP header name, found {h:?}"),
                );
            }
        }
        if let Some(system) = &ai.system_prompt {
            self.template(&format!("{f}.systemPrompt"), system, Scope::Event);
        }
        self.template(&format!("{f}.userPrompt"), &ai.user_prompt, Scope::Event);
        let schema_field = format!("{f}.responseSchema");
        let errors_before = self.out.len();
        self.json_schema(&schema_field, &ai.response_schema);
        if self.out.len() == errors_before {
            if ai.response_schema.get("type") != Some(&Value::String("object".into())) {
                self.error(
                    &schema_field,
                    format!(
                        "the answer must be a JSON object: expected \"type\": \"object\" at the top of the schema, found {}",
                        ai.response_schema
                            .get("type")
                            .map_or_else(|| "no type".to_owned(), Value::to_string)
                    ),
                );
            } else if ai.strict != Some(false) {
                let mut loose = Vec::new();
                strict_gaps("", &ai.response_schema, &mut loose);
                if let Some(first) = loose.first() {
                    self.report(
                        Severity::Warning,
                        &schema_field,
                        format!(
                            "strict structured output (OpenAI) needs every object to list all its properties in `required` and to set `additionalProperties: false`; {first} does not{}; set `strict: false` for servers that do not enforce it",
                            if loose.len() > 1 {
                                format!(" (nor {} more)", loose.len() - 1)
                            } else {
                                String::new()
                            }
                        ),
                    );
                }
            }
        }
        self.positive_duration(&format!("{f}.timeout"), ai.timeout.as_ref());
        if let Some(r) = &ai.retry {
            self.retry(&format!("{f}.retry"), r);
        }
        if let Some(c) = &ai.cache {
            self.positive_duration(&format!("{f}.cache.ttl"), Some(&c.ttl));
        }
    }
}

/// Objects of the schema (at JSON pointers) that OpenAI's strict mode would refuse: without
/// `additionalProperties: false`, or with a property missing from `required`.
fn strict_gaps(at: &str, schema: &Value, out: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        return;
    };
    let here = || {
        if at.is_empty() {
            "the top-level object".to_owned()
        } else {
            format!("the object at {at}")
        }
    };
    if map.get("type") == Some(&Value::String("object".into())) {
        let props = map.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let all_required = props.is_none_or(|p| p.keys().all(|k| required.contains(&k.as_str())));
        if map.get("additionalProperties") != Some(&Value::Bool(false)) || !all_required {
            out.push(here());
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            strict_gaps(&format!("{at}/properties/{name}"), sub, out);
        }
    }
    if let Some(items) = map.get("items") {
        strict_gaps(&format!("{at}/items"), items, out);
    }
}
