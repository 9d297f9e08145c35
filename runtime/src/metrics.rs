//! Prometheus metrics, prefixed `inputbot_`, labelled by bot/source, pipeline/step and
//! binding/action. Served on `/metrics` by every role.
//!
//! Accounting: for every event a binding sees, exactly one of `delivered`, `dead_lettered` or
//! `filtered` is counted for that binding; intake counts `received`, then `accepted`,
//! `duplicate` or `rejected{reason}`.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of intake metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `namespace/name` of the InputBot.
    pub bot: String,
    /// Source name.
    pub source: String,
}

/// Labels of rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `namespace/name` of the InputBot.
    pub bot: String,
    /// Source name.
    pub source: String,
    /// Stable reason: `unauthorized`, `bad_signature`, `too_large`, `rate_limited`, `schema`, …
    pub reason: String,
}

/// Labels of pipeline and binding stages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `namespace/name` of the Pipeline or ActionBinding.
    pub resource: String,
    /// Step name or action kind.
    pub stage: String,
}

/// Labels of Kafka producer metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// Topic.
    pub topic: String,
}

/// Labels of Kafka offset commits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    /// Consumer group.
    pub group: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a consumer group's partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition number.
    pub partition: String,
}

/// Labels of language-model calls and cache lookups of an `ai` step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiLabels {
    /// `namespace/name` of the Pipeline.
    pub resource: String,
    /// Step name.
    pub step: String,
    /// Calls: `ok` (an answer matching the schema), `invalid` (an answer that is not JSON or
    /// does not match), `error` (no usable answer: a status, a timeout, a broken connection).
    /// Cache lookups: `hit` or `miss`.
    pub result: String,
}

/// Labels of token usage of an `ai` step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiTokenLabels {
    /// `namespace/name` of the Pipeline.
    pub resource: String,
    /// Step name.
    pub step: String,
    /// `prompt` or `completion`, as the server's `usage` reports them.
    pub kind: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Every metric of the runtime.
pub struct Metrics {
    registry: Registry,
    /// Requests or items received by a source.
    pub received: Family<SourceLabels, Counter>,
    /// Events made durable on the bus.
    pub accepted: Family<SourceLabels, Counter>,
    /// Duplicates answered without publishing (idempotency key).
    pub duplicates: Family<SourceLabels, Counter>,
    /// Requests refused, by reason.
    pub rejected: Family<RejectLabels, Counter>,
    /// Intake latency, request received → event durable.
    pub intake_seconds: Family<SourceLabels, Histogram>,
    /// Events a pipeline passed on.
    pub processed: Family<StageLabels, Counter>,
    /// Events dropped by a filter (pipeline step or binding `when`).
    pub filtered: Family<StageLabels, Counter>,
    /// Events delivered by an action.
    pub delivered: Family<StageLabels, Counter>,
    /// Retries made by an action.
    pub retried: Family<StageLabels, Counter>,
    /// Events written to a dead-letter topic.
    pub dead_lettered: Family<StageLabels, Counter>,
    /// Events dropped because they can never be delivered and dead-lettering is disabled.
    pub dropped: Family<StageLabels, Counter>,
    /// Time in a stage (a whole pipeline run, or a delivery with its retries).
    pub stage_seconds: Family<StageLabels, Histogram>,
    /// Events in flight per stage.
    pub in_flight: Family<StageLabels, Gauge>,
    /// Language-model calls of `ai` steps, by result.
    pub ai_calls: Family<AiLabels, Counter>,
    /// Time of one language-model call (an attempt), whatever its result.
    pub ai_call_seconds: Family<StageLabels, Histogram>,
    /// Tokens the server reported in `usage`, by kind.
    pub ai_tokens: Family<AiTokenLabels, Counter>,
    /// Answer-cache lookups of `ai` steps, `hit` or `miss`.
    pub ai_cache: Family<AiLabels, Counter>,
    /// Kafka: publish to delivery report.
    pub kafka_produce_seconds: Family<TopicLabels, Histogram>,
    /// Kafka: records the broker did not take.
    pub kafka_produce_failures: Family<TopicLabels, Counter>,
    /// Kafka: offset commits by result.
    pub kafka_commits: Family<CommitLabels, Counter>,
    /// Kafka: records behind the committed offset, per partition this member owns.
    pub kafka_consumer_lag: Family<PartitionLabels, Gauge>,
    /// Kafka: copies of an event dropped by a consumer group's deduplication window (they
    /// reached another ingest replica, or a source emitted them again).
    pub kafka_duplicates_dropped: Family<GroupLabels, Counter>,
    /// HTTP connections open.
    pub http_connections: Gauge,
    /// HTTP connections the server closed, by reason (`header_timeout`, `idle`, `evicted`).
    pub http_connections_closed: Family<ConnectionLabels, Counter>,
}

