//! `inputbot run`: every source, step and action of a set of resources in one process, on the
//! embedded bus, with an HTTP listener for the webhooks, health and metrics.
//!
//! ```text
//!  files ─▶ resolve (same code as the operator) ─▶ act stages ─┐ subscribe first, so
//!                                               ─▶ process stages ┘ nothing published is missed
//!                                               ─▶ intake (HTTP) + poll + schedule ─▶ bus
//! ```
//!
//! Shutdown drains: intake answers 503, sources stop, the bus settles (every accepted event is
//! delivered, filtered or dead-lettered), deliveries still retrying are cut short and
//! dead-lettered (class `shutdown`, so `dlq redrive` can finish them), then everything stops.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use inputbot_api::{
    bot::SourceKind,
    manifest::ResourceSet,
    names, resolve,
    validate::{Options, Problem},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Bus, BusError, EmbeddedBus, EmbeddedOptions},
    event::Event,
    metrics::{self, Metrics},
    secrets::Secrets,
    sources::{
        self, Sink, SourceContext,
        webhook::{Health, Intake, IntakeError},
    },
    stages::{ActStage, ProcessStage, StageError},
};

/// Settings of a local run.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Where to serve webhooks, `/healthz`, `/readyz` and `/metrics`; `None` serves nothing
    /// (redrive).
    pub listen: Option<SocketAddr>,
    /// Dead letters and source state go here.
    pub data_dir: PathBuf,
    /// Run poll and schedule sources.
    pub sources: bool,
    /// Events each consumer group may hold before producers wait.
    pub queue_capacity: usize,
    /// How long a producer waits for room.
    pub publish_timeout: Duration,
    /// How long shutdown waits for in-flight events before cutting deliveries short.
    pub drain_timeout: Duration,
}

