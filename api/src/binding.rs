//! `ActionBinding`: what to do with processed events (call an HTTP API, post to Slack or
//! Teams, send mail or SMS, write to Kafka, or log), with one resilience policy per action.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::OAuth2ClientCredentials;
use crate::common::{
    CommonStatus, DeletionPolicy, Duration, Headers, LocalRef, RateLimit, SecretKeyRef,
    TopicSettings, TopicStatus, Workload,
};
pub use crate::messaging::{SmsAction, TeamsAction, TeamsFact};

/// An action bound to a pipeline's output (or a bot's raw events): each matching event is
/// delivered by the action, retried by the delivery policy, and dead-lettered with the reason
/// when it cannot be delivered.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "inputbot.dev",
    version = "v1alpha1",
    kind = "ActionBinding",
    doc = "An ActionBinding: what to do with processed events (an HTTP call, a chat message, an email, a Kafka record) and one resilience policy for it: retries, circuit breaker, rate limit and dead letter.",
    namespaced,
    status = "ActionBindingStatus",
    shortname = "iba",
    category = "inputbot-all",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.topics.input"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 59").message("metadata.name must be at most 59 characters, so that '<name>-act' fits a 63-character name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pipelineRef) != has(self.botRef)").message("set exactly one of pipelineRef or botRef"))]
pub struct ActionBindingSpec {
    /// Act on the output of this Pipeline (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<LocalRef>,
    /// Act on this InputBot's raw events directly, without a pipeline (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_ref: Option<LocalRef>,
    /// CEL condition over `data`, `event` and `labels`; events for which it is false are
    /// skipped (counted as filtered, not failed), e.g. `"billing" in labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
    /// What to do with each event.
    pub action: Action,
    /// Retries, circuit breaker, rate limit and dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Tell a person when events are dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// How the act Deployment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workload>,
    /// Settings of the binding's dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicSettings>,
    /// Whether the dead-letter topic is kept (`Retain`, the default) or deleted with the binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// One action; exactly one kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.http), has(self.slack), has(self.email), has(self.kafka), has(self.log), has(self.teams), has(self.sms)].filter(x, x).size() == 1").message("set exactly one of http, slack, email, kafka, log, teams or sms"))]
pub struct Action {
    /// Call an HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpAction>,
    /// Post to a Slack (or Slack-compatible) incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackAction>,
    /// Send an email over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAction>,
    /// Write the event to a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaAction>,
    /// Write a line to the runtime's log (useful to try a bot locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogAction>,
    /// Post an Adaptive Card to a Microsoft Teams incoming webhook or Workflows URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<TeamsAction>,
    /// Send a text message through Twilio's Messages API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsAction>,
}

/// The kind of an action, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub enum ActionKind<'a> {
    /// HTTP call.
    Http(&'a HttpAction),
    /// Slack message.
    Slack(&'a SlackAction),
    /// Email.
    Email(&'a EmailAction),
    /// Kafka record.
    Kafka(&'a KafkaAction),
    /// Log line.
    Log(&'a LogAction),
    /// Microsoft Teams card.
    Teams(&'a TeamsAction),
    /// Text message.
    Sms(&'a SmsAction),
}

impl ActionKind<'_> {
    /// Lower-case name of the kind, as written in YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionKind::Http(_) => "http",
            ActionKind::Slack(_) => "slack",
            ActionKind::Email(_) => "email",
            ActionKind::Kafka(_) => "kafka",
            ActionKind::Log(_) => "log",
            ActionKind::Teams(_) => "teams",
            ActionKind::Sms(_) => "sms",
        }
    }
}

impl Action {
    /// The one kind that is set, or `None` when zero or several are (a schema violation).
    pub fn kind(&self) -> Option<ActionKind<'_>> {
        let kinds = [
            self.http.as_ref().map(ActionKind::Http),
            self.slack.as_ref().map(ActionKind::Slack),
            self.email.as_ref().map(ActionKind::Email),
            self.kafka.as_ref().map(ActionKind::Kafka),
            self.log.as_ref().map(ActionKind::Log),
            self.teams.as_ref().map(ActionKind::Teams),
            self.sms.as_ref().map(ActionKind::Sms),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

/// An HTTP call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpAction {
    /// URL to call; may contain `{{ }}` templates over `data`, `event` and `labels`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// HTTP method. Defaults to `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Request headers; use `secretRef` values for credentials.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: Headers,
    /// The request body. Defaults to the event data as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// Timeout of one attempt. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Header that carries the event id on every attempt, so the receiver can drop duplicates.
    /// Defaults to `Idempotency-Key`; set to an empty string to send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub idempotency_header: Option<String>,
    /// Authenticate with an OAuth2 access token (client credentials), sent as
    /// `Authorization: Bearer …`; a `401` refreshes the token once and retries once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2ClientCredentials>,
}

// HTTP methods for actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// GET.
    Get,
    /// DELETE.
    Delete,
}

/// A request body: built with jq (JSON) or a text template; exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jq) != has(self.template)").message("set exactly one of jq or template"))]
pub struct Body {
    /// jq program over the event data whose output is sent as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub jq: Option<String>,
    /// Text with `{{ }}` CEL expressions over `data`, `event` and `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub template: Option<String>,
    /// Content-Type of the body. Defaults to `application/json` for jq and `text/plain` for
    /// templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A Slack incoming-webhook message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackAction {
    /// The incoming-webhook URL (it is a credential, so it lives in a Secret).
    pub webhook_secret_ref: SecretKeyRef,
    /// Message text with `{{ }}` CEL expressions, e.g. `New ticket from {{ data.from }}`.
    #[schemars(length(min = 1, max = 40000))]
    pub text: String,
    /// Timeout of one attempt. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// An email.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailAction {
    /// The SMTP server.
    pub smtp: Smtp,
    /// Sender address, e.g. `Bot <bot@example.com>`.
    #[schemars(length(min = 3, max = 320))]
    pub from: String,
    /// Recipients.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<String>,
    /// Subject with `{{ }}` CEL expressions.
    #[schemars(length(min = 1, max = 998))]
    pub subject: String,
    /// Plain-text body with `{{ }}` CEL expressions.
    #[schemars(length(min = 1, max = 1000000))]
    pub body: String,
}

/// An SMTP server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Smtp {
    /// Host name.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port. Defaults to 587 (465 with `tls: implicit`, 25 with `tls: none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Transport security: `starttls` (the default), `implicit` (TLS from the first byte), or
    /// `none` (only for local test servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SmtpTls>,
    /// User name for SMTP authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for SMTP authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Timeout of one attempt. Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

// SMTP transport security.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Upgrade with STARTTLS; fail when the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text.
    None,
}

/// Write to a Kafka topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaAction {
    /// Target topic.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// Brokers of another Kafka cluster. Defaults to the operator's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// Record key as a `{{ }}` template, e.g. `{{ data.customer }}`. Defaults to the event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A log line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogAction {
    /// Text with `{{ }}` CEL expressions. Defaults to the event data as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// The resilience policy of the action.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Retries of failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Stop calling a failing target for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Most calls per second to the target, across retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What happens to an event that cannot be delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts in all, the first included. Defaults to 5 (3 in an `ai` step); 1 means no
    /// retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<u32>,
    /// `exponential` (the default) doubles the delay each attempt; `fixed` keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Delay before the first retry. Defaults to 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Duration>,
    /// Longest delay between attempts. Defaults to 60s (10s in an `ai` step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// Randomize each delay between half and all of its value ("equal jitter"), so that many
    /// events do not retry in lock step. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
    /// Which failures are retried: HTTP statuses (`429`, `503`), classes (`4xx`, `5xx`),
    /// `timeout` and `connection`. Defaults to `[429, 5xx, timeout, connection]`; other
    /// failures are dead-lettered at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^([1-5][0-9][0-9]|[1-5]xx|timeout|connection)$"))
    )]
    pub retry_on: Option<Vec<String>>,
    /// Wait as long as a `Retry-After` response header asks (capped by `maxDelay`). Defaults to
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
}