/// Labels of a connection the HTTP server closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `header_timeout`, `idle` or `evicted` (closed at the connection cap).
    pub reason: String,
}

/// Labels of a consumer group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Consumer group.
    pub group: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("inputbot");
        let m = Self {
            received: Family::default(),
            accepted: Family::default(),
            duplicates: Family::default(),
            rejected: Family::default(),
            intake_seconds: Family::new_with_constructor(latency),
            processed: Family::default(),
            filtered: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            stage_seconds: Family::new_with_constructor(latency),
            in_flight: Family::default(),
            ai_calls: Family::default(),
            ai_call_seconds: Family::new_with_constructor(latency),
            ai_tokens: Family::default(),
            ai_cache: Family::default(),
            kafka_produce_seconds: Family::new_with_constructor(latency),
            kafka_produce_failures: Family::default(),
            kafka_commits: Family::default(),
            kafka_consumer_lag: Family::default(),
            kafka_duplicates_dropped: Family::default(),
            http_connections: Gauge::default(),
            http_connections_closed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Requests or items received by a source",
            m.received.clone(),
        );
        registry.register(
            "events_accepted",
            "Events made durable on the bus",
            m.accepted.clone(),
        );
        registry.register(
            "events_duplicate",
            "Duplicate deliveries acknowledged without publishing",
            m.duplicates.clone(),
        );
        registry.register(
            "events_rejected",
            "Requests refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "intake_duration_seconds",
            "Request received to event durable",
            m.intake_seconds.clone(),
        );
        registry.register(
            "events_processed",
            "Events a pipeline passed on",
            m.processed.clone(),
        );
        registry.register(
            "events_filtered",
            "Events dropped by a filter",
            m.filtered.clone(),
        );
        registry.register(
            "events_delivered",
            "Events delivered by an action",
            m.delivered.clone(),
        );
        registry.register(
            "delivery_retries",
            "Retries made by an action",
            m.retried.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events written to a dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events that can never be delivered, dropped because dead-lettering is disabled",
            m.dropped.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time in a pipeline or a delivery",
            m.stage_seconds.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events being handled",
            m.in_flight.clone(),
        );
        registry.register(
            "ai_calls",
            "Language-model calls of ai steps, by result",
            m.ai_calls.clone(),
        );
        registry.register(
            "ai_call_duration_seconds",
            "Time of one language-model call",
            m.ai_call_seconds.clone(),
        );
        registry.register(
            "ai_tokens",
            "Tokens language-model servers reported as used, by kind",
            m.ai_tokens.clone(),
        );
        registry.register(
            "ai_cache_lookups",
            "Answer-cache lookups of ai steps, hit or miss",
            m.ai_cache.clone(),
        );
        registry.register(
            "kafka_produce_duration_seconds",
            "Kafka publish to delivery report",
            m.kafka_produce_seconds.clone(),
        );
        registry.register(
            "kafka_produce_failures",
            "Kafka records the broker did not take",
            m.kafka_produce_failures.clone(),
        );
        registry.register(
            "kafka_commits",
            "Kafka offset commits, by result",
            m.kafka_commits.clone(),
        );
        registry.register(
            "kafka_consumer_lag",
            "Kafka records behind the committed offset, per owned partition",
            m.kafka_consumer_lag.clone(),
        );
        registry.register(
            "kafka_duplicates_dropped",
            "Copies of an event a consumer group's deduplication window dropped",
            m.kafka_duplicates_dropped.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open",
            m.http_connections.clone(),
        );
        registry.register(
            "http_connections_closed",
            "HTTP connections the server closed, by reason",
            m.http_connections_closed.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Intake labels.
pub fn source(bot: &str, source: &str) -> SourceLabels {
    SourceLabels {
        bot: bot.to_owned(),
        source: source.to_owned(),
    }
}

/// Stage labels.
pub fn stage(resource: &str, stage: &str) -> StageLabels {
    StageLabels {
        resource: resource.to_owned(),
        stage: stage.to_owned(),
    }
}
