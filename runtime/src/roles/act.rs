//! The act role: an action binding's deliveries for every event of its input topic.
//!
//! ```text
//!  next ─▶ when ─┬─ false ───────────────────────────────▶ ack
//!                └─ true ─▶ deliver (retry, breaker, rate) ─┬─ Delivered ─▶ ack
//!                                                           └─ Failed ─▶ dead_letter (+ notify) ─▶ ack
//! ```

use std::{sync::Arc, time::Duration};

use inputbot_api::{
    config::{ActConfig, FailureClass},
    expr::{CelExpr, Scope},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Context, RoleError, consume, resource_label};
use crate::{
    actions::{self, ActionImpl},
    bus::{Bus, Consumer, Message},
    delivery::{Deliverer, GiveUp, Outcome, until_stored},
    dlq::{DeadLetter, ErrorInfo, FailedAt, notify::Notifier},
    event::Event,
    metrics::{self, Metrics},
};

/// How long a dead letter is retried after shutdown cut deliveries short.
const DEAD_LETTER_DEADLINE: Duration = Duration::from_secs(30);

/// Starts one worker per binding, each consuming its input topic until
/// `cx.shutdown.consumers` fires; `cx.shutdown.abort` cuts deliveries short.
pub fn start(
    cx: &Context,
    configs: &[ActConfig],
    tasks: &mut JoinSet<()>,
) -> Result<(), RoleError> {
    for config in configs {
        let worker = BindingWorker::new(config.clone(), cx)?;
        let (topic, group) = worker.input();
        let consumer = match &config.dedupe_topic {
            Some(dedupe) => cx.bus.subscribe_deduplicated(topic, group, dedupe)?,
            None => cx.bus.subscribe(topic, group)?,
        };
        tasks.spawn(worker.run(
            consumer,
            cx.shutdown.consumers.clone(),
            cx.shutdown.abort.clone(),
        ));
    }
    Ok(())
}

/// The consumer loop of one binding: `when`, then delivery under the policy, then the
/// dead-letter store (and notice) for what could not be delivered.
pub struct BindingWorker {
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

impl std::fmt::Debug for BindingWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingWorker")
            .field("binding", &self.label)
            .finish()
    }
}

impl BindingWorker {
    /// Builds the action and its delivery policy. With `cx.dead_letter_on_shutdown`, events
    /// whose delivery is cut short by shutdown are dead-lettered (the embedded bus cannot
    /// redeliver them).
    pub fn new(config: ActConfig, cx: &Context) -> Result<Arc<Self>, RoleError> {
        let secrets = cx.secrets.namespace(&config.binding.namespace);
        let binding = config.binding.to_string();
        let when = config
            .when
            .as_deref()
            .map(|w| CelExpr::compile(w, Scope::Event))
            .transpose()
            .map_err(|message| RoleError::Binding {
                binding: binding.clone(),
                field: "spec.when".into(),
                message,
            })?;
        let action = actions::build_on(
            &config.action,
            &secrets,
            cx.client.clone(),
            cx.kafka.as_ref(),
        )
        .map_err(|source| RoleError::Action {
            binding: binding.clone(),
            source: Box::new(source),
        })?;
        let notifier = config
            .notify
            .as_ref()
            .and_then(|n| n.on_dead_letter.as_ref())
            .map(|notice| {
                Notifier::build(notice, &config.binding, &secrets, cx.client.clone()).map_err(
                    |(field, message)| RoleError::Binding {
                        binding: binding.clone(),
                        field,
                        message,
                    },
                )
            })
            .transpose()?;
        let (bus, metrics) = (cx.bus.clone(), cx.metrics.clone());
        let dead_letter_on_shutdown = cx.dead_letter_on_shutdown;
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
            let (when, vars) = (when.clone(), event.activation());
            let limits = inputbot_api::expr::Limits::default();
            let decided = crate::eval::run(limits, move || {
                when.eval_bool(&vars)
                    .map_err(inputbot_api::expr::EvalError::Failed)
            })
            .await;
            match decided {
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
                        class: error.class("expression").into(),
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
            // Without a dead-letter topic an event whose retries ran out is retried until it
            // succeeds — unless it can never succeed: the event itself is at fault (`Other`), or
            // the policy does not retry the failure (a 4xx outside `retryOn`), which
            // `dead_letter` then reports as dropped instead of stalling the binding.
            match &outcome {
                Outcome::Failed { reason, error, .. }
                    if self.config.dead_letter_topic.is_none()
                        && *reason == GiveUp::Exhausted
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
