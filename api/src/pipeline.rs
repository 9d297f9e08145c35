//! `Pipeline`: the steps each event of a bot goes through (validate, transform, enrich,
//! classify, filter, ai) and how the process Deployment runs.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::ai::AiStep;
use crate::common::{
    CommonStatus, DeletionPolicy, Duration, Headers, LocalRef, TopicSettings, TopicStatus,
    Workload, any_object,
};

/// A pipeline: reads a bot's raw events, runs them through its steps, and writes the results to
/// its output topic; events that fail a step go to its dead-letter topic with the reason.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "inputbot.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    doc = "A Pipeline: the steps (validate, transform, enrich, classify, filter) each event of a bot goes through. The operator runs a process Deployment that reads the bot's raw topic and writes its output topic; failed events go to its dead-letter topic.",
    namespaced,
    status = "PipelineStatus",
    shortname = "ibp",
    category = "inputbot-all",
    printcolumn = r#"{"name":"Bot","type":"string","jsonPath":".spec.botRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".status.topics.output"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 55").message("metadata.name must be at most 55 characters, so that '<name>-process' fits a 63-character name")
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// The InputBot whose events this pipeline processes (same namespace).
    pub bot_ref: LocalRef,
    /// Steps, run in order. An event that fails a step is dead-lettered with the step's name and
    /// the reason; a `filter` that does not match drops the event (counted, not an error).
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(s, !has(s.name) || self.filter(t, has(t.name) && t.name == s.name).size() == 1)").message("step names must be unique within the pipeline"))]
    pub steps: Vec<Step>,
    /// How the process Deployment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<Processing>,
    /// Settings of the output topic (`inputbot.<namespace>.<name>.out`) and dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicSettings>,
    /// Whether the pipeline's topics are kept (`Retain`, the default) or deleted with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// One step; exactly one kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.validate), has(self.transform), has(self.enrich), has(self.classify), has(self.filter), has(self.ai)].filter(x, x).size() == 1").message("set exactly one of validate, transform, enrich, classify, filter or ai"))]
pub struct Step {
    /// Name used in metrics, logs and dead-letter records. Defaults to `<kind>-<position>`,
    /// e.g. `transform-2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Check the event data against a JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateStep>,
    /// Reshape the event data with a jq program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformStep>,
    /// Add data fetched over HTTP under a field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichStep>,
    /// Add labels by CEL rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classify: Option<ClassifyStep>,
    /// Keep only events for which a CEL condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStep>,
    /// Ask a language model (an OpenAI-compatible Chat Completions API) and store its JSON
    /// answer under a field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiStep>,
}

/// The kind of a step, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub enum StepKind<'a> {
    /// JSON Schema validation.
    Validate(&'a ValidateStep),
    /// jq transform.
    Transform(&'a TransformStep),
    /// HTTP enrichment.
    Enrich(&'a EnrichStep),
    /// CEL classification.
    Classify(&'a ClassifyStep),
    /// CEL filter.
    Filter(&'a FilterStep),
    /// Language-model call.
    Ai(&'a AiStep),
}

impl StepKind<'_> {
    /// Lower-case name of the kind, as written in YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Validate(_) => "validate",
            StepKind::Transform(_) => "transform",
            StepKind::Enrich(_) => "enrich",
            StepKind::Classify(_) => "classify",
            StepKind::Filter(_) => "filter",
            StepKind::Ai(_) => "ai",
        }
    }
}

impl Step {
    /// The one kind that is set, or `None` when zero or several are (a schema violation).
    pub fn kind(&self) -> Option<StepKind<'_>> {
        let kinds = [
            self.validate.as_ref().map(StepKind::Validate),
            self.transform.as_ref().map(StepKind::Transform),
            self.enrich.as_ref().map(StepKind::Enrich),
            self.classify.as_ref().map(StepKind::Classify),
            self.filter.as_ref().map(StepKind::Filter),
            self.ai.as_ref().map(StepKind::Ai),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

/// JSON Schema validation of the event data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidateStep {
    /// The JSON Schema (draft 2020-12 unless `$schema` says otherwise).
    #[schemars(schema_with = "any_object")]
    pub schema: serde_json::Value,
}

/// A jq transform of the event data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransformStep {
    /// A jq program; its input is the event data and its single output replaces it, e.g.
    /// `{ticket: .id, text: .message}`.
    #[schemars(length(min = 1, max = 16384))]
    pub jq: String,
}

/// HTTP enrichment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnrichStep {
    /// The HTTP call whose JSON response is merged into the event.
    pub http: EnrichHttp,
}

/// An HTTP lookup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichHttp {
    /// URL to call; may contain `{{ }}` templates over `data`, `event` and `labels`, e.g.
    /// `https://crm.example/customers/{{ data.from }}`. Values are URL-encoded.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// `GET` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<EnrichMethod>,
    /// Request headers; use `secretRef` values for credentials.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: Headers,
    /// jq program building the request body for `POST` from the event data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Field of the event data the response is stored under, e.g. `customer`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub result_field: String,
    /// Reuse a response for the same request for this long, e.g. `5m`. No caching by default.
    #[serde(default, rename = "cacheTTL", skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<Duration>,
    /// Timeout of one request. Defaults to 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What a failed lookup does: `fail` (dead-letter the event, the default) or `skip`
    /// (continue without the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Authenticate with an OAuth2 access token (client credentials), sent as
    /// `Authorization: Bearer …`; a `401` refreshes the token once and retries once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<crate::auth::OAuth2ClientCredentials>,
}

// HTTP methods for enrichment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EnrichMethod {
    /// GET.
    #[default]
    Get,
    /// POST.
    Post,
}

// What a failed enrichment does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Dead-letter the event.
    #[default]
    Fail,
    /// Continue without the result.
    Skip,
}

/// Labelling by rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassifyStep {
    /// Rules, checked in order; every rule that matches adds its label.
    #[schemars(length(min = 1, max = 256))]
    pub rules: Vec<ClassifyRule>,
    /// Stop at the first matching rule instead of checking them all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_match: bool,
    /// Label added when no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub default_label: Option<String>,
}

/// One classification rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClassifyRule {
    /// CEL condition over `data`, `event` and `labels`, e.g. `data.text.contains("refund")`.
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
    /// Label added when the condition holds.
    #[schemars(length(min = 1, max = 63))]
    pub label: String,
}

/// A filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FilterStep {
    /// CEL condition over `data`, `event` and `labels`; events for which it is false are dropped
    /// (counted as filtered).
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
}

/// The process Deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Processing {
    /// Replicas, autoscaling and resources.
    #[serde(flatten)]
    pub workload: Workload,
    /// Events processed concurrently per replica. Defaults to 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
}

/// Observed state of a Pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// Generation and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Topics the pipeline reads and writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicStatus>,
}
