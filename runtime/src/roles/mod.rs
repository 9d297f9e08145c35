//! The three roles of the runtime — **ingest**, **process** and **act** — and what they share.
//!
//! ```text
//!            ┌─────────── Context: bus, metrics, secrets, HTTP client, health, shutdown ───────────┐
//!  sources ─▶│ ingest (webhook routes, poll, schedule) ─publish(raw)─▶ bus                         │
//!            │ process (one PipelineWorker per Pipeline) ◀─raw─ bus ─out─▶ bus   │ dead letters    │
//!            │ act (one BindingWorker per ActionBinding)  ◀─out/raw─ bus ─▶ target│ dead letters    │
//!            └─────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Each role is started by its module's `start` with one [`Context`] and knows nothing of the
//! others: they meet only on the bus. Locally ([`crate::local`]) the three run in one process on
//! the embedded bus; in a cluster each Deployment runs one role on the Kafka bus ([`cluster`]).
//!
//! A consuming role reads its topic as a consumer group, handles up to `max_in_flight` events
//! at once (`consume`), and acknowledges an event only after it was fully handled: produced
//! downstream, delivered, filtered, or written to the dead-letter store. Publishing downstream
//! and writing dead letters are retried until they succeed or the role stops
//! ([`until_stored`](crate::delivery::until_stored)); an event whose outcome could not be stored
//! is not acknowledged (Kafka redelivers it).

pub mod act;
pub mod cluster;
mod consume;
pub mod ingest;
mod kafka_source;
pub mod process;
pub mod serve;

use self::consume::consume;

use std::{net::SocketAddr, sync::Arc};

use inputbot_api::config::ResourceId;
use tokio_util::sync::CancellationToken;

use crate::{
    actions,
    bus::{Bus, BusError},
    metrics::Metrics,
    secrets::SecretStore,
    sources::webhook::{Health, IntakeError},
    steps,
};

/// What every role shares. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Where events go and come from.
    pub bus: Arc<dyn Bus>,
    /// The same bus when it is Kafka: what Kafka sources and kafka actions use.
    pub kafka: Option<Arc<crate::bus::KafkaBus>>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Secret values, per namespace.
    pub secrets: SecretStore,
    /// The one outbound HTTP client (connection pooling).
    pub client: reqwest::Client,
    /// Readiness: false while the pod drains.
    pub health: Health,
    /// When to stop what.
    pub shutdown: Shutdown,
    /// Dead-letter deliveries cut short by shutdown (class `shutdown`) instead of leaving them
    /// unacknowledged: for a bus that cannot redeliver them (the embedded one).
    pub dead_letter_on_shutdown: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// The stop signals, in the order shutdown fires them.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stops the sources that run by themselves (poll, schedule).
    pub sources: CancellationToken,
    /// Stops the HTTP server once requests in flight are answered.
    pub http: CancellationToken,
    /// Cuts deliveries still retrying short.
    pub abort: CancellationToken,
    /// Stops consumers taking further events.
    pub consumers: CancellationToken,
}

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// A step did not compile.
    #[error(transparent)]
    Steps(#[from] steps::BuildError),
    /// The action could not be built.
    #[error("{binding}: spec.action: {source}")]
    Action {
        /// `ActionBinding ns/name`.
        binding: String,
        /// Cause.
        #[source]
        source: Box<actions::BuildError>,
    },
    /// Something else about the binding.
    #[error("{binding}: {field}: {message}")]
    Binding {
        /// `ActionBinding ns/name`.
        binding: String,
        /// Field.
        field: String,
        /// Message.
        message: String,
    },
    /// The webhook routes could not be built.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// A source needs something this run does not have.
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

/// `namespace/name`, the label of a resource in logs and metrics.
fn resource_label(id: &ResourceId) -> String {
    format!("{}/{}", id.namespace, id.name)
}

/// A handler that panicked lost its event: never let that pass quietly.
fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(target: "inputbot::stage", "an event handler failed and its event was not finished: {e}");
    }
}

/// Completes on Ctrl-C or SIGTERM: what every role waits for before draining.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
