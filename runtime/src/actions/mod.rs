//! Actions: what an ActionBinding does with each event that reaches it.
//!
//! Each action is compiled once by [`build`] (templates, jq, Secrets, the SMTP transport) into
//! an [`ActionImpl`], and the delivery engine ([`crate::delivery::Deliverer`]) calls
//! [`ActionImpl::attempt`] once per attempt. Every failure is classified for the retry policy:
//!
//! | failure | class | retried by default |
//! |---|---|---|
//! | no answer within the timeout (HTTP or SMTP) | [`FailureClass::Timeout`] | yes |
//! | cannot connect, connection broke, TLS failed | [`FailureClass::Connection`] | yes |
//! | HTTP non-2xx answer | [`FailureClass::Status`]`(code)` with `Retry-After` | 429 and 5xx |
//! | SMTP transient reply (4xx: 421, 450, 451, 452, …) | [`FailureClass::Connection`] | yes |
//! | SMTP permanent reply (5xx: 550, 553, 554, …) | [`FailureClass::Other`] | no |
//! | a body, URL, text, subject or jq that cannot be evaluated for this event | [`FailureClass::Other`] | no |
//! | Twilio: a `4xx` other than `429` (a refused number, wrong credentials) | [`FailureClass::Other`] with the status | no |
//!
//! SMTP replies are *not* mapped to [`FailureClass::Status`]: `retryOn` speaks HTTP, where `5xx`
//! means "try again" and `4xx` "do not", while SMTP means the opposite (`4xx` transient, `5xx`
//! permanent). A transient SMTP reply is therefore retried like a connection failure, and a
//! permanent one is dead-lettered at once; the SMTP code is in the message.
//!
//! An **http** request carries the configured headers (Secrets resolved at build time), the
//! body (`jq` → JSON, `template` → text, none → the event data as JSON, except for `GET` and
//! `DELETE`, which then carry no body), `Content-Type` unless a configured header sets it, the
//! idempotency header with the event id, the CloudEvents binary-mode attributes (`ce-specversion`,
//! `ce-id`, `ce-source`, `ce-type`, `ce-time`, `ce-subject`) and `traceparent`.
//!
//! No message and no `Debug` output carries a Secret value: header values from Secrets, the
//! Slack webhook URL and the SMTP password are kept out of both, and URLs in messages lose their
//! query string and credentials.//!
//! ```text
//!  actions/
//!   mod.rs    ActionImpl (the trait), BuildError, build: spec → action
//!   http.rs   the http action (body, headers, idempotency key, CloudEvents attributes)
//!   slack.rs  the slack action (webhook URL from a Secret)
//!   email.rs  the email action (SMTP; transient and permanent replies)
//!   kafka.rs  the kafka action (a record in binary mode; built on the Kafka bus only)
//!   log.rs    the log action (a line on stdout)
//!   teams.rs  the teams action (an Adaptive Card; webhook URL from a Secret)
//!   sms.rs    the sms action (Twilio's Messages API; errors classified from Twilio's answer)
//! ```
//!
//! Sending, failure classification, `Retry-After` and URL redaction live in
//! [`crate::outbound`], shared with the enrich step and the poll source.

mod email;
mod http;
pub(crate) mod kafka;
mod log;
mod slack;
mod sms;
mod teams;
#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use inputbot_api::{
    binding::{Action, ActionKind},
    common::Duration as SpecDuration,
    config::FailureClass,
};

use self::{
    email::EmailImpl, http::HttpImpl, log::LogImpl, slack::SlackImpl, sms::SmsImpl,
    teams::TeamsImpl,
};
pub use crate::outbound::{MAX_RESPONSE_BYTES, parse_retry_after, resolve_headers, send};
use crate::{
    delivery::AttemptError,
    event::Event,
    secrets::{FieldError, Secrets},
};

/// Default timeout of one HTTP or Slack attempt.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of one SMTP attempt.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default header carrying the event id on every HTTP attempt.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// One action of an ActionBinding, compiled once (templates, jq, secrets, SMTP transport) and run
/// per attempt.
pub trait ActionImpl: Send + Sync {
    /// `http`, `slack`, `email`, `kafka`, `log`, `teams`, `sms`.
    fn kind(&self) -> &'static str;
    /// One attempt to deliver `event` (attempt is 1-based). Errors are classified for the retry
    /// policy.
    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>>;
}

