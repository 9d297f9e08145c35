//! Cron schedules: emit a fixed payload at each firing of a five-field cron expression, read in
//! an IANA time zone.
//!
//! Firings follow the wall clock of the time zone across daylight-saving changes: a time that
//! does not exist on the spring-forward day (e.g. 02:30 in Europe/Berlin) fires at the first
//! instant after the gap, and a fixed time that occurs twice on the fall-back day fires once,
//! at the earlier instant (interval patterns such as `*/15 * * * *` fire on both).
//!
//! A firing is never replayed: the schedule starts from the current time, so a firing missed
//! while the process was down (or while a previous firing was still being retried) is skipped,
//! not emitted late. Each emitted event carries its scheduled time as `subject` and as the
//! `scheduledtime` extension.
//!
//! A firing is one event: its id is derived from the bot, the source and the scheduled time
//! (the same firing emitted twice has one id), it is marked for the raw topic's deduplication
//! window, and with a [`SourceState`] the last firing is saved, so a restarted (or moved)
//! scheduler starts after it and never emits that minute again.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use inputbot_api::bot::ScheduleSource;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Sink, state::SourceState};
use crate::{bus::kafka::dedupe, delivery::retry::exponential_backoff, event::Event};

/// How long a firing emitted again counts as a duplicate downstream.
pub const DEDUPE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What a schedule saves.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    version: u32,
    /// The scheduled time of the last firing emitted.
    last_firing: DateTime<Utc>,
}

/// Event type when the spec sets none.
pub const DEFAULT_EVENT_TYPE: &str = "dev.inputbot.schedule";

/// The extension attribute carrying the scheduled time (RFC 3339, UTC).
pub const SCHEDULED_TIME_EXTENSION: &str = "scheduledtime";

/// How often one firing is offered to the sink before it is given up.
pub const EMIT_ATTEMPTS: u32 = 5;

/// The wait after the first failed emit; it doubles for each further attempt.
pub const EMIT_BACKOFF: Duration = Duration::from_millis(200);

/// A clock, injectable for tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Completes once `now() >= at` (at once when `at` has passed).
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// Real time. Sleeps in steps of at most a minute and re-reads the wall clock after each, so a
/// clock adjustment or a suspended host does not make a firing late by the size of the jump.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            const STEP: Duration = Duration::from_secs(60);
            loop {
                let Ok(left) = (at - Utc::now()).to_std() else {
                    return;
                };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(STEP)).await;
            }
        })
    }
}

/// Why a schedule cannot run. Names the field and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule cron: {0}")]
    Cron(String),
    /// The time zone is unknown.
    #[error(
        "schedule timeZone: expected an IANA time zone such as Europe/Berlin or UTC, found {0:?}"
    )]
    TimeZone(String),
}

