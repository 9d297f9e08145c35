//! The teams action: posts an Adaptive Card (title, text, facts) to a Microsoft Teams incoming
//! webhook or a Workflows webhook URL read from a Secret, in the message form Microsoft
//! documents for both:
//!
//! ```json
//! {"type": "message",
//!  "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
//!                   "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
//!                               "type": "AdaptiveCard", "version": "1.2",
//!                               "body": [{"type": "TextBlock", "text": "<title>", "size": "Large", "weight": "Bolder", "wrap": true},
//!                                        {"type": "TextBlock", "text": "<text>", "wrap": true},
//!                                        {"type": "FactSet", "facts": [{"title": "…", "value": "…"}]}]}}]}
//! ```
//!
//! Workflows answer `202 Accepted`, incoming webhooks `200` with the body `1`. An incoming
//! webhook that could not deliver may still answer `200`, with a body such as `Webhook message
//! delivery failed with error: Microsoft Teams endpoint returned HTTP error 429 …`: that is a
//! failure with the status it names (so a `429` is retried), not a delivery. The URL is a
//! credential: messages and `Debug` name the Secret instead.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use http::{HeaderValue, header::CONTENT_TYPE};
use inputbot_api::{
    binding::TeamsAction,
    expr::{Activation, Scope, Template},
};
use serde_json::{Value, json};

use super::{ActionImpl, BuildError, DEFAULT_HTTP_TIMEOUT, other, timeout_of, webhook_url};
use crate::{
    delivery::AttemptError,
    event::Event,
    outbound::{one_line, send_request},
    secrets::Secrets,
};

/// The Adaptive Card schema version sent (every element used exists since 1.0).
pub const CARD_VERSION: &str = "1.2";
/// The attachment content type of an Adaptive Card.
pub const CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

pub(super) struct TeamsImpl {
    /// The webhook URL: a credential. Never in a message or in `Debug`.
    url: reqwest::Url,
    /// How messages name the target instead of the URL.
    target: String,
    title: Option<Template>,
    text: Template,
    facts: Vec<(Template, Template)>,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for TeamsImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeamsAction")
            .field("webhook", &self.target)
            .field("facts", &self.facts.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TeamsImpl {
    pub(super) fn build(
        spec: &TeamsAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        let field = "teams.webhookSecretRef";
        let (url, label) = webhook_url(field, &spec.webhook_secret_ref, secrets)?;
        let compile = |source: &str, field: String| {
            Template::compile(source, Scope::Event).map_err(|e| BuildError::invalid(field, e))
        };
        Ok(Self {
            url,
            target: format!("Teams webhook ({label})"),
            title: spec
                .title
                .as_deref()
                .map(|t| compile(t, "teams.title".into()))
                .transpose()?,
            text: compile(&spec.text, "teams.text".into())?,
            facts: spec
                .facts
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    Ok((
                        compile(&f.title, format!("teams.facts[{i}].title"))?,
                        compile(&f.value, format!("teams.facts[{i}].value"))?,
                    ))
                })
                .collect::<Result<_, BuildError>>()?,
            timeout: timeout_of(spec.timeout.as_ref(), "teams.timeout", DEFAULT_HTTP_TIMEOUT)?,
            client,
        })
    }

    /// The message for one event: an Adaptive Card in a `message` activity.
    pub(super) fn message(&self, vars: &Activation) -> Result<Value, String> {
        let mut body = Vec::new();
        if let Some(title) = &self.title {
            let title = title
                .render(vars)
                .map_err(|e| format!("teams.title: {e}"))?;
            body.push(json!({"type": "TextBlock", "text": title, "size": "Large",
                             "weight": "Bolder", "wrap": true}));
        }
        let text = self
            .text
            .render(vars)
            .map_err(|e| format!("teams.text: {e}"))?;
        body.push(json!({"type": "TextBlock", "text": text, "wrap": true}));
        if !self.facts.is_empty() {
            let facts = self
                .facts
                .iter()
                .enumerate()
                .map(|(i, (title, value))| {
                    Ok(json!({
                        "title": title.render(vars).map_err(|e| format!("teams.facts[{i}].title: {e}"))?,
                        "value": value.render(vars).map_err(|e| format!("teams.facts[{i}].value: {e}"))?,
                    }))
                })
                .collect::<Result<Vec<_>, String>>()?;
            body.push(json!({"type": "FactSet", "facts": facts}));
        }
        Ok(json!({
            "type": "message",
            "attachments": [{
                "contentType": CARD_CONTENT_TYPE,
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": CARD_VERSION,
                    "body": body,
                },
            }],
        }))
    }
}

impl ActionImpl for TeamsImpl {
    fn kind(&self) -> &'static str {
        "teams"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let message = self.message(&event.activation()).map_err(other)?;
            let mut request = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            *request.body_mut() = Some(message.to_string().into());
            let target = format!("POST {}", self.target);
            let (_, _, body) =
                send_request(&self.client, request, self.timeout, "", &target).await?;
            match delivery_failure(&body) {
                None => Ok(()),
                Some(error) => Err(error.prefixed(&target)),
            }
        })
    }
}

/// A failure an incoming webhook reports in a `200` body.
struct BodyFailure {
    status: Option<u16>,
    text: String,
}

impl BodyFailure {
    fn prefixed(self, target: &str) -> AttemptError {
        let message = format!("{target} answered 200 but did not deliver: {}", self.text);
        match self.status {
            Some(code) => AttemptError::status(code, message),
            None => other(message),
        }
    }
}

/// `Some` when a 2xx body says the message was not delivered.
fn delivery_failure(body: &[u8]) -> Option<BodyFailure> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.contains("delivery failed") {
        return None;
    }
    let status = text
        .split("HTTP error ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (400..600).contains(code));
    Some(BodyFailure {
        status,
        text: one_line(&text.chars().take(200).collect::<String>()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_body_reporting_a_failed_delivery_is_a_failure_with_its_status() {
        let f = delivery_failure(b"Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0").unwrap();
        assert_eq!(f.status, Some(429));
        assert!(delivery_failure(b"1").is_none());
        assert!(delivery_failure(b"").is_none());
        let f = delivery_failure(b"Webhook message delivery failed").unwrap();
        assert_eq!(f.status, None);
    }
}
