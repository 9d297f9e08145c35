//! The sms action: one text message per event through Twilio's Messages API —
//! `POST {apiUrl}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From` and
//! `Body`, HTTP basic auth with the Account SID and the auth token (both from Secrets).
//!
//! Failures are classified from Twilio's error answer (`{"code": 21211, "message": "…",
//! "more_info": "…", "status": 400}`): `429` and `5xx` are [`FailureClass::Status`] (retried
//! under the delivery policy, honouring `Retry-After`); any other `4xx` — a number Twilio
//! refuses, a blocked recipient, wrong credentials — is permanent: [`FailureClass::Other`] with
//! the status, so the event goes to the dead letter at once, whatever `retryOn` says. The
//! message carries Twilio's code and text. Neither the auth token nor the Account SID appears
//! in a message or in `Debug`.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use inputbot_api::{
    binding::SmsAction,
    config::FailureClass,
    expr::{Scope, Template},
    messaging::DEFAULT_TWILIO_API_URL,
    validate::check_e164,
};
use serde::Deserialize;

use super::{ActionImpl, BuildError, DEFAULT_HTTP_TIMEOUT, other, timeout_of};
use crate::{
    delivery::AttemptError,
    event::Event,
    outbound::{self, Answer, exchange, preview},
    secrets::{FieldError, Secrets},
};

/// The longest body Twilio accepts, in characters; longer texts are cut.
pub const MAX_BODY_CHARS: usize = 1600;

pub(super) struct SmsImpl {
    /// `{apiUrl}/2010-04-01/Accounts/{sid}/Messages.json`. Holds the SID: never shown.
    url: reqwest::Url,
    account_sid: String,
    /// A credential: never in a message or in `Debug`.
    auth_token: String,
    /// How messages name the target.
    target: String,
    from: String,
    to: Template,
    body: Template,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for SmsImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsAction")
            .field("target", &self.target)
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Twilio's error answer.
#[derive(Debug, Deserialize)]
struct TwilioError {
    code: Option<i64>,
    message: Option<String>,
    more_info: Option<String>,
}

impl SmsImpl {
    pub(super) fn build(
        spec: &SmsAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        let secret = |r, field: &str| {
            secrets.get_string(r).map_err(|error| FieldError::Secret {
                field: field.to_owned(),
                error,
            })
        };
        let sid_field = "sms.accountSidSecretRef";
        let account_sid = secret(&spec.account_sid_secret_ref, sid_field)?
            .trim()
            .to_owned();
        if account_sid.is_empty() || !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BuildError::invalid(
                sid_field,
                format!(
                    "{} does not hold a Twilio Account SID (letters and digits, such as AC followed by 32 hex digits)",
                    secrets.label(&spec.account_sid_secret_ref)
                ),
            ));
        }
        let auth_token = secret(&spec.auth_token_secret_ref, "sms.authTokenSecretRef")?
            .trim()
            .to_owned();
        let base = spec.api_url.as_deref().unwrap_or(DEFAULT_TWILIO_API_URL);
        let base = reqwest::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                BuildError::invalid(
                    "sms.apiUrl",
                    format!(
                        "expected an http or https URL, found {:?}",
                        outbound::redact_url_str(base)
                    ),
                )
            })?;
        let root = base.as_str().trim_end_matches('/');
        let url = reqwest::Url::parse(&format!(
            "{root}/2010-04-01/Accounts/{account_sid}/Messages.json"
        ))
        .map_err(|e| BuildError::invalid("sms.apiUrl", format!("cannot build the URL: {e}")))?;
        let target = format!(
            "POST {}/2010-04-01/Accounts/…/Messages.json",
            outbound::redact_url(&base).trim_end_matches('/')
        );
        Ok(Self {
            url,
            account_sid,
            auth_token,
            target,
            from: spec.from.clone(),
            to: Template::compile(&spec.to, Scope::Event)
                .map_err(|e| BuildError::invalid("sms.to", e))?,
            body: Template::compile(&spec.body, Scope::Event)
                .map_err(|e| BuildError::invalid("sms.body", e))?,
            timeout: timeout_of(spec.timeout.as_ref(), "sms.timeout", DEFAULT_HTTP_TIMEOUT)?,
            client,
        })
    }

    /// The error for a non-2xx answer, classified as the module docs say.
    fn classify(&self, answer: &Answer) -> AttemptError {
        let parsed: Option<TwilioError> = serde_json::from_slice(&answer.body).ok();
        let detail = match parsed {
            Some(TwilioError {
                code,
                message,
                more_info,
            }) if code.is_some() || message.is_some() => format!(
                ": Twilio error {}: {}{}",
                code.map_or_else(|| "?".to_owned(), |c| c.to_string()),
                outbound::one_line(message.as_deref().unwrap_or("(no message)")),
                more_info.map(|m| format!(" ({m})")).unwrap_or_default()
            ),
            _ => preview(&answer.body),
        };
        let code = answer.status;
        if code == 429 || !(400..500).contains(&code) {
            return answer.status_error("sms: ", &self.target, &detail);
        }
        AttemptError {
            class: FailureClass::Other,
            status: Some(code),
            message: format!(
                "sms: HTTP {code} from {}{detail} (permanent: not retried)",
                self.target
            ),
            retry_after: None,
        }
    }
}

impl ActionImpl for SmsImpl {
    fn kind(&self) -> &'static str {
        "sms"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let vars = event.activation();
            let to = self
                .to
                .render(&vars)
                .map_err(|e| other(format!("sms.to: {e}")))?;
            let to = to.trim();
            check_e164(to).map_err(|e| other(format!("sms.to: {e}")))?;
            let body = self
                .body
                .render(&vars)
                .map_err(|e| other(format!("sms.body: {e}")))?;
            let body: String = body.chars().take(MAX_BODY_CHARS).collect();
            let request = self
                .client
                .post(self.url.clone())
                .basic_auth(&self.account_sid, Some(&self.auth_token))
                .form(&[("To", to), ("From", self.from.as_str()), ("Body", &body)])
                .build()
                .map_err(|e| {
                    other(format!(
                        "sms: cannot build the request: {}",
                        outbound::chain(&e.without_url())
                    ))
                })?;
            let answer =
                exchange(&self.client, request, self.timeout, "sms: ", &self.target).await?;
            if !(200..300).contains(&answer.status) {
                return Err(self.classify(&answer));
            }
            Ok(())
        })
    }
}
