//! The resolved runtime config: what the operator writes into each component's ConfigMap and
//! what `inputbot run` builds in memory. Produced only by [`crate::resolve`].
//!
//! ```text
//!  InputBot ──▶ IngestConfig  (sources → raw topic)
//!  Pipeline ──▶ ProcessConfig (raw topic → steps → out topic, dlq)
//!  ActionBinding ──▶ ActConfig (out or raw topic → when → action, delivery policy, dlq)
//! ```
//!
//! Topic names and defaults are settled here so that the runtime never re-derives them. Secret
//! values never appear: only [`SecretKeyRef`](crate::common::SecretKeyRef)s, which the runtime
//! resolves from mounted files (in a cluster) or from Secret manifests (locally).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    binding::{Action, Backoff, Notify, Retry},
    bot::Source,
    common::RateLimit,
    pipeline::Step,
};

/// Identifies the resource a component comes from, for logs, metrics and errors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceId {
    /// `InputBot`, `Pipeline` or `ActionBinding`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ResourceId {
    /// A new id.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The config of one runtime component, tagged by role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
// Built once per process from a ConfigMap: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum ComponentConfig {
    /// Receives events and produces them to the raw topic.
    Ingest(IngestConfig),
    /// Runs a pipeline's steps.
    Process(ProcessConfig),
    /// Delivers events with an action.
    Act(ActConfig),
}

impl ComponentConfig {
    /// The resource the component comes from.
    pub fn resource(&self) -> &ResourceId {
        match self {
            ComponentConfig::Ingest(c) => &c.bot,
            ComponentConfig::Process(c) => &c.pipeline,
            ComponentConfig::Act(c) => &c.binding,
        }
    }

    /// `ingest`, `process` or `act`.
    pub fn role(&self) -> &'static str {
        match self {
            ComponentConfig::Ingest(_) => "ingest",
            ComponentConfig::Process(_) => "process",
            ComponentConfig::Act(_) => "act",
        }
    }
}

/// Ingest: sources → raw topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestConfig {
    /// The InputBot.
    pub bot: ResourceId,
    /// The raw topic every source produces to.
    pub topic: String,
    /// The bot's sources, as written (validated).
    pub sources: Vec<Source>,
    /// The compacted topic where poll and schedule sources keep their state in a cluster
    /// (`None` when the bot has neither, or for a component without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_topic: Option<String>,
}

/// Process: input topic → steps → output topic; failures → dead-letter topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    /// The Pipeline.
    pub pipeline: ResourceId,
    /// The bot whose raw topic is read.
    pub bot: ResourceId,
    /// Topic consumed.
    pub input_topic: String,
    /// Topic produced to.
    pub output_topic: String,
    /// Where failed events go.
    pub dead_letter_topic: String,
    /// Consumer group.
    pub consumer_group: String,
    /// The compacted topic holding the deduplication window of the raw topic's consumers
    /// (`inputbot.<ns>.<bot>.dedupe`): duplicates that reached different ingest replicas are
    /// dropped here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_topic: Option<String>,
    /// Steps in order, each with its resolved name.
    pub steps: Vec<NamedStep>,
    /// Events processed concurrently.
    pub max_in_flight: u32,
}

/// A step with its resolved name (`<kind>-<position>` unless named).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedStep {
    /// Resolved name.
    pub name: String,
    /// The step.
    #[serde(flatten)]
    pub step: Step,
}

/// Act: input topic → `when` → action with the delivery policy; undeliverable → dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActConfig {
    /// The ActionBinding.
    pub binding: ResourceId,
    /// Topic consumed (a pipeline's output or a bot's raw topic).
    pub input_topic: String,
    /// Where undeliverable events go; `None` when dead-lettering is disabled.
    pub dead_letter_topic: Option<String>,
    /// Consumer group.
    pub consumer_group: String,
    /// The bot's deduplication window, when the binding reads the raw topic (`botRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_topic: Option<String>,
    /// CEL condition selecting events.
    pub when: Option<String>,
    /// The action.
    pub action: Action,
    /// Retry, breaker and rate limit, with every default applied.
    pub delivery: DeliveryPolicy,
    /// Notifications.
    pub notify: Option<Notify>,
    /// Events delivered concurrently.
    pub max_in_flight: u32,
}

