//! `InputBot`: where events come from (webhooks, HTTP polling, schedules, Kafka topics), and
//! how the ingest Deployment that receives them runs.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::{ApiKeyAuth, JwtAuth, OAuth2ClientCredentials};
use crate::common::{
    CommonStatus, DeletionPolicy, Duration, Headers, RateLimit, SecretKeyRef, TopicSettings,
    Workload, any_object, any_value,
};

/// An input bot: one or more event sources feeding the bot's raw Kafka topic.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "inputbot.dev",
    version = "v1alpha1",
    kind = "InputBot",
    doc = "An InputBot: where a bot's events come from (webhooks, polling, schedules, Kafka topics). The operator runs an ingest Deployment and Service for it and produces every accepted event to the bot's raw topic.",
    namespaced,
    status = "InputBotStatus",
    shortname = "ib",
    shortname = "ibot",
    category = "inputbot-all",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoints[0].url"}"#,
    printcolumn = r#"{"name":"Topic","type":"string","priority":1,"jsonPath":".status.topic"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 56").message("metadata.name must be at most 56 characters, so that '<name>-ingest' fits a 63-character Service name")
)]
#[serde(rename_all = "camelCase")]
pub struct InputBotSpec {
    /// Where events come from. Each source has a unique name and exactly one kind: `webhook`,
    /// `poll`, `schedule` or `kafka`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(s, self.filter(t, t.name == s.name).size() == 1)").message("source names must be unique within the bot"),
        validation = Rule::new("self.all(s, !has(s.webhook) || self.filter(t, has(t.webhook) && t.webhook.path == s.webhook.path).size() == 1)").message("webhook paths must be unique within the bot")
    )]
    pub sources: Vec<Source>,
    /// How the ingest Deployment runs: replicas, autoscaling, resources, and how its Service is
    /// exposed outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestWorkload>,
    /// Settings of the bot's raw topic (`inputbot.<namespace>.<name>.raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicSettings>,
    /// Whether the raw topic is kept (`Retain`, the default) or deleted with the bot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// One source of events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.webhook), has(self.poll), has(self.schedule), has(self.kafka)].filter(x, x).size() == 1").message("set exactly one of webhook, poll, schedule or kafka"))]
pub struct Source {
    /// Name of the source, unique within the bot; it appears in metrics, logs and the
    /// CloudEvent `source`. Lower case letters, digits and `-`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Receive HTTP requests on a path of the ingest Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSource>,
    /// Fetch a URL on an interval and emit each new item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollSource>,
    /// Emit a fixed payload on a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSource>,
    /// Consume records from an existing Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
}

/// The kind of a source, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub enum SourceKind<'a> {
    /// A webhook.
    Webhook(&'a WebhookSource),
    /// HTTP polling.
    Poll(&'a PollSource),
    /// A cron schedule.
    Schedule(&'a ScheduleSource),
    /// A Kafka topic.
    Kafka(&'a KafkaSource),
}

impl Source {
    /// The one kind that is set, or `None` when zero or several are (a schema violation).
    pub fn kind(&self) -> Option<SourceKind<'_>> {
        match (&self.webhook, &self.poll, &self.schedule, &self.kafka) {
            (Some(w), None, None, None) => Some(SourceKind::Webhook(w)),
            (None, Some(p), None, None) => Some(SourceKind::Poll(p)),
            (None, None, Some(s), None) => Some(SourceKind::Schedule(s)),
            (None, None, None, Some(k)) => Some(SourceKind::Kafka(k)),
            _ => None,
        }
    }
}

/// An HTTP endpoint that accepts events. Auth, the body limit and the rate limit run before the
/// body is parsed; the caller gets `202` only once the event is durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSource {
    /// URL path served by the ingest Service, e.g. `/github`. Must start with `/`;
    /// `/healthz`, `/readyz` and `/metrics` are reserved.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")
    )]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("path must start with '/'"),
        validation = Rule::new("!(self in ['/healthz', '/readyz', '/metrics'])").message("path must not be /healthz, /readyz or /metrics, which the runtime serves itself")
    )]
    pub path: String,
    /// How callers prove who they are. Required: use `none: {}` to accept unauthenticated
    /// requests deliberately.
    pub auth: WebhookAuth,
    /// Largest accepted request body in bytes; larger requests get `413`. Defaults to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_body_bytes: Option<u64>,
    /// Requests per second this source accepts; excess requests get `429` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// A JSON Schema the payload must match; violations get `400` naming the failing value's
    /// JSON pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub schema: Option<serde_json::Value>,
    /// A CEL expression over `headers` (lower-cased names), `data`, `event` and `auth` (e.g.
    /// a verified JWT's `auth.claims.jti`) whose value identifies a delivery, e.g.
    /// `headers['x-github-delivery']`. A repeat inside
    /// `idempotencyWindow` is answered `202` and not published again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub idempotency_key: Option<String>,
    /// How long idempotency keys are remembered. Defaults to 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_window: Option<Duration>,
    /// CloudEvent `type` given to plain JSON requests. Defaults to `dev.inputbot.webhook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub event_type: Option<String>,
}

/// Webhook authentication; exactly one kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.hmac), has(self.bearer), has(self.basic), has(self.jwt), has(self.apiKey), has(self.none)].filter(x, x).size() == 1").message("set exactly one of hmac, bearer, basic, jwt, apiKey or none"))]
pub struct WebhookAuth {
    /// Verify an HMAC signature of the raw body, as GitHub, Stripe, Slack, Shopify and
    /// Standard Webhooks senders sign it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,
    /// Require `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// Require HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// Require `Authorization: Bearer <JWT>`: a JSON Web Token verified against a JWKS URL or
    /// keys from Secrets, with the expected issuer and audience. Its claims are visible to CEL
    /// as `auth.claims`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// Require an API key in a header (or, when enabled, a query parameter), one of several
    /// keys from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// Accept requests without authentication. Must be written out (`none: {}`), so an open
    /// endpoint is always a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoAuth>,
}

