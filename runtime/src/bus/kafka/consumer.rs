//! A consumer group member on one topic: cooperative-sticky rebalancing, and offsets stored
//! only as each partition's contiguous [`Watermark`].
//!
//! ```text
//!  recv ─▶ decode (codec) ─▶ watermark.received(offset) ─▶ Message ─▶ role … ack
//!                                                                            │
//!  store_offsets(position) ◀─ watermark.handled(offset) moved ◀──────────────┘
//!  librdkafka auto-commits stored positions (1 s); revoke and close commit them at once
//! ```
//!
//! A record with an `inputbot_redrive_group` header naming another group (a dead letter put
//! back for one stage only) is acknowledged at once and not handed out.
//!
//! A member of a raw topic's group may drop duplicates ([`super::dedupe`]): a keyed record
//! whose key another offset claimed inside the window is acknowledged at once and not handed
//! out; the window of a newly assigned partition is rebuilt before any of its keyed records
//! is.
//!
//! Every assignment of a partition gets a fresh epoch: an acknowledgement from before a revoke
//! (the event is now redelivered to the partition's next owner) changes nothing.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use rdkafka::{
    ClientContext, Message as _, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{
        BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
    },
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;

use super::{
    codec,
    dedupe::{self, Dedupe, Verdict},
    watermark::Watermark,
};
use crate::{
    bus::{Consumer, Message},
    metrics::{CommitLabels, GroupLabels, Metrics, PartitionLabels},
};

/// One assigned partition.
struct Tracked {
    epoch: u64,
    mark: Watermark,
}

/// The partitions this member owns, shared by the rebalance callbacks and the acks.
#[derive(Default)]
struct Assignment {
    partitions: Mutex<HashMap<i32, Tracked>>,
    epochs: AtomicU64,
}

impl Assignment {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Tracked>> {
        // A poisoned lock means a panic while holding it; the map is still consistent (every
        // update is a single insert/remove), so carry on with it.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, partition: i32) {
        let epoch = self.epochs.fetch_add(1, Ordering::SeqCst);
        self.lock().insert(
            partition,
            Tracked {
                epoch,
                mark: Watermark::new(),
            },
        );
    }

    /// The positions to commit for `partitions` (all when `None`), removing them.
    fn release(&self, topic: &str, partitions: Option<&[i32]>) -> TopicPartitionList {
        let mut map = self.lock();
        let mut tpl = TopicPartitionList::new();
        let taken: Vec<(i32, Tracked)> = match partitions {
            Some(ps) => ps
                .iter()
                .filter_map(|p| map.remove(p).map(|t| (*p, t)))
                .collect(),
            None => map.drain().collect(),
        };
        for (p, t) in taken {
            if let Some(position) = t.mark.position() {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(position));
            }
        }
        tpl
    }
}

/// librdkafka callbacks of one member: rebalances (commit on revoke) and client errors.
pub struct GroupContext {
    topic: String,
    group: String,
    assignment: Arc<Assignment>,
    metrics: Option<Arc<Metrics>>,
    dedupe: Option<Arc<Dedupe>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "inputbot::bus", group = %self.group, "kafka consumer: {error}: {reason}");
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each owned
    /// partition behind the committed offset.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(m) = &self.metrics else { return };
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, p) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is unknown.
            if *partition < 0 {
                continue;
            }
            let labels = PartitionLabels {
                group: self.group.clone(),
                topic: self.topic.clone(),
                partition: partition.to_string(),
            };
            if p.consumer_lag >= 0 {
                m.kafka_consumer_lag
                    .get_or_create(&labels)
                    .set(p.consumer_lag);
            } else {
                m.kafka_consumer_lag.remove(&labels);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            let commit = self.assignment.release(&self.topic, Some(&revoked));
            if let Some(d) = &self.dedupe {
                d.release(Some(&revoked));
            }
            if commit.count() > 0
                && let Err(e) = base.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(target: "inputbot::bus", group = %self.group, topic = %self.topic,
                    "could not commit the watermark of revoked partitions (their unhandled events are redelivered): {e}");
            }
            tracing::info!(target: "inputbot::bus", group = %self.group, topic = %self.topic,
                partitions = ?revoked, "partitions revoked");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Some(m) = &self.metrics {
            // "No offset" means there was nothing new to commit: not a failure.
            let result = match result {
                Ok(()) => "ok",
                Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {
                    return;
                }
                Err(_) => "error",
            };
            m.kafka_commits
                .get_or_create(&CommitLabels {
                    group: self.group.clone(),
                    result: result.to_owned(),
                })
                .inc();
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            for p in &assigned {
                self.assignment.assign(*p);
            }
            tracing::info!(target: "inputbot::bus", group = %self.group, topic = %self.topic,
                partitions = ?assigned, "partitions assigned");
        }
    }
}