impl fmt::Debug for dyn ActionImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActionImpl({})", self.kind())
    }
}

/// Why an action cannot be built. Every message starts with the field at fault and never
/// contains a Secret value.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A field cannot be used: its value, or the Secret it references.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Kafka actions need the Kafka bus; they are built by it, not here.
    #[error(
        "kafka.topic: writing to Kafka topic {topic:?} needs the Kafka bus, and the local embedded run has none; run the binding in a cluster (the act role) or use another action locally"
    )]
    NeedsKafka {
        /// The target topic.
        topic: String,
    },
    /// Zero or several action kinds are set.
    #[error("action: set exactly one of http, slack, email, kafka, log, teams or sms")]
    NoKind,
}

impl BuildError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError::Field(FieldError::invalid(field, message))
    }
}

/// Builds the action. `client` is shared (connection pooling). Kafka actions need the Kafka
/// bus ([`build_on`]): here they are [`BuildError::NeedsKafka`].
pub fn build(
    action: &Action,
    secrets: &Secrets,
    client: reqwest::Client,
) -> Result<Arc<dyn ActionImpl>, BuildError> {
    match action.kind().ok_or(BuildError::NoKind)? {
        ActionKind::Http(http) => Ok(Arc::new(HttpImpl::build(http, secrets, client)?)),
        ActionKind::Slack(slack) => Ok(Arc::new(SlackImpl::build(slack, secrets, client)?)),
        ActionKind::Email(email) => Ok(Arc::new(EmailImpl::build(email, secrets)?)),
        ActionKind::Kafka(kafka) => Err(BuildError::NeedsKafka {
            topic: kafka.topic.clone(),
        }),
        ActionKind::Log(log) => Ok(Arc::new(LogImpl::build(log)?)),
        ActionKind::Teams(teams) => Ok(Arc::new(TeamsImpl::build(teams, secrets, client)?)),
        ActionKind::Sms(sms) => Ok(Arc::new(SmsImpl::build(sms, secrets, client)?)),
    }
}

/// Builds the action, with `kafka` for a kafka action (the act role in a cluster); without it
/// (the embedded bus) a kafka action is [`BuildError::NeedsKafka`].
pub fn build_on(
    action: &Action,
    secrets: &Secrets,
    client: reqwest::Client,
    kafka: Option<&Arc<crate::bus::KafkaBus>>,
) -> Result<Arc<dyn ActionImpl>, BuildError> {
    match (action.kind(), kafka) {
        (Some(ActionKind::Kafka(spec)), Some(bus)) => {
            Ok(Arc::new(kafka::KafkaImpl::build(spec, bus.clone())?))
        }
        _ => build(action, secrets, client),
    }
}

fn other(message: impl Into<String>) -> AttemptError {
    AttemptError::new(FailureClass::Other, message)
}

/// The incoming-webhook URL a chat action keeps in a Secret (Slack, Teams), checked to be
/// http or https, and the Secret's label for messages (the URL itself is a credential and is
/// never quoted).
fn webhook_url(
    field: &str,
    secret: &inputbot_api::common::SecretKeyRef,
    secrets: &Secrets,
) -> Result<(reqwest::Url, String), BuildError> {
    let label = secrets.label(secret);
    let raw = secrets
        .get_string(secret)
        .map_err(|error| FieldError::Secret {
            field: field.to_owned(),
            error,
        })?;
    // `url::ParseError` does not quote its input.
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| {
        BuildError::invalid(field, format!("{label} does not hold a valid URL: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BuildError::invalid(
            field,
            format!("{label} does not hold an http or https URL"),
        ));
    }
    Ok((url, label))
}

fn timeout_of(
    given: Option<&SpecDuration>,
    field: &str,
    default: Duration,
) -> Result<Duration, BuildError> {
    let Some(given) = given else {
        return Ok(default);
    };
    let timeout = given.to_std().map_err(|e| BuildError::invalid(field, e))?;
    if timeout.is_zero() {
        return Err(BuildError::invalid(field, "must be longer than 0"));
    }
    Ok(timeout)
}
