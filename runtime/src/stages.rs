//! The consuming stages: **process** (a pipeline's steps) and **act** (an action binding's
//! delivery). Both read a topic as a consumer group, handle up to `max_in_flight` events at
//! once, and acknowledge an event only after it was fully handled:
//!
//! ```text
//!  process: next ─▶ steps ─┬─ Continue ─▶ publish(out) ─▶ ack
//!                          ├─ Filtered ─────────────────▶ ack
//!                          └─ Failed ───▶ dead_letter ──▶ ack
//!  act:     next ─▶ when ─┬─ false ───────────────────────────────▶ ack
//!                         └─ true ─▶ deliver (retry, breaker, rate) ─┬─ Delivered ─▶ ack
//!                                                                    └─ Failed ─▶ dead_letter (+ notify) ─▶ ack
//! ```
//!
//! Publishing downstream and writing dead letters are retried until they succeed or the stage
//! stops; an event whose outcome could not be stored is not acknowledged (Kafka redelivers it).

use std::{sync::Arc, time::Duration};

use inputbot_api::{
    config::{ActConfig, FailureClass, ProcessConfig, ResourceId},
    expr::{CelExpr, Scope, Template},
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    actions::{self, ActionImpl},
    bus::{Bus, Consumer, Message},
    delivery::{Deliverer, GiveUp, Outcome, until_stored},
    dlq::{DeadLetter, ErrorInfo, FailedAt},
    event::Event,
    metrics::{self, Metrics},
    secrets::Secrets,
    steps::{StepOutcome, Steps},
};

/// Why a stage could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A step did not compile.
    #[error(transparent)]
    Steps(#[from] crate::steps::BuildError),
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
}

fn resource_label(id: &ResourceId) -> String {
    format!("{}/{}", id.namespace, id.name)
}

/// How long a dead letter is retried after shutdown cut deliveries short.
const DEAD_LETTER_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `handle` for each message with at most `max_in_flight` at once, until the consumer
/// ends or `stop` fires; then waits for what is in flight.
async fn consume<H, Fut>(
    mut consumer: Box<dyn Consumer>,
    max_in_flight: u32,
    stop: CancellationToken,
    handle: H,
) where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1) as usize));
    let handle = Arc::new(handle);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let message = tokio::select! {
            m = consumer.next() => m,
            () = stop.cancelled() => None,
        };
        let Some(message) = message else { break };
        let handle = handle.clone();
        tasks.spawn(async move {
            handle(message).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow.
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        log_panic(done);
    }
}

/// A handler that panicked lost its event: never let that pass quietly.
fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(target: "inputbot::stage", "an event handler failed and its event was not finished: {e}");
    }
}

/// The process stage of a pipeline.
pub struct ProcessStage {
    config: ProcessConfig,
    steps: Steps,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    label: String,
}

impl std::fmt::Debug for ProcessStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessStage")
            .field("pipeline", &self.label)
            .finish()
    }
}

