//! `inputbot-operator run`: the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), leader
//! election on a Lease, and the controllers — started only while this replica leads.
//!
//! ```text
//!  start ─▶ serve /metrics /healthz /readyz ─▶ wait for the Lease ─▶ controllers
//!                                                 │ lost ─▶ exit 1 (no write after losing)
//!  SIGTERM ─▶ controllers finish their reconciles ─▶ release the Lease ─▶ exit 0
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::{FutureExt, future::Shared as SharedFuture};
use kube::{Client, runtime::events::Reporter};
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

use crate::{
    controller::{self, run::Shared},
    metrics::Metrics,
    settings::{RunSettings, Settings, TopicMode},
    topics::{TopicProvisioner, admin::AdminProvisioner, strimzi::StrimziProvisioner},
};

/// The topic provisioner the settings ask for.
pub fn provisioner(
    settings: &Settings,
    client: &Client,
) -> anyhow::Result<Arc<dyn TopicProvisioner>> {
    Ok(match settings.topic_mode {
        TopicMode::Admin => Arc::new(
            AdminProvisioner::new(&settings.kafka.client_config(), Duration::from_secs(30))
                .context("creating the Kafka admin client")?,
        ),
        TopicMode::Strimzi => Arc::new(StrimziProvisioner::new(
            client.clone(),
            settings.strimzi_cluster.clone(),
            settings.strimzi_namespace.clone(),
        )),
    })
}

#[derive(Clone)]
struct Http {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

async fn serve_metrics(State(http): State<Http>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &http.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            String::new(),
        ),
    }
}

async fn readyz(State(http): State<Http>) -> StatusCode {
    if http.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn shutdown_signal() -> SharedFuture<futures::future::BoxFuture<'static, ()>> {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutting down");
    }
    .boxed()
    .shared()
}

/// Runs the operator until SIGTERM (or until it loses leadership: then it exits with an
/// error, and Kubernetes restarts it as a standby).
pub async fn run(settings: Settings, run: RunSettings) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let http = Http {
        registry: Arc::new(registry),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let shutdown = shutdown_signal();

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(http.clone());
    let listener = tokio::net::TcpListener::bind(run.metrics_listen)
        .await
        .with_context(|| format!("binding {}", run.metrics_listen))?;
    info!(listen = %run.metrics_listen, "serving /metrics, /healthz and /readyz");
    let server_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown)
            .await
        {
            error!(error = %e, "the metrics server failed");
        }
    });

    let identity = run.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "inputbot-operator".into()),
            std::process::id()
        )
    });
    let topics = provisioner(&settings, &client)?;
    let shared = Shared {
        client: client.clone(),
        metrics: metrics.clone(),
        settings: settings.clone(),
        topics,
        concurrency: run.concurrency,
        reporter: Reporter {
            controller: "inputbot-operator".into(),
            instance: Some(identity.clone()),
        },
    };
    // A standby is ready: it serves and waits. Readiness says "this process works", not
    // "this process leads".
    http.ready.store(true, Ordering::Relaxed);

    let mut lease = None;
    if run.leader_elect {
        let namespace = run
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let duration = run.lease_duration_seconds.max(3);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &run.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .build()
            .await
            .context("setting up leader election")?;
        let (mut rx, task) = manager.watch().await;
        info!(lease = %run.lease_name, %namespace, %identity, "waiting to lead");
        loop {
            if *rx.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                },
                _ = shutdown.clone() => {
                    drop(rx);
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                    return Ok(());
                }
            }
        }
        info!(%identity, "leading: starting the controllers");
        metrics.leader.set(1);
        lease = Some((rx, task));
    }

    let mut futures = Vec::new();
    let scopes: Vec<Option<String>> = if run.watch_namespaces.is_empty() {
        vec![None]
    } else {
        run.watch_namespaces.iter().cloned().map(Some).collect()
    };
    for scope in scopes {
        futures.extend(controller::controllers(shared.clone(), scope, shutdown.clone()).await);
    }
    let all = futures::future::join_all(futures);
    match lease {
        None => {
            all.await;
        }
        Some((mut rx, task)) => {
            let lost = async {
                loop {
                    if rx.changed().await.is_err() || !*rx.borrow() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = all => {
                    // Graceful shutdown: every reconcile finished; hand the Lease over now.
                    drop(rx);
                    if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                        warn!("could not release the Lease in time; a standby takes over when it expires");
                    }
                    info!("released the Lease");
                }
                _ = lost => {
                    metrics.leader.set(0);
                    // Nothing may be written once another replica can lead: stop now.
                    error!("lost the leader Lease; exiting so that only the leader writes");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}
