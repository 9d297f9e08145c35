//! The replay table: delivery ids (or timestamp + body digest) accepted recently, each kept
//! until its request could no longer pass the freshness check. Bounded: at most
//! [`REPLAY_CAPACITY`](super::REPLAY_CAPACITY) keys, the oldest evicted first, and stored as
//! SHA-256 digests whatever the sender puts in its id header.

use std::{
    collections::{HashMap, VecDeque},
    time::SystemTime,
};

use super::sha256;

/// Replay keys accepted recently. Keys are stored as SHA-256 digests, so memory is bounded by
/// the capacity whatever the sender puts in its id header.
pub(crate) struct ReplayTable {
    capacity: usize,
    /// Digest of the key → (expiry, insertion sequence number).
    entries: HashMap<[u8; 32], (SystemTime, u64)>,
    /// Insertion order; an element is stale when its sequence number no longer matches.
    order: VecDeque<(u64, [u8; 32])>,
    next_seq: u64,
}

impl ReplayTable {
    pub(crate) fn new(capacity: usize) -> Self {
        ReplayTable {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Records `key` until `expires`; false if it is already recorded and not yet expired.
    pub(crate) fn insert(&mut self, key: &str, now: SystemTime, expires: SystemTime) -> bool {
        let digest = sha256(key.as_bytes());
        if let Some((expiry, _)) = self.entries.get(&digest)
            && *expiry > now
        {
            return false;
        }
        self.prune(now);
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some((seq, d)) => {
                    if self.entries.get(&d).is_some_and(|(_, s)| *s == seq) {
                        self.entries.remove(&d);
                    }
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(digest, (expires, seq));
        self.order.push_back((seq, digest));
        if self.order.len() > 2 * self.capacity.max(16) {
            // Drop elements left behind by `forget` and re-inserts.
            let entries = &self.entries;
            self.order
                .retain(|(seq, d)| entries.get(d).is_some_and(|(_, s)| s == seq));
        }
        true
    }

    /// Drops expired or stale entries from the front of the insertion order.
    fn prune(&mut self, now: SystemTime) {
        while let Some((seq, d)) = self.order.front().copied() {
            match self.entries.get(&d) {
                Some((expiry, s)) if *s == seq => {
                    if *expiry > now {
                        break;
                    }
                    self.entries.remove(&d);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    pub(crate) fn forget(&mut self, key: &str) {
        self.entries.remove(&sha256(key.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// 2023-11-14T22:13:20Z, the "now" of the tests.
    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_replay_table_is_bounded_and_drops_expired_keys() {
        let mut table = ReplayTable::new(3);
        let later = at(NOW + 60);
        for key in ["a", "b", "c"] {
            assert!(table.insert(key, at(NOW), later));
        }
        assert!(!table.insert("a", at(NOW), later));
        // A fourth key evicts the oldest.
        assert!(table.insert("d", at(NOW), later));
        assert_eq!(table.entries.len(), 3);
        assert!(table.insert("a", at(NOW), later), "a was evicted");
        assert!(!table.insert("c", at(NOW), later));
        // Expired keys are dropped and accepted again.
        assert!(table.insert("e", at(NOW + 61), at(NOW + 120)));
        assert_eq!(table.entries.len(), 1);
        assert!(table.insert("c", at(NOW + 61), at(NOW + 120)));
        // Forgotten keys leave no trace that blocks them, and the order list stays bounded.
        for i in 0..1_000 {
            let key = format!("k{i}");
            assert!(table.insert(&key, at(NOW + 61), at(NOW + 120)));
            table.forget(&key);
        }
        assert!(table.order.len() <= 2 * 16 + 1, "{}", table.order.len());
        assert!(table.entries.len() <= 3);
    }
}
