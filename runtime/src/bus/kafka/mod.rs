//! The Kafka bus: the [`Bus`] of a cluster, on rdkafka.
//!
//! ```text
//!  publish / dead_letter ─▶ FutureProducer (idempotent, acks=all, bounded queue)
//!                           ─▶ delivery report ─▶ Ok        (only then does intake answer 202)
//!  subscribe ─▶ KafkaConsumer (cooperative-sticky; contiguous watermark per partition)
//!  monitor   ─▶ metadata every few seconds: broker reachable and every topic there? ─▶ healthy
//! ```
//!
//! - **Producer**: `enable.idempotence`, `acks=all`; `publish` returns only after the delivery
//!   report. The local queue is bounded (`queue.buffering.max.messages`); a full queue waits
//!   [`KafkaOptions::queue_timeout`] and then answers [`BusError::Full`]. A record is keyed by
//!   the event's `partitionkey` extension (the idempotency key, when the source has one) or its
//!   source, so one key's events keep their order on one partition.
//! - **Encoding**: the CloudEvents Kafka binding in binary mode ([`codec`]).
//! - **Consumers**: [`consumer`]; offsets are committed only up to each partition's
//!   contiguous [`watermark`], on revoke and on [`Consumer::close`] at once.
//! - **Health**: the monitor fetches metadata every [`KafkaOptions::health_interval`]. The bus is
//!   healthy while a broker answers and every topic the process uses exists — topics are the
//!   operator's to create; the runtime never creates one (`allow.auto.create.topics=false`) and
//!   treats a missing one as not ready. While unhealthy, `publish` fails at once (intake answers
//!   `503` + `Retry-After` without holding the sender for the delivery timeout). A broker that
//!   refuses the client (SASL credentials, TLS handshake: [`refusal`]) is reported as such, not
//!   as a broker that does not answer.

pub mod codec;
pub mod consumer;
pub mod dedupe;
pub mod dlq;
pub mod reader;
pub mod refusal;
pub mod settings;
pub mod state;
pub mod watermark;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use rdkafka::{
    ClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer as _},
    util::Timeout,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::{
    consumer::KafkaConsumer,
    refusal::{LatestRefusal, Refusal},
    settings::{KafkaSettings, SettingsError},
};
use super::{Bus, BusError, Consumer};
use crate::{
    dlq::DeadLetter,
    event::Event,
    metrics::{Metrics, TopicLabels},
};

/// How the Kafka bus produces and watches the broker.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// Records the local producer queue holds before `publish` waits.
    pub queue_max_messages: usize,
    /// How long `publish` waits for room in a full queue before [`BusError::Full`].
    pub queue_timeout: Duration,
    /// How long librdkafka tries to deliver a record (`message.timeout.ms`) before `publish`
    /// fails.
    pub delivery_timeout: Duration,
    /// How often the monitor checks the broker and the topics.
    pub health_interval: Duration,
    /// `linger.ms`: how long the producer waits to batch records.
    pub linger: Duration,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            queue_max_messages: 100_000,
            queue_timeout: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            linger: Duration::from_millis(2),
        }
    }
}

/// Why the Kafka bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaBusError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// librdkafka refused the configuration (e.g. TLS files it cannot read).
    #[error("cannot create the Kafka producer: {0}")]
    Client(#[source] KafkaError),
}

/// librdkafka callbacks of the producer: log lines to tracing; errors too, and the latest
/// one kept when it says the broker refuses this client (for the health check's reason).
#[derive(Default)]
pub struct ProducerContext {
    refusal: LatestRefusal,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        consumer::log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "inputbot::bus", "kafka producer: {error}: {reason}");
        self.refusal.record(&error, reason);
    }
}

/// How long a failed health check waits for the error callback to say why (it runs on
/// librdkafka's polling thread, a little after the metadata request failed).
const REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// What the monitor found last.
#[derive(Debug, Default)]
struct HealthState {
    healthy: AtomicBool,
    /// Why not, for the log and `publish`'s error.
    reason: Mutex<Option<String>>,
    /// Wakes the monitor early (a publish failed).
    recheck: Notify,
}

