//! The consumer loop every consuming role runs: up to `max_in_flight` events at once, and
//! never two events of one key at once.
//!
//! ```text
//!  next ─▶ permit (max_in_flight) ─▶ key busy? ─ no ─▶ spawn: handle, then the key's queue …
//!                                              └ yes ─▶ queued behind it (holding its permit)
//! ```
//!
//! The key is the event's explicit partition key (`partitionkey`: a webhook's idempotency key,
//! kept downstream by the process role). Events of one key arrive in partition order and are
//! handled one after the other in that order; events keyed only by their source (the default
//! placement, not a request for order) run concurrently. A queued event holds its permit, so
//! what is queued and what runs together never exceed `max_in_flight`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::log_panic;
use crate::bus::{Consumer, Message, kafka::codec::PARTITION_KEY};

/// Keys being handled, each with the events queued behind it.
type Busy = Arc<Mutex<HashMap<String, VecDeque<(Message, OwnedSemaphorePermit)>>>>;

/// Runs `handle` for each message with at most `max_in_flight` at once and one at a time per
/// key, until the consumer ends or `stop` fires; then waits for what is in flight (and
/// queued) and closes the consumer.
pub(super) async fn consume<H, Fut>(
    mut consumer: Box<dyn Consumer>,
    max_in_flight: u32,
    stop: CancellationToken,
    handle: H,
) where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1) as usize));
    let handle = Arc::new(handle);
    let busy: Busy = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let message = tokio::select! {
            m = consumer.next() => m,
            () = stop.cancelled() => None,
        };
        let Some(message) = message else { break };
        let key = message.event.extensions.get(PARTITION_KEY).cloned();
        if let Some(key) = &key {
            let mut map = busy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = map.get_mut(key) {
                queue.push_back((message, permit));
                continue;
            }
            map.insert(key.clone(), VecDeque::new());
        }
        let (handle, busy) = (handle.clone(), busy.clone());
        tasks.spawn(async move {
            handle(message).await;
            drop(permit);
            let Some(key) = key else { return };
            // Then the events that arrived for this key meanwhile, in order.
            loop {
                let next = {
                    let mut map = busy.lock().unwrap_or_else(|p| p.into_inner());
                    let queued = map.get_mut(&key).and_then(VecDeque::pop_front);
                    if queued.is_none() {
                        map.remove(&key);
                    }
                    queued
                };
                let Some((message, permit)) = next else {
                    return;
                };
                handle(message).await;
                drop(permit);
            }
        });
        // Reap finished tasks so the set does not grow.
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        log_panic(done);
    }
    // Every acknowledgement is in: commit and leave the group.
    consumer.close().await;
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use futures::future::BoxFuture;

    use super::*;
    use crate::event::Event;

    /// A consumer handing out `events` once each.
    struct Fixed(VecDeque<Event>);

    impl Consumer for Fixed {
        fn next(&mut self) -> BoxFuture<'_, Option<Message>> {
            let m = self.0.pop_front().map(|e| Message::new(e, || {}));
            Box::pin(async move { m })
        }
    }

    #[tokio::test]
    async fn a_key_is_never_in_flight_twice_and_its_events_run_in_order() {
        let mut events = VecDeque::new();
        for i in 0..40 {
            let mut e = Event::new("ns/b", "s", "t", serde_json::json!({"i": i}));
            // Keys k0..k3, plus events keyed only by their source (no partitionkey).
            if i % 5 != 4 {
                e.extensions
                    .insert(PARTITION_KEY.to_owned(), format!("k{}", i % 4));
            }
            events.push_back(e);
        }
        let state = Arc::new(Mutex::new((
            HashMap::<String, usize>::new(),
            Vec::<(String, i64)>::new(),
        )));
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, r, p) = (state.clone(), running.clone(), peak.clone());
        consume(
            Box::new(Fixed(events)),
            8,
            CancellationToken::new(),
            move |m: Message| {
                let (s, r, p) = (s.clone(), r.clone(), p.clone());
                async move {
                    let key = m.event.extensions.get(PARTITION_KEY).cloned();
                    let i = m.event.data["i"].as_i64().unwrap();
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    if let Some(k) = &key {
                        let mut g = s.lock().unwrap();
                        let n = g.0.entry(k.clone()).or_default();
                        *n += 1;
                        assert_eq!(*n, 1, "key {k} in flight twice");
                        g.1.push((k.clone(), i));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if let Some(k) = &key {
                        *s.lock().unwrap().0.get_mut(k).unwrap() -= 1;
                    }
                    r.fetch_sub(1, Ordering::SeqCst);
                    m.ack();
                }
            },
        )
        .await;
        let (_, order) = &*state.lock().unwrap();
        assert_eq!(order.len(), 32, "every keyed event handled");
        for k in 0..4 {
            let of_key: Vec<i64> = order
                .iter()
                .filter(|(key, _)| *key == format!("k{k}"))
                .map(|(_, i)| *i)
                .collect();
            let mut sorted = of_key.clone();
            sorted.sort_unstable();
            assert_eq!(of_key, sorted, "k{k} in arrival order");
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            (2..=8).contains(&peak),
            "different keys ran together, within the limit: {peak}"
        );
    }
}
