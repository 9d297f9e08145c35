//! The process role: a pipeline's steps for every event of its input topic.
//!
//! ```text
//!  next ─▶ steps ─┬─ Continue ─▶ publish(out) ─▶ ack
//!                 ├─ Filtered ─────────────────▶ ack
//!                 └─ Failed ───▶ dead_letter ──▶ ack
//! ```

use std::sync::Arc;

use inputbot_api::config::ProcessConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Context, RoleError, consume, resource_label};
use crate::{
    bus::{Bus, Consumer, Message},
    delivery::until_stored,
    dlq::{DeadLetter, ErrorInfo, FailedAt},
    metrics::{self, Metrics},
    steps::{StepOutcome, Steps},
};

/// Starts one worker per pipeline, each consuming its input topic until
/// `cx.shutdown.consumers` fires.
pub fn start(
    cx: &Context,
    configs: &[ProcessConfig],
    tasks: &mut JoinSet<()>,
) -> Result<(), RoleError> {
    for config in configs {
        let worker = PipelineWorker::new(config.clone(), cx)?;
        let (topic, group) = worker.input();
        let consumer = match &config.dedupe_topic {
            Some(dedupe) => cx.bus.subscribe_deduplicated(topic, group, dedupe)?,
            None => cx.bus.subscribe(topic, group)?,
        };
        tasks.spawn(worker.run(consumer, cx.shutdown.consumers.clone()));
    }
    Ok(())
}

/// The consumer loop of one pipeline: its steps, then the output topic or the dead-letter
/// store.
pub struct PipelineWorker {
    config: ProcessConfig,
    steps: Steps,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    label: String,
}

impl std::fmt::Debug for PipelineWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineWorker")
            .field("pipeline", &self.label)
            .finish()
    }
}

impl PipelineWorker {
    /// Compiles the pipeline.
    pub fn new(config: ProcessConfig, cx: &Context) -> Result<Arc<Self>, RoleError> {
        let secrets = cx.secrets.namespace(&config.pipeline.namespace);
        let steps = Steps::build(&config, &secrets, cx.client.clone(), cx.metrics.clone())?;
        let (bus, metrics) = (cx.bus.clone(), cx.metrics.clone());
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