/// The Kafka bus (see the module docs).
pub struct KafkaBus {
    settings: KafkaSettings,
    options: KafkaOptions,
    producer: FutureProducer<ProducerContext>,
    /// How the broker refused the producer last, if it did (for the health check's reason).
    refusal: LatestRefusal,
    topics: Mutex<BTreeSet<String>>,
    health: Arc<HealthState>,
    closed: CancellationToken,
    metrics: OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("settings", &self.settings)
            .field("healthy", &self.health.healthy.load(Ordering::SeqCst))
            .finish()
    }
}

impl KafkaBus {
    /// Creates the producer, starts the health monitor for `topics` and waits for its first
    /// answer (at most a few seconds), so that readiness is known from the start.
    pub async fn connect(
        settings: KafkaSettings,
        options: KafkaOptions,
        topics: &[String],
    ) -> Result<Arc<Self>, KafkaBusError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "queue.buffering.max.messages",
                options.queue_max_messages.to_string(),
            )
            .set("linger.ms", options.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                options.delivery_timeout.as_millis().to_string(),
            )
            // A topic missing from the metadata fails its records soon, not after 30 s.
            .set("topic.metadata.propagation.max.ms", "2000");
        let refusal = LatestRefusal::default();
        let producer: FutureProducer<ProducerContext> = config
            .create_with_context(ProducerContext {
                refusal: refusal.clone(),
            })
            .map_err(KafkaBusError::Client)?;
        let bus = Arc::new(Self {
            settings,
            options,
            producer,
            refusal,
            topics: Mutex::new(topics.iter().cloned().collect()),
            health: Arc::new(HealthState::default()),
            closed: CancellationToken::new(),
            metrics: OnceLock::new(),
        });
        bus.check().await;
        tokio::spawn(monitor(Arc::downgrade(&bus)));
        Ok(bus)
    }

    /// Counts produce latency and failures, and (for consumers subscribed afterwards) commits
    /// and lag, in `metrics`. Only the first call counts.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The connection settings (for the DLQ tools).
    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Adds topics the health check requires.
    pub fn require(&self, topics: &[&str]) {
        let mut set = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in topics {
            set.insert((*t).to_owned());
        }
    }

    /// Why the bus is not healthy, if it is not.
    pub fn unhealthy_reason(&self) -> Option<String> {
        self.health
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the monitor and every consumer's `next` (which then answer `None`).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Waits until every record produced was delivered (or `timeout` passed).
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| BusError::Kafka(e.to_string()))?
            .map_err(|e| BusError::Kafka(format!("flush: {e}")))
    }

    /// One health check: metadata of every topic, within a few seconds.
    async fn check(&self) {
        let producer = self.producer.clone();
        let wanted: Vec<String> = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let timeout = self.options.health_interval.max(Duration::from_secs(2));
        let (settings, refusal) = (self.settings.clone(), self.refusal.clone());
        let verdict = tokio::task::spawn_blocking(move || {
            let metadata = match producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
            {
                Ok(m) => {
                    refusal.clear();
                    m
                }
                Err(e) => {
                    let deadline = Instant::now() + REFUSAL_GRACE;
                    let refusal = loop {
                        let r = refusal.get();
                        if r.is_some() || Instant::now() >= deadline {
                            break r;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    };
                    return Err(match refusal {
                        Some(r) => r.describe(&settings),
                        None => format!("the Kafka broker does not answer: {e}"),
                    });
                }
            };
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|t| {
                    !metadata.topics().iter().any(|m| {
                        m.name() == t.as_str() && m.error().is_none() && !m.partitions().is_empty()
                    })
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "topic(s) missing (the operator creates them): {}",
                    missing
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("health check failed: {e}")));
        let healthy = verdict.is_ok();
        let was = self.health.healthy.swap(healthy, Ordering::SeqCst);
        let mut reason = self.health.reason.lock().unwrap_or_else(|p| p.into_inner());
        match verdict {
            Ok(()) => {
                if !was {
                    tracing::info!(target: "inputbot::bus", bootstrap = %self.settings.bootstrap, "kafka bus ready");
                }
                *reason = None;
            }
            Err(why) => {
                if was || reason.as_deref() != Some(why.as_str()) {
                    tracing::warn!(target: "inputbot::bus", bootstrap = %self.settings.bootstrap, "kafka bus not ready: {why}");
                }
                *reason = Some(why);
            }
        }
    }

    async fn produce(
        &self,
        topic: &str,
        key: &str,
        headers: rdkafka::message::OwnedHeaders,
        value: &[u8],
    ) -> Result<(), BusError> {
        if self.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        self.note_topic(topic);
        if !self.healthy() {
            return Err(BusError::Kafka(
                self.unhealthy_reason()
                    .unwrap_or_else(|| "the Kafka bus is not ready".to_owned()),
            ));
        }
        let started = Instant::now();
        let record = FutureRecord::to(topic)
            .key(key)
            .headers(headers)
            .payload(value);
        let sent = self
            .producer
            .send(record, Timeout::After(self.options.queue_timeout))
            .await;
        if let Some(m) = self.metrics.get() {
            let labels = TopicLabels {
                topic: topic.to_owned(),
            };
            match &sent {
                Ok(_) => m
                    .kafka_produce_seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64()),
                Err(_) => {
                    m.kafka_produce_failures.get_or_create(&labels).inc();
                }
            }
        }
        match sent {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(BusError::Full {
                    topic: topic.to_owned(),
                    waited: started.elapsed(),
                })
            }
            Err((e, _)) => {
                self.health.recheck.notify_one();
                Err(BusError::Kafka(format!("producing to {topic}: {e}")))
            }
        }
    }

    /// Publishes `event` to `topic` for consumer `group` only: every other group of the topic
    /// skips it (`dlq redrive` puts a dead letter back to the stage that failed it).
    pub async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        event: &Event,
    ) -> Result<(), BusError> {
        let (headers, value) = codec::encode(event);
        let headers = headers.insert(rdkafka::message::Header {
            key: dlq::REDRIVE_GROUP,
            value: Some(group.as_bytes()),
        });
        self.produce(topic, codec::key(event), headers, &value)
            .await
    }

    fn join(
        &self,
        topic: &str,
        group: &str,
        dedupe: Option<Arc<dedupe::Dedupe>>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.note_topic(topic);
        let consumer = KafkaConsumer::join(
            self.settings.client_config(),
            topic,
            group,
            self.closed.child_token(),
            self.metrics.get().cloned(),
            dedupe,
        )
        .map_err(|e| BusError::Kafka(format!("joining group {group} on {topic}: {e}")))?;
        Ok(Box::new(consumer))
    }

    /// The producer (for the dedupe window and the source state).
    pub(crate) fn producer(&self) -> &FutureProducer<ProducerContext> {
        &self.producer
    }

    /// Publishes `event` to `topic` with record key `key` (the kafka action's own key).
    pub async fn publish_keyed(
        &self,
        topic: &str,
        key: &str,
        event: &Event,
    ) -> Result<(), BusError> {
        let (headers, value) = codec::encode(event);
        self.produce(topic, key, headers, &value).await
    }

    fn note_topic(&self, topic: &str) {
        let mut set = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if !set.contains(topic) {
            set.insert(topic.to_owned());
            self.health.recheck.notify_one();
        }
    }
}

