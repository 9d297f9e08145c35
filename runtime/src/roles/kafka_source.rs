//! The Kafka source: an existing topic read as a bot's input, in the ingest role on the Kafka
//! bus.
//!
//! ```text
//!  topic (consumer group inputbot.<ns>.<bot>.<source>, or the spec's) ─▶ decode (binary or
//!    structured CloudEvent, else plain JSON wrapped) ─▶ this bot and source ─▶ publish(raw)
//!    ─▶ ack: the offset is committed only once the event is on the raw topic
//! ```
//!
//! A record's key stays its partition key on the raw topic (order per key holds). Replicas of
//! the ingest Deployment share the topic's partitions through the group. Each event is marked
//! with the record's topic, partition and offset for the raw topic's deduplication window, so
//! a record read twice (a member that died before committing) is handled once downstream.

use std::sync::Arc;

use inputbot_api::{bot::KafkaSource, config::IngestConfig, names};
use tokio_util::sync::CancellationToken;

use super::{Context, RoleError, consume};
use crate::{
    bus::{
        Bus, KafkaBus, Message,
        kafka::dedupe::{self, DEDUPE_EXTENSION, DEDUPE_UNTIL_EXTENSION},
    },
    delivery::until_stored,
    metrics::{self, Metrics},
};

/// Events read at once (publishing each waits for the raw topic's acknowledgement).
const MAX_IN_FLIGHT: u32 = 64;

/// How long a record read again counts as a duplicate downstream.
const DEDUPE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The type a record gets when it carries none.
const DEFAULT_TYPE: &str = "dev.inputbot.kafka";

/// One Kafka source of one bot.
struct KafkaInput {
    bot: String,
    source: String,
    event_type: Option<String>,
    raw: String,
    bus: Arc<KafkaBus>,
    metrics: Arc<Metrics>,
    abort: CancellationToken,
}

/// Joins the source's consumer group and returns the task that feeds the raw topic until
/// `cx.shutdown.sources` fires (in-flight events then finish, the offsets are committed).
pub(super) fn start(
    cx: &Context,
    bus: &Arc<KafkaBus>,
    config: &IngestConfig,
    index: usize,
    spec: &KafkaSource,
) -> Result<futures::future::BoxFuture<'static, ()>, RoleError> {
    let (namespace, bot) = (&config.bot.namespace, &config.bot.name);
    let source = config.sources[index].name.as_str();
    let field = format!("spec.sources[{index}].kafka");
    let raw = &config.topic;
    if let Some(servers) = &spec.bootstrap_servers
        && servers != &bus.settings().bootstrap
    {
        return Err(RoleError::Unsupported {
            resource: format!("InputBot {namespace}/{bot}"),
            field: format!("{field}.bootstrapServers"),
            message: format!(
                "reading from another Kafka cluster ({servers}) is not supported yet; leave it out to read from the operator's cluster"
            ),
        });
    }
    let group = spec
        .consumer_group
        .clone()
        .unwrap_or_else(|| names::consumer_group(namespace, bot, source));
    let consumer = bus.subscribe(&spec.topic, &group)?;
    let input = Arc::new(KafkaInput {
        bot: format!("{namespace}/{bot}"),
        source: source.to_owned(),
        event_type: spec.event_type.clone(),
        raw: raw.to_owned(),
        bus: bus.clone(),
        metrics: cx.metrics.clone(),
        abort: cx.shutdown.abort.clone(),
    });
    tracing::info!(target: "inputbot::run", bot = %input.bot, source, topic = %spec.topic, group = %group, "reading a Kafka topic");
    let stop = cx.shutdown.sources.clone();
    Ok(Box::pin(consume(consumer, MAX_IN_FLIGHT, stop, move |m| {
        let input = input.clone();
        async move { input.handle(m).await }
    })))
}

impl KafkaInput {
    async fn handle(&self, message: Message) {
        let labels = metrics::source(&self.bot, &self.source);
        self.metrics.received.get_or_create(&labels).inc();
        let mut event = message.event.clone();
        if event.bot.is_empty() && event.source == "/inputbot//kafka" {
            event.source = format!("/inputbot/{}/{}", self.bot, self.source);
        }
        event.bot = self.bot.clone();
        event.bot_source = self.source.clone();
        if event.ty == DEFAULT_TYPE
            && let Some(t) = &self.event_type
        {
            event.ty = t.clone();
        }
        // Another bot's window is not this one's. This record's identity is where it is: read
        // again (a member that died before its commit, a reset group), it is one event
        // downstream while the window lasts.
        event.extensions.remove(DEDUPE_EXTENSION);
        event.extensions.remove(DEDUPE_UNTIL_EXTENSION);
        if let Some(p) = &message.position {
            dedupe::mark(
                &mut event,
                "kafka",
                &format!("{}/{}/{}", p.topic, p.partition, p.offset),
                chrono::Utc::now() + DEDUPE_WINDOW,
            );
        }
        if event.traceparent.is_none() {
            event.traceparent = Some(crate::event::new_traceparent());
        }
        let stored = until_stored("publishing to the raw topic", &self.abort, || {
            self.bus.publish(&self.raw, &event)
        })
        .await;
        if stored {
            self.metrics.accepted.get_or_create(&labels).inc();
            tracing::info!(target: "inputbot::intake", bot = %self.bot, source = %self.source,
                event = %event.id, "accepted");
            message.ack();
        }
    }
}
