//! Field types shared by the three resources: durations, Secret references, header values,
//! workload settings (replicas, autoscaling, resources) and the status shapes.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern every duration field accepts: one or more `<number><unit>` groups.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// A duration written as one or more `<number><unit>` groups with units `ms`, `s`, `m`, `h`
/// and `d`: `500ms`, `30s`, `5m`, `1h30m`, `7d`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// Parses the duration; the error says what was expected and what was found.
    pub fn to_std(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_owned())
    }
}

/// Parses `1h30m`-style durations (units `ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let expected = "expected a duration such as 500ms, 30s, 5m, 1h30m or 7d";
    if s.is_empty() {
        return Err(format!("{expected}, found an empty string"));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{expected}, found {s:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{expected}, found {s:?} (number too large)"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('d') {
            (86_400_000, 1)
        } else {
            return Err(format!("{expected}, found {s:?} (missing or unknown unit)"));
        };
        rest = &rest[len..];
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("{expected}, found {s:?} (too large)"))?;
        total = total
            .checked_add(std::time::Duration::from_millis(ms))
            .ok_or_else(|| format!("{expected}, found {s:?} (too large)"))?;
    }
    Ok(total)
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// Schema for a free-form JSON object (a JSON Schema document, a payload object).
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema for any JSON value.
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A reference to one key of a Secret in the same namespace as the resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The value of an outbound HTTP header: a literal, or a key of a Secret (for tokens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secretRef)").message("set exactly one of value or secretRef"))]
pub struct HeaderValue {
    /// The literal header value. Do not put credentials here: use `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Read the header value from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// Outbound HTTP headers by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// A token-bucket rate limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate, in requests (or events) per second. Fractions are allowed: `0.5` is one
    /// every two seconds.
    #[schemars(range(min = 0.001, max = 1000000.0))]
    pub per_second: f64,
    /// How many may pass at once after an idle period. Defaults to `perSecond` rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
}

/// Horizontal autoscaling of a component's Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas"))]
pub struct Autoscaling {
    /// Fewest replicas the autoscaler keeps.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler may run. Consumers never exceed the topic's partitions.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilization (percent of requests) the HorizontalPodAutoscaler aims for.
    /// Defaults to 70.
    #[serde(
        default,
        rename = "targetCPUUtilization",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// Scale on Kafka consumer lag instead of CPU, through a KEDA ScaledObject (KEDA must be
    /// installed). Not valid for webhook intake, which has no lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagScaling>,
}

/// Lag-based scaling target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagScaling {
    /// Consumer-group lag per replica that triggers scaling out.
    #[schemars(range(min = 1))]
    pub target: i64,
}

/// How a component's Deployment runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Replicas when autoscaling is off. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling; replaces `replicas` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// CPU and memory requests and limits of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Settings of a Kafka topic this resource owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSettings {
    /// Partitions; also the most consumer replicas that can share the work. Defaults to 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Copies of each partition. Defaults to the operator's configured default (3 in production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i16>,
    /// How long records are kept, e.g. `7d`. Defaults to 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

// What happens to the Kafka topics a resource owns when the resource is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the topics and their records (the default): nothing accepted is lost by a delete.
    #[default]
    Retain,
    /// Delete the topics with the resource.
    Delete,
}

/// A reference to another inputbot resource in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct LocalRef {
    /// Name of the referenced resource, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state common to the three resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, plus `ReferencesResolved`, `TopicsReady` and `WorkloadReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Kafka topics a resource reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic the component consumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Topic the component produces to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Dead-letter topic of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}
