//! Duplicates that reached different ingest replicas, dropped where they meet: on one
//! partition of the raw topic, in the consumer that owns it.
//!
//! ```text
//!  ingest (any replica) ── event + inputbotdedupe=<sha256 of source and key> + …until ──▶ raw/p
//!  raw/p ─▶ consumer: window of p (rebuilt from dedupe/p on assignment)
//!            ├─ key seen at another offset, not expired ─▶ ack at once (duplicate, counted)
//!            └─ new (or this very offset again)      ─▶ claim in memory, hand out;
//!                                                       on ack: claim on dedupe/p, then commit
//! ```
//!
//! Every copy of one key lands on one partition (records are keyed by the idempotency key, or
//! by the source), so the member owning that partition sees all of them, in order, and decides
//! alone. The window survives a restart or a rebalance in the compacted dedupe topic: partition
//! `p` of it holds `(group, key) → (offset, until)` for raw partition `p`, and a member rebuilds
//! it before it hands out any keyed record of a newly assigned partition.
//!
//! The claim is written *before* the offset is stored (in the acknowledgement), so a committed
//! offset always has its claim durable; and an entry names the offset that claimed it, so the
//! redelivery of that same record (a crash before the commit) is handled again, not dropped.
//! A record redriven from a dead-letter topic (`inputbot_redrive_group`) is never a duplicate.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ProducerContext, reader};
use crate::event::Event;

/// The extension naming an event's identity for deduplication: hex SHA-256 of the source and
/// its idempotency key, replay id, poll item id or schedule firing.
pub const DEDUPE_EXTENSION: &str = "inputbotdedupe";

/// Until when (Unix seconds) a copy of the event is a duplicate.
pub const DEDUPE_UNTIL_EXTENSION: &str = "inputbotdedupeuntil";

/// Keys one partition's window holds at most (about 100 bytes each); the oldest claims go
/// first.
pub const WINDOW_CAPACITY: usize = 100_000;

/// A key as held in memory: the 32 bytes of its SHA-256 (the extension's hex decoded; any
/// other text hashed), whatever the sender's key was.
type Digest32 = [u8; 32];

fn digest(key: &str) -> Digest32 {
    let mut out = [0u8; 32];
    if key.len() == 64 && hex::decode_to_slice(key, &mut out).is_ok() {
        return out;
    }
    use sha2::{Digest as _, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// How long rebuilding one partition's window may take before it is tried again.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Marks `event` as the one event of `kind` `key` of its source until `until`: every other copy
/// that reaches the raw topic inside the window is dropped by its consumers.
pub fn mark(event: &mut Event, kind: &str, key: &str, until: chrono::DateTime<chrono::Utc>) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [event.bot.as_str(), event.bot_source.as_str(), kind, key] {
        h.update(part.len().to_be_bytes());
        h.update(part.as_bytes());
    }
    event
        .extensions
        .insert(DEDUPE_EXTENSION.to_owned(), hex::encode(h.finalize()));
    event.extensions.insert(
        DEDUPE_UNTIL_EXTENSION.to_owned(),
        until.timestamp().to_string(),
    );
}

/// An event's dedupe key and expiry, when it carries them.
pub fn key_of(event: &Event) -> Option<(String, i64)> {
    let key = event.extensions.get(DEDUPE_EXTENSION)?;
    let until = event
        .extensions
        .get(DEDUPE_UNTIL_EXTENSION)?
        .parse::<i64>()
        .ok()?;
    Some((key.clone(), until))
}

/// What a dedupe record holds (its key is `<group> <dedupe key>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claimed {
    /// The raw offset that claimed the key.
    offset: i64,
    /// Unix seconds after which the key is free again.
    until: i64,
}

/// One raw partition's window.
#[derive(Debug, Default)]
struct Window {
    epoch: u64,
    keys: HashMap<Digest32, Claimed>,
    /// Claim order (key, offset): an element is stale when the key's claim has another offset.
    order: VecDeque<(Digest32, i64)>,
}

impl Window {
    fn insert(&mut self, key: Digest32, claimed: Claimed) {
        self.order.push_back((key, claimed.offset));
        self.keys.insert(key, claimed);
        while self.keys.len() > WINDOW_CAPACITY {
            let Some((k, o)) = self.order.pop_front() else {
                break;
            };
            if self.keys.get(&k).is_some_and(|c| c.offset == o) {
                self.keys.remove(&k);
            }
        }
        if self.order.len() > 2 * WINDOW_CAPACITY {
            let keys = &self.keys;
            self.order
                .retain(|(k, o)| keys.get(k).is_some_and(|c| c.offset == *o));
        }
    }
}