impl ProcessStage {
    /// Compiles the pipeline.
    pub fn new(
        config: ProcessConfig,
        secrets: &Secrets,
        client: reqwest::Client,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StageError> {
        let steps = Steps::build(&config, secrets, client)?;
        let label = resource_label(&config.pipeline);
        Ok(Arc::new(Self {
            config,
            steps,
            bus,
            metrics,
            label,
        }))
    }

    /// The topic and group to consume.
    pub fn input(&self) -> (&str, &str) {
        (&self.config.input_topic, &self.config.consumer_group)
    }

    /// Consumes until the consumer ends or `stop` fires.
    pub async fn run(self: Arc<Self>, consumer: Box<dyn Consumer>, stop: CancellationToken) {
        let max = self.config.max_in_flight;
        let stop_inner = stop.clone();
        consume(consumer, max, stop, move |message| {
            let stage = self.clone();
            let stop = stop_inner.clone();
            async move { stage.handle(message, &stop).await }
        })
        .await;
    }

    async fn handle(&self, message: Message, stop: &CancellationToken) {
        let started = std::time::Instant::now();
        let all = metrics::stage(&self.label, "pipeline");
        self.metrics.in_flight.get_or_create(&all).inc();
        let id = message.event.id.clone();
        let trace = message.event.trace_id().unwrap_or_default().to_owned();
        let stored = match self.steps.run(message.event.clone()).await {
            StepOutcome::Continue(event) => {
                let ok = until_stored("publishing to the output topic", stop, || {
                    self.bus.publish(&self.config.output_topic, &event)
                })
                .await;
                if ok {
                    self.metrics.processed.get_or_create(&all).inc();
                    tracing::info!(target: "inputbot::events", pipeline = %self.label, event = %id,
                        trace = %trace, labels = %event.labels.join(","), "processed");
                }
                ok
            }
            StepOutcome::Filtered { step } => {
                self.metrics
                    .filtered
                    .get_or_create(&metrics::stage(&self.label, &step))
                    .inc();
                tracing::info!(target: "inputbot::events", pipeline = %self.label, event = %id, step = %step,
                    trace = %trace, "filtered");
                true
            }
            StepOutcome::Failed {
                event,
                step,
                class,
                message: error,
                status,
            } => {
                let record = DeadLetter::new(
                    event,
                    FailedAt {
                        resource: self.config.pipeline.clone(),
                        stage: "step".into(),
                        name: step.clone(),
                    },
                    ErrorInfo {
                        class: class.into(),
                        message: error.clone(),
                        status,
                        attempts: 1,
                    },
                    &self.config.input_topic,
                );
                let ok = until_stored("writing a dead letter", stop, || {
                    self.bus
                        .dead_letter(&self.config.dead_letter_topic, &record)
                })
                .await;
                if ok {
                    self.metrics
                        .dead_lettered
                        .get_or_create(&metrics::stage(&self.label, &step))
                        .inc();
                    tracing::warn!(target: "inputbot::events", pipeline = %self.label, event = %id, step = %step,
                        trace = %trace, class, "dead-lettered: {error}");
                }
                ok
            }
        };
        self.metrics.in_flight.get_or_create(&all).dec();
        self.metrics
            .stage_seconds
            .get_or_create(&all)
            .observe(started.elapsed().as_secs_f64());
        if stored {
            message.ack();
        }
    }
}

/// Posts a notice when an event is dead-lettered.
struct Notifier {
    url: String,
    /// Names the webhook in logs; the URL itself is a credential and is never logged.
    target: String,
    text: Template,
    timeout: Duration,
    client: reqwest::Client,
}

impl Notifier {
    async fn notify(&self, record: &DeadLetter) {
        let vars = record.event.activation().with(
            "error",
            json!({
                "class": record.error.class, "message": record.error.message,
                "status": record.error.status, "attempts": record.error.attempts,
                "stage": record.failed_at.stage, "name": record.failed_at.name,
            }),
        );
        let text = match self.text.render(&vars) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(target: "inputbot::stage", "dead-letter notice not sent: {e}");
                return;
            }
        };
        let request = self.client.post(&self.url).json(&json!({"text": text}));
        if let Err(e) = crate::outbound::send(&self.client, request, self.timeout, "").await {
            // `e.message` names the URL; say what failed without it.
            let why = match (e.status, &e.class) {
                (Some(status), _) => format!("HTTP {status}"),
                (None, FailureClass::Timeout) => format!("no answer within {:?}", self.timeout),
                (None, FailureClass::Connection) => "cannot connect".to_owned(),
                (None, _) => "request failed".to_owned(),
            };
            tracing::warn!(target: "inputbot::stage", "dead-letter notice to {} not sent: {why}", self.target);
        }
    }
}

/// The act stage of an action binding.
pub struct ActStage {
    config: ActConfig,
    when: Option<CelExpr>,
    action: Arc<dyn ActionImpl>,
    deliverer: Deliverer,
    notifier: Option<Notifier>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    label: String,
    dead_letter_on_shutdown: bool,
}

impl std::fmt::Debug for ActStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActStage")
            .field("binding", &self.label)
            .finish()
    }
}

