//! The bus between roles: one trait, two implementations — Kafka (in a cluster; to come as
//! `bus/kafka.rs`) and the embedded bus ([`embedded`], in one process, for `inputbot run`).
//!
//! ```text
//!  ingest ──publish(raw)──▶ [topic] ──▶ group "…process" ──▶ process ──publish(out)──▶ …
//!                                  └──▶ group "…act"     ──▶ act (botRef bindings)
//!  process/act ──dead_letter(dlq)──▶ dead-letter store
//! ```
//!
//! `publish` returns only once the event is held by the bus (Kafka: acknowledged by all
//! in-sync replicas); a full bus answers with [`BusError::Full`] after a bounded wait, which
//! intake turns into `503` + `Retry-After`. A consumer acknowledges a message only after it
//! was fully handled (produced downstream, delivered, or dead-lettered).
//!
//! The contract every implementation keeps, and every role relies on: [`Bus::publish`] and
//! [`Bus::dead_letter`] return `Ok` only once the bus holds the event durably; a [`Consumer`]
//! hands out [`Message`]s, and the role calls [`Message::ack`] exactly once an event is
//! finished (never before) — an unacknowledged message is handed out again after a restart.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::{dlq::DeadLetter, event::Event};

pub mod embedded;

pub use embedded::{EmbeddedBus, EmbeddedOptions};

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
}

/// A received event; [`Message::ack`] once it is fully handled.
pub struct Message {
    /// The event.
    pub event: Event,
    ack: Option<Box<dyn FnOnce() + Send>>,
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
            ack: Some(Box::new(ack)),
        }
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
    /// Whether the bus can take events (readiness).
    fn healthy(&self) -> bool;
}
