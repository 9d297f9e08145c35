//! The answer cache of the steps that ask the network — `ai` (keyed on the request body: model,
//! messages, schema and sampling settings) and `enrich` (keyed on the URL and body): answers by
//! the SHA-256 of their request, reused for a TTL, bounded in entries and in bytes. An entry
//! is charged its key (a request as large as a body costs 32 bytes) and its answer as JSON
//! text; when full, the oldest answers go first, and an answer larger than the whole bound is
//! never stored.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Most bytes (keys and answers as JSON text) one step's cache holds.
pub const MAX_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The key of a request: the SHA-256 of its text.
pub(super) type Key = [u8; 32];

/// What an entry costs besides its answer: the key, held in the map and in the order.
const KEY_BYTES: usize = 2 * std::mem::size_of::<Key>();

/// The key of a request, from its text (a JSON body, or a URL and a body).
pub(super) fn key(request: &str) -> Key {
    Sha256::digest(request.as_bytes()).into()
}

struct Entry {
    at: Instant,
    bytes: usize,
    value: Value,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Insertion order; an item whose time differs from its entry's is stale.
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
}

/// A bounded TTL cache.
pub(super) struct Cache {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl Cache {
    pub(super) fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent: a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer cached for `key`, if it is younger than the TTL.
    pub(super) fn get(&self, key: &Key) -> Option<Value> {
        let inner = self.lock();
        inner
            .entries
            .get(key)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Stores an answer, dropping the oldest ones while over a bound. An answer larger than
    /// the byte bound is not stored.
    pub(super) fn put(&self, key: Key, value: Value) {
        let bytes = KEY_BYTES + value.to_string().len();
        if bytes > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.bytes;
        }
        while inner.entries.len() >= self.max_entries || inner.bytes + bytes > self.max_bytes {
            let Some((oldest, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&oldest).is_some_and(|e| e.at == at)
                && let Some(gone) = inner.entries.remove(&oldest)
            {
                inner.bytes -= gone.bytes;
            }
        }
        inner.order.push_back((key, now));
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                at: now,
                bytes,
                value,
            },
        );
        // Stale order items of replaced keys: keep the queue from growing without bound.
        if inner.order.len() > 2 * self.max_entries {
            let entries = &inner.entries;
            let live: VecDeque<_> = inner
                .order
                .iter()
                .filter(|(k, at)| entries.get(k).is_some_and(|e| e.at == *at))
                .copied()
                .collect();
            inner.order = live;
        }
    }

    /// Entries and bytes held.
    #[cfg(test)]
    pub(super) fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn k(v: Value) -> Key {
        key(&v.to_string())
    }

    #[test]
    fn the_cache_drops_the_oldest_answer_when_full() {
        let cache = Cache::new(Duration::from_secs(60), 2, MAX_CACHE_BYTES);
        let (a, b, c) = (k(json!(1)), k(json!(2)), k(json!(3)));
        cache.put(a, json!("a"));
        cache.put(b, json!("b"));
        cache.put(c, json!("c"));
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.get(&b), Some(json!("b")));
        assert_eq!(cache.get(&c), Some(json!("c")));
        assert_eq!(cache.size().0, 2);
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_forgets_after_the_ttl() {
        // An entry of a 10-character string costs its key and 12 bytes of JSON text.
        let entry = KEY_BYTES + 12;
        let cache = Cache::new(Duration::from_secs(60), 100, entry + 20);
        cache.put(k(json!(1)), json!("0123456789"));
        cache.put(k(json!(2)), json!("0123456789"));
        assert_eq!(cache.size(), (1, entry));
        assert_eq!(cache.get(&k(json!(1))), None, "the oldest went");
        cache.put(k(json!(3)), json!("x".repeat(100)));
        assert_eq!(
            cache.size(),
            (1, entry),
            "an answer over the bound is not stored"
        );
        assert_eq!(cache.get(&k(json!(3))), None);
        let cache = Cache::new(Duration::ZERO, 10, 1000);
        cache.put(k(json!(1)), json!(1));
        assert_eq!(cache.get(&k(json!(1))), None);
    }

    #[test]
    fn replacing_a_key_keeps_the_order_queue_bounded() {
        let cache = Cache::new(Duration::from_secs(60), 3, MAX_CACHE_BYTES);
        for i in 0..100 {
            cache.put(k(json!("same")), json!(i));
        }
        assert_eq!(cache.size().0, 1);
        assert!(cache.lock().order.len() <= 6);
        assert_eq!(cache.get(&k(json!("same"))), Some(json!(99)));
    }
}
