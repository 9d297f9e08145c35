//! The slack action: posts `{"text": …}` to an incoming-webhook URL read from a Secret. The URL
//! is a credential: messages and `Debug` name the Secret instead.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use http::{HeaderValue, header::CONTENT_TYPE};
use inputbot_api::{
    binding::SlackAction,
    expr::{Scope, Template},
};
use serde_json::json;

use super::{ActionImpl, BuildError, DEFAULT_HTTP_TIMEOUT, other, timeout_of, webhook_url};
use crate::{delivery::AttemptError, event::Event, outbound::send_request, secrets::Secrets};

pub(super) struct SlackImpl {
    /// The webhook URL: a credential. Never in a message or in `Debug`.
    url: reqwest::Url,
    /// How messages name the target instead of the URL.
    target: String,
    text_source: String,
    text: Template,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for SlackImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackAction")
            .field("webhook", &self.target)
            .field("text", &self.text_source)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SlackImpl {
    pub(super) fn build(
        spec: &SlackAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        let field = "slack.webhookSecretRef";
        let (url, label) = webhook_url(field, &spec.webhook_secret_ref, secrets)?;
        Ok(Self {
            url,
            target: format!("Slack webhook ({label})"),
            text_source: spec.text.clone(),
            text: Template::compile(&spec.text, Scope::Event)
                .map_err(|e| BuildError::invalid("slack.text", e))?,
            timeout: timeout_of(spec.timeout.as_ref(), "slack.timeout", DEFAULT_HTTP_TIMEOUT)?,
            client,
        })
    }
}

impl ActionImpl for SlackImpl {
    fn kind(&self) -> &'static str {
        "slack"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let text = self
                .text
                .render(&event.activation())
                .map_err(|e| other(format!("slack.text: {e}")))?;
            let mut request = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            *request.body_mut() = Some(json!({ "text": text }).to_string().into());
            let target = format!("POST {}", self.target);
            send_request(&self.client, request, self.timeout, "", &target).await?;
            Ok(())
        })
    }
}