/// What the window says about one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key's first copy (or that copy delivered again): hand it out; `claim` is the
    /// record to write before its offset is stored, when one is needed.
    Fresh {
        /// Whether the claim still has to be written.
        claim: bool,
    },
    /// Another record (at `first`) claimed the key inside the window.
    Duplicate {
        /// The raw offset of the copy that was handed out.
        first: i64,
    },
}

/// The windows of the partitions one member owns, and the writer of their claims.
pub struct Dedupe {
    topic: String,
    group: String,
    reader: ClientConfig,
    producer: FutureProducer<ProducerContext>,
    windows: Mutex<HashMap<i32, Window>>,
    /// Claims written but not yet confirmed, for [`Dedupe::settle`].
    pending: Arc<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    done: Notify,
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Dedupe {
    /// The windows of `group`, kept in `topic`.
    pub(super) fn new(
        topic: &str,
        group: &str,
        reader: ClientConfig,
        producer: FutureProducer<ProducerContext>,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            reader,
            producer,
            windows: Mutex::new(HashMap::new()),
            pending: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Window>> {
        // Every update is a single insert or remove: a panic elsewhere leaves it consistent.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_key(&self, key: &str) -> String {
        format!("{} {key}", self.group)
    }

    /// Whether partition `partition`'s window is built for assignment `epoch`.
    pub(super) fn ready(&self, partition: i32, epoch: u64) -> bool {
        self.lock()
            .get(&partition)
            .is_some_and(|w| w.epoch == epoch)
    }

    /// Rebuilds partition `partition`'s window from the dedupe topic (blocking; off the async
    /// workers). Entries already expired are left out.
    pub(super) fn rebuild(&self, partition: i32, epoch: u64) -> Result<usize, String> {
        let records = reader::read_to_end(
            &self.reader,
            &self.topic,
            Some(&[partition]),
            REBUILD_TIMEOUT,
        )?;
        let prefix = format!("{} ", self.group);
        let now = chrono::Utc::now().timestamp();
        let mut window = Window {
            epoch,
            ..Window::default()
        };
        for r in records {
            let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let Some(key) = key.strip_prefix(&prefix) else {
                continue;
            };
            match r.value.as_deref().map(serde_json::from_slice::<Claimed>) {
                Some(Ok(c)) if c.until > now => window.insert(digest(key), c),
                Some(Ok(_)) | None => {
                    window.keys.remove(&digest(key));
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "inputbot::bus", topic = %self.topic, partition,
                        "skipping a dedupe record that is not one: {e}");
                }
            }
        }
        let n = window.keys.len();
        self.lock().insert(partition, window);
        Ok(n)
    }

    /// Forgets the windows of revoked partitions.
    pub(super) fn release(&self, partitions: Option<&[i32]>) {
        let mut map = self.lock();
        match partitions {
            Some(ps) => ps.iter().for_each(|p| {
                map.remove(p);
            }),
            None => map.clear(),
        }
    }

    /// Decides about the record at `offset` of `partition` with dedupe `key`, claiming the key
    /// in memory when it is new. The window must be [`ready`](Self::ready).
    pub(super) fn check(&self, partition: i32, offset: i64, key: &str, until: i64) -> Verdict {
        let now = chrono::Utc::now().timestamp();
        let mut map = self.lock();
        let window = map.entry(partition).or_default();
        let k = digest(key);
        match window.keys.get(&k) {
            Some(c) if c.offset == offset => Verdict::Fresh { claim: false },
            Some(c) if c.until > now && c.offset < offset => Verdict::Duplicate { first: c.offset },
            _ if until <= now => Verdict::Fresh { claim: false },
            _ => {
                window.insert(k, Claimed { offset, until });
                Verdict::Fresh { claim: true }
            }
        }
    }

    /// Writes the claim of `key` by `offset` to the dedupe topic, retrying until it is durable
    /// or `stop` fires (then `false`: the record stays unacknowledged and is redelivered).
    pub(super) async fn write_claim(
        &self,
        partition: i32,
        offset: i64,
        key: &str,
        until: i64,
        stop: &CancellationToken,
    ) -> bool {
        let value = serde_json::to_vec(&Claimed { offset, until }).unwrap_or_default();
        let record_key = self.record_key(key);
        let mut failures = 0u32;
        loop {
            let record = FutureRecord::to(&self.topic)
                .partition(partition)
                .key(&record_key)
                .payload(&value);
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(5)))
                .await
            {
                Ok(_) => return true,
                Err((e, _)) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(target: "inputbot::bus", topic = %self.topic, partition, failures,
                            "could not write a dedupe claim (the event stays unacknowledged until it is written): {e}");
                    }
                    let wait = inputbot_api::config::exponential_backoff(
                        Duration::from_millis(100),
                        failures,
                        Duration::from_secs(5),
                    );
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Counts a claim write that has started; [`Self::finished`] ends it.
    pub(super) fn started(&self) {
        self.pending.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a claim write.
    pub(super) fn finished(&self) {
        if self.pending.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.pending.done.notify_waiters();
        }
    }

    /// Waits (at most `timeout`) until every claim write has ended, so the watermark committed
    /// on close includes the events acknowledged last.
    pub(super) async fn settle(&self, timeout: Duration) {
        let wait = async {
            loop {
                let notified = self.pending.done.notified();
                if self.pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedupe() -> Dedupe {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(ProducerContext::default())
            .expect("a producer needs no broker to be created");
        Dedupe::new("t.dedupe", "g", ClientConfig::new(), producer)
    }

    fn later() -> i64 {
        chrono::Utc::now().timestamp() + 3600
    }

    #[test]
    fn a_second_copy_of_a_key_is_a_duplicate_but_the_first_delivered_again_is_not() {
        let d = dedupe();
        assert_eq!(d.check(0, 10, "k", later()), Verdict::Fresh { claim: true });
        assert_eq!(
            d.check(0, 12, "k", later()),
            Verdict::Duplicate { first: 10 }
        );
        // The claiming record itself, redelivered after a crash, is handled again.
        assert_eq!(
            d.check(0, 10, "k", later()),
            Verdict::Fresh { claim: false }
        );
        // Other partitions and keys are their own.
        assert_eq!(d.check(1, 12, "k", later()), Verdict::Fresh { claim: true });
        assert_eq!(d.check(0, 13, "j", later()), Verdict::Fresh { claim: true });
    }

    #[test]
    fn an_expired_claim_frees_the_key_and_an_expired_copy_claims_nothing() {
        let d = dedupe();
        let past = chrono::Utc::now().timestamp() - 1;
        assert_eq!(d.check(0, 1, "k", past), Verdict::Fresh { claim: false });
        assert_eq!(d.check(0, 2, "k", later()), Verdict::Fresh { claim: true });
        d.lock()
            .get_mut(&0)
            .unwrap()
            .keys
            .get_mut(&digest("k"))
            .unwrap()
            .until = past;
        assert_eq!(d.check(0, 3, "k", later()), Verdict::Fresh { claim: true });
    }

    #[test]
    fn a_window_is_bounded_and_forgets_the_oldest_claims_first() {
        let mut w = Window::default();
        for i in 0..(WINDOW_CAPACITY as i64 + 10) {
            w.insert(
                digest(&format!("k{i}")),
                Claimed {
                    offset: i,
                    until: i64::MAX,
                },
            );
        }
        assert_eq!(w.keys.len(), WINDOW_CAPACITY);
        assert!(!w.keys.contains_key(&digest("k0")));
        assert!(
            w.keys
                .contains_key(&digest(&format!("k{}", WINDOW_CAPACITY + 9)))
        );
    }

    #[test]
    fn marks_differ_by_source_and_kind_and_carry_the_expiry() {
        let mut a = Event::new("ns/b", "hook", "t", serde_json::json!({}));
        let mut b = Event::new("ns/b", "other", "t", serde_json::json!({}));
        let until = chrono::Utc::now();
        mark(&mut a, "idempotency", "x", until);
        mark(&mut b, "idempotency", "x", until);
        let (ka, ua) = key_of(&a).unwrap();
        assert_eq!(ka.len(), 64);
        assert_eq!(ua, until.timestamp());
        assert_ne!(ka, key_of(&b).unwrap().0);
        let mut c = a.clone();
        mark(&mut c, "replay", "x", until);
        assert_ne!(ka, key_of(&c).unwrap().0);
    }
}
