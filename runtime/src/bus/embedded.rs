//! The embedded bus: one bounded queue per consumer group, in one process. Every group of a
//! topic gets every event, and a slow group pushes back on producers instead of growing
//! memory. Dead letters are appended to JSON-lines files under the data directory, so they
//! survive the process.

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

use super::{Bus, BusError, Consumer, Message};
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
}

struct Group {
    name: String,
    tx: mpsc::Sender<Event>,
}

/// The in-process bus.
pub struct EmbeddedBus {
    options: EmbeddedOptions,
    topics: Mutex<HashMap<String, Vec<Group>>>,
    closed: AtomicBool,
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
    /// A new bus.
    pub fn new(options: EmbeddedOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            topics: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            outstanding: Arc::new(AtomicUsize::new(0)),
            settled: Arc::new(Notify::new()),
            dead_letter_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Stops taking new events; consumers drain what is queued, then see the end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends each consumer once its queue is empty.
        self.topics.lock().expect("bus lock").clear();
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
        let sender = self
            .topics
            .lock()
            .expect("bus lock")
            .get(topic)
            .and_then(|groups| {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| g.tx.clone())
            });
        let Some(tx) = sender else {
            return Err(BusError::NoSuchGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        };
        self.send_all(topic, vec![tx], event).await
    }

    /// Reserves a slot in every given group first, then sends, so an event reaches all of them
    /// or none; waits at most `publish_timeout` for room.
    async fn send_all(
        &self,
        topic: &str,
        senders: Vec<mpsc::Sender<Event>>,
        event: &Event,
    ) -> Result<(), BusError> {
        let waited = self.options.publish_timeout;
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
        self.outstanding.fetch_add(permits.len(), Ordering::SeqCst);
        for permit in permits {
            permit.send(event.clone());
        }
        Ok(())
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
            let senders: Vec<mpsc::Sender<Event>> = self
                .topics
                .lock()
                .expect("bus lock")
                .get(topic)
                .map(|groups| groups.iter().map(|g| g.tx.clone()).collect())
                .unwrap_or_default();
            self.send_all(topic, senders, event).await
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
        groups.push(Group {
            name: group.to_owned(),
            tx,
        });
        Ok(Box::new(EmbeddedConsumer {
            rx,
            outstanding: self.outstanding.clone(),
            settled: self.settled.clone(),
        }))
    }

    fn healthy(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }
}

struct EmbeddedConsumer {
    rx: mpsc::Receiver<Event>,
    outstanding: Arc<AtomicUsize>,
    settled: Arc<Notify>,
}

impl Consumer for EmbeddedConsumer {
    fn next(&mut self) -> BoxFuture<'_, Option<Message>> {
        Box::pin(async move {
            let event = self.rx.recv().await?;
            let outstanding = self.outstanding.clone();
            let settled = self.settled.clone();
            Some(Message::new(event, move || {
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
        let bus = EmbeddedBus::new(EmbeddedOptions {
            capacity,
            publish_timeout: Duration::from_millis(50),
            dead_letter_dir: dir.path().to_owned(),
        });
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