// Backoff shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Double the delay after each attempt.
    #[default]
    Exponential,
    /// The same delay every time.
    Fixed,
}

/// Circuit breaker around the action's target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failure ratio over the window that opens the breaker, between 0 and 1. Defaults to 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub failure_ratio: Option<f64>,
    /// Fewest calls in the window before the ratio counts. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_requests: Option<u32>,
    /// Length of the sliding window of calls. Defaults to 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How long the breaker stays open before letting a trial call through. Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Duration>,
}

/// Dead-letter settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Write undeliverable events to the binding's dead-letter topic. Defaults to true. When
    /// false, an event whose retries ran out blocks its partition and is retried until it
    /// succeeds; one that can never succeed (a failure outside `retryOn`, such as most `4xx`,
    /// or an event the action cannot render) is dropped, logged as an error and counted in
    /// `inputbot_events_dropped_total`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notify {
    /// Post a message when an event is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dead_letter: Option<DeadLetterNotice>,
}

/// Where dead-letter notices go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterNotice {
    /// Post to a Slack incoming webhook. The text may use `data`, `event` and `error`
    /// (`error.message`, `error.status`, `error.attempts`).
    pub slack: SlackAction,
}

/// Observed state of an ActionBinding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionBindingStatus {
    /// Generation and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Topics the binding reads and dead-letters to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicStatus>,
}