/// A delivery policy with every default applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicy {
    /// Retries.
    pub retry: RetryPolicy,
    /// Circuit breaker; always on.
    pub circuit_breaker: BreakerPolicy,
    /// Outbound rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Whether undeliverable events are dead-lettered.
    pub dead_letter: bool,
}

/// Retry policy with defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// Backoff shape.
    pub backoff: Backoff,
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Equal jitter.
    pub jitter: bool,
    /// Failures that are retried.
    pub retry_on: Vec<RetryOn>,
    /// Honour `Retry-After`.
    pub honor_retry_after: bool,
}

/// `initial × 2^doublings`, at most `max`: the one exponential backoff of inputbot, used by
/// delivery retries, bus writes that must not be lost, and polls after failures.
pub fn exponential_backoff(initial: Duration, doublings: u32, max: Duration) -> Duration {
    initial
        .saturating_mul(2u32.saturating_pow(doublings.min(31)))
        .min(max)
}

impl RetryPolicy {
    /// The policy a `retry` spec asks for, every unset field defaulted: `default_attempts`
    /// attempts, exponential backoff from 1s up to `default_max_delay` with jitter, on `429`,
    /// `5xx`, timeouts and connection failures, honouring `Retry-After`. Used by bindings and
    /// by the `ai` step.
    pub fn from_spec(
        retry: Option<&Retry>,
        default_attempts: u32,
        default_max_delay: Duration,
    ) -> Self {
        let dur = |d: Option<&crate::common::Duration>, default: Duration| {
            d.and_then(|d| d.to_std().ok()).unwrap_or(default)
        };
        RetryPolicy {
            max_attempts: retry
                .and_then(|r| r.max_attempts)
                .unwrap_or(default_attempts),
            backoff: retry
                .and_then(|r| r.backoff)
                .unwrap_or(Backoff::Exponential),
            initial_delay: dur(
                retry.and_then(|r| r.initial_delay.as_ref()),
                Duration::from_secs(1),
            ),
            max_delay: dur(retry.and_then(|r| r.max_delay.as_ref()), default_max_delay),
            jitter: retry.and_then(|r| r.jitter).unwrap_or(true),
            retry_on: retry
                .and_then(|r| r.retry_on.as_ref())
                .map(|entries| entries.iter().filter_map(|e| e.parse().ok()).collect())
                .unwrap_or_else(|| {
                    vec![
                        RetryOn::Status(429),
                        RetryOn::Class(5),
                        RetryOn::Timeout,
                        RetryOn::Connection,
                    ]
                }),
            honor_retry_after: retry.and_then(|r| r.honor_retry_after).unwrap_or(true),
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.initial_delay.min(self.max_delay),
            Backoff::Exponential => {
                exponential_backoff(self.initial_delay, retry.saturating_sub(1), self.max_delay)
            }
        }
    }

    /// Whether a failure of this class is retried.
    pub fn retries(&self, failure: &FailureClass) -> bool {
        self.retry_on.iter().any(|r| r.matches(failure))
    }
}

/// How an attempt failed, for retry decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The target answered with this status.
    Status(u16),
    /// The attempt timed out.
    Timeout,
    /// The connection could not be made or broke.
    Connection,
    /// Anything else (e.g. a template that cannot render): never retried.
    Other,
}

/// One `retryOn` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RetryOn {
    /// An exact status.
    Status(u16),
    /// A status class: 4 for `4xx`, 5 for `5xx`.
    Class(u16),
    /// Timeouts.
    Timeout,
    /// Connection failures.
    Connection,
}

impl RetryOn {
    fn matches(&self, failure: &FailureClass) -> bool {
        match (self, failure) {
            (RetryOn::Status(s), FailureClass::Status(f)) => s == f,
            (RetryOn::Class(c), FailureClass::Status(f)) => f / 100 == *c,
            (RetryOn::Timeout, FailureClass::Timeout) => true,
            (RetryOn::Connection, FailureClass::Connection) => true,
            _ => false,
        }
    }
}

