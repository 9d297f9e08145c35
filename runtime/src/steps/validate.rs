//! The validate step: the event data must match a JSON Schema; the first five violations,
//! each with its JSON pointer, make the dead-letter message.

use crate::event::Event;

/// A compiled JSON Schema.
pub(super) struct Validate(Box<jsonschema::Validator>);

impl Validate {
    pub(super) fn new(schema: &serde_json::Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(|v| Self(Box::new(v)))
            .map_err(|e| e.to_string())
    }

    pub(super) fn apply(&self, event: &Event) -> Result<(), String> {
        let errors: Vec<String> = self
            .0
            .iter_errors(&event.data)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "event data does not match the schema: {}",
                errors.join("; ")
            ))
        }
    }
}