impl LocalOptions {
    /// Defaults for `inputbot run` on `listen`.
    pub fn new(listen: Option<SocketAddr>, data_dir: &Path) -> Self {
        Self {
            listen,
            data_dir: data_dir.to_owned(),
            sources: true,
            queue_capacity: 1024,
            publish_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a local run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The resources do not validate.
    #[error("the resources are not valid:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// A stage could not be built.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// Intake could not be built.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// A source needs something the local run does not have.
    #[error("{resource}: {field}: {message}")]
    Unsupported {
        /// Resource.
        resource: String,
        /// Field.
        field: String,
        /// Message.
        message: String,
    },
    /// The bus refused a subscription.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
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

/// A running bot.
pub struct Engine {
    addr: Option<SocketAddr>,
    bus: Arc<EmbeddedBus>,
    metrics: Arc<Metrics>,
    health: Health,
    stop_sources: CancellationToken,
    stop_http: CancellationToken,
    stop_stages: CancellationToken,
    abort: CancellationToken,
    tasks: JoinSet<()>,
    server: Option<tokio::task::JoinHandle<()>>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("addr", &self.addr).finish()
    }
}

/// What shutdown found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every accepted event was handled before the drain timeout.
    pub drained: bool,
    /// Events still unacknowledged at the end (0 unless a dead letter could not be written).
    pub outstanding: usize,
}

impl Engine {
    /// Validates, resolves and starts everything; returns once the listener is bound.
    pub async fn start(set: ResourceSet, options: LocalOptions) -> Result<Self, RunError> {
        let resolved = resolve::resolve(&set, Options::LOCAL).map_err(RunError::Invalid)?;
        let set = Arc::new(set);
        let secrets = |namespace: &str| Secrets::Manifests {
            set: set.clone(),
            namespace: namespace.to_owned(),
        };
        let bus = EmbeddedBus::new(EmbeddedOptions {
            capacity: options.queue_capacity,
            publish_timeout: options.publish_timeout,
            dead_letter_dir: options.data_dir.join("dlq"),
        });
        let dyn_bus: Arc<dyn Bus> = bus.clone();
        let metrics = Metrics::new();
        let client = reqwest::Client::builder()
            .user_agent(concat!("inputbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RunError::Unsupported {
                resource: "runtime".into(),
                field: "http client".into(),
                message: e.to_string(),
            })?;
        let (stop_sources, stop_http, stop_stages, abort) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let mut tasks = JoinSet::new();

        // Consumers first: an event published before its consumer joined would be lost.
        for config in &resolved.act {
            let stage = ActStage::new(
                config.clone(),
                &secrets(&config.binding.namespace),
                client.clone(),
                dyn_bus.clone(),
                metrics.clone(),
                true,
            )?;
            let (topic, group) = stage.input();
            let consumer = bus.subscribe(topic, group)?;
            tasks.spawn(stage.run(consumer, stop_stages.clone(), abort.clone()));
        }
        for config in &resolved.process {
            let stage = ProcessStage::new(
                config.clone(),
                &secrets(&config.pipeline.namespace),
                client.clone(),
                dyn_bus.clone(),
                metrics.clone(),
            )?;
            let (topic, group) = stage.input();
            let consumer = bus.subscribe(topic, group)?;
            tasks.spawn(stage.run(consumer, stop_stages.clone()));
        }
        for config in &resolved.process {
            if !bus.has_consumers(&config.output_topic) {
                tracing::warn!(target: "inputbot::run", "no ActionBinding consumes {} (Pipeline {}): its events end there",
                    config.output_topic, config.pipeline.name);
            }
        }

        // Sources.
        let mut webhook_bots = Vec::new();
        for config in &resolved.ingest {
            let ns = &config.bot.namespace;
            let bot = format!("{ns}/{}", config.bot.name);
            if !bus.has_consumers(&config.topic) {
                tracing::warn!(target: "inputbot::run", "no Pipeline or ActionBinding consumes {} (InputBot {}): its events end there",
                    config.topic, config.bot.name);
            }
            for (i, source) in config.sources.iter().enumerate() {
                let sink = || -> Arc<dyn Sink> {
                    Arc::new(BusSink {
                        bus: dyn_bus.clone(),
                        topic: config.topic.clone(),
                        metrics: metrics.clone(),
                        labels: metrics::source(&bot, &source.name),
                    })
                };
                let unsupported = |field: &str, message: String| RunError::Unsupported {
                    resource: config.bot.to_string(),
                    field: format!("spec.sources[{i}].{field}"),
                    message,
                };
                let is_kafka = matches!(source.kind(), Some(SourceKind::Kafka(_)));
                if !options.sources && !is_kafka {
                    continue;
                }
                let state = options.data_dir.join("state").join(format!(
                    "{}.poll.json",
                    names::consumer_group(ns, &config.bot.name, &source.name)
                ));
                let cx = SourceContext {
                    bot: &bot,
                    secrets: &secrets(ns),
                    client: &client,
                    state: Some(state),
                    sink: sink(),
                    shutdown: stop_sources.clone(),
                };
                if let Some(task) =
                    sources::build(source, cx).map_err(|e| unsupported(e.field, e.message))?
                {
                    tasks.spawn(task);
                }
            }
            webhook_bots.push((config.clone(), secrets(ns)));
        }

        let health = Health::default();
        let mut addr = None;
        let mut server = None;
        if let Some(listen) = options.listen {
            let intake = Intake::new(
                &webhook_bots,
                dyn_bus.clone(),
                metrics.clone(),
                health.clone(),
            )?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| RunError::Listen {
                    addr: listen,
                    source,
                })?;
            let bound = listener.local_addr().map_err(|source| RunError::Listen {
                addr: listen,
                source,
            })?;
            for path in intake.paths() {
                tracing::info!(target: "inputbot::run", "webhook http://{bound}{path}");
            }
            let router = intake.router();
            let stop = stop_http.clone();
            server = Some(tokio::spawn(async move {
                let server =
                    axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = server.await {
                    tracing::error!(target: "inputbot::run", "HTTP server failed: {e}");
                }
            }));
            addr = Some(bound);
        }
        Ok(Self {
            addr,
            bus,
            metrics,
            health,
            stop_sources,
            stop_http,
            stop_stages,
            abort,
            tasks,
            server,
            drain_timeout: options.drain_timeout,
        })
    }

    /// The bound HTTP address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Readiness: [`Health::drain`] makes `/readyz` fail and webhooks answer 503.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The bus (for redrive and tests).
    pub fn bus(&self) -> &Arc<EmbeddedBus> {
        &self.bus
    }

    /// Waits until every accepted event was delivered, filtered or dead-lettered.
    pub async fn settle(&self, timeout: Duration) -> bool {
        self.bus.settle(timeout).await
    }

    /// Drains and stops (see the module docs).
    pub async fn shutdown(mut self) -> ShutdownReport {
        self.health.drain();
        self.stop_sources.cancel();
        self.stop_http.cancel();
        // Requests in flight finish first: an event answered 202 during shutdown is published
        // before the bus is asked to settle.
        if let Some(server) = self.server.take()
            && tokio::time::timeout(self.drain_timeout, server)
                .await
                .is_err()
        {
            tracing::warn!(target: "inputbot::run", "HTTP requests still open after {:?}", self.drain_timeout);
        }
        let drained = self.bus.settle(self.drain_timeout).await;
        if !drained {
            tracing::warn!(target: "inputbot::run", outstanding = self.bus.outstanding(),
                "drain timeout: cutting deliveries short; they are dead-lettered with class \"shutdown\"");
        }
        self.abort.cancel();
        self.bus.settle(Duration::from_secs(10)).await;
        self.stop_stages.cancel();
        self.bus.close();
        while self.tasks.join_next().await.is_some() {}
        let outstanding = self.bus.outstanding();
        if outstanding > 0 {
            tracing::error!(target: "inputbot::run", outstanding,
                "{outstanding} accepted events were not finished: they were neither delivered, filtered nor dead-lettered");
        }
        ShutdownReport {
            drained,
            outstanding,
        }
    }
}