impl TryFrom<String> for RetryOn {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            "expected an HTTP status such as 429, a class such as 5xx, timeout or connection";
        match s {
            "timeout" => Ok(RetryOn::Timeout),
            "connection" => Ok(RetryOn::Connection),
            _ if s.len() == 3 && s.ends_with("xx") => match s.as_bytes()[0] {
                c @ b'1'..=b'5' => Ok(RetryOn::Class(u16::from(c - b'0'))),
                _ => Err(format!("{expected}, found {s:?}")),
            },
            _ => match s.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(RetryOn::Status(code)),
                _ => Err(format!("{expected}, found {s:?}")),
            },
        }
    }
}

impl From<RetryOn> for String {
    fn from(r: RetryOn) -> String {
        match r {
            RetryOn::Status(s) => s.to_string(),
            RetryOn::Class(c) => format!("{c}xx"),
            RetryOn::Timeout => "timeout".into(),
            RetryOn::Connection => "connection".into(),
        }
    }
}

/// Circuit breaker with defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerPolicy {
    /// Failure ratio that opens the breaker.
    pub failure_ratio: f64,
    /// Fewest calls in the window before the ratio counts.
    pub min_requests: u32,
    /// Sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Time open before a trial call.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

/// Every component of a set of resources: what `inputbot run` starts in one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// One per InputBot.
    pub ingest: Vec<IngestConfig>,
    /// One per Pipeline.
    pub process: Vec<ProcessConfig>,
    /// One per ActionBinding.
    pub act: Vec<ActConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            jitter: false,
            retry_on: vec![RetryOn::Status(429), RetryOn::Class(5), RetryOn::Timeout],
            honor_retry_after: true,
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let p = policy(Backoff::Exponential);
        let delays: Vec<u64> = (1..=5).map(|n| p.base_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(p.base_delay(1000), Duration::from_secs(5));
    }

    #[test]
    fn fixed_backoff_keeps_the_delay() {
        let p = policy(Backoff::Fixed);
        assert_eq!(p.base_delay(4), Duration::from_secs(1));
    }

    #[test]
    fn retry_on_matches_statuses_classes_and_timeouts() {
        let p = policy(Backoff::Fixed);
        assert!(p.retries(&FailureClass::Status(429)));
        assert!(p.retries(&FailureClass::Status(503)));
        assert!(!p.retries(&FailureClass::Status(400)));
        assert!(p.retries(&FailureClass::Timeout));
        assert!(!p.retries(&FailureClass::Connection));
        assert!(!p.retries(&FailureClass::Other));
    }

    #[test]
    fn retry_on_parses_and_rejects_entries() {
        assert_eq!("5xx".parse::<RetryOn>().unwrap(), RetryOn::Class(5));
        assert_eq!("429".parse::<RetryOn>().unwrap(), RetryOn::Status(429));
        assert!("6xx".parse::<RetryOn>().is_err());
        assert!(
            "99".parse::<RetryOn>()
                .unwrap_err()
                .contains("found \"99\"")
        );
    }

    #[test]
    fn a_process_config_with_named_steps_round_trips_through_json() {
        let yaml = r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: b, namespace: ns}
spec:
  sources: [{name: hook, webhook: {path: /h, auth: {none: {}}}}]
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: p, namespace: ns}
spec:
  botRef: {name: b}
  steps:
    - name: keep
      filter: {when: 'true'}
    - transform: {jq: '.'}
"#;
        let mut set = crate::manifest::ResourceSet::default();
        crate::manifest::load_str(&mut set, "t.yaml", yaml, "ns").unwrap();
        let resolved = crate::resolve::resolve(&set, crate::validate::Options::OPERATOR).unwrap();
        let c = ComponentConfig::Process(resolved.process[0].clone());
        let text = serde_json::to_string(&c).unwrap();
        let back: ComponentConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let ComponentConfig::Process(p) = back else {
            panic!("a process config")
        };
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["keep", "transform-2"]);
    }

    #[test]
    fn component_config_round_trips_through_json() {
        let c = ComponentConfig::Ingest(IngestConfig {
            bot: ResourceId::new("InputBot", "ns", "b"),
            topic: "inputbot.ns.b.raw".into(),
            sources: vec![],
            state_topic: None,
        });
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""role":"ingest""#), "{text}");
        assert_eq!(serde_json::from_str::<ComponentConfig>(&text).unwrap(), c);
    }
}
