//! Idempotency keys of one webhook source: a key (a CEL expression over the request) seen
//! again inside the window is answered with the first event's id instead of being published
//! again. A key is claimed before publishing, confirmed once the bus holds the event, and
//! released when it could not be stored, so the sender's retry goes through. Bounded and
//! expiring.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most idempotency keys remembered per source.
const IDEMPOTENCY_CAPACITY: usize = 100_000;

pub(super) enum Claim {
    New,
    Seen(String),
    Pending,
}

/// Idempotency keys of one source: bounded, expiring.
pub(super) struct Idempotency {
    window: Duration,
    inner: Mutex<IdempotencyInner>,
}

#[derive(Default)]
struct IdempotencyInner {
    // key → (event id, confirmed, when)
    keys: HashMap<String, (String, bool, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl Idempotency {
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window,
            inner: Mutex::new(IdempotencyInner::default()),
        }
    }

    pub(super) fn claim(&self, key: &str, event_id: &str) -> Claim {
        let mut inner = self.inner.lock().expect("idempotency lock");
        let now = Instant::now();
        // Drop expired keys and keep the store bounded.
        while let Some((k, at)) = inner.order.front().cloned() {
            if now.duration_since(at) < self.window && inner.order.len() < IDEMPOTENCY_CAPACITY {
                break;
            }
            inner.order.pop_front();
            if inner.keys.get(&k).is_some_and(|(_, _, t)| *t == at) {
                inner.keys.remove(&k);
            }
        }
        match inner.keys.get(key) {
            Some((id, true, _)) => Claim::Seen(id.clone()),
            Some((_, false, _)) => Claim::Pending,
            None => {
                inner
                    .keys
                    .insert(key.to_owned(), (event_id.to_owned(), false, now));
                inner.order.push_back((key.to_owned(), now));
                Claim::New
            }
        }
    }

    pub(super) fn confirm(&self, key: &str) {
        if let Some(entry) = self
            .inner
            .lock()
            .expect("idempotency lock")
            .keys
            .get_mut(key)
        {
            entry.1 = true;
        }
    }

    pub(super) fn release(&self, key: &str) {
        self.inner
            .lock()
            .expect("idempotency lock")
            .keys
            .remove(key);
    }
}