impl ActStage {
    /// Builds the action and its delivery policy. `dead_letter_on_shutdown` dead-letters events
    /// whose delivery is cut short by shutdown (the embedded bus cannot redeliver them).
    pub fn new(
        config: ActConfig,
        secrets: &Secrets,
        client: reqwest::Client,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        dead_letter_on_shutdown: bool,
    ) -> Result<Arc<Self>, StageError> {
        let binding = config.binding.to_string();
        let when = config
            .when
            .as_deref()
            .map(|w| CelExpr::compile(w, Scope::Event))
            .transpose()
            .map_err(|message| StageError::Binding {
                binding: binding.clone(),
                field: "spec.when".into(),
                message,
            })?;
        let action = actions::build(&config.action, secrets, client.clone()).map_err(|source| {
            StageError::Action {
                binding: binding.clone(),
                source: Box::new(source),
            }
        })?;
        let notifier = match config
            .notify
            .as_ref()
            .and_then(|n| n.on_dead_letter.as_ref())
        {
            Some(notice) => {
                let field = |f: &str| format!("spec.notify.onDeadLetter.slack.{f}");
                let url = secrets
                    .get_string(&notice.slack.webhook_secret_ref)
                    .map_err(|e| StageError::Binding {
                        binding: binding.clone(),
                        field: field("webhookSecretRef"),
                        message: e.to_string(),
                    })?;
                let text = Template::compile(&notice.slack.text, Scope::DeadLetter).map_err(
                    |message| StageError::Binding {
                        binding: binding.clone(),
                        field: field("text"),
                        message,
                    },
                )?;
                let timeout = notice
                    .slack
                    .timeout
                    .as_ref()
                    .and_then(|d| d.to_std().ok())
                    .unwrap_or(Duration::from_secs(10));
                let r = &notice.slack.webhook_secret_ref;
                Some(Notifier {
                    url,
                    target: format!(
                        "the Slack webhook in Secret {}/{} key {:?}",
                        config.binding.namespace, r.name, r.key
                    ),
                    text,
                    timeout,
                    client,
                })
            }
            None => None,
        };
        let label = resource_label(&config.binding);
        Ok(Arc::new(Self {
            deliverer: Deliverer::new(&config.delivery),
            config,
            when,
            action,
            notifier,
            bus,
            metrics,
            label,
            dead_letter_on_shutdown,
        }))
    }

    /// The topic and group to consume.
    pub fn input(&self) -> (&str, &str) {
        (&self.config.input_topic, &self.config.consumer_group)
    }

    /// Consumes until the consumer ends or `stop` fires. `abort` cuts deliveries short (their
    /// retries end; see `dead_letter_on_shutdown`).
    pub async fn run(
        self: Arc<Self>,
        consumer: Box<dyn Consumer>,
        stop: CancellationToken,
        abort: CancellationToken,
    ) {
        let max = self.config.max_in_flight;
        consume(consumer, max, stop.clone(), move |message| {
            let stage = self.clone();
            let abort = abort.clone();
            async move { stage.handle(message, &abort).await }
        })
        .await;
    }

