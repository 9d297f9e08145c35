//! The dead-letter notice: a Slack message to a person when an event of a binding is
//! dead-lettered (`notify.onDeadLetter`), rendered from a template that also sees `error`.
//! A notice that cannot be sent is logged, never retried: the dead letter itself is stored.

use std::time::Duration;

use inputbot_api::{
    binding::DeadLetterNotice,
    config::{FailureClass, ResourceId},
    expr::{Scope, Template},
};
use serde_json::json;

use super::DeadLetter;
use crate::{outbound, secrets::Secrets};

/// Posts a notice when an event is dead-lettered.
pub(crate) struct Notifier {
    url: String,
    /// Names the webhook in logs; the URL itself is a credential and is never logged.
    target: String,
    text: Template,
    timeout: Duration,
    client: reqwest::Client,
}

impl Notifier {
    pub(crate) async fn notify(&self, record: &DeadLetter) {
        let vars = record.event.activation().with(
            "error",
            json!({
                "class": record.error.class, "message": record.error.message,
                "status": record.error.status, "attempts": record.error.attempts,
                "stage": record.failed_at.stage, "name": record.failed_at.name,
            }),
        );
        let text = match self.text.render(&vars) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(target: "inputbot::stage", "dead-letter notice not sent: {e}");
                return;
            }
        };
        let request = self.client.post(&self.url).json(&json!({"text": text}));
        if let Err(e) = outbound::send(&self.client, request, self.timeout, "").await {
            // `e.message` names the URL; say what failed without it.
            let why = match (e.status, &e.class) {
                (Some(status), _) => format!("HTTP {status}"),
                (None, FailureClass::Timeout) => format!("no answer within {:?}", self.timeout),
                (None, FailureClass::Connection) => "cannot connect".to_owned(),
                (None, _) => "request failed".to_owned(),
            };
            tracing::warn!(target: "inputbot::stage", "dead-letter notice to {} not sent: {why}", self.target);
        }
    }
}

impl Notifier {
    /// Reads the webhook URL and compiles the text. Errors name the field under
    /// `spec.notify.onDeadLetter.slack` and never contain the URL.
    pub(crate) fn build(
        notice: &DeadLetterNotice,
        binding: &ResourceId,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, (String, String)> {
        let field = |f: &str| format!("spec.notify.onDeadLetter.slack.{f}");
        let url = secrets
            .get_string(&notice.slack.webhook_secret_ref)
            .map_err(|e| (field("webhookSecretRef"), e.to_string()))?;
        let text = Template::compile(&notice.slack.text, Scope::DeadLetter)
            .map_err(|message| (field("text"), message))?;
        let timeout = notice
            .slack
            .timeout
            .as_ref()
            .and_then(|d| d.to_std().ok())
            .unwrap_or(Duration::from_secs(10));
        let r = &notice.slack.webhook_secret_ref;
        Ok(Notifier {
            url,
            target: format!(
                "the Slack webhook in Secret {}/{} key {:?}",
                binding.namespace, r.name, r.key
            ),
            text,
            timeout,
            client,
        })
    }
}