/// Checks the broker every interval (or at once after a failed publish) until the bus closes
/// or is dropped.
async fn monitor(bus: std::sync::Weak<KafkaBus>) {
    loop {
        let Some(strong) = bus.upgrade() else { return };
        let (interval, closed, health) = (
            strong.options.health_interval,
            strong.closed.clone(),
            strong.health.clone(),
        );
        drop(strong);
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = health.recheck.notified() => {}
        }
        let Some(strong) = bus.upgrade() else { return };
        strong.check().await;
    }
}

impl Bus for KafkaBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let (headers, value) = codec::encode(event);
            self.produce(topic, codec::key(event), headers, &value)
                .await
        })
    }

    fn dead_letter<'a>(
        &'a self,
        topic: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let (headers, value) = codec::encode_dead_letter(record);
            self.produce(topic, codec::key(&record.event), headers, &value)
                .await
        })
    }

    fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, BusError> {
        self.join(topic, group, None)
    }

    fn subscribe_deduplicated(
        &self,
        topic: &str,
        group: &str,
        dedupe_topic: &str,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.note_topic(dedupe_topic);
        let dedupe = dedupe::Dedupe::new(
            dedupe_topic,
            group,
            self.settings.client_config(),
            self.producer.clone(),
        );
        self.join(topic, group, Some(Arc::new(dedupe)))
    }

    fn healthy(&self) -> bool {
        self.health.healthy.load(Ordering::SeqCst)
    }
}
