//! The embedded bus's durable log: what makes `202` mean "on disk" in `inputbot run`, as it
//! means "acknowledged by Kafka" in a cluster.
//!
//! ```text
//!  <data>/bus/LOCK                                  one process per data directory
//!  <data>/bus/topics/<topic>/00000000000000000000.log   segments: framed records ([`segment`])
//!  <data>/bus/topics/<topic>/00000000000000041872.log
//!  <data>/bus/topics/<topic>/groups/<group>            a group's committed position (decimal)
//! ```
//!
//! **Appending.** Publishers hand framed records to one writer thread. It takes everything
//! queued (up to [`BATCH`] records), writes each topic's share after the last whole record of
//! its newest segment and syncs it once: *group commit*, so one `fdatasync` covers every
//! request that arrived while the previous one ran, and throughput grows with load instead of
//! being one fsync per event. Only after the sync does a publisher hear `Ok(offset)`; a failed
//! write or sync (a full disk) cuts the segment back to its whole records and answers every
//! record of the batch with an error (intake answers `503`).
//!
//! **Consuming.** Each consumer group of a topic has a [`Tracker`]: the offsets handed out and
//! not yet acknowledged. Its *position* is the first offset not yet finished — the contiguous
//! watermark, as on Kafka — and a committer thread persists positions every
//! [`LogOptions::commit_interval`] (write, sync, rename, sync the directory). A group that
//! joins resumes at its committed position: the events between it and the end of the log are
//! read back and handed out again ([`Log::join`] and [`Replay`]), so a crash loses nothing
//! and repeats at most what was in flight or finished within one commit interval.
//!
//! **Bounded disk.** The segments of all topics may take at most [`LogOptions::max_bytes`];
//! an append that would pass it is refused with [`LogError::Full`] (intake answers `503`).
//! Whole segments are deleted once every group of the topic committed a position past them.

pub mod segment;

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::{self, BufReader},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::event::Event;

/// Most records one group commit takes.
pub const BATCH: usize = 4096;

/// Settings of the durable log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Directory of the log (`<data>/bus`).
    pub dir: PathBuf,
    /// Most bytes all segments may take together.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size (at most an eighth of
    /// `max_bytes`, so deleting finished segments frees space in useful steps).
    pub segment_bytes: u64,
    /// How often consumer positions are persisted.
    pub commit_interval: Duration,
}

impl LogOptions {
    /// Defaults under `dir`: 1 GiB of segments of 16 MiB, positions persisted every 100 ms.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// Why the log did not take, give back or keep a record.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process holds the data directory.
    #[error(
        "data directory {dir} is in use by another inputbot process (it holds {dir}/LOCK); stop it or use another --data-dir"
    )]
    Locked {
        /// Directory.
        dir: String,
    },
    /// The log could not be opened or read.
    #[error("cannot open the bus log in {dir}: {source}")]
    Open {
        /// Directory.
        dir: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A write or sync failed; nothing of the batch was kept.
    #[error("cannot store the event in topic {topic}'s log: {source}")]
    Write {
        /// Topic.
        topic: String,
        /// Cause (for example "No space left on device").
        #[source]
        source: io::Error,
    },
    /// The segments take `max_bytes`.
    #[error(
        "the bus log is full: {used} bytes of at most {max} hold events not yet finished by every consumer"
    )]
    Full {
        /// Bytes the segments take.
        used: u64,
        /// The bound.
        max: u64,
    },
    /// One event is larger than a record may be.
    #[error("an event of {size} bytes is larger than a bus record may be ({max} bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// A topic or group name that cannot name a file.
    #[error(
        "{what} {name:?} cannot name a file of the bus log: expected letters, digits, '.', '_' or '-'"
    )]
    BadName {
        /// "topic" or "consumer group".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The log was closed.
    #[error("the bus log is closed")]
    Closed,
}

/// What one record holds.
#[derive(Serialize)]
struct Stored<'a> {
    /// Only this consumer group handles it (redrive); every group when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    event: &'a Event,
}

/// A record read back.
#[derive(Debug, Deserialize)]
pub struct Record {
    /// Only this consumer group handles it; every group when `None`.
    pub group: Option<String>,
    /// The event.
    pub event: Event,
}

/// One consumer group's unfinished offsets of one topic.
#[derive(Debug)]
pub struct Tracker {
    group: String,
    path: PathBuf,
    state: Mutex<TrackerState>,
}

