//! One role alone on the Kafka bus, as a cluster Deployment runs it:
//! `inputbot ingest|process|act --config FILE --secrets-dir DIR --listen ADDR`.
//!
//! ```text
//!  config file (ComponentConfig, role checked) ─▶ KafkaBus (env settings, topics required)
//!    ─▶ the role (ingest: sources + webhook routes; process / act: their consumer group)
//!    ─▶ HTTP on --listen: /healthz, /readyz (bus healthy and not draining), /metrics (+ webhooks)
//!  SIGTERM ─▶ readiness off, webhooks 503 ─▶ sources stop, HTTP answers what is open
//!          ─▶ poll, schedule and Kafka sources finish what is in flight (as locally)
//!          ─▶ consumers take nothing more, in-flight events finish (until the drain timeout,
//!             then deliveries are cut short and left unacknowledged: redelivered)
//!          ─▶ commit the watermarks, leave the groups ─▶ flush the producer ─▶ exit
//! ```
//!
//! Nothing is dead-lettered because of shutdown here (unlike locally): Kafka redelivers what
//! was not acknowledged to the next owner of the partition.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use inputbot_api::config::ComponentConfig;
use tokio::task::JoinSet;

use super::{
    Context, RoleError, Shutdown,
    ingest::{self, Ingest, IngestOptions},
    serve::{self, ServerLimits},
};
use crate::{
    bus::{
        Bus, KafkaBus, KafkaOptions, KafkaSettings,
        kafka::{KafkaBusError, SettingsError, state::KafkaStateStore},
    },
    metrics::Metrics,
    secrets::SecretStore,
    sources::webhook::{Health, Intake},
};

/// The role a process runs: the subcommand, checked against the config file's `role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sources → raw topic.
    Ingest,
    /// Raw topic → steps → output topic (+ dead letters).
    Process,
    /// Input topic → action (+ dead letters).
    Act,
}

impl Role {
    /// `ingest`, `process` or `act` (the subcommand and the config's `role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Process => "process",
            Role::Act => "act",
        }
    }
}

/// How the role runs.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The role asked for.
    pub role: Role,
    /// The resolved config file (`serde_json` of a [`ComponentConfig`]).
    pub config: PathBuf,
    /// Mounted Secrets: `<dir>/<secret>/<key>`.
    pub secrets_dir: PathBuf,
    /// Where to serve `/healthz`, `/readyz`, `/metrics` (and, in ingest, the webhooks).
    pub listen: SocketAddr,
    /// How long shutdown lets in-flight events finish before cutting deliveries short.
    pub drain_timeout: Duration,
    /// Where poll and schedule sources keep their state when the config names no state topic.
    pub state_dir: PathBuf,
    /// Producer and health settings of the bus.
    pub kafka: KafkaOptions,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: ServerLimits,
}

/// Why a role could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    ReadConfig {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a component config.
    #[error("{path} is not a resolved component config: {source}")]
    ParseConfig {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The subcommand and the file's role differ.
    #[error(
        "{path} is the config of the {found} role ({resource}), but this process was started as `inputbot {expected}`: the Deployment's args and its ConfigMap disagree"
    )]
    WrongRole {
        /// File.
        path: String,
        /// The file's role.
        found: &'static str,
        /// The subcommand.
        expected: &'static str,
        /// The resource the file is for.
        resource: String,
    },
    /// The Kafka settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The bus could not be set up.
    #[error(transparent)]
    Bus(#[from] KafkaBusError),
    /// The role could not start.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The source state could not be loaded from its topic.
    #[error("cannot load the source state from topic {topic}: {message}")]
    State {
        /// The state topic.
        topic: String,
        /// Why.
        message: String,
    },
}

/// What shutdown found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Whether every in-flight event finished within the drain timeout.
    pub drained: bool,
}

/// Reads and checks the config file.
pub fn load(path: &std::path::Path, role: Role) -> Result<ComponentConfig, ClusterError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::ReadConfig {
        path: shown.clone(),
        source,
    })?;
    let config: ComponentConfig =
        serde_json::from_str(&text).map_err(|source| ClusterError::ParseConfig {
            path: shown.clone(),
            source,
        })?;
    if config.role() != role.as_str() {
        return Err(ClusterError::WrongRole {
            path: shown,
            found: config.role(),
            expected: role.as_str(),
            resource: config.resource().to_string(),
        });
    }
    Ok(config)
}

