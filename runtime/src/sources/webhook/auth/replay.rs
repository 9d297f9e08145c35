//! The replay table: replay keys (what the signature covers: the body, a signed timestamp, a
//! signed id) seen recently, each kept until its request could no longer pass the freshness
//! check, and marked accepted once the event is durable. Bounded: at most
//! [`REPLAY_CAPACITY`](super::REPLAY_CAPACITY) keys, the oldest evicted first, and stored as
//! SHA-256 digests whatever the request holds.

use std::{
    collections::{HashMap, VecDeque},
    time::SystemTime,
};

use super::sha256;

/// What [`ReplayTable::insert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The key is new: recorded now, pending until [`ReplayTable::confirm`].
    New,
    /// The key was recorded and its event is durable: a repeat, to answer without publishing.
    Accepted,
    /// The key was recorded and its event is still being made durable.
    Pending,
}

/// Replay keys seen recently. Keys are stored as SHA-256 digests, so memory is bounded by
/// the capacity whatever the request holds.
pub(crate) struct ReplayTable {
    capacity: usize,
    /// Digest of the key → (expiry, insertion sequence number, accepted).
    entries: HashMap<[u8; 32], (SystemTime, u64, bool)>,
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

    /// Records `key` until `expires` (pending), unless it is recorded and not yet expired.
    pub(crate) fn insert(&mut self, key: &str, now: SystemTime, expires: SystemTime) -> Seen {
        let digest = sha256(key.as_bytes());
        if let Some((expiry, _, accepted)) = self.entries.get(&digest)
            && *expiry > now
        {
            return if *accepted {
                Seen::Accepted
            } else {
                Seen::Pending
            };
        }
        self.prune(now);
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some((seq, d)) => {
                    if self.entries.get(&d).is_some_and(|(_, s, _)| *s == seq) {
                        self.entries.remove(&d);
                    }
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(digest, (expires, seq, false));
        self.order.push_back((seq, digest));
        if self.order.len() > 2 * self.capacity.max(16) {
            // Drop elements left behind by `forget` and re-inserts.
            let entries = &self.entries;
            self.order
                .retain(|(seq, d)| entries.get(d).is_some_and(|(_, s, _)| s == seq));
        }
        Seen::New
    }

    /// Marks `key` accepted: its event is durable, so a repeat is answered as a duplicate.
    pub(crate) fn confirm(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(&sha256(key.as_bytes())) {
            entry.2 = true;
        }
    }

    /// Drops expired or stale entries from the front of the insertion order.
    fn prune(&mut self, now: SystemTime) {
        while let Some((seq, d)) = self.order.front().copied() {
            match self.entries.get(&d) {
                Some((expiry, s, _)) if *s == seq => {
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
            assert_eq!(table.insert(key, at(NOW), later), Seen::New);
        }
        assert_eq!(table.insert("a", at(NOW), later), Seen::Pending);
        table.confirm("a");
        assert_eq!(table.insert("a", at(NOW), later), Seen::Accepted);
        // A fourth key evicts the oldest.
        assert_eq!(table.insert("d", at(NOW), later), Seen::New);
        assert_eq!(table.entries.len(), 3);
        assert_eq!(
            table.insert("a", at(NOW), later),
            Seen::New,
            "a was evicted"
        );
        assert_eq!(table.insert("c", at(NOW), later), Seen::Pending);
        // Expired keys are dropped and accepted again.
        assert_eq!(table.insert("e", at(NOW + 61), at(NOW + 120)), Seen::New);
        assert_eq!(table.entries.len(), 1);
        assert_eq!(table.insert("c", at(NOW + 61), at(NOW + 120)), Seen::New);
        // Forgotten keys leave no trace that blocks them, and the order list stays bounded.
        for i in 0..1_000 {
            let key = format!("k{i}");
            assert_eq!(table.insert(&key, at(NOW + 61), at(NOW + 120)), Seen::New);
            table.forget(&key);
        }
        assert!(table.order.len() <= 2 * 16 + 1, "{}", table.order.len());
        assert!(table.entries.len() <= 3);
    }
}
