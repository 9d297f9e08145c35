//! `inputbot run`: the three roles of a set of resources in one process, on the embedded bus,
//! with an HTTP listener for the webhooks, health and metrics.
//!
//! ```text
//!  files ─▶ resolve (same code as the operator) ─▶ roles::act     ─┐ subscribe first, so
//!                                               ─▶ roles::process ─┘ nothing published is missed
//!                                               ─▶ roles::ingest (HTTP + poll + schedule) ─▶ bus
//! ```
//!
//! Shutdown drains: intake answers 503, sources stop (a poll or firing in flight is awaited,
//! so what it marked seen is on the bus), the bus settles (every accepted event is
//! delivered, filtered or dead-lettered), deliveries still retrying are cut short and
//! dead-lettered (class `shutdown`, so `dlq redrive` can finish them), then everything stops.
//!
//! `inputbot dlq redrive` starts the same roles with the sources off and hands the dead letters
//! back through the embedded bus ([`redrive()`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use inputbot_api::{
    manifest::{self, ResourceSet},
    resolve,
    validate::{Options, Problem},
};
use tokio::task::JoinSet;

pub use crate::dlq::redrive::{RedriveError, RedriveOptions, RedriveReport};
use crate::{
    bus::{EmbeddedBus, EmbeddedOptions, log::LogOptions},
    dlq::redrive,
    event::Event,
    metrics::Metrics,
    roles::{
        self, Context, RoleError, Shutdown,
        ingest::{self, Ingest, IngestOptions},
        serve::ServerLimits,
    },
    secrets::SecretStore,
    sources::webhook::Health,
};

/// The bot `inputbot run` starts when no file is given: examples/quickstart.yaml.
const QUICKSTART: &str = include_str!("../../examples/quickstart.yaml");

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
    /// The durable log of the bus (`<data>/bus`); `None` keeps accepted events in memory only.
    pub log: Option<LogOptions>,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: ServerLimits,
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
            log: Some(LogOptions::new(data_dir.join("bus"))),
            http: ServerLimits::default(),
        }
    }
}

/// Why a local run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The resources do not validate.
    #[error("the resources are not valid:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// A role could not start.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// The runtime itself could not be set up.
    #[error("{resource}: {field}: {message}")]
    Unsupported {
        /// Resource.
        resource: String,
        /// Field.
        field: String,
        /// Message.
        message: String,
    },
}

/// Loads the given files, or the built-in quickstart bot when there are none. Errors are the
/// loader's, one per problem.
pub fn load(files: &[PathBuf], namespace: &str) -> Result<ResourceSet, Vec<manifest::LoadError>> {
    if files.is_empty() {
        let mut set = ResourceSet::default();
        manifest::load_str(
            &mut set,
            "examples/quickstart.yaml (built in)",
            QUICKSTART,
            namespace,
        )
        .map(|()| set)
    } else {
        manifest::load_files(files, namespace)
    }
}

