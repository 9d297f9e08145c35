//! Sources that produce events by themselves: HTTP polling and cron schedules, and the webhook
//! source served over HTTP ([`webhook`]). (Kafka sources come with the Kafka bus.) Each runs as a task
//! until shutdown and hands its events to a [`Sink`], which publishes them to the bot's raw
//! topic and returns only once the bus holds them.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::{bus::BusError, event::Event};

pub mod poll;
pub mod schedule;
pub mod webhook;

/// Where a source's events go: the bot's raw topic, with metrics and the run summary.
pub trait Sink: Send + Sync {
    /// Publishes `event`; returns once it is durable, or why not (the source retries).
    fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>>;
}

/// A sink that keeps events in memory, for tests.
#[derive(Default, Debug)]
pub struct MemorySink {
    /// Emitted events.
    pub events: std::sync::Mutex<Vec<Event>>,
}

impl Sink for MemorySink {
    fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
        self.events.lock().expect("sink lock").push(event);
        Box::pin(async { Ok(()) })
    }
}

/// Shared handle.
pub type SharedSink = Arc<dyn Sink>;