/// Routes librdkafka's own log lines (warnings and worse) to tracing.
pub(super) fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "inputbot::bus", "librdkafka {fac}: {message}");
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "inputbot::bus", "librdkafka {fac}: {message}");
        }
        _ => tracing::debug!(target: "inputbot::bus", "librdkafka {fac}: {message}"),
    }
}

type Inner = StreamConsumer<GroupContext>;

/// A member of consumer group `group` on `topic` (see the module docs).
pub struct KafkaConsumer {
    inner: Arc<Inner>,
    topic: String,
    group: String,
    closed: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    dedupe: Option<Arc<Dedupe>>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish()
    }
}

impl KafkaConsumer {
    /// Joins `group` on `topic` with `config` (connection settings already in it), dropping
    /// duplicates with `dedupe` when given.
    pub(super) fn join(
        mut config: rdkafka::ClientConfig,
        topic: &str,
        group: &str,
        closed: CancellationToken,
        metrics: Option<Arc<Metrics>>,
        dedupe: Option<Arc<Dedupe>>,
    ) -> Result<Self, KafkaError> {
        if metrics.is_some() {
            config.set("statistics.interval.ms", "5000");
        }
        config
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "true")
            // Duplicates after a crash are bounded by this much work (plus what was in flight).
            .set("auto.commit.interval.ms", "250")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A member that died (SIGKILL, node loss) gives its partitions back after this.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000");
        let context = GroupContext {
            topic: topic.to_owned(),
            group: group.to_owned(),
            assignment: Arc::new(Assignment::default()),
            metrics: metrics.clone(),
            dedupe: dedupe.clone(),
        };
        let inner: Inner = config.create_with_context(context)?;
        inner.subscribe(&[topic])?;
        Ok(Self {
            inner: Arc::new(inner),
            topic: topic.to_owned(),
            group: group.to_owned(),
            closed,
            metrics,
            dedupe,
        })
    }

    /// Whether a record is for this group: everything is, except a redriven event meant for
    /// another group ([`super::dlq::REDRIVE_GROUP`]).
    fn for_us(&self, record: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        use rdkafka::message::Headers as _;
        record.headers().is_none_or(|h| {
            h.iter().all(|x| {
                x.key != super::dlq::REDRIVE_GROUP || x.value == Some(self.group.as_bytes())
            })
        })
    }

    /// Decodes a record and tracks its offset: the event, where it is, its assignment epoch,
    /// and the acknowledgement that stores its offset.
    fn receive(&self, record: &rdkafka::message::BorrowedMessage<'_>) -> Received {
        let event = codec::decode(record.headers(), record.key(), record.payload());
        let (partition, offset) = (record.partition(), record.offset());
        let assignment = self.inner.context().assignment.clone();
        let epoch = {
            let mut map = assignment.lock();
            let tracked = map.entry(partition).or_insert_with(|| Tracked {
                epoch: assignment.epochs.fetch_add(1, Ordering::SeqCst),
                mark: Watermark::new(),
            });
            tracked.mark.received(offset);
            tracked.epoch
        };
        let consumer: Weak<Inner> = Arc::downgrade(&self.inner);
        let topic = self.topic.clone();
        let ack = move || {
            let position = {
                let mut map = assignment.lock();
                match map.get_mut(&partition) {
                    Some(t) if t.epoch == epoch => t.mark.handled(offset),
                    // Revoked meanwhile: the next owner handles it again.
                    _ => None,
                }
            };
            if let (Some(position), Some(consumer)) = (position, consumer.upgrade()) {
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(position));
                if let Err(e) = consumer.store_offsets(&tpl) {
                    tracing::debug!(target: "inputbot::bus", "offset {position} of {topic}/{partition} not stored (revoked meanwhile): {e}");
                }
            }
        };
        Received {
            event,
            partition,
            offset,
            epoch,
            for_us: self.for_us(record),
            redriven: is_redriven(record),
            ack: Box::new(ack),
        }
    }

    /// Rebuilds the dedupe window of `partition` for `epoch` unless it is built; retries until
    /// it is, or the consumer closes (`false`).
    async fn window_ready(&self, dedupe: &Arc<Dedupe>, partition: i32, epoch: u64) -> bool {
        let mut failures = 0u32;
        while !dedupe.ready(partition, epoch) {
            let d = dedupe.clone();
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || d.rebuild(partition, epoch))
                .await
                .unwrap_or_else(|e| Err(format!("the rebuild task failed: {e}")));
            match built {
                Ok(n) => {
                    tracing::info!(target: "inputbot::bus", group = %self.group, topic = %self.topic,
                        partition, keys = n, ms = started.elapsed().as_millis() as u64,
                        "dedupe window rebuilt");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(target: "inputbot::bus", group = %self.group, topic = %self.topic,
                        partition, failures, "cannot rebuild the dedupe window (retrying; nothing is handed out meanwhile): {e}");
                    tokio::select! {
                        () = self.closed.cancelled() => return false,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        true
    }

    /// Turns a received record into the message to hand out, or `None` when it is not to be
    /// handed out (for another group, or a duplicate: acknowledged here).
    async fn admit(&self, r: Received) -> Option<Option<Message>> {
        let Received {
            event,
            partition,
            offset,
            epoch,
            for_us,
            redriven,
            ack,
        } = r;
        if !for_us {
            // Redriven to another group: handled by skipping it.
            ack();
            return Some(None);
        }
        let position = crate::bus::Position {
            topic: self.topic.clone(),
            partition,
            offset,
        };
        let (Some(dedupe), false, Some((key, until))) =
            (&self.dedupe, redriven, dedupe::key_of(&event))
        else {
            return Some(Some(Message::new(event, ack).at(position)));
        };
        if !self.window_ready(dedupe, partition, epoch).await {
            return None;
        }
        match dedupe.check(partition, offset, &key, until) {
            Verdict::Duplicate { first } => {
                if let Some(m) = &self.metrics {
                    m.kafka_duplicates_dropped
                        .get_or_create(&GroupLabels {
                            group: self.group.clone(),
                        })
                        .inc();
                }
                tracing::info!(target: "inputbot::events", group = %self.group, event = %event.id,
                    partition, offset, first, "duplicate dropped (its first copy was handed out)");
                ack();
                Some(None)
            }
            Verdict::Fresh { claim: false } => Some(Some(Message::new(event, ack).at(position))),
            Verdict::Fresh { claim: true } => {
                let (d, stop) = (dedupe.clone(), self.closed.clone());
                Some(Some(
                    Message::new(event, move || {
                        // The claim is durable before the offset is stored.
                        d.started();
                        tokio::spawn(async move {
                            if d.write_claim(partition, offset, &key, until, &stop).await {
                                ack();
                            }
                            d.finished();
                        });
                    })
                    .at(position),
                ))
            }
        }
    }
}

/// A record as received, before it is admitted.
struct Received {
    event: crate::event::Event,
    partition: i32,
    offset: i64,
    epoch: u64,
    for_us: bool,
    redriven: bool,
    ack: Box<dyn FnOnce() + Send>,
}

/// Whether a record was put back by `dlq redrive` (never a duplicate of itself).
fn is_redriven(record: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    use rdkafka::message::Headers as _;
    record
        .headers()
        .is_some_and(|h| h.iter().any(|x| x.key == super::dlq::REDRIVE_GROUP))
}

impl Consumer for KafkaConsumer {
    fn next(&mut self) -> BoxFuture<'_, Option<Message>> {
        Box::pin(async move {
            loop {
                let received = tokio::select! {
                    () = self.closed.cancelled() => return None,
                    r = self.inner.recv() => r.map(|m| self.receive(&m)),
                };
                match received {
                    Ok(r) => match self.admit(r).await {
                        Some(Some(message)) => return Some(message),
                        Some(None) => {}
                        None => return None,
                    },
                    Err(e) => {
                        tracing::warn!(target: "inputbot::bus", topic = %self.topic, group = %self.group,
                            "kafka consumer: {e}");
                        // librdkafka queues one non-fatal error (all brokers down, transport
                        // failure) per reconnect attempt while the broker is away, and recovers
                        // by itself: drain them at once. Sleeping a second per error left a
                        // backlog of them between the member and its records and rebalance
                        // events for minutes after a broker restart.
                        let pause = match e {
                            KafkaError::MessageConsumption(_) => Duration::from_millis(5),
                            _ => Duration::from_secs(1),
                        };
                        tokio::select! {
                            () = self.closed.cancelled() => return None,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Self {
                inner,
                topic,
                group,
                dedupe,
                ..
            } = *self;
            // Claims still being written hold back their offsets: let them land first.
            if let Some(d) = &dedupe {
                d.settle(Duration::from_secs(10)).await;
            }
            // Commit the watermark, then leave the group (dropping the consumer closes it:
            // librdkafka revokes, commits stored offsets and leaves, polling until done).
            let result = tokio::task::spawn_blocking(move || {
                let commit = inner.context().assignment.release(&topic, None);
                let committed = if commit.count() > 0 {
                    inner
                        .commit(&commit, CommitMode::Sync)
                        .map(|()| commit.count())
                } else {
                    Ok(0)
                };
                drop(inner);
                committed
            })
            .await;
            match result {
                Ok(Ok(n)) => {
                    tracing::info!(target: "inputbot::bus", group = %group, partitions = n, "committed the watermark and left the group");
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "inputbot::bus", group = %group,
                        "could not commit the watermark on close (unhandled events are redelivered): {e}");
                }
                Err(e) => {
                    tracing::error!(target: "inputbot::bus", group = %group, "closing the consumer failed: {e}")
                }
            }
        })
    }
}