#[derive(Debug)]
struct TrackerState {
    in_flight: BTreeSet<u64>,
    /// The next offset the replay after joining has not handed out yet; `None` once it is done.
    replay: Option<u64>,
    /// One past the last offset this group was handed (or joined at).
    end: u64,
    /// The position last persisted.
    committed: u64,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().expect("tracker lock")
    }

    /// Records that the live `offset` is handed out to the group.
    pub fn received(&self, offset: u64) {
        let mut s = self.lock();
        s.in_flight.insert(offset);
        s.end = s.end.max(offset + 1);
    }

    /// Records that the replay after joining handed `offset` out again.
    pub fn resent(&self, offset: u64) {
        let mut s = self.lock();
        s.in_flight.insert(offset);
        if let Some(r) = &mut s.replay {
            *r = (*r).max(offset + 1);
        }
    }

    /// Records that the replay passed `offset` without handing it to this group (a record
    /// meant for another group).
    pub fn passed(&self, offset: u64) {
        if let Some(r) = &mut self.lock().replay {
            *r = (*r).max(offset + 1);
        }
    }

    /// Records that the replay after joining handed out everything it will.
    pub fn replayed(&self) {
        self.lock().replay = None;
    }

    /// Records that `offset` is finished.
    pub fn handled(&self, offset: u64) {
        self.lock().in_flight.remove(&offset);
    }

    /// The first offset not finished: where the group resumes after a restart.
    pub fn position(&self) -> u64 {
        let s = self.lock();
        [s.in_flight.first().copied(), s.replay]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(s.end)
    }

    /// Offsets handed out and not finished.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    fn committed(&self) -> u64 {
        self.lock().committed
    }

    /// Persists the position when it moved.
    fn commit(&self) -> io::Result<()> {
        let position = self.position();
        if position == self.committed() {
            return Ok(());
        }
        write_atomically(&self.path, position.to_string().as_bytes())?;
        self.lock().committed = position;
        Ok(())
    }
}

/// The log of one topic.
#[derive(Debug)]
struct TopicLog {
    name: String,
    dir: PathBuf,
    segments: Mutex<Segments>,
    groups: Mutex<HashMap<String, Arc<Tracker>>>,
}

#[derive(Debug)]
struct Segments {
    /// Base offsets of every segment, oldest first; the last is `active`'s.
    bases: Vec<u64>,
    active: segment::Active,
}

impl TopicLog {
    fn end(&self) -> u64 {
        self.segments
            .lock()
            .expect("segments lock")
            .active
            .next_offset()
    }

    fn first(&self) -> u64 {
        self.segments.lock().expect("segments lock").bases[0]
    }
}

struct Append {
    topic: Arc<TopicLog>,
    frame: Vec<u8>,
    trackers: Vec<Arc<Tracker>>,
    reply: oneshot::Sender<Result<u64, LogError>>,
}

/// The durable log of the embedded bus.
pub struct Log {
    options: LogOptions,
    shared: Arc<Shared>,
    writer: Mutex<Option<(mpsc::Sender<Append>, std::thread::JoinHandle<()>)>>,
    committer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.options.dir)
            .field("used", &self.shared.used.load(Ordering::Relaxed))
            .finish()
    }
}

struct Shared {
    options: LogOptions,
    topics: Mutex<HashMap<String, Arc<TopicLog>>>,
    /// Bytes all segments take.
    used: AtomicU64,
    /// Set once every consumer group of this run joined: only then may segments be deleted.
    sealed: std::sync::atomic::AtomicBool,
    _lock: File,
}