    async fn handle(&self, message: Message, abort: &CancellationToken) {
        let started = std::time::Instant::now();
        let kind = self.action.kind();
        let labels = metrics::stage(&self.label, kind);
        let event = &message.event;
        if let Some(when) = &self.when {
            match when.eval_bool(&event.activation()) {
                Ok(true) => {}
                Ok(false) => {
                    self.metrics
                        .filtered
                        .get_or_create(&metrics::stage(&self.label, "when"))
                        .inc();
                    tracing::info!(target: "inputbot::events", binding = %self.label, event = %event.id, "skipped (when)");
                    message.ack();
                    return;
                }
                Err(error) => {
                    let info = ErrorInfo {
                        class: "expression".into(),
                        message: format!("spec.when: {error}"),
                        status: None,
                        attempts: 0,
                    };
                    if self.dead_letter(event.clone(), info, None, abort).await {
                        message.ack();
                    }
                    return;
                }
            }
        }
        self.metrics.in_flight.get_or_create(&labels).inc();
        let action = self.action.clone();
        let outcome = loop {
            let outcome = self
                .deliverer
                .deliver(|n| action.attempt(event, n), abort)
                .await;
            // Without a dead-letter topic an undeliverable event is retried until it succeeds —
            // unless it can never succeed (the event itself is at fault), which `dead_letter`
            // then reports as dropped.
            match &outcome {
                Outcome::Failed { reason, error, .. }
                    if self.config.dead_letter_topic.is_none()
                        && *reason != GiveUp::Shutdown
                        && error.class != FailureClass::Other =>
                {
                    let pause = self.config.delivery.retry.max_delay;
                    tracing::warn!(target: "inputbot::events", binding = %self.label, event = %event.id,
                        "delivery failed and dead-lettering is disabled; retrying in {pause:?}: {}", error.message);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = abort.cancelled() => continue,
                    }
                }
                _ => break outcome,
            }
        };
        self.metrics.in_flight.get_or_create(&labels).dec();
        self.metrics
            .stage_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let retries = u64::from(outcome.attempts().saturating_sub(1));
        if retries > 0 {
            self.metrics.retried.get_or_create(&labels).inc_by(retries);
        }
        match outcome {
            Outcome::Delivered { attempts } => {
                self.metrics.delivered.get_or_create(&labels).inc();
                tracing::info!(target: "inputbot::events", binding = %self.label, event = %event.id, action = kind,
                    trace = event.trace_id().unwrap_or_default(), attempts, ms = started.elapsed().as_millis() as u64, "delivered");
                message.ack();
            }
            Outcome::Failed {
                attempts,
                error,
                first_failure,
                last_failure,
                reason,
            } => {
                if reason == GiveUp::Shutdown && !self.dead_letter_on_shutdown {
                    // Not acknowledged: the broker hands it out again after the restart.
                    return;
                }
                let class = match (&error.class, reason) {
                    (_, GiveUp::Shutdown) => "shutdown".to_owned(),
                    (FailureClass::Status(_), _) => "status".to_owned(),
                    (FailureClass::Timeout, _) => "timeout".to_owned(),
                    (FailureClass::Connection, _) => "connection".to_owned(),
                    (FailureClass::Other, _) => "action".to_owned(),
                };
                let info = ErrorInfo {
                    class,
                    message: match reason {
                        GiveUp::Shutdown => {
                            format!("delivery interrupted by shutdown: {}", error.message)
                        }
                        _ => error.message.clone(),
                    },
                    status: error.status,
                    attempts,
                };
                if self
                    .dead_letter(
                        event.clone(),
                        info,
                        Some((first_failure, last_failure)),
                        abort,
                    )
                    .await
                {
                    message.ack();
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        event: Event,
        error: ErrorInfo,
        times: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
        abort: &CancellationToken,
    ) -> bool {
        let Some(topic) = &self.config.dead_letter_topic else {
            // Dead-lettering is disabled and this event cannot be delivered: say so loudly.
            self.metrics
                .dropped
                .get_or_create(&metrics::stage(&self.label, self.action.kind()))
                .inc();
            tracing::error!(target: "inputbot::events", binding = %self.label, event = %event.id,
                trace = event.trace_id().unwrap_or_default(), class = %error.class,
                "dropped: the event cannot be delivered and dead-lettering is disabled: {}", error.message);
            return true;
        };
        let id = event.id.clone();
        let mut record = DeadLetter::new(
            event,
            FailedAt {
                resource: self.config.binding.clone(),
                stage: "action".into(),
                name: self.action.kind().into(),
            },
            error,
            &self.config.input_topic,
        );
        if let Some((first, last)) = times {
            record.first_failure = first;
            record.last_failure = last;
        }
        // Dead letters are written even during shutdown — that is what keeps them — but not
        // forever: a store that stays broken must not hang the process.
        let deadline = CancellationToken::new();
        if abort.is_cancelled() {
            let d = deadline.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DEAD_LETTER_DEADLINE).await;
                d.cancel();
            });
        }
        let token = if abort.is_cancelled() {
            &deadline
        } else {
            abort
        };
        let ok = until_stored("writing a dead letter", token, || {
            self.bus.dead_letter(topic, &record)
        })
        .await;
        if ok {
            self.metrics
                .dead_lettered
                .get_or_create(&metrics::stage(&self.label, self.action.kind()))
                .inc();
            tracing::warn!(target: "inputbot::events", binding = %self.label, event = %id,
                trace = record.trace_id.as_deref().unwrap_or_default(), class = %record.error.class, attempts = record.error.attempts, status = record.error.status,
                "dead-lettered: {}", record.error.message);
            if let Some(n) = &self.notifier {
                n.notify(&record).await;
            }
        }
        ok
    }
}
