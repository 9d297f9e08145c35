//! Kubernetes Events (`events.k8s.io/v1`) on the resources, with repeats counted in a series
//! and a cache of bounded size.
//!
//! kube-runtime's `Recorder` keeps a clone of every Event it published in the last six minutes
//! (the whole object and the reference it names) to count repeats. At 1,000 bots that was a
//! fifth of the operator's heap (`docs/benchmarks.md`, run 6). This recorder keeps, per
//! (reason, action, type, note, regarding object) it has seen, only the Event's name, its
//! count and when it was last published — at most [`CAPACITY`] entries, none older than
//! [`SERIES_TTL`] — and otherwise behaves the same: the first occurrence is created, a repeat
//! inside the window patches `series` (count and last observed time) of the existing Event.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};
use serde_json::json;

/// How long a published Event takes repeats into its series (kube-runtime's and client-go's
/// window).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// Series the recorder remembers at most; past that the oldest is forgotten (its next repeat
/// becomes a new Event, which is all that is lost).
pub const CAPACITY: usize = 4_096;

/// What is remembered of one published Event.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

/// The open series, bounded by [`CAPACITY`].
#[derive(Debug, Default)]
struct SeriesCache(HashMap<u64, Series>);

impl SeriesCache {
    fn open(&self, key: u64, now: Instant) -> Option<Series> {
        self.0
            .get(&key)
            .filter(|s| now.duration_since(s.last) < SERIES_TTL)
            .cloned()
    }

    fn insert(&mut self, key: u64, s: Series, now: Instant) {
        if self.0.len() >= CAPACITY && !self.0.contains_key(&key) {
            self.0
                .retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
            if self.0.len() >= CAPACITY {
                // Still full of open series: forget the oldest eighth at once, so this scan
                // is rare.
                let mut ages: Vec<Instant> = self.0.values().map(|s| s.last).collect();
                ages.sort_unstable();
                let cut = ages[CAPACITY / 8];
                self.0.retain(|_, s| s.last > cut);
            }
        }
        self.0.insert(key, s);
    }
}

/// Publishes Events for the operator's resources (see the module docs).
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    series: Mutex<SeriesCache>,
}

impl Recorder {
    /// A recorder reporting as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    /// Creates the Event, or counts a repeat of one published inside [`SERIES_TTL`].
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = series_key(ev, regarding);
        let now = Instant::now();
        let known = self.remembered(key, now);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let remembered = match known {
            Some(mut s) => {
                s.count += 1;
                let patch = json!({
                    "series": {"count": s.count, "lastObservedTime": MicroTime(Timestamp::now())},
                });
                api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                s
            }
            None => {
                let event = self.event(ev, regarding);
                let created = api.create(&PostParams::default(), &event).await?;
                Series {
                    name: created.metadata.name.unwrap_or_default(),
                    count: 1,
                    last: now,
                }
            }
        };
        self.remember(
            key,
            Series {
                last: now,
                ..remembered
            },
        );
        Ok(())
    }

    /// The series of `key`, if it is still open.
    fn remembered(&self, key: u64, now: Instant) -> Option<Series> {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open(key, now)
    }

    fn remember(&self, key: u64, s: Series) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, s, Instant::now());
    }

    /// Series remembered now.
    pub fn remembered_series(&self) -> usize {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .len()
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let name = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter.controller)
            .field("series", &self.remembered_series())
            .finish()
    }
}

/// What makes two Events one series: what happened, what was said, and to which object
/// (its UID, so a resource deleted and created again starts afresh).
fn series_key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (
        matches!(ev.type_, EventType::Warning),
        &ev.reason,
        &ev.action,
        &ev.note,
        &regarding.kind,
        &regarding.namespace,
        &regarding.name,
        &regarding.uid,
    )
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn regarding(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("InputBot".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn series(last: Instant) -> Series {
        Series {
            name: "bot.1".into(),
            count: 1,
            last,
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_forgets_the_oldest_first() {
        let start = Instant::now();
        let mut cache = SeriesCache::default();
        for k in 0..(3 * CAPACITY as u64) {
            let at = start + Duration::from_millis(k);
            cache.insert(k, series(at), at);
            assert!(cache.0.len() <= CAPACITY, "{} entries", cache.0.len());
        }
        let end = start + Duration::from_millis(3 * CAPACITY as u64);
        assert!(
            cache.open(3 * CAPACITY as u64 - 1, end).is_some(),
            "the newest is kept"
        );
        assert!(cache.open(0, end).is_none(), "the oldest is forgotten");
    }

    #[test]
    fn a_series_closes_after_its_window() {
        let start = Instant::now();
        let mut cache = SeriesCache::default();
        cache.insert(7, series(start), start);
        assert!(cache.open(7, start + SERIES_TTL / 2).is_some());
        assert!(cache.open(7, start + SERIES_TTL).is_none());
        // A full cache first drops the closed series, not open ones.
        for k in 100..(100 + CAPACITY as u64) {
            cache.insert(k, series(start + SERIES_TTL), start + SERIES_TTL);
        }
        assert!(!cache.0.contains_key(&7));
        assert_eq!(cache.0.len(), CAPACITY);
    }

    #[test]
    fn a_series_is_what_happened_what_was_said_and_to_which_object() {
        let a = series_key(&event("Ready", "ok"), &regarding("bot", "1"));
        assert_eq!(a, series_key(&event("Ready", "ok"), &regarding("bot", "1")));
        assert_ne!(
            a,
            series_key(&event("Ready", "other"), &regarding("bot", "1"))
        );
        assert_ne!(
            a,
            series_key(&event("Failed", "ok"), &regarding("bot", "1"))
        );
        assert_ne!(a, series_key(&event("Ready", "ok"), &regarding("bot", "2")));
        assert_ne!(
            a,
            series_key(&event("Ready", "ok"), &regarding("other", "1"))
        );
    }
}