/// What `dlq redrive` puts back.
#[derive(Clone, Debug, Default)]
pub struct RedriveOptions {
    /// Only this dead-letter topic.
    pub topic: Option<String>,
    /// Only records for which this CEL condition (over `data`, `event`, `labels`, `error`) holds.
    pub filter: Option<String>,
    /// Records per second.
    pub rate: f64,
}

/// What `dlq redrive` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Records put back.
    pub redriven: usize,
    /// Of those, dead-lettered again.
    pub failed_again: usize,
    /// Records left alone (not selected).
    pub kept: usize,
}

/// Why redrive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The bot could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A dead-letter file could not be read or written.
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
    /// IO.
    #[error("cannot rewrite {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// What was put back did not finish; the files were left as they were.
    #[error(
        "the redriven events did not finish within an hour; the dead-letter files were left unchanged"
    )]
    Unfinished,
    /// The filter is not a valid CEL condition.
    #[error("--filter: {0}")]
    Filter(String),
    /// A record names a stage that is not in the given files.
    #[error(
        "{path}: record {index} failed at {resource} ({stage}), which is not in the given files"
    )]
    UnknownStage {
        /// File.
        path: String,
        /// 1-based record.
        index: usize,
        /// Resource.
        resource: String,
        /// Stage.
        stage: String,
    },
}

/// Puts dead letters back to the stage that failed them, rate-limited, and removes those that
/// went through; records that fail again are dead-lettered anew.
pub async fn redrive(
    set: ResourceSet,
    data_dir: &Path,
    options: &RedriveOptions,
) -> Result<RedriveReport, RedriveError> {
    use inputbot_api::expr::{CelExpr, Scope};
    let filter = options
        .filter
        .as_deref()
        .map(|f| CelExpr::compile(f, Scope::DeadLetter))
        .transpose()
        .map_err(RedriveError::Filter)?;
    let mut local = LocalOptions::new(None, data_dir);
    local.sources = false;
    let engine = Engine::start(set, local).await?;
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut report = RedriveReport::default();
    // Plan first — the filter and the failed stage of every record — so that a problem found
    // halfway never leaves some records put back and still in the file.
    struct Plan {
        path: PathBuf,
        records: Vec<crate::dlq::DeadLetter>,
        selected: Vec<(usize, String)>,
    }
    let mut plans = Vec::new();
    for path in crate::dlq::files(&data_dir.join("dlq")) {
        let topic = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let records = crate::dlq::read(&path)?;
        if options.topic.as_deref().is_some_and(|t| t != topic) {
            report.kept += records.len();
            continue;
        }
        let mut selected = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let take = match &filter {
                Some(f) => {
                    let vars = record.event.activation().with(
                        "error",
                        serde_json::json!({"class": record.error.class, "message": record.error.message,
                            "status": record.error.status, "attempts": record.error.attempts}),
                    );
                    f.eval_bool(&vars).map_err(RedriveError::Filter)?
                }
                None => true,
            };
            if !take {
                report.kept += 1;
                continue;
            }
            let r = &record.failed_at.resource;
            let role = if record.failed_at.stage == "step" {
                "process"
            } else {
                "act"
            };
            let group = names::consumer_group(&r.namespace, &r.name, role);
            if !engine.bus().has_group(&record.input_topic, &group) {
                return Err(RedriveError::UnknownStage {
                    path: path.display().to_string(),
                    index: i + 1,
                    resource: r.to_string(),
                    stage: record.failed_at.name.clone(),
                });
            }
            selected.push((i, group));
        }
        plans.push(Plan {
            path,
            records,
            selected,
        });
    }
    for plan in &plans {
        for (i, group) in &plan.selected {
            let record = &plan.records[*i];
            engine
                .bus()
                .publish_to_group(&record.input_topic, group, &record.event)
                .await
                .map_err(|e| RedriveError::Run(RunError::Bus(e)))?;
            report.redriven += 1;
            tokio::time::sleep(interval).await;
        }
    }
    if !engine.settle(Duration::from_secs(3600)).await {
        // Leave every file as it was: what was put back may still be in flight.
        engine.shutdown().await;
        return Err(RedriveError::Unfinished);
    }
    // Remove what was put back; keep what was not selected and what failed again (appended).
    for Plan {
        path,
        records,
        selected,
    } in plans
    {
        // Read again: records that failed again were appended while the engine ran.
        let current = crate::dlq::read(&path)?;
        report.failed_again += current.len().saturating_sub(records.len());
        let kept: Vec<_> = current
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !selected.iter().any(|(s, _)| s == i))
            .map(|(_, r)| r)
            .collect();
        crate::dlq::rewrite(&path, &kept).map_err(|source| RedriveError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    engine.shutdown().await;
    Ok(report)
}
