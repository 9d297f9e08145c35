//! What a poller remembers: the ids it has emitted (bounded, least recently seen forgotten
//! first, never fewer than the current response holds) and the validators of the last complete
//! response, saved after every poll that changed them ([`SourceState`]: a file written
//! atomically, or the bot's compacted state topic in a cluster).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{PollError, Poller};
use crate::sources::state::SourceState;

/// What a state file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    /// Format version.
    version: u32,
    /// The URL the validators belong to.
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    /// Fingerprint of the last fully processed body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_sha256: Option<String>,
    /// Seen ids, least recently seen first.
    #[serde(default)]
    seen: Vec<String>,
}

const STATE_VERSION: u32 = 1;

/// A bounded set of ids that forgets the least recently seen first. It always holds at least
/// the ids of the current response ([`SeenIds::hold_at_least`]): were a feed longer than the
/// capacity, each id would push out one the same poll is about to look for, and the whole
/// feed would be emitted again on every poll. The response body is bounded, so this is too.
#[derive(Debug, Default)]
pub(super) struct SeenIds {
    /// The configured capacity.
    base: usize,
    /// The capacity in force: the base, or the length of the current response if larger.
    capacity: usize,
    tick: u64,
    /// id → tick of its last touch.
    pub(super) ticks: HashMap<String, u64>,
    /// (tick, id) in touch order; entries whose tick is stale are skipped.
    pub(super) order: VecDeque<(u64, String)>,
}

impl SeenIds {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            base: capacity.max(1),
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    /// Keeps room for `n` ids (the items of the response being handled), so none of them is
    /// forgotten while the others are touched; back to the base when the feed shrinks.
    pub(super) fn hold_at_least(&mut self, n: usize) {
        self.capacity = self.base.max(n);
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.ticks.contains_key(id)
    }

    /// Marks `id` as seen just now.
    pub(super) fn touch(&mut self, id: &str) {
        self.tick += 1;
        self.ticks.insert(id.to_owned(), self.tick);
        self.order.push_back((self.tick, id.to_owned()));
        while self.ticks.len() > self.capacity {
            let Some((t, old)) = self.order.pop_front() else {
                break;
            };
            if self.ticks.get(&old) == Some(&t) {
                self.ticks.remove(&old);
            }
        }
        if self.order.len() > 2 * self.capacity + 64 {
            self.order.retain(|(t, id)| self.ticks.get(id) == Some(t));
        }
    }

    /// Ids, least recently seen first.
    pub(super) fn to_vec(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(t, id)| self.ticks.get(id) == Some(t))
            .map(|(_, id)| id.clone())
            .collect()
    }
}

impl Poller {
    pub(super) fn load_state(&mut self) -> Result<(), PollError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let Some(bytes) = state.load().map_err(|m| state_error(state, m))? else {
            return Ok(());
        };
        let saved: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| state_error(state, format!("not a poll state: {e}")))?;
        if saved.version != STATE_VERSION {
            return Err(state_error(
                state,
                format!(
                    "expected state version {STATE_VERSION}, found {}",
                    saved.version
                ),
            ));
        }
        self.seen.hold_at_least(saved.seen.len());
        for id in &saved.seen {
            self.seen.touch(id);
        }
        if saved.url == self.url.as_str() {
            self.etag = saved.etag;
            self.last_modified = saved.last_modified;
            self.body_sha256 = saved.body_sha256;
        } else {
            tracing::info!(
                bot = %self.bot, source = %self.source,
                "the poll URL changed since the state was saved; fetching it afresh"
            );
        }
        Ok(())
    }

    pub(super) async fn save_state(&self) -> Result<(), PollError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let saved = StateFile {
            version: STATE_VERSION,
            url: self.url.to_string(),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            body_sha256: self.body_sha256.clone(),
            seen: self.seen.to_vec(),
        };
        let bytes = serde_json::to_vec(&saved)
            .map_err(|e| state_error(state, format!("cannot serialize: {e}")))?;
        state.save(bytes).await.map_err(|m| state_error(state, m))
    }
}

fn state_error(state: &SourceState, message: String) -> PollError {
    PollError::State {
        path: state.describe(),
        message,
    }
}