impl Log {
    /// Opens (or creates) the log in `options.dir`, recovering every topic found there, and
    /// starts its writer and committer threads.
    pub fn open(mut options: LogOptions) -> Result<Arc<Self>, LogError> {
        options.segment_bytes = options
            .segment_bytes
            .clamp(1, (options.max_bytes / 8).max(1));
        let dir = options.dir.clone();
        let open_err = |source| LogError::Open {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir.join("topics")).map_err(open_err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let shared = Arc::new(Shared {
            options: options.clone(),
            topics: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            sealed: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        });
        for entry in std::fs::read_dir(dir.join("topics")).map_err(open_err)? {
            let name = entry.map_err(open_err)?.file_name();
            if let Some(name) = name.to_str() {
                shared.topic(name)?;
            }
        }
        let (tx, rx) = mpsc::channel(BATCH * 4);
        let writer = std::thread::Builder::new()
            .name("inputbot-bus-log".into())
            .spawn({
                let shared = shared.clone();
                move || shared.write_loop(rx)
            })
            .map_err(open_err)?;
        let (stop, stopped) = std::sync::mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("inputbot-bus-commit".into())
            .spawn({
                let shared = shared.clone();
                move || shared.commit_loop(&stopped)
            })
            .map_err(open_err)?;
        Ok(Arc::new(Self {
            options,
            shared,
            writer: Mutex::new(Some((tx, writer))),
            committer: Mutex::new(Some((stop, committer))),
        }))
    }

    /// Appends `event` to `topic` (for `group` only, when given) and returns its offset once
    /// it is synced to disk; each tracker is told of the offset before that.
    pub async fn append(
        &self,
        topic: &str,
        group: Option<&str>,
        event: &Event,
        trackers: Vec<Arc<Tracker>>,
    ) -> Result<u64, LogError> {
        let topic = self.shared.topic(topic)?;
        let payload = serde_json::to_vec(&Stored { group, event }).expect("events serialize");
        if payload.len() > segment::MAX_PAYLOAD as usize {
            return Err(LogError::TooLarge {
                size: payload.len(),
                max: segment::MAX_PAYLOAD,
            });
        }
        let mut frame = Vec::with_capacity(payload.len() + segment::HEADER as usize);
        segment::encode(&payload, &mut frame);
        let tx = self
            .writer
            .lock()
            .expect("writer lock")
            .as_ref()
            .map(|(tx, _)| tx.clone())
            .ok_or(LogError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Append {
            topic,
            frame,
            trackers,
            reply,
        })
        .await
        .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Joins `group` on `topic`: its tracker and the offsets `[from, to)` to hand out again
    /// before live events (read them with [`Log::replay`]). A group with no committed
    /// position starts at the end of the log — or at its start when no group of the topic
    /// ever committed one, so events accepted before any consumer existed are not skipped.
    pub fn join(&self, topic: &str, group: &str) -> Result<(Arc<Tracker>, u64, u64), LogError> {
        check_name("consumer group", group)?;
        let log = self.shared.topic(topic)?;
        let groups_dir = log.dir.join("groups");
        let open_err = |source| LogError::Open {
            dir: groups_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&groups_dir).map_err(open_err)?;
        let mut groups = log.groups.lock().expect("groups lock");
        let end = log.end();
        let first = log.first();
        let path = groups_dir.join(group);
        let from = match read_position(&path).map_err(open_err)? {
            Some(p) => p.clamp(first, end),
            None if any_position(&groups_dir).map_err(open_err)? => end,
            None => first,
        };
        let tracker = Arc::new(Tracker {
            group: group.to_owned(),
            path,
            state: Mutex::new(TrackerState {
                in_flight: BTreeSet::new(),
                replay: (from < end).then_some(from),
                end,
                committed: u64::MAX,
            }),
        });
        // Persist the starting point at once, so a group that joined at the end stays there.
        tracker.commit().map_err(open_err)?;
        groups.insert(group.to_owned(), tracker.clone());
        Ok((tracker, from, end))
    }

    /// Reads back `[from, to)` of `topic`.
    pub fn replay(&self, topic: &str, from: u64, to: u64) -> Result<Replay, LogError> {
        let log = self.shared.topic(topic)?;
        let bases = log.segments.lock().expect("segments lock").bases.clone();
        Ok(Replay {
            dir: log.dir.clone(),
            topic: log.name.clone(),
            bases,
            next: from,
            to,
            reader: None,
        })
    }

    /// Declares that every consumer group of this run joined: positions of groups that did not
    /// (a Pipeline or ActionBinding no longer in the files) are dropped with a warning naming
    /// what they had not finished, and finished segments may be deleted from now on.
    pub fn seal(&self) {
        let topics: Vec<_> = self
            .shared
            .topics
            .lock()
            .expect("topics lock")
            .values()
            .cloned()
            .collect();
        for log in topics {
            let joined = log.groups.lock().expect("groups lock");
            let Ok(entries) = std::fs::read_dir(log.dir.join("groups")) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if joined.contains_key(&name) || name.ends_with(".tmp") {
                    continue;
                }
                let position = read_position(&entry.path()).ok().flatten().unwrap_or(0);
                let unfinished = log.end().saturating_sub(position);
                tracing::warn!(target: "inputbot::bus", topic = %log.name, group = %name, unfinished,
                    "consumer group {name} of topic {} is no longer in the resources: its position is dropped ({unfinished} events after it were not finished by it)", log.name);
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.shared.sealed.store(true, Ordering::SeqCst);
    }

    /// Persists every group's position now (shutdown calls this once the consumers stopped).
    pub fn commit(&self) {
        self.shared.commit_all();
    }

    /// Bytes the segments take.
    pub fn used(&self) -> u64 {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Stops the writer (appends queued are still answered) and the committer (after a last
    /// commit).
    pub fn close(&self) {
        if let Some((tx, thread)) = self.writer.lock().expect("writer lock").take() {
            drop(tx);
            let _ = thread.join();
        }
        if let Some((stop, thread)) = self.committer.lock().expect("committer lock").take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// The log of `name`, opened (and its newest segment recovered) on first use.
    fn topic(&self, name: &str) -> Result<Arc<TopicLog>, LogError> {
        if let Some(t) = self.topics.lock().expect("topics lock").get(name) {
            return Ok(t.clone());
        }
        check_name("topic", name)?;
        let mut topics = self.topics.lock().expect("topics lock");
        if let Some(t) = topics.get(name) {
            return Ok(t.clone());
        }
        let dir = self.options.dir.join("topics").join(name);
        let open_err = |source| LogError::Open {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(open_err)?;
        let mut bases = segment::list(&dir).map_err(open_err)?;
        let mut used = 0;
        for base in &bases[..bases.len().saturating_sub(1)] {
            used += std::fs::metadata(dir.join(segment::file_name(*base)))
                .map_err(open_err)?
                .len();
        }
        let active = match bases.last() {
            Some(&base) => {
                let found = segment::recover(&dir.join(segment::file_name(base))).map_err(open_err)?;
                if found.cut > 0 {
                    tracing::warn!(target: "inputbot::bus", topic = name, bytes = found.cut,
                        "cut a torn record from the end of topic {name}'s log (written by a process that stopped before it was synced, so never acknowledged)");
                }
                segment::Active::open(&dir, base, found.records, found.bytes)
            }
            None => {
                bases.push(0);
                segment::Active::open(&dir, 0, 0, 0).and_then(|a| sync_dir(&dir).map(|()| a))
            }
        }
        .map_err(open_err)?;
        used += active.bytes;
        self.used.fetch_add(used, Ordering::SeqCst);
        let log = Arc::new(TopicLog {
            name: name.to_owned(),
            dir,
            segments: Mutex::new(Segments { bases, active }),
            groups: Mutex::new(HashMap::new()),
        });
        topics.insert(name.to_owned(), log.clone());
        Ok(log)
    }

    fn write_loop(&self, mut rx: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            // One write and one sync per topic of the batch, in arrival order.
            while !batch.is_empty() {
                let topic = batch[0].topic.clone();
                let (mine, rest): (Vec<_>, Vec<_>) =
                    batch.drain(..).partition(|a| Arc::ptr_eq(&a.topic, &topic));
                batch = rest;
                self.write(&topic, mine);
            }
        }
    }

    fn write(&self, topic: &TopicLog, appends: Vec<Append>) {
        let max = self.options.max_bytes;
        let mut used = self.used.load(Ordering::SeqCst);
        let mut frames = Vec::new();
        let mut taken = Vec::with_capacity(appends.len());
        for a in appends {
            let size = a.frame.len() as u64;
            if used + size > max {
                let _ = a.reply.send(Err(LogError::Full { used, max }));
                continue;
            }
            used += size;
            frames.extend_from_slice(&a.frame);
            taken.push(a);
        }
        if taken.is_empty() {
            return;
        }
        let mut segments = topic.segments.lock().expect("segments lock");
        let written = self
            .roll_if_full(topic, &mut segments, frames.len() as u64)
            .and_then(|()| segments.active.append(&frames, taken.len() as u64));
        match written {
            Ok(()) => {
                self.used.fetch_add(frames.len() as u64, Ordering::SeqCst);
                let first = segments.active.next_offset() - taken.len() as u64;
                drop(segments);
                for (offset, a) in (first..).zip(taken) {
                    for t in &a.trackers {
                        t.received(offset);
                    }
                    let _ = a.reply.send(Ok(offset));
                }
            }
            Err(e) => {
                tracing::error!(target: "inputbot::bus", topic = %topic.name, path = %segments.active.path.display(),
                    records = taken.len(), "cannot store events in the bus log, none of them is accepted: {e}");
                drop(segments);
                for a in taken {
                    let source = io::Error::new(e.kind(), e.to_string());
                    let _ = a.reply.send(Err(LogError::Write {
                        topic: topic.name.clone(),
                        source,
                    }));
                }
            }
        }
    }

    /// Starts a new segment when `incoming` bytes would take the newest past its size.
    fn roll_if_full(
        &self,
        topic: &TopicLog,
        segments: &mut Segments,
        incoming: u64,
    ) -> io::Result<()> {
        let active = &segments.active;
        if active.bytes == 0 || active.bytes + incoming <= self.options.segment_bytes {
            return Ok(());
        }
        let base = active.next_offset();
        let next = segment::Active::open(&topic.dir, base, 0, 0)?;
        sync_dir(&topic.dir)?;
        segments.active = next;
        segments.bases.push(base);
        Ok(())
    }

    fn commit_loop(&self, stop: &std::sync::mpsc::Receiver<()>) {
        loop {
            let stopping = !matches!(
                stop.recv_timeout(self.options.commit_interval),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            self.commit_all();
            if self.sealed.load(Ordering::SeqCst) {
                self.delete_finished();
            }
            if stopping {
                return;
            }
        }
    }

    fn topics(&self) -> Vec<Arc<TopicLog>> {
        self.topics
            .lock()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    fn commit_all(&self) {
        for log in self.topics() {
            let trackers: Vec<_> = log
                .groups
                .lock()
                .expect("groups lock")
                .values()
                .cloned()
                .collect();
            for t in trackers {
                if let Err(e) = t.commit() {
                    tracing::warn!(target: "inputbot::bus", topic = %log.name, group = %t.group,
                        "cannot persist the consumer position (retried at the next commit; a restart before then repeats events): {e}");
                }
            }
        }
    }

    /// Deletes the segments every group of their topic committed a position past.
    fn delete_finished(&self) {
        for log in self.topics() {
            let positions: Vec<u64> = log
                .groups
                .lock()
                .expect("groups lock")
                .values()
                .map(|t| t.committed())
                .collect();
            let Some(min) = positions.into_iter().min() else {
                continue;
            };
            let mut segments = log.segments.lock().expect("segments lock");
            while segments.bases.len() > 1 && segments.bases[1] <= min {
                let base = segments.bases[0];
                let path = log.dir.join(segment::file_name(base));
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(target: "inputbot::bus", topic = %log.name, path = %path.display(),
                        "cannot delete a finished segment of the bus log: {e}");
                    break;
                }
                segments.bases.remove(0);
                self.used.fetch_sub(size, Ordering::SeqCst);
            }
        }
    }
}

/// Reads records of a topic back, in order, segment after segment.
pub struct Replay {
    dir: PathBuf,
    topic: String,
    bases: Vec<u64>,
    next: u64,
    to: u64,
    /// The segment being read (its base) and the reader, at `next`.
    reader: Option<(u64, segment::Reader<BufReader<File>>)>,
}

impl Replay {
    /// Up to `max` records from where the last call stopped; empty once `to` is reached.
    /// Blocking: call it from a blocking thread.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<(u64, Record)>, LogError> {
        let mut out = Vec::new();
        while self.next < self.to && out.len() < max {
            let Some(payload) = self.frame()? else {
                // The segments end before `to`: nothing more was ever synced.
                self.to = self.next;
                break;
            };
            let offset = self.next;
            self.next += 1;
            match serde_json::from_slice::<Record>(&payload) {
                Ok(record) => out.push((offset, record)),
                Err(e) => tracing::error!(target: "inputbot::bus", topic = %self.topic, offset,
                    "a record of the bus log passed its checksum but does not decode; it is skipped: {e}"),
            }
        }
        Ok(out)
    }

    fn frame(&mut self) -> Result<Option<Vec<u8>>, LogError> {
        let err = |source| LogError::Open {
            dir: self.dir.display().to_string(),
            source,
        };
        loop {
            if self.reader.is_none() {
                // The segment holding `next`, read up to it.
                let Some(i) = self.bases.iter().rposition(|b| *b <= self.next) else {
                    return Ok(None);
                };
                let base = self.bases[i];
                let file = File::open(self.dir.join(segment::file_name(base))).map_err(err)?;
                let mut reader = segment::Reader::new(BufReader::with_capacity(256 * 1024, file));
                for _ in base..self.next {
                    if reader.next_frame().map_err(err)?.is_none() {
                        return Ok(None);
                    }
                }
                self.reader = Some((base, reader));
            }
            let (base, reader) = self.reader.as_mut().expect("reader opened above");
            if let Some(frame) = reader.next_frame().map_err(err)? {
                return Ok(Some(frame));
            }
            // This segment ended: go on in the next one when it starts at `next`.
            if *base < self.next && self.bases.contains(&self.next) {
                self.reader = None;
                continue;
            }
            return Ok(None);
        }
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.ends_with(".tmp")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

fn read_position(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn any_position(dir: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .any(|e| !e.file_name().to_string_lossy().ends_with(".tmp")))
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
