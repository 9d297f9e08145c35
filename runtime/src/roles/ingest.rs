//! The ingest role: a bot's sources — webhook routes on the HTTP server, poll and schedule
//! tasks — each publishing what it accepts to the bot's raw topic, answering (or moving on)
//! only once the bus holds it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use inputbot_api::{bot::SourceKind, config::IngestConfig};
use tokio::task::JoinSet;

use super::{
    Context, RoleError,
    serve::{self, ServerLimits},
};
use crate::{
    bus::{Bus, BusError},
    event::Event,
    metrics::{self, Metrics},
    sources::{
        self, Sink, SourceContext,
        state::{StateRoot, StateStore},
        webhook::Intake,
    },
};

/// How ingest runs.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Where to serve webhooks, `/healthz`, `/readyz` and `/metrics`; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// Run poll and schedule sources.
    pub sources: bool,
    /// Where poll and schedule sources keep their state on disk
    /// (`<dir>/<group>.<poll|schedule>.json`), unless `state_store` is given.
    pub state_dir: PathBuf,
    /// A shared store of source states (in a cluster: the bot's state topic), per bot.
    pub state_store: Option<Arc<dyn StateStore>>,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: ServerLimits,
}

/// The running HTTP side of ingest.
#[derive(Debug, Default)]
pub struct Ingest {
    /// The bound address, when serving.
    pub addr: Option<SocketAddr>,
    /// The HTTP server task; it ends once `shutdown.http` fired and requests are answered.
    pub server: Option<tokio::task::JoinHandle<()>>,
}

/// Publishes a source's events to its bot's raw topic.
struct BusSink {
    bus: Arc<dyn Bus>,
    topic: String,
    metrics: Arc<Metrics>,
    labels: metrics::SourceLabels,
}

impl Sink for BusSink {
    fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.metrics.received.get_or_create(&self.labels).inc();
            self.bus.publish(&self.topic, &event).await?;
            self.metrics.accepted.get_or_create(&self.labels).inc();
            tracing::info!(target: "inputbot::intake", bot = %self.labels.bot, source = %self.labels.source,
                event = %event.id, "accepted");
            Ok(())
        })
    }
}

/// Starts every source of the bots: poll and schedule as tasks (until `shutdown.sources`),
/// webhooks as routes of one HTTP server on `options.listen` (until `shutdown.http`). Returns
/// once the listener is bound.
pub async fn start(
    cx: &Context,
    configs: &[IngestConfig],
    options: &IngestOptions,
    tasks: &mut JoinSet<()>,
) -> Result<Ingest, RoleError> {
    let mut webhook_bots = Vec::new();
    for config in configs {
        let ns = &config.bot.namespace;
        let bot = format!("{ns}/{}", config.bot.name);
        for (i, source) in config.sources.iter().enumerate() {
            let is_kafka = matches!(source.kind(), Some(SourceKind::Kafka(_)));
            if !options.sources && !is_kafka {
                continue;
            }
            if let (Some(SourceKind::Kafka(spec)), Some(bus)) = (source.kind(), &cx.kafka) {
                tasks.spawn(super::kafka_source::start(cx, bus, config, i, spec)?);
                continue;
            }
            let state = match &options.state_store {
                Some(store) => StateRoot::Store(store.clone()),
                None => StateRoot::Dir {
                    dir: options.state_dir.clone(),
                    namespace: ns.clone(),
                    bot: config.bot.name.clone(),
                },
            };
            let source_cx = SourceContext {
                bot: &bot,
                secrets: &cx.secrets.namespace(ns),
                client: &cx.client,
                state: Some(state),
                sink: Arc::new(BusSink {
                    bus: cx.bus.clone(),
                    topic: config.topic.clone(),
                    metrics: cx.metrics.clone(),
                    labels: metrics::source(&bot, &source.name),
                }),
                shutdown: cx.shutdown.sources.clone(),
            };
            let task = sources::build(source, source_cx).map_err(|e| RoleError::Unsupported {
                resource: config.bot.to_string(),
                field: format!("spec.sources[{i}].{}", e.field),
                message: e.message,
            })?;
            if let Some(task) = task {
                tasks.spawn(task);
            }
        }
        webhook_bots.push((config.clone(), cx.secrets.namespace(ns)));
    }

    let Some(listen) = options.listen else {
        return Ok(Ingest::default());
    };
    let intake = Intake::new(
        &webhook_bots,
        cx.bus.clone(),
        cx.metrics.clone(),
        cx.health.clone(),
        options.http.request_timeout,
    )?;
    let (listener, bound) = serve::bind(listen).await?;
    for path in intake.paths() {
        tracing::info!(target: "inputbot::run", "webhook http://{bound}{path}");
    }
    let server = serve::serve(
        listener,
        intake.router(),
        &options.http,
        cx.metrics.clone(),
        cx.shutdown.http.clone(),
    );
    Ok(Ingest {
        addr: Some(bound),
        server: Some(server),
    })
}

/// Awaits the source tasks of [`start`] (poll, schedule, Kafka sources) once
/// `shutdown.sources` fired, for up to `timeout`: a poll or firing in flight finishes (it is
/// bounded by its own timeout and the bus's publish timeout), so everything it marked seen is
/// on the bus before the bus is settled (locally) or flushed (in a cluster). Returns false
/// when some were still running; the caller cuts them short.
pub async fn finish_sources(tasks: &mut JoinSet<()>, timeout: Duration) -> bool {
    let all = async {
        while let Some(done) = tasks.join_next().await {
            super::log_panic(done);
        }
    };
    if tokio::time::timeout(timeout, all).await.is_ok() {
        return true;
    }
    tracing::warn!(target: "inputbot::run", running = tasks.len(),
        "poll, schedule or Kafka sources still running after {timeout:?}");
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A source that, like a poll in flight, keeps emitting for a while after it was told to
    /// stop; counts what it emitted.
    fn slow_source(tasks: &mut JoinSet<()>, stop: &CancellationToken, emitted: &Arc<AtomicUsize>) {
        let (stop, emitted) = (stop.clone(), emitted.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                emitted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    #[tokio::test]
    async fn finishing_the_sources_waits_for_what_a_poll_in_flight_still_emits() {
        let (mut tasks, stop, emitted) = (
            JoinSet::new(),
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(0)),
        );
        slow_source(&mut tasks, &stop, &emitted);
        slow_source(&mut tasks, &stop, &emitted);
        stop.cancel();
        assert!(finish_sources(&mut tasks, Duration::from_secs(10)).await);
        assert_eq!(
            emitted.load(Ordering::SeqCst),
            40,
            "every item emitted before the return"
        );
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn finishing_the_sources_gives_up_after_the_timeout_and_leaves_the_rest_to_the_caller() {
        let (mut tasks, stop, emitted) = (
            JoinSet::new(),
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(0)),
        );
        slow_source(&mut tasks, &stop, &emitted);
        stop.cancel();
        assert!(!finish_sources(&mut tasks, Duration::from_millis(30)).await);
        assert_eq!(tasks.len(), 1, "still running: the caller aborts it");
        tasks.abort_all();
    }
}
