//! The event envelope: a CloudEvent 1.0 with inputbot's extensions, as it moves between
//! stages. On Kafka it travels in binary mode (`ce_` headers, data as the value); on the
//! embedded bus it is passed as it is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use inputbot_api::expr::Activation;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A CloudEvent 1.0 plus the labels classify steps added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (a UUIDv7 for events inputbot creates; the sender's for CloudEvents).
    pub id: String,
    /// CloudEvent `source`, e.g. `/inputbot/team-a/support-intake/zendesk`.
    pub source: String,
    /// CloudEvent `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// CloudEvent `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the event happened (or was received).
    pub time: DateTime<Utc>,
    /// The payload, as JSON.
    pub data: Value,
    /// Labels added by classify steps, in the order they were added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// `inputbotbot`: the InputBot (`namespace/name`) that accepted the event.
    pub bot: String,
    /// `inputbotsource`: the bot's source that accepted it.
    #[serde(rename = "botsource")]
    pub bot_source: String,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Other CloudEvent extension attributes, passed through.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
    /// `inputbotauth`: what the webhook's auth verified, set by intake only (never taken from a
    /// request): `{"scheme": "jwt", "claims": {…}}` or `{"scheme": "apiKey", "key": "<secret>/<key>"}`.
    /// CEL and templates see it as `auth` (`{}` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Value>,
}

impl Event {
    /// A new event with a fresh id and trace.
    pub fn new(bot: &str, bot_source: &str, ty: &str, data: Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: format!("/inputbot/{bot}/{bot_source}"),
            ty: ty.to_owned(),
            subject: None,
            time: Utc::now(),
            data,
            labels: Vec::new(),
            bot: bot.to_owned(),
            bot_source: bot_source.to_owned(),
            traceparent: Some(new_traceparent()),
            extensions: BTreeMap::new(),
            auth: None,
        }
    }

    /// The trace id from `traceparent`, for logs and dead letters.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
    }

    /// The CloudEvent attributes CEL and templates see as `event`.
    pub fn attributes(&self) -> Value {
        json!({
            "id": self.id,
            "source": self.source,
            "type": self.ty,
            "subject": self.subject,
            "time": self.time.to_rfc3339(),
            "bot": self.bot,
            "botsource": self.bot_source,
        })
    }

    /// Variables for CEL expressions and templates in pipelines and actions.
    pub fn activation(&self) -> Activation {
        Activation::new()
            .with("data", self.data.clone())
            .with("event", self.attributes())
            .with("labels", json!(self.labels))
            .with("auth", self.auth_value())
    }

    /// What CEL sees as `auth`: the verified auth, or `{}`.
    pub fn auth_value(&self) -> Value {
        self.auth.clone().unwrap_or_else(|| json!({}))
    }
}

/// A new W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_events_have_unique_ids_and_a_valid_traceparent() {
        let a = Event::new("ns/bot", "hook", "t", json!({}));
        let b = Event::new("ns/bot", "hook", "t", json!({}));
        assert_ne!(a.id, b.id);
        let tp = a.traceparent.as_deref().unwrap();
        assert_eq!(tp.len(), 55);
        assert_eq!(a.trace_id().unwrap().len(), 32);
        assert_eq!(a.source, "/inputbot/ns/bot/hook");
    }

    #[test]
    fn activation_exposes_data_event_and_labels() {
        let mut e = Event::new("ns/bot", "hook", "t", json!({"x": 1}));
        e.labels.push("billing".into());
        let expr = inputbot_api::expr::CelExpr::compile(
            r#"data.x == 1 && event.type == "t" && "billing" in labels"#,
            inputbot_api::expr::Scope::Event,
        )
        .unwrap();
        assert!(expr.eval_bool(&e.activation()).unwrap());
    }
}
