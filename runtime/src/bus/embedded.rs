//! The embedded bus: one bounded queue per consumer group, in one process. Every group of a
//! topic gets every event, and a slow group pushes back on producers instead of growing
//! memory. Dead letters are appended to JSON-lines files under the data directory, so they
//! survive the process.
//!
//! Durable by default: with [`EmbeddedOptions::log`] set, an event is appended to the topic's
//! log on disk ([`super::log`], group commit) before `publish` returns, each group's position
//! is persisted, and a group that joins again hands out what it had not finished before the
//! process stopped — so "202" means "on disk", as it means "acknowledged by Kafka" in a
//! cluster. Without it the queues are memory only (`inputbot run --bus memory`): faster to
//! start, and an event accepted but unfinished when the process dies is gone.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc};

use super::{
    Bus, BusError, Consumer, Message,
    log::{Log, LogOptions, Tracker},
};
use crate::{dlq::DeadLetter, event::Event};

/// Settings of the embedded bus.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Events each consumer group may hold before producers wait.
    pub capacity: usize,
    /// How long a producer waits for room before [`BusError::Full`].
    pub publish_timeout: Duration,
    /// Directory of the dead-letter files (`<dir>/<topic>.jsonl`).
    pub dead_letter_dir: PathBuf,
    /// The durable log; `None` keeps events in memory only.
    pub log: Option<LogOptions>,
}

/// An event queued for a group, with its offset in the topic's log when the bus is durable.
struct Delivery {
    offset: Option<u64>,
    event: Event,
}

struct Group {
    name: String,
    tx: mpsc::Sender<Delivery>,
    tracker: Option<Arc<Tracker>>,
}

/// The in-process bus.
pub struct EmbeddedBus {
    options: EmbeddedOptions,
    topics: Mutex<HashMap<String, Vec<Group>>>,
    log: Option<Arc<Log>>,
    closed: Arc<AtomicBool>,
    /// Events published to a group and not yet acknowledged.
    outstanding: Arc<AtomicUsize>,
    settled: Arc<Notify>,
    dead_letter_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("outstanding", &self.outstanding.load(Ordering::SeqCst))
            .finish()
    }
}

impl EmbeddedBus {
    /// A new bus; opens (and recovers) its log when it is durable.
    pub fn open(options: EmbeddedOptions) -> Result<Arc<Self>, BusError> {
        let log = options.log.clone().map(Log::open).transpose()?;
        Ok(Arc::new(Self {
            options,
            topics: Mutex::new(HashMap::new()),
            log,
            closed: Arc::new(AtomicBool::new(false)),
            outstanding: Arc::new(AtomicUsize::new(0)),
            settled: Arc::new(Notify::new()),
            dead_letter_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Whether events are kept on disk.
    pub fn durable(&self) -> bool {
        self.log.is_some()
    }

    /// Declares that every consumer group of this run joined (see [`Log::seal`]).
    pub fn seal(&self) {
        if let Some(log) = &self.log {
            log.seal();
        }
    }

    /// Stops taking new events; consumers drain what is queued, then see the end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends each consumer once its queue is empty.
        self.topics.lock().expect("bus lock").clear();
    }

    /// Persists every consumer position and stops the log, once the consumers stopped; what
    /// was not finished is handed out again by the next run on the same data directory.
    pub fn finish(&self) {
        if let Some(log) = &self.log {
            log.commit();
            log.close();
        }
    }

    /// Events published and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Waits until every published event was acknowledged, or the timeout passes. Returns
    /// whether the bus settled.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.settled.notified();
            if self.outstanding() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.outstanding() == 0;
            }
        }
    }

    /// Whether any consumer group reads `topic`.
    pub fn has_consumers(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .expect("bus lock")
            .get(topic)
            .is_some_and(|g| !g.is_empty())
    }

    /// Whether consumer `group` reads `topic`.
    pub fn has_group(&self, topic: &str, group: &str) -> bool {
        self.topics
            .lock()
            .expect("bus lock")
            .get(topic)
            .is_some_and(|groups| groups.iter().any(|g| g.name == group))
    }