/// Marker for an unauthenticated webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NoAuth {}

/// Signature verification with a shared secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.preset) && self.preset != 'generic' || has(self.header)").message("a generic hmac needs header"))]
pub struct HmacAuth {
    /// A sender's signing scheme: `github` (`X-Hub-Signature-256`), `stripe`
    /// (`Stripe-Signature: t=…,v1=…`), `slack` (`v0:{ts}:{body}`), `shopify`
    /// (`X-Shopify-Hmac-Sha256`), `standard-webhooks` (`webhook-signature`), or `generic`
    /// (configure `header`, `algorithm`, `encoding` and friends). Defaults to `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<HmacPreset>,
    /// The signing secret.
    pub secret_ref: SecretKeyRef,
    /// Further secrets accepted at the same time, for rotating the signing secret without
    /// downtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub additional_secret_refs: Vec<SecretKeyRef>,
    /// Header carrying the signature (generic; overrides the preset's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// Hash function (generic; overrides the preset's). Defaults to `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HmacAlgorithm>,
    /// How the signature is written (generic; overrides the preset's). Defaults to `hex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// Text before the signature in the header, e.g. `sha256=` (generic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// Header carrying a Unix timestamp that is part of the signed content (generic). When set,
    /// the signed content is `{timestamp}.{body}` and stale requests are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub timestamp_header: Option<String>,
    /// How far a signed timestamp may be from now. Defaults to 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Duration>,
    /// Header carrying the sender's delivery id, required on every request when set. It is not
    /// signed, so it is not the replay key: replays are keyed on what the signature covers —
    /// `standard-webhooks` on its signed `webhook-id`; `stripe`, `slack` and a generic
    /// `timestampHeader` on the signed timestamp plus the body; `github`, `shopify` and generic
    /// without a timestamp on the body alone. A repeat inside `tolerance` (24h without a
    /// timestamp) of an accepted delivery is answered `202` as a duplicate and not published
    /// again; while its first copy is still being stored, `409`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub delivery_id_header: Option<String>,
}

// Known webhook signing schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HmacPreset {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github,
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>` over `{t}.{body}`, 5-minute tolerance.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=<hex>` over `v0:{ts}:{body}`, 5-minute window.
    Slack,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>` over the body.
    Shopify,
    /// Standard Webhooks: `webhook-signature: v1,<base64>` over `{id}.{ts}.{body}`.
    StandardWebhooks,
    /// Configured field by field.
    Generic,
}

// HMAC hash functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA1 (legacy senders only).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

// Signature encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Lower- or upper-case hexadecimal.
    Hex,
    /// Standard base64.
    Base64,
}

/// Bearer-token authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// The expected token.
    pub secret_ref: SecretKeyRef,
}

/// HTTP basic authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The expected user name.
    #[schemars(length(min = 1, max = 256))]
    pub username: String,
    /// The expected password.
    pub password_secret_ref: SecretKeyRef,
}

/// Fetch a URL on an interval and emit each item not seen before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollSource {
    /// The URL to GET (http or https).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Time between polls, e.g. `60s`. Errors back off up to ten intervals.
    pub interval: Duration,
    /// Request headers; use `secretRef` values for credentials.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: Headers,
    /// JSON pointer (RFC 6901) to the array of items in the response, e.g. `/incidents`.
    /// Without it a top-level array is the list of items, and any other body is one item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub items_path: Option<String>,
    /// JSON pointer to the field identifying an item, e.g. `/id`. Items whose id was seen
    /// before are not emitted again. Without it, every item of a changed response is emitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub id_field: Option<String>,
    /// Timeout of one request. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Authenticate with an OAuth2 access token (client credentials), sent as
    /// `Authorization: Bearer …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2ClientCredentials>,
    /// CloudEvent `type` of emitted events. Defaults to `dev.inputbot.poll`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub event_type: Option<String>,
}

/// Emit a payload on a cron schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSource {
    /// A five-field cron expression (`minute hour day-of-month month day-of-week`), e.g.
    /// `0 2 * * *`.
    #[schemars(length(min = 1, max = 256))]
    pub cron: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Defaults to `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// The event data each firing emits. Defaults to `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub payload: Option<serde_json::Value>,
    /// CloudEvent `type` of emitted events. Defaults to `dev.inputbot.schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub event_type: Option<String>,
}

/// Consume an existing Kafka topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// The topic to read.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// Brokers of another Kafka cluster, `host:port,…`. Defaults to the operator's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: Option<String>,
    /// Consumer group. Defaults to `inputbot.<namespace>.<bot>.<source>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: Option<String>,
    /// CloudEvent `type` of records that carry none. Defaults to `dev.inputbot.kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub event_type: Option<String>,
}

/// The ingest Deployment and how it is reached.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestWorkload {
    /// Replicas, autoscaling and resources.
    #[serde(flatten)]
    pub workload: Workload,
    /// Expose the webhook paths outside the cluster through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
}

/// An Ingress in front of the ingest Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    /// Host name the Ingress answers for.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// IngressClass to use. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Terminate TLS with the certificate in this Secret (type `kubernetes.io/tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExposeTls>,
    /// Extra annotations on the Ingress, e.g. for cert-manager.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// TLS of an exposed bot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeTls {
    /// Secret holding `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Observed state of an InputBot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputBotStatus {
    /// Generation and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// In-cluster URL of each webhook source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The bot's raw topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Where a webhook source is served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Source name.
    pub source: String,
    /// URL of the source.
    pub url: String,
}