/// The id of the firing at `stamp` of source `source` of `bot`: a UUID made of the SHA-256 of
/// the three, so every emission of one firing has the same id.
pub fn firing_id(bot: &str, source: &str, stamp: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [bot, source, stamp] {
        h.update(part.len().to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Fires one `schedule` source.
pub struct Scheduler {
    bot: String,
    source: String,
    event_type: String,
    payload: Value,
    cron: croner::Cron,
    tz: Tz,
    state: Option<SourceState>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("bot", &self.bot)
            .field("source", &self.source)
            .field("cron", &self.cron.as_str())
            .field("tz", &self.tz)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for source `source` of bot `bot` (`namespace/name`). The cron expression is
    /// parsed with [`inputbot_api::defaults::parse_cron`]; the time zone defaults to UTC.
    pub fn new(bot: &str, source: &str, spec: &ScheduleSource) -> Result<Self, ScheduleError> {
        let cron = inputbot_api::defaults::parse_cron(&spec.cron).map_err(ScheduleError::Cron)?;
        let tz = match &spec.time_zone {
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.clone()))?,
            None => Tz::UTC,
        };
        Ok(Self {
            bot: bot.to_owned(),
            source: source.to_owned(),
            event_type: spec
                .event_type
                .clone()
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_owned()),
            payload: spec
                .payload
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default())),
            cron,
            tz,
            state: None,
        })
    }

    /// Saves the last firing in `state`, and starts after the one saved there.
    pub fn with_state(mut self, state: Option<SourceState>) -> Self {
        self.state = state;
        self
    }

    /// The last firing saved, if any (an unreadable state is logged and ignored: the schedule
    /// then starts from now, as without state).
    fn last_firing(&self) -> Option<DateTime<Utc>> {
        let state = self.state.as_ref()?;
        let parsed = state.load().and_then(|b| {
            b.map(|b| serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()))
                .transpose()
        });
        match parsed {
            Ok(saved) => saved.map(|s| s.last_firing),
            Err(e) => {
                tracing::warn!(bot = %self.bot, source = %self.source, state = %state.describe(),
                    "cannot read the schedule's state; starting from now: {e}");
                None
            }
        }
    }

    async fn save_firing(&self, at: DateTime<Utc>) {
        let Some(state) = &self.state else { return };
        let bytes = serde_json::to_vec(&Saved {
            version: 1,
            last_firing: at,
        })
        .unwrap_or_default();
        if let Err(e) = state.save(bytes).await {
            tracing::warn!(bot = %self.bot, source = %self.source, state = %state.describe(), scheduled = %at,
                "cannot save the last firing (a restart may emit it again; downstream drops the copy): {e}");
        }
    }

    /// The next firing strictly after `after`, computed in the spec's time zone (DST-correct),
    /// as UTC. `None` when the expression never matches again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.with_timezone(&self.tz);
        // Bounded: each round moves strictly forward; one is enough in practice.
        for _ in 0..4 {
            let next = self
                .cron
                .find_next_occurrence(&from, false)
                .ok()?
                .with_timezone(&Utc);
            if next > after {
                return Some(next);
            }
            from = next.with_timezone(&self.tz);
        }
        None
    }

    /// The event of the firing scheduled at `at`.
    fn event(&self, at: DateTime<Utc>) -> Event {
        let stamp = at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut event = Event::new(
            &self.bot,
            &self.source,
            &self.event_type,
            self.payload.clone(),
        );
        event.id = firing_id(&self.bot, &self.source, &stamp);
        dedupe::mark(&mut event, "schedule", &stamp, at + DEDUPE_WINDOW);
        event.subject = Some(stamp.clone());
        event
            .extensions
            .insert(SCHEDULED_TIME_EXTENSION.to_owned(), stamp);
        event
    }

    /// Fires until `shutdown`: sleeps until the next firing and emits the payload. A refused
    /// emit is retried with the same event (so its id stays the same) up to
    /// [`EMIT_ATTEMPTS`] times with a doubling backoff, then logged as an error and given up;
    /// the schedule continues with the next firing after the current time.
    pub async fn run(
        self,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) {
        let mut after = clock.now();
        if let Some(last) = self.last_firing() {
            tracing::info!(bot = %self.bot, source = %self.source, last = %last, "resuming after the last firing");
            after = after.max(last);
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let Some(at) = self.next_after(after) else {
                tracing::warn!(
                    bot = %self.bot, source = %self.source, cron = self.cron.as_str(),
                    "the schedule has no further firing"
                );
                return;
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = clock.sleep_until(at) => {}
            }
            if !self
                .fire(at, clock.as_ref(), sink.as_ref(), &shutdown)
                .await
            {
                return;
            }
            let now = clock.now();
            if let Some(next) = self.next_after(at)
                && next <= now
            {
                tracing::warn!(
                    bot = %self.bot, source = %self.source, missed = %next,
                    "firings passed while the last one was being emitted; skipping to the next"
                );
            }
            after = at.max(now);
        }
    }

    /// Emits the firing at `at`, retrying. Returns `false` when `shutdown` fired meanwhile.
    async fn fire(
        &self,
        at: DateTime<Utc>,
        clock: &dyn Clock,
        sink: &dyn Sink,
        shutdown: &CancellationToken,
    ) -> bool {
        let event = self.event(at);
        for attempt in 1..=EMIT_ATTEMPTS {
            match sink.emit(event.clone()).await {
                Ok(()) => {
                    tracing::debug!(
                        bot = %self.bot, source = %self.source, scheduled = %at,
                        event_id = %event.id, "schedule fired"
                    );
                    self.save_firing(at).await;
                    return true;
                }
                Err(e) if attempt == EMIT_ATTEMPTS => {
                    tracing::error!(
                        bot = %self.bot, source = %self.source, scheduled = %at,
                        attempts = attempt, error = %e,
                        "the bus refused a scheduled event; giving up on this firing"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::warn!(
                        bot = %self.bot, source = %self.source, scheduled = %at,
                        attempt, error = %e, "the bus refused a scheduled event; retrying"
                    );
                    let wait = exponential_backoff(EMIT_BACKOFF, attempt - 1, Duration::MAX);
                    let until = clock.now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return false,
                        _ = clock.sleep_until(until) => {}
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use chrono::{NaiveDate, TimeZone, Timelike};
    use serde_json::json;

    use super::*;
    use crate::bus::BusError;

    /// A clock whose `sleep_until` moves its time to `at` at once.
    struct TestClock(Mutex<DateTime<Utc>>);

    impl TestClock {
        fn at(rfc3339: &str) -> Arc<Self> {
            Arc::new(Self(Mutex::new(utc(rfc3339))))
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }

        fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let mut now = self.0.lock().unwrap();
                if at > *now {
                    *now = at;
                }
            })
        }
    }

    /// A sink that refuses the first `refuse` emits, keeps the rest, and cancels `stop` once
    /// it holds `limit` events.
    struct TestSink {
        refuse: usize,
        limit: usize,
        attempts: AtomicUsize,
        events: Mutex<Vec<Event>>,
        stop: CancellationToken,
    }

    impl TestSink {
        fn new(refuse: usize, limit: usize) -> Arc<Self> {
            Arc::new(Self {
                refuse,
                limit,
                attempts: AtomicUsize::new(0),
                events: Mutex::new(Vec::new()),
                stop: CancellationToken::new(),
            })
        }
    }

    impl Sink for TestSink {
        fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            if n < self.refuse {
                return Box::pin(async { Err(BusError::Closed) });
            }
            let mut events = self.events.lock().unwrap();
            events.push(event);
            if events.len() >= self.limit {
                self.stop.cancel();
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn utc(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec(cron: &str, tz: Option<&str>) -> ScheduleSource {
        ScheduleSource {
            cron: cron.to_owned(),
            time_zone: tz.map(str::to_owned),
            payload: None,
            event_type: None,
        }
    }

    /// Runs `scheduler` on a test clock from `start` until the sink holds `limit` events
    /// (bounded by a real-time timeout) and returns them.
    async fn fire(scheduler: Scheduler, start: &str, refuse: usize, limit: usize) -> Vec<Event> {
        let sink = TestSink::new(refuse, limit);
        let task = scheduler.run(TestClock::at(start), sink.clone(), sink.stop.clone());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the schedule stops after the last firing");
        std::mem::take(&mut *sink.events.lock().unwrap())
    }

    fn scheduled(events: &[Event]) -> Vec<DateTime<Utc>> {
        events
            .iter()
            .map(|e| utc(&e.extensions[SCHEDULED_TIME_EXTENSION]))
            .collect()
    }

    #[test]
    fn berlin_two_oclock_is_one_utc_in_winter_and_midnight_utc_in_summer() {
        let s = Scheduler::new(
            "ns/bot",
            "nightly",
            &spec("0 2 * * *", Some("Europe/Berlin")),
        )
        .unwrap();
        assert_eq!(
            s.next_after(utc("2025-01-15T00:00:00Z")),
            Some(utc("2025-01-15T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2025-07-14T23:00:00Z")),
            Some(utc("2025-07-15T00:00:00Z"))
        );
        // Strictly after.
        assert_eq!(
            s.next_after(utc("2025-07-15T00:00:00Z")),
            Some(utc("2025-07-16T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2025-07-14T23:59:59.999Z")),
            Some(utc("2025-07-15T00:00:00Z"))
        );
    }

    #[test]
    fn without_a_time_zone_the_schedule_is_read_in_utc() {
        let s = Scheduler::new("ns/bot", "nightly", &spec("0 2 * * *", None)).unwrap();
        assert_eq!(
            s.next_after(utc("2025-07-15T00:00:00Z")),
            Some(utc("2025-07-15T02:00:00Z"))
        );
    }

    #[tokio::test]
    async fn fires_once_per_day_across_both_dst_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        for (start, expected) in [
            // Spring forward on 2025-03-30: 02:00 does not exist and fires at 03:00 CEST.
            (
                "2025-03-28T12:00:00Z",
                [
                    "2025-03-29T01:00:00Z",
                    "2025-03-30T01:00:00Z",
                    "2025-03-31T00:00:00Z",
                    "2025-04-01T00:00:00Z",
                ],
            ),
            // Fall back on 2025-10-26: 02:00 occurs twice and fires once, at 02:00 CEST.
            (
                "2025-10-24T12:00:00Z",
                [
                    "2025-10-25T00:00:00Z",
                    "2025-10-26T00:00:00Z",
                    "2025-10-27T01:00:00Z",
                    "2025-10-28T01:00:00Z",
                ],
            ),
        ] {
            let s = Scheduler::new(
                "ns/bot",
                "nightly",
                &spec("0 2 * * *", Some("Europe/Berlin")),
            )
            .unwrap();
            let times = scheduled(&fire(s, start, 0, 4).await);
            assert_eq!(times, expected.map(utc));
            let days: Vec<NaiveDate> = times
                .iter()
                .map(|t| t.with_timezone(&berlin).date_naive())
                .collect();
            for pair in days.windows(2) {
                assert_eq!(
                    pair[1],
                    pair[0].succ_opt().unwrap(),
                    "one firing per day: {days:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn every_fifteen_minutes_fires_four_times_an_hour() {
        let s = Scheduler::new("ns/bot", "tick", &spec("*/15 * * * *", None)).unwrap();
        let times = scheduled(&fire(s, "2025-05-01T09:59:30Z", 0, 5).await);
        assert_eq!(
            times,
            [
                "2025-05-01T10:00:00Z",
                "2025-05-01T10:15:00Z",
                "2025-05-01T10:30:00Z",
                "2025-05-01T10:45:00Z",
                "2025-05-01T11:00:00Z",
            ]
            .map(utc)
        );
        let in_hour: Vec<u32> = times
            .iter()
            .filter(|t| t.hour() == 10)
            .map(|t| t.minute())
            .collect();
        assert_eq!(in_hour, [0, 15, 30, 45]);
    }

    #[tokio::test]
    async fn emits_the_payload_type_subject_and_scheduled_time() {
        let mut sp = spec("30 6 * * 1", Some("America/New_York"));
        sp.payload = Some(json!({"report": "weekly", "n": 1}));
        sp.event_type = Some("com.example.report".into());
        let s = Scheduler::new("team-a/bot", "weekly", &sp).unwrap();
        let events = fire(s, "2025-06-01T00:00:00Z", 0, 1).await;
        let e = &events[0];
        assert_eq!(e.data, json!({"report": "weekly", "n": 1}));
        assert_eq!(e.ty, "com.example.report");
        // Monday 2025-06-02 06:30 EDT.
        assert_eq!(e.subject.as_deref(), Some("2025-06-02T10:30:00Z"));
        assert_eq!(
            e.extensions[SCHEDULED_TIME_EXTENSION],
            "2025-06-02T10:30:00Z"
        );
        assert_eq!(e.bot, "team-a/bot");
        assert_eq!(e.bot_source, "weekly");

        let s = Scheduler::new("team-a/bot", "weekly", &spec("0 0 * * *", None)).unwrap();
        let e = &fire(s, "2025-06-01T12:00:00Z", 0, 1).await[0];
        assert_eq!(e.data, json!({}));
        assert_eq!(e.ty, DEFAULT_EVENT_TYPE);
    }

    #[tokio::test]
    async fn an_emit_failure_is_retried_with_the_same_event() {
        let s = Scheduler::new("ns/bot", "tick", &spec("0 * * * *", None)).unwrap();
        let sink = TestSink::new(2, 1);
        let clock = TestClock::at("2025-05-01T09:30:00Z");
        tokio::time::timeout(
            Duration::from_secs(10),
            s.run(clock.clone(), sink.clone(), sink.stop.clone()),
        )
        .await
        .unwrap();
        assert_eq!(sink.attempts.load(Ordering::SeqCst), 3);
        let events = sink.events.lock().unwrap();
        assert_eq!(scheduled(&events), [utc("2025-05-01T10:00:00Z")]);
        // Backoff 200ms + 400ms on the test clock.
        assert_eq!(clock.now(), utc("2025-05-01T10:00:00.600Z"));
    }

    #[tokio::test]
    async fn a_firing_refused_every_time_is_given_up_and_the_next_one_fires() {
        let s = Scheduler::new("ns/bot", "tick", &spec("0 * * * *", None)).unwrap();
        let events = fire(s, "2025-05-01T09:30:00Z", EMIT_ATTEMPTS as usize, 1).await;
        assert_eq!(scheduled(&events), [utc("2025-05-01T11:00:00Z")]);
    }

    #[tokio::test]
    async fn shutdown_stops_it_promptly() {
        let s = Scheduler::new("ns/bot", "yearly", &spec("0 0 1 1 *", None)).unwrap();
        let sink = TestSink::new(0, 1);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(s.run(Arc::new(SystemClock), sink.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("run returns promptly after shutdown")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(sink.attempts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_system_clock_sleeps_until_the_given_time() {
        let at = Utc::now() + chrono::Duration::milliseconds(100);
        SystemClock.sleep_until(at).await;
        assert!(Utc::now() >= at);
        // A past time completes at once.
        SystemClock
            .sleep_until(Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap())
            .await;
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        let err = Scheduler::new("a/b", "c", &spec("0 2 * *", None)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("schedule cron: expected five cron fields"),
            "{err}"
        );
        let err = Scheduler::new("a/b", "c", &spec("0 2 * * *", Some("Mars/Olympus"))).unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[tokio::test]
    async fn a_restarted_schedule_resumes_after_its_saved_firing_and_one_firing_has_one_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = SourceState::from(dir.path().join("s.schedule.json"));
        let new = || {
            Scheduler::new("ns/bot", "tick", &spec("* * * * *", None))
                .unwrap()
                .with_state(Some(state.clone()))
        };
        let first = fire(new(), "2025-03-01T10:00:30Z", 0, 2).await;
        assert_eq!(
            scheduled(&first),
            [utc("2025-03-01T10:01:00Z"), utc("2025-03-01T10:02:00Z")]
        );
        // Restarted inside the minute it last fired (a clock behind, a Recreate rollout):
        // it starts after the saved firing, so 10:02 is not emitted twice.
        let second = fire(new(), "2025-03-01T10:01:30Z", 0, 1).await;
        assert_eq!(scheduled(&second), [utc("2025-03-01T10:03:00Z")]);
        // Without the state, the same firing emitted again has the same id and dedupe key.
        let again = fire(
            Scheduler::new("ns/bot", "tick", &spec("* * * * *", None)).unwrap(),
            "2025-03-01T10:01:30Z",
            0,
            1,
        )
        .await;
        assert_eq!(scheduled(&again), [utc("2025-03-01T10:02:00Z")]);
        assert_eq!(again[0].id, first[1].id);
        assert_eq!(
            crate::bus::kafka::dedupe::key_of(&again[0]),
            crate::bus::kafka::dedupe::key_of(&first[1])
        );
        assert_ne!(first[0].id, first[1].id);
        assert!(uuid::Uuid::parse_str(&first[0].id).is_ok());
    }
}