    /// Publishes to one consumer group of a topic only: redrive hands a dead letter back to the
    /// stage that failed it, not to every reader of the topic.
    pub async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        event: &Event,
    ) -> Result<(), BusError> {
        let target = self
            .topics
            .lock()
            .expect("bus lock")
            .get(topic)
            .and_then(|groups| {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| (g.tx.clone(), g.tracker.clone()))
            });
        let Some(target) = target else {
            return Err(BusError::NoSuchGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        };
        self.send_all(topic, Some(group), vec![target], event).await
    }

    /// The queue and tracker of every group of `topic`.
    fn groups_of(&self, topic: &str) -> Vec<(mpsc::Sender<Delivery>, Option<Arc<Tracker>>)> {
        self.topics
            .lock()
            .expect("bus lock")
            .get(topic)
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| (g.tx.clone(), g.tracker.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reserves a slot in every given group first (waiting at most `publish_timeout` for
    /// room), then appends the event to the log when the bus is durable, then sends: an event
    /// reaches all of them or none, and only once it is on disk.
    async fn send_all(
        &self,
        topic: &str,
        only: Option<&str>,
        groups: Vec<(mpsc::Sender<Delivery>, Option<Arc<Tracker>>)>,
        event: &Event,
    ) -> Result<(), BusError> {
        let waited = self.options.publish_timeout;
        let (senders, trackers): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
        let reserve = futures::future::try_join_all(senders.iter().map(|tx| tx.reserve()));
        let permits = match tokio::time::timeout(waited, reserve).await {
            Ok(Ok(permits)) => permits,
            Ok(Err(_)) => return Err(BusError::Closed),
            Err(_) => {
                return Err(BusError::Full {
                    topic: topic.to_owned(),
                    waited,
                });
            }
        };
        let offset = match &self.log {
            Some(log) => {
                let trackers = trackers.into_iter().flatten().collect();
                Some(log.append(topic, only, event, trackers).await?)
            }
            None => None,
        };
        self.outstanding.fetch_add(permits.len(), Ordering::SeqCst);
        for permit in permits {
            permit.send(Delivery {
                offset,
                event: event.clone(),
            });
        }
        Ok(())
    }

    /// Hands the events `[from, to)` of `topic` that the group had not finished to it again,
    /// before (and then between) live events, waiting for room like a producer does.
    fn spawn_replay(
        &self,
        topic: &str,
        group: &str,
        tracker: Arc<Tracker>,
        (from, to): (u64, u64),
        tx: mpsc::Sender<Delivery>,
    ) {
        let Some(log) = self.log.clone() else { return };
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let closed = self.closed.clone();
        let outstanding = self.outstanding.clone();
        tokio::spawn(async move {
            let mut replay = match log.replay(&topic, from, to) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(target: "inputbot::bus", topic, group, "cannot read back the unfinished events: {e}");
                    return;
                }
            };
            let mut resent = 0u64;
            loop {
                let (back, batch) = tokio::task::spawn_blocking(move || {
                    let batch = replay.next_batch(256);
                    (replay, batch)
                })
                .await
                .expect("replay reader panicked");
                replay = back;
                let batch = match batch {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(target: "inputbot::bus", topic, group, "cannot read back the unfinished events: {e}");
                        return;
                    }
                };
                for (offset, record) in batch {
                    if record.group.as_deref().is_some_and(|g| g != group) {
                        tracker.passed(offset);
                        continue;
                    }
                    // Closing: what is not handed out stays after the group's position.
                    let Ok(permit) = tx.reserve().await else {
                        return;
                    };
                    if closed.load(Ordering::SeqCst) {
                        return;
                    }
                    tracker.resent(offset);
                    outstanding.fetch_add(1, Ordering::SeqCst);
                    permit.send(Delivery {
                        offset: Some(offset),
                        event: record.event,
                    });
                    resent += 1;
                }
            }
            tracker.replayed();
            tracing::info!(target: "inputbot::bus", topic, group, events = resent,
                "resumed {resent} events of topic {topic} that group {group} had not finished");
        });
    }

    /// The dead-letter file of a topic.
    pub fn dead_letter_path(&self, topic: &str) -> PathBuf {
        self.options.dead_letter_dir.join(format!("{topic}.jsonl"))
    }
}