/// The topics a component reads and writes: the bus is ready only while all exist.
pub fn topics(config: &ComponentConfig) -> Vec<String> {
    match config {
        ComponentConfig::Ingest(c) => std::iter::once(c.topic.clone())
            .chain(c.state_topic.clone())
            .collect(),
        ComponentConfig::Process(c) => [
            c.input_topic.clone(),
            c.output_topic.clone(),
            c.dead_letter_topic.clone(),
        ]
        .into_iter()
        .chain(c.dedupe_topic.clone())
        .collect(),
        ComponentConfig::Act(c) => std::iter::once(c.input_topic.clone())
            .chain(c.dead_letter_topic.clone())
            .chain(c.dedupe_topic.clone())
            .collect(),
    }
}

/// A running role.
pub struct Running {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    cx: Context,
    bus: Arc<KafkaBus>,
    /// Consumers (process and act).
    tasks: JoinSet<()>,
    /// Poll, schedule and Kafka sources (ingest): awaited on shutdown before the consumers
    /// stop and the producer is flushed.
    sources: JoinSet<()>,
    server: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

/// Loads the config, connects the bus and starts the role; returns once it serves HTTP.
pub async fn start(
    options: &ClusterOptions,
    settings: KafkaSettings,
) -> Result<Running, ClusterError> {
    let config = load(&options.config, options.role)?;
    let bus = KafkaBus::connect(settings, options.kafka.clone(), &topics(&config)).await?;
    let metrics = Metrics::new();
    bus.set_metrics(metrics.clone());
    let client = reqwest::Client::builder()
        .user_agent(concat!("inputbot/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClusterError::Client(e.to_string()))?;
    let cx = Context {
        bus: bus.clone(),
        kafka: Some(bus.clone()),
        metrics,
        secrets: SecretStore::Mounted(options.secrets_dir.clone()),
        client,
        health: Health::default(),
        shutdown: Shutdown::default(),
        dead_letter_on_shutdown: false,
    };
    let mut tasks = JoinSet::new();
    let mut sources = JoinSet::new();
    let (addr, server) = match &config {
        ComponentConfig::Ingest(c) => {
            let state_store = match &c.state_topic {
                Some(topic) => Some(open_state(&bus, topic).await?),
                None => None,
            };
            let Ingest { addr, server } = super::ingest::start(
                &cx,
                std::slice::from_ref(c),
                &IngestOptions {
                    listen: Some(options.listen),
                    sources: true,
                    state_dir: options.state_dir.clone(),
                    state_store,
                    http: options.http.clone(),
                },
                &mut sources,
            )
            .await?;
            match (addr, server) {
                (Some(addr), Some(server)) => (addr, server),
                _ => unreachable!("ingest serves HTTP whenever it is given an address"),
            }
        }
        ComponentConfig::Process(c) => {
            super::process::start(&cx, std::slice::from_ref(c), &mut tasks)?;
            serve_health(&cx, options.listen, &options.http).await?
        }
        ComponentConfig::Act(c) => {
            super::act::start(&cx, std::slice::from_ref(c), &mut tasks)?;
            serve_health(&cx, options.listen, &options.http).await?
        }
    };
    tracing::info!(target: "inputbot::run", role = options.role.as_str(), resource = %config.resource(),
        listen = %addr, ready = bus.healthy(), "running on the Kafka bus");
    Ok(Running {
        addr,
        cx,
        bus,
        tasks,
        sources,
        server,
        drain_timeout: options.drain_timeout,
    })
}

/// How long the poller waits for its state topic at start before it gives up (and Kubernetes
/// restarts it).
const STATE_WAIT: Duration = Duration::from_secs(60);

/// Loads the bot's source state from its state topic, waiting a while for the topic (the
/// operator creates it beside the Deployment).
async fn open_state(
    bus: &Arc<KafkaBus>,
    topic: &str,
) -> Result<Arc<dyn crate::sources::state::StateStore>, ClusterError> {
    let started = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        match KafkaStateStore::open(bus.clone(), topic).await {
            Ok(store) => return Ok(store),
            Err(message) if started.elapsed() >= STATE_WAIT => {
                return Err(ClusterError::State {
                    topic: topic.to_owned(),
                    message,
                });
            }
            Err(message) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(target: "inputbot::run", topic, "cannot load the source state yet (retrying): {message}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics` for the roles without webhooks, on the same server
/// (and limits) as ingest's.
async fn serve_health(
    cx: &Context,
    listen: SocketAddr,
    limits: &ServerLimits,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RoleError> {
    let router = Intake::new(
        &[],
        cx.bus.clone(),
        cx.metrics.clone(),
        cx.health.clone(),
        limits.request_timeout,
    )?
    .router();
    let (listener, addr) = serve::bind(listen).await?;
    let server = serve::serve(
        listener,
        router,
        limits,
        cx.metrics.clone(),
        cx.shutdown.http.clone(),
    );
    Ok((addr, server))
}

impl Running {
    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.cx.metrics
    }

    /// Drains and stops (see the module docs).
    pub async fn shutdown(mut self) -> Stopped {
        let shutdown = &self.cx.shutdown;
        self.cx.health.drain();
        shutdown.sources.cancel();
        shutdown.http.cancel();
        if tokio::time::timeout(self.drain_timeout, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!(target: "inputbot::run", "HTTP requests still open after {:?}", self.drain_timeout);
            self.server.abort();
        }
        // What a poll or firing in flight marked seen is produced before the flush below.
        let sources_done = ingest::finish_sources(&mut self.sources, self.drain_timeout).await;
        shutdown.consumers.cancel();
        let drained = sources_done
            && tokio::time::timeout(self.drain_timeout, join_all(&mut self.tasks))
                .await
                .is_ok();
        if !drained {
            tracing::warn!(target: "inputbot::run", "drain timeout ({:?}): cutting deliveries short; Kafka redelivers them", self.drain_timeout);
            shutdown.abort.cancel();
            let rest = async {
                join_all(&mut self.sources).await;
                join_all(&mut self.tasks).await;
            };
            if tokio::time::timeout(Duration::from_secs(10), rest)
                .await
                .is_err()
            {
                self.sources.abort_all();
                self.tasks.abort_all();
            }
        }
        if let Err(e) = self.bus.flush(Duration::from_secs(5)).await {
            tracing::warn!(target: "inputbot::run", "{e}");
        }
        self.bus.close();
        tracing::info!(target: "inputbot::run", drained, "stopped");
        Stopped { drained }
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.join_next().await {
        super::log_panic(done);
    }
}

/// Runs a role until `stop` completes (SIGTERM in the binary), then drains.
pub async fn run(
    options: &ClusterOptions,
    settings: KafkaSettings,
    stop: impl Future<Output = ()>,
) -> Result<Stopped, ClusterError> {
    let running = start(options, settings).await?;
    stop.await;
    tracing::info!(target: "inputbot::run", "shutting down: readiness off, finishing in-flight events");
    Ok(running.shutdown().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("component.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn refuses_a_config_of_another_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"{"role":"ingest","bot":{"kind":"InputBot","namespace":"ns","name":"b"},"topic":"inputbot.ns.b.raw","sources":[]}"#,
        );
        let e = load(&path, Role::Process).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ingest role") && text.contains("inputbot process"),
            "{text}"
        );
        let ComponentConfig::Ingest(c) = load(&path, Role::Ingest).unwrap() else {
            panic!("an ingest config");
        };
        assert_eq!(topics(&ComponentConfig::Ingest(c)), ["inputbot.ns.b.raw"]);
    }

    #[test]
    fn names_the_file_that_is_missing_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("nope.json"), Role::Act).unwrap_err();
        assert!(e.to_string().contains("nope.json"), "{e}");
        let path = write(&dir, r#"{"role":"teleport"}"#);
        let e = load(&path, Role::Act).unwrap_err();
        assert!(
            e.to_string().contains("not a resolved component config"),
            "{e}"
        );
    }
}
