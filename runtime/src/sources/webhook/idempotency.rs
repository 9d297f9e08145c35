//! Idempotency keys of one webhook source: a key (a CEL expression over the request) seen
//! again inside the window is answered with the first event's id instead of being published
//! again. A key is claimed before publishing, confirmed once the bus holds the event, and
//! released when it could not be stored, so the sender's retry goes through.
//!
//! Bounded in bytes and expiring: keys are kept as their SHA-256 (a key as large as the body
//! costs 32 bytes), every entry is charged what it holds, and the oldest go first when the
//! store is over its budget.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Bytes the idempotency keys of one source may hold.
pub(super) const IDEMPOTENCY_BYTES: usize = 16 * 1024 * 1024;

/// What an entry costs besides its event id: the hash in the map and in the order, the
/// instant, the flag and the containers' own overhead (an estimate on the high side).
const ENTRY_BYTES: usize = 128;

type KeyHash = [u8; 32];

pub(super) enum Claim {
    New,
    Seen(String),
    Pending,
}

/// Idempotency keys of one source: bounded in bytes, expiring.
pub(super) struct Idempotency {
    window: Duration,
    budget: usize,
    inner: Mutex<IdempotencyInner>,
}

struct Entry {
    event_id: Box<str>,
    confirmed: bool,
    at: Instant,
}

#[derive(Default)]
struct IdempotencyInner {
    keys: HashMap<KeyHash, Entry>,
    order: VecDeque<(KeyHash, Instant)>,
    /// What `keys` and `order` hold, as charged.
    bytes: usize,
}

fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

impl IdempotencyInner {
    fn remove(&mut self, key: &KeyHash) {
        if let Some(entry) = self.keys.remove(key) {
            self.bytes -= entry.event_id.len();
        }
    }
}

impl Idempotency {
    pub(super) fn new(window: Duration) -> Self {
        Self::with_budget(window, IDEMPOTENCY_BYTES)
    }

    /// A store holding at most `budget` bytes.
    pub(super) fn with_budget(window: Duration, budget: usize) -> Self {
        Self {
            window,
            budget,
            inner: Mutex::new(IdempotencyInner::default()),
        }
    }

    /// How long a key is remembered.
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    pub(super) fn claim(&self, key: &str, event_id: &str) -> Claim {
        let key = hash(key);
        let mut inner = self.inner.lock().expect("idempotency lock");
        let now = Instant::now();
        let cost = ENTRY_BYTES + event_id.len();
        // Drop expired keys, and the oldest while the new one would not fit.
        while let Some(&(k, at)) = inner.order.front() {
            if now.duration_since(at) < self.window && inner.bytes + cost <= self.budget {
                break;
            }
            inner.order.pop_front();
            inner.bytes -= ENTRY_BYTES;
            if inner.keys.get(&k).is_some_and(|e| e.at == at) {
                inner.remove(&k);
            }
        }
        match inner.keys.get(&key) {
            Some(e) if e.confirmed => Claim::Seen(e.event_id.to_string()),
            Some(_) => Claim::Pending,
            None if cost > self.budget => Claim::New,
            None => {
                inner.keys.insert(
                    key,
                    Entry {
                        event_id: event_id.into(),
                        confirmed: false,
                        at: now,
                    },
                );
                inner.order.push_back((key, now));
                inner.bytes += cost;
                Claim::New
            }
        }
    }

    pub(super) fn confirm(&self, key: &str) {
        let key = hash(key);
        if let Some(entry) = self
            .inner
            .lock()
            .expect("idempotency lock")
            .keys
            .get_mut(&key)
        {
            entry.confirmed = true;
        }
    }

    pub(super) fn release(&self, key: &str) {
        let key = hash(key);
        self.inner.lock().expect("idempotency lock").remove(&key);
    }

    /// Bytes held, as charged.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().expect("idempotency lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_large_as_a_body_are_held_as_hashes_within_the_byte_budget() {
        let store = Idempotency::with_budget(Duration::from_secs(3600), 4 * 1024);
        let big = "k".repeat(16 * 1024);
        for i in 0..200 {
            let key = format!("{big}{i}");
            assert!(matches!(store.claim(&key, &format!("id-{i}")), Claim::New));
            store.confirm(&key);
            assert!(store.bytes() <= 4 * 1024, "{} bytes", store.bytes());
        }
        // The newest keys are remembered, the oldest went to make room.
        assert!(matches!(
            store.claim(&format!("{big}199"), "again"),
            Claim::Seen(id) if id == "id-199"
        ));
        assert!(matches!(
            store.claim(&format!("{big}0"), "again"),
            Claim::New
        ));
    }

    #[test]
    fn a_released_key_is_accepted_again_and_its_bytes_are_returned() {
        let store = Idempotency::with_budget(Duration::from_secs(3600), 1 << 20);
        assert!(matches!(store.claim("a", "1"), Claim::New));
        assert!(matches!(store.claim("a", "2"), Claim::Pending));
        store.release("a");
        assert_eq!(store.bytes(), ENTRY_BYTES);
        assert!(matches!(store.claim("a", "3"), Claim::New));
        store.confirm("a");
        assert!(matches!(store.claim("a", "4"), Claim::Seen(id) if id == "3"));
    }
}