impl Bus for EmbeddedBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::SeqCst) {
                return Err(BusError::Closed);
            }
            let groups = self.groups_of(topic);
            self.send_all(topic, None, groups, event).await
        })
    }

    fn dead_letter<'a>(
        &'a self,
        topic: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let path = self.dead_letter_path(topic);
            let _guard = self.dead_letter_lock.lock().await;
            crate::dlq::append(&path, record)
                .await
                .map_err(|source| BusError::DeadLetterIo {
                    path: path.display().to_string(),
                    source,
                })
        })
    }

    fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, BusError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        let mut topics = self.topics.lock().expect("bus lock");
        let groups = topics.entry(topic.to_owned()).or_default();
        if groups.iter().any(|g| g.name == group) {
            return Err(BusError::DuplicateGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        }
        let (tx, rx) = mpsc::channel(self.options.capacity.max(1));
        let tracker = match &self.log {
            Some(log) => {
                let (tracker, from, to) = log.join(topic, group)?;
                if from < to {
                    self.spawn_replay(topic, group, tracker.clone(), (from, to), tx.clone());
                } else {
                    tracker.replayed();
                }
                Some(tracker)
            }
            None => None,
        };
        groups.push(Group {
            name: group.to_owned(),
            tx,
            tracker: tracker.clone(),
        });
        Ok(Box::new(EmbeddedConsumer {
            rx,
            tracker,
            outstanding: self.outstanding.clone(),
            settled: self.settled.clone(),
        }))
    }

    fn healthy(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }
}

struct EmbeddedConsumer {
    rx: mpsc::Receiver<Delivery>,
    tracker: Option<Arc<Tracker>>,
    outstanding: Arc<AtomicUsize>,
    settled: Arc<Notify>,
}

impl Consumer for EmbeddedConsumer {
    fn next(&mut self) -> BoxFuture<'_, Option<Message>> {
        Box::pin(async move {
            let Delivery { offset, event } = self.rx.recv().await?;
            let outstanding = self.outstanding.clone();
            let settled = self.settled.clone();
            let tracker = self.tracker.clone();
            Some(Message::new(event, move || {
                if let (Some(tracker), Some(offset)) = (tracker, offset) {
                    tracker.handled(offset);
                }
                if outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
                    settled.notify_waiters();
                }
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bus(capacity: usize) -> (Arc<EmbeddedBus>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(EmbeddedOptions {
            capacity,
            publish_timeout: Duration::from_millis(50),
            dead_letter_dir: dir.path().to_owned(),
            log: None,
        })
        .unwrap();
        (bus, dir)
    }

    #[tokio::test]
    async fn every_group_gets_every_event() {
        let (bus, _dir) = bus(8);
        let mut a = bus.subscribe("t", "a").unwrap();
        let mut b = bus.subscribe("t", "b").unwrap();
        let e = Event::new("ns/b", "s", "t", json!(1));
        bus.publish("t", &e).await.unwrap();
        assert_eq!(bus.outstanding(), 2);
        a.next().await.unwrap().ack();
        assert!(!bus.settle(Duration::from_millis(10)).await);
        b.next().await.unwrap().ack();
        assert!(bus.settle(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_full_group_pushes_back_instead_of_growing() {
        let (bus, _dir) = bus(2);
        let _slow = bus.subscribe("t", "slow").unwrap();
        let e = Event::new("ns/b", "s", "t", json!(1));
        bus.publish("t", &e).await.unwrap();
        bus.publish("t", &e).await.unwrap();
        let err = bus.publish("t", &e).await.unwrap_err();
        assert!(matches!(err, BusError::Full { .. }), "{err}");
    }

    #[tokio::test]
    async fn closing_drains_queued_events_then_ends() {
        let (bus, _dir) = bus(4);
        let mut c = bus.subscribe("t", "g").unwrap();
        bus.publish("t", &Event::new("ns/b", "s", "t", json!(1)))
            .await
            .unwrap();
        bus.close();
        assert!(matches!(
            bus.publish("t", &Event::new("ns/b", "s", "t", json!(2)))
                .await,
            Err(BusError::Closed)
        ));
        c.next().await.unwrap().ack();
        assert!(c.next().await.is_none());
    }

    #[tokio::test]
    async fn a_group_joins_a_topic_once() {
        let (bus, _dir) = bus(4);
        let _c = bus.subscribe("t", "g").unwrap();
        assert!(matches!(
            bus.subscribe("t", "g"),
            Err(BusError::DuplicateGroup { .. })
        ));
    }
}