/// A running bot.
pub struct Engine {
    addr: Option<SocketAddr>,
    bus: Arc<EmbeddedBus>,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: Shutdown,
    /// Consumers (process and act).
    tasks: JoinSet<()>,
    /// Poll and schedule sources: awaited on shutdown before the bus is asked to settle.
    sources: JoinSet<()>,
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
    /// Validates, resolves and starts the three roles on the embedded bus; returns once the
    /// listener is bound.
    pub async fn start(set: ResourceSet, options: LocalOptions) -> Result<Self, RunError> {
        let resolved = resolve::resolve(&set, Options::LOCAL).map_err(RunError::Invalid)?;
        let bus = EmbeddedBus::open(EmbeddedOptions {
            capacity: options.queue_capacity,
            publish_timeout: options.publish_timeout,
            dead_letter_dir: options.data_dir.join("dlq"),
            log: options.log.clone(),
        })
        .map_err(|e| RunError::Unsupported {
            resource: "runtime".into(),
            field: "data directory".into(),
            message: e.to_string(),
        })?;
        let client = crate::outbound::client().map_err(|e| RunError::Unsupported {
            resource: "runtime".into(),
            field: "http client".into(),
            message: e.to_string(),
        })?;
        let cx = Context {
            kafka: None,
            bus: bus.clone(),
            metrics: Metrics::new(),
            secrets: SecretStore::Manifests(Arc::new(set)),
            client,
            health: Health::default(),
            shutdown: Shutdown::default(),
            dead_letter_on_shutdown: true,
        };
        let mut tasks = JoinSet::new();
        let mut sources = JoinSet::new();

        // Consumers first: an event published before its consumer joined would be lost.
        roles::act::start(&cx, &resolved.act, &mut tasks)?;
        roles::process::start(&cx, &resolved.process, &mut tasks)?;
        // Every group joined (and resumes what the last run left unfinished): positions of
        // groups no longer in the files are dropped, finished segments may go.
        bus.seal();
        for config in &resolved.process {
            if !bus.has_consumers(&config.output_topic) {
                tracing::warn!(target: "inputbot::run", "no ActionBinding consumes {} (Pipeline {}): its events end there",
                    config.output_topic, config.pipeline.name);
            }
        }
        for config in &resolved.ingest {
            if !bus.has_consumers(&config.topic) {
                tracing::warn!(target: "inputbot::run", "no Pipeline or ActionBinding consumes {} (InputBot {}): its events end there",
                    config.topic, config.bot.name);
            }
        }
        let Ingest { addr, server } = roles::ingest::start(
            &cx,
            &resolved.ingest,
            &IngestOptions {
                listen: options.listen,
                sources: options.sources,
                state_dir: options.data_dir.join("state"),
                state_store: None,
                http: options.http.clone(),
            },
            &mut sources,
        )
        .await?;
        Ok(Self {
            addr,
            bus,
            metrics: cx.metrics,
            health: cx.health,
            shutdown: cx.shutdown,
            tasks,
            sources,
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
        self.shutdown.sources.cancel();
        self.shutdown.http.cancel();
        // Requests in flight finish first: an event answered 202 during shutdown is published
        // before the bus is asked to settle.
        if let Some(server) = self.server.take()
            && tokio::time::timeout(self.drain_timeout, server)
                .await
                .is_err()
        {
            tracing::warn!(target: "inputbot::run", "HTTP requests still open after {:?}", self.drain_timeout);
        }
        // A poll or firing in flight finishes (bounded by its timeout and the bus's publish
        // timeout): what it marks seen is on the bus before the bus is asked to settle.
        if !ingest::finish_sources(&mut self.sources, self.drain_timeout).await {
            self.sources.abort_all();
        }
        let drained = self.bus.settle(self.drain_timeout).await;
        if !drained {
            tracing::warn!(target: "inputbot::run", outstanding = self.bus.outstanding(),
                "drain timeout: cutting deliveries short; they are dead-lettered with class \"shutdown\"");
        }
        self.shutdown.abort.cancel();
        self.bus.settle(Duration::from_secs(10)).await;
        self.shutdown.consumers.cancel();
        self.bus.close();
        while self.tasks.join_next().await.is_some() {}
        self.bus.finish();
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

/// The embedded bus runs the stages that dead letters are put back to.
impl redrive::Target for EmbeddedBus {
    fn has_group(&self, topic: &str, group: &str) -> bool {
        EmbeddedBus::has_group(self, topic, group)
    }

    fn put_back<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            self.publish_to_group(topic, group, event)
                .await
                .map_err(Into::into)
        })
    }

    fn settle(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(EmbeddedBus::settle(self, timeout))
    }
}

/// `inputbot dlq redrive`: starts the bot's stages with its sources off, puts the dead letters
/// back through the embedded bus ([`redrive::redrive`]), and stops.
pub async fn redrive(
    set: ResourceSet,
    data_dir: &Path,
    options: &RedriveOptions,
) -> Result<RedriveReport, RedriveError> {
    let filter = redrive::filter(options)?;
    let mut local = LocalOptions::new(None, data_dir);
    local.sources = false;
    let engine = Engine::start(set, local)
        .await
        .map_err(|e| RedriveError::Start(Box::new(e)))?;
    let result = redrive::redrive(engine.bus().as_ref(), data_dir, options, filter.as_ref()).await;
    if matches!(result, Ok(_) | Err(RedriveError::Unfinished)) {
        engine.shutdown().await;
    }
    result
}
