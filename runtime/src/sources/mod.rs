//! Sources that produce events by themselves: HTTP polling and cron schedules, and the webhook
//! source served over HTTP ([`webhook`]). (Kafka sources come with the Kafka bus.) Each runs as a task
//! until shutdown and hands its events to a [`Sink`], which publishes them to the bot's raw
//! topic and returns only once the bus holds them.

use std::sync::Arc;

use futures::future::BoxFuture;
use inputbot_api::bot::{Source, SourceKind};
use tokio_util::sync::CancellationToken;

use self::{
    poll::Poller,
    schedule::{Scheduler, SystemClock},
    state::StateRoot,
};
use crate::{bus::BusError, event::Event, secrets::Secrets};

pub mod poll;
pub mod schedule;
pub mod state;
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

/// What a source needs to be built: whose it is, where its events go, and when to stop.
pub struct SourceContext<'a> {
    /// The bot, `namespace/name`.
    pub bot: &'a str,
    /// The bot's Secrets.
    pub secrets: &'a Secrets,
    /// The shared outbound HTTP client.
    pub client: &'a reqwest::Client,
    /// Where poll and schedule sources keep their state; `None` keeps it in memory.
    pub state: Option<StateRoot>,
    /// Where events go.
    pub sink: SharedSink,
    /// Stops the source.
    pub shutdown: CancellationToken,
}

/// A source task, ready to spawn: it runs until its shutdown fires.
pub type SourceTask = BoxFuture<'static, ()>;

/// Why a source could not be built: the field under the source (`poll`, `schedule`, `kafka`)
/// and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SourceError {
    /// `poll`, `schedule` or `kafka`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Builds a source that runs by itself (poll, schedule). Webhooks are routes of the HTTP
/// server ([`webhook::Intake`]): for them this returns `None`. Kafka sources need the Kafka bus
/// and are refused here.
pub fn build(source: &Source, cx: SourceContext<'_>) -> Result<Option<SourceTask>, SourceError> {
    match source.kind() {
        None | Some(SourceKind::Webhook(_)) => Ok(None),
        Some(SourceKind::Kafka(k)) => Err(SourceError {
            field: "kafka",
            message: format!(
                "a Kafka source (topic {}) needs the Kafka bus; `inputbot run` uses the embedded bus, which has none. Run this bot on a cluster, or replace the source with a webhook to try it locally",
                k.topic
            ),
        }),
        Some(SourceKind::Poll(p)) => {
            let poller = Poller::new(
                cx.bot,
                &source.name,
                p,
                cx.secrets,
                cx.client.clone(),
                cx.state.as_ref().map(|r| r.source(&source.name, "poll")),
            )
            .map_err(|e| SourceError {
                field: "poll",
                message: e.to_string(),
            })?;
            Ok(Some(Box::pin(poller.run(cx.sink, cx.shutdown))))
        }
        Some(SourceKind::Schedule(s)) => {
            let scheduler = Scheduler::new(cx.bot, &source.name, s)
                .map_err(|e| SourceError {
                    field: "schedule",
                    message: e.to_string(),
                })?
                .with_state(
                    cx.state
                        .as_ref()
                        .map(|r| r.source(&source.name, "schedule")),
                );
            Ok(Some(Box::pin(scheduler.run(
                Arc::new(SystemClock),
                cx.sink,
                cx.shutdown,
            ))))
        }
    }
}
