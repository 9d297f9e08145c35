//! The bus between roles: one trait, two implementations — [`kafka`] (in a cluster: one role
//! per Deployment) and the embedded bus ([`embedded`], in one process, for `inputbot run`).
//!
//! ```text
//!  ingest ──publish(raw)──▶ [topic] ──▶ group "…process" ──▶ process ──publish(out)──▶ …
//!                                  └──▶ group "…act"     ──▶ act (botRef bindings)
//!  process/act ──dead_letter(dlq)──▶ dead-letter topic (Kafka) / store (embedded)
//! ```
//!
//! # The contract every implementation keeps, and every role relies on
//!
//! **Producing.** [`Bus::publish`] and [`Bus::dead_letter`] return `Ok` only once the bus holds
//! the event durably (Kafka: the delivery report of an idempotent `acks=all` producer; embedded:
//! queued, dead letters synced to disk). Any `Err` means *not held*: the caller must not answer
//! `2xx` (intake answers `503` + `Retry-After`) and must not acknowledge what it consumed. A
//! full bus answers [`BusError::Full`] after a bounded wait, never by growing memory.
//!
//! **Consuming.** A [`Consumer`] hands out [`Message`]s, possibly many at once, to be handled
//! concurrently. The role calls [`Message::ack`] exactly once an event is *finished* — produced
//! downstream (that `publish` returned `Ok`), delivered by the action, filtered, or written with
//! `dead_letter` (that it returned `Ok`) — and never before. A message that is not acknowledged
//! (the process stops, a write kept failing) is handed out again: after a restart, or to the
//! partition's next owner after a rebalance. So delivery is **at least once**; handlers must
//! tolerate seeing an event twice, and duplicates are bounded by what was in flight.
//!
//! Acknowledgements may come in any order. On Kafka the committed offset of a partition is its
//! contiguous watermark: offset N is committed only once every offset ≤ N of that partition
//! was acknowledged ([`kafka::watermark`]). Dropping a `Message` without `ack` is allowed (its
//! event is redelivered later); acknowledging it twice is impossible (`ack` takes it).
//!
//! **Stopping.** A role stops calling [`Consumer::next`], waits for its handlers, then calls
//! [`Consumer::close`]: Kafka commits the watermark and leaves the group, so the partitions
//! move to another member at once.
//!
//! **Health.** [`Bus::healthy`] is readiness: false while the bus cannot take events (Kafka:
//! no broker answers, or a topic the process uses does not exist).

use std::time::Duration;

use futures::future::BoxFuture;

use crate::{dlq::DeadLetter, event::Event};

pub mod embedded;
pub mod kafka;
pub mod log;

pub use embedded::{EmbeddedBus, EmbeddedOptions};
pub use kafka::{KafkaBus, KafkaOptions, KafkaSettings};

/// Why the bus did not take an event.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Every queue slot of a consumer group of the topic stayed taken for the whole wait.
    #[error("topic {topic} is full: a consumer did not keep up within {waited:?}")]
    Full {
        /// Topic.
        topic: String,
        /// How long the producer waited.
        waited: Duration,
    },
    /// The bus is shutting down and takes no new events.
    #[error("the bus is shutting down")]
    Closed,
    /// A consumer group joined a topic twice in one process.
    #[error("consumer group {group} already consumes topic {topic}")]
    DuplicateGroup {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
    },
    /// Writing a dead letter failed.
    #[error("cannot write dead letter to {path}: {source}")]
    DeadLetterIo {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No consumer group of that name reads the topic.
    #[error("no consumer group {group} reads topic {topic}")]
    NoSuchGroup {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
    },
    /// A broker error.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The embedded bus's log did not take or keep the event (disk full, write failed).
    #[error(transparent)]
    Log(#[from] log::LogError),
}

/// A received event; [`Message::ack`] once it is fully handled.
pub struct Message {
    /// The event.
    pub event: Event,
    /// Where the record is (Kafka: topic, partition, offset); `None` on the embedded bus.
    pub position: Option<Position>,
    ack: Option<Box<dyn FnOnce() + Send>>,
}

/// Where a consumed record is on its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("event", &self.event.id)
            .finish()
    }
}

impl Message {
    /// A message with an acknowledgement callback.
    pub fn new(event: Event, ack: impl FnOnce() + Send + 'static) -> Self {
        Self {
            event,
            position: None,
            ack: Some(Box::new(ack)),
        }
    }

    /// The same message, at `position`.
    pub fn at(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// Marks the message handled (commits its offset on Kafka).
    pub fn ack(mut self) {
        if let Some(ack) = self.ack.take() {
            ack();
        }
    }
}

/// A consumer group's view of one topic.
pub trait Consumer: Send {
    /// The next message, or `None` once the bus is closed and the queue is empty.
    fn next(&mut self) -> BoxFuture<'_, Option<Message>>;

    /// Leaves the group once the role is done with this consumer (every message it will ever
    /// acknowledge was acknowledged): Kafka commits the watermark and leaves the group at once,
    /// so the partitions move without waiting for a session timeout. The embedded bus has
    /// nothing to do.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The bus.
pub trait Bus: Send + Sync + 'static {
    /// Publishes an event; returns once the bus holds it durably.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), BusError>>;
    /// Writes a dead-letter record; returns once it is durable.
    fn dead_letter<'a>(
        &'a self,
        topic: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), BusError>>;
    /// Joins consumer `group` on `topic`.
    fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, BusError>;
    /// Joins consumer `group` on a bot's raw `topic`, dropping the copies of an event that
    /// reached the topic more than once inside its window (through different ingest replicas,
    /// or a source emitting it again), with the window kept in `dedupe_topic` (Kafka:
    /// [`kafka::dedupe`]). A bus whose intake is one process (the embedded bus) has every
    /// repeat answered at intake already: by default this is [`Bus::subscribe`].
    fn subscribe_deduplicated(
        &self,
        topic: &str,
        group: &str,
        dedupe_topic: &str,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let _ = dedupe_topic;
        self.subscribe(topic, group)
    }
    /// Whether the bus can take events (readiness).
    fn healthy(&self) -> bool;
}
