//! HTTP polling: GET a URL every interval and emit the items that are new.
//!
//! Each poll sends the last `ETag` as `If-None-Match` and the last `Last-Modified` as
//! `If-Modified-Since`, so an unchanged feed costs a `304` and nothing is emitted. A changed
//! response is split into items (the array at `itemsPath`; without it a top-level array is the
//! list and any other body is one item), and every item whose id (at `idField`) was not seen
//! before is emitted, one event per item. Without `idField`, every item of a changed response
//! is emitted; a `200` whose body is byte-for-byte the one processed last time counts as
//! unchanged, so a server without validators does not cause a flood of repeats.
//!
//! Delivery is at-least-once and nothing is skipped:
//! - an item is marked seen only after the sink took it; when the sink fails, the poll stops
//!   and the rest is emitted on a later poll;
//! - the validators (`ETag`, `Last-Modified`) and the body fingerprint are kept only once every
//!   item of the response was emitted, so a failed poll is never answered by a `304` later;
//!   without `idField`, a poll that stopped part way resumes after the items it emitted when it
//!   gets the same body again (kept in memory only);
//! - seen ids are bounded ([`SEEN_CAPACITY`], the least recently seen are forgotten first)
//!   and, with a state file, persisted atomically after every poll that changed them, so a
//!   restart neither re-emits old items nor misses new ones.
//!
//! An item without a usable id (no value at `idField`, or one that is neither a string nor a
//! number) is identified by a fingerprint of its content instead, so it is emitted once, not on
//! every poll.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use inputbot_api::{bot::PollSource, config::FailureClass};
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Sink;
use crate::{bus::BusError, event::Event, outbound, secrets::Secrets};

/// How many item ids a poller remembers; the least recently seen are forgotten first.
pub const SEEN_CAPACITY: usize = 10_000;

/// The largest response body a poll reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Event type when the spec sets none.
pub const DEFAULT_EVENT_TYPE: &str = "dev.inputbot.poll";

/// Request timeout when the spec sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a poller could not be built or a poll failed. Names URLs, headers and Secret
/// references, never a header value.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// A field of the spec cannot be used.
    #[error("poll source {field}: {message}")]
    Config {
        /// The field, e.g. `interval`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A header's Secret could not be read.
    #[error("poll header {header:?}: cannot read Secret {secret} key {key:?}: {source}")]
    Secret {
        /// Header name.
        header: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: Box<crate::secrets::SecretError>,
    },
    /// A header name or value is not valid in HTTP.
    #[error("poll header {header:?}: {message}")]
    Header {
        /// Header name.
        header: String,
        /// What is wrong (never the value).
        message: String,
    },
    /// The state file could not be read or written.
    #[error("poll state file {path}: {message}")]
    State {
        /// File path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with a status other than 2xx or 304.
    #[error("GET {url} returned HTTP {status}")]
    Status {
        /// The polled URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// No complete response within the timeout.
    #[error("GET {url} timed out after {timeout:?}")]
    Timeout {
        /// The polled URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server could not be reached, or the connection broke.
    #[error("GET {url} failed: {message}")]
    Connection {
        /// The polled URL.
        url: String,
        /// The cause.
        message: String,
    },
    /// The response body is larger than [`MAX_BODY_BYTES`].
    #[error("GET {url}: response body is larger than {limit} bytes")]
    TooLarge {
        /// The polled URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The response body is not JSON.
    #[error("GET {url}: response is not JSON: {message}")]
    NotJson {
        /// The polled URL.
        url: String,
        /// The parser's message.
        message: String,
    },
    /// `itemsPath` does not point at an array.
    #[error("GET {url}: itemsPath {items_path:?} is {found}, expected an array")]
    ItemsNotArray {
        /// The polled URL.
        url: String,
        /// The pointer.
        items_path: String,
        /// What was found instead, e.g. `an object` or `missing`.
        found: &'static str,
    },
    /// The sink did not take an item; the poll stopped and resumes with it next time.
    #[error("GET {url}: emitted {emitted} item(s), then the bus refused one: {source}")]
    Emit {
        /// The polled URL.
        url: String,
        /// Items emitted before the failure (they are marked seen).
        emitted: usize,
        /// Cause.
        #[source]
        source: BusError,
    },
}

impl PollError {
    /// A short name of the error class, for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            PollError::Config { .. } => "config",
            PollError::Secret { .. } => "secret",
            PollError::Header { .. } => "header",
            PollError::State { .. } => "state",
            PollError::Status { .. } => "status",
            PollError::Timeout { .. } => "timeout",
            PollError::Connection { .. } => "connection",
            PollError::TooLarge { .. } => "too_large",
            PollError::NotJson { .. } => "not_json",
            PollError::ItemsNotArray { .. } => "items_not_array",
            PollError::Emit { .. } => "emit",
        }
    }
}

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

/// A bounded set of ids that forgets the least recently seen first.
#[derive(Debug, Default)]
struct SeenIds {
    capacity: usize,
    tick: u64,
    /// id → tick of its last touch.
    ticks: HashMap<String, u64>,
    /// (tick, id) in touch order; entries whose tick is stale are skipped.
    order: VecDeque<(u64, String)>,
}

impl SeenIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ticks.contains_key(id)
    }

    /// Marks `id` as seen just now.
    fn touch(&mut self, id: &str) {
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
    fn to_vec(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(t, id)| self.ticks.get(id) == Some(t))
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// Polls one `poll` source.
pub struct Poller {
    bot: String,
    source: String,
    event_type: String,
    url: Url,
    /// The URL as shown in errors and logs (without a password).
    display_url: String,
    interval: Duration,
    timeout: Duration,
    headers: header::HeaderMap,
    items_path: Option<String>,
    id_field: Option<String>,
    client: reqwest::Client,
    state_path: Option<PathBuf>,
    etag: Option<String>,
    last_modified: Option<String>,
    body_sha256: Option<String>,
    /// Without `idField`: the fingerprint of a body whose emission stopped part way, and how
    /// many of its items were emitted, so that the same body resumes after them.
    partial: Option<(String, usize)>,
    seen: SeenIds,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("bot", &self.bot)
            .field("source", &self.source)
            .field("url", &self.display_url)
            .field("interval", &self.interval)
            .field("seen", &self.seen.ticks.len())
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller for source `source` of bot `bot` (`namespace/name`). Resolves header Secrets
    /// now (an error names the header and the Secret reference, never a value) and, when
    /// `state` is given, loads the seen ids and validators from that file (a missing file is a
    /// fresh start; a file written for another URL keeps its ids but not its validators).
    pub fn new(
        bot: &str,
        source: &str,
        spec: &PollSource,
        secrets: &Secrets,
        client: reqwest::Client,
        state: Option<PathBuf>,
    ) -> Result<Self, PollError> {
        let url = Url::parse(&spec.url).map_err(|e| PollError::Config {
            field: "url",
            message: format!("expected an http or https URL, found {:?}: {e}", spec.url),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PollError::Config {
                field: "url",
                message: format!("expected an http or https URL, found {:?}", spec.url),
            });
        }
        let display_url = outbound::redact_url(&url);
        let interval = spec
            .interval
            .to_std()
            .map_err(|message| PollError::Config {
                field: "interval",
                message,
            })?;
        if interval.is_zero() {
            return Err(PollError::Config {
                field: "interval",
                message: "expected a positive duration, found 0".into(),
            });
        }
        let timeout = match &spec.timeout {
            Some(t) => t.to_std().map_err(|message| PollError::Config {
                field: "timeout",
                message,
            })?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(PollError::Config {
                field: "timeout",
                message: "expected a positive duration, found 0".into(),
            });
        }
        for (field, pointer) in [("itemsPath", &spec.items_path), ("idField", &spec.id_field)] {
            if let Some(p) = pointer
                && !p.is_empty()
                && !p.starts_with('/')
            {
                return Err(PollError::Config {
                    field,
                    message: format!(
                        "expected a JSON pointer such as /items (starting with '/'), found {p:?}"
                    ),
                });
            }
        }

        let mut headers = header::HeaderMap::new();
        for (name, value) in &spec.headers {
            let header_name =
                header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| PollError::Header {
                    header: name.clone(),
                    message: "not a valid HTTP header name".into(),
                })?;
            let (text, sensitive) = match (&value.value, &value.secret_ref) {
                (Some(v), None) => (v.clone(), false),
                (None, Some(r)) => {
                    let v = secrets.get_string(r).map_err(|source| PollError::Secret {
                        header: name.clone(),
                        secret: r.name.clone(),
                        key: r.key.clone(),
                        source: Box::new(source),
                    })?;
                    (v, true)
                }
                _ => {
                    return Err(PollError::Header {
                        header: name.clone(),
                        message: "set exactly one of value or secretRef".into(),
                    });
                }
            };
            let mut header_value =
                header::HeaderValue::from_str(&text).map_err(|_| PollError::Header {
                    header: name.clone(),
                    message: match &value.secret_ref {
                        Some(r) => format!(
                            "the value from Secret {} key {:?} is not a valid HTTP header value",
                            r.name, r.key
                        ),
                        None => "the value is not a valid HTTP header value".into(),
                    },
                })?;
            header_value.set_sensitive(sensitive);
            headers.append(header_name, header_value);
        }

        let mut poller = Self {
            bot: bot.to_owned(),
            source: source.to_owned(),
            event_type: spec
                .event_type
                .clone()
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_owned()),
            url,
            display_url,
            interval,
            timeout,
            headers,
            items_path: spec.items_path.clone(),
            id_field: spec.id_field.clone(),
            client,
            state_path: state,
            etag: None,
            last_modified: None,
            body_sha256: None,
            partial: None,
            seen: SeenIds::new(SEEN_CAPACITY),
        };
        poller.load_state()?;
        Ok(poller)
    }

    /// The poll interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many item ids are remembered.
    pub fn seen_len(&self) -> usize {
        self.seen.ticks.len()
    }

    fn load_state(&mut self) -> Result<(), PollError> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(state_error(path, format!("cannot read: {e}"))),
        };
        let state: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| state_error(path, format!("not a poll state file: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(state_error(
                path,
                format!(
                    "expected state version {STATE_VERSION}, found {}",
                    state.version
                ),
            ));
        }
        for id in &state.seen {
            self.seen.touch(id);
        }
        if state.url == self.url.as_str() {
            self.etag = state.etag;
            self.last_modified = state.last_modified;
            self.body_sha256 = state.body_sha256;
        } else {
            tracing::info!(
                bot = %self.bot, source = %self.source,
                "the poll URL changed since the state file was written; fetching it afresh"
            );
        }
        Ok(())
    }

    async fn save_state(&self) -> Result<(), PollError> {
        let Some(path) = self.state_path.clone() else {
            return Ok(());
        };
        let state = StateFile {
            version: STATE_VERSION,
            url: self.url.to_string(),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            body_sha256: self.body_sha256.clone(),
            seen: self.seen.to_vec(),
        };
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| state_error(&path, format!("cannot serialize: {e}")))?;
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            write_atomically(&path, &bytes).map_err(|e| state_error(&path, e.to_string()))
        })
        .await
        .map_err(|e| PollError::State {
            path: shown,
            message: format!("the writer task failed: {e}"),
        })?
    }

    /// One poll: a GET with the configured headers and the validators of the last complete
    /// response (`If-None-Match`, `If-Modified-Since`). `304` (and `204`) emit nothing; any
    /// other 2xx is parsed as JSON and each new item is emitted. Returns how many were emitted.
    pub async fn poll_once(&mut self, sink: &dyn Sink) -> Result<usize, PollError> {
        let mut request = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(etag) = &self.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &self.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, lm);
        }
        let response = request.send().await.map_err(|e| self.request_error(e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED || status == StatusCode::NO_CONTENT {
            return Ok(0);
        }
        if !status.is_success() {
            return Err(PollError::Status {
                url: self.display_url.clone(),
                status: status.as_u16(),
            });
        }
        let etag = header_text(response.headers(), header::ETAG);
        let last_modified = header_text(response.headers(), header::LAST_MODIFIED);

        let (body, complete) = outbound::read_limited(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| self.request_error(e))?;
        if !complete {
            return Err(PollError::TooLarge {
                url: self.display_url.clone(),
                limit: MAX_BODY_BYTES,
            });
        }
        let fingerprint = hex::encode(Sha256::digest(&body));
        if self.id_field.is_none() && self.body_sha256.as_deref() == Some(fingerprint.as_str()) {
            // The same body as the last fully processed one: nothing changed.
            return Ok(0);
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| PollError::NotJson {
            url: self.display_url.clone(),
            message: e.to_string(),
        })?;
        let items = self.items(json)?;

        // Without ids, a body whose emission stopped part way resumes after what was emitted.
        let skip = match &self.partial {
            Some((f, n)) if self.id_field.is_none() && *f == fingerprint => *n,
            _ => 0,
        };
        let mut emitted = 0;
        let mut changed = false;
        let mut failure = None;
        let mut without_id = 0;
        for item in items.into_iter().skip(skip) {
            let id = match &self.id_field {
                Some(pointer) => match item.pointer(pointer) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                },
                None => None,
            };
            // The key the item is remembered by: its id, or a fingerprint of its content.
            let key = match (&self.id_field, &id) {
                (None, _) => None,
                (Some(_), Some(id)) => Some(id.clone()),
                (Some(_), None) => Some(format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(item.to_string().as_bytes()))
                )),
            };
            if let Some(key) = &key {
                if self.seen.contains(key) {
                    // Still in the feed: keep it from being forgotten.
                    self.seen.touch(key);
                    continue;
                }
                if id.is_none() {
                    without_id += 1;
                }
            }
            let mut event = Event::new(&self.bot, &self.source, &self.event_type, item);
            event.subject = id;
            match sink.emit(event).await {
                Ok(()) => {
                    emitted += 1;
                    if let Some(key) = &key {
                        self.seen.touch(key);
                        changed = true;
                    }
                }
                Err(source) => {
                    failure = Some(source);
                    break;
                }
            }
        }
        if without_id > 0 {
            tracing::warn!(
                bot = %self.bot, source = %self.source, url = %self.display_url,
                id_field = self.id_field.as_deref().unwrap_or_default(),
                items = without_id,
                "items without a string or number id at idField; deduplicating them by content"
            );
        }
        if failure.is_none() {
            // Every item of this response is handled: keep its validators.
            changed |= self.etag != etag || self.last_modified != last_modified;
            self.etag = etag;
            self.last_modified = last_modified;
            if self.id_field.is_none() {
                changed |= self.body_sha256.as_deref() != Some(fingerprint.as_str());
                self.body_sha256 = Some(fingerprint);
                self.partial = None;
            }
        } else if self.id_field.is_none() {
            self.partial = Some((fingerprint, skip + emitted));
        }
        if changed {
            self.save_state().await?;
        }
        match failure {
            None => Ok(emitted),
            Some(source) => Err(PollError::Emit {
                url: self.display_url.clone(),
                emitted,
                source,
            }),
        }
    }

    /// The items of a response.
    fn items(&self, json: Value) -> Result<Vec<Value>, PollError> {
        match &self.items_path {
            None => Ok(match json {
                Value::Array(items) => items,
                other => vec![other],
            }),
            Some(pointer) => {
                let mut json = json;
                match json.pointer_mut(pointer).map(Value::take) {
                    Some(Value::Array(items)) => Ok(items),
                    other => Err(PollError::ItemsNotArray {
                        url: self.display_url.clone(),
                        items_path: pointer.clone(),
                        found: match other {
                            None => "missing",
                            Some(Value::Null) => "null",
                            Some(Value::Bool(_)) => "a boolean",
                            Some(Value::Number(_)) => "a number",
                            Some(Value::String(_)) => "a string",
                            Some(Value::Object(_)) => "an object",
                            Some(Value::Array(_)) => "an array",
                        },
                    }),
                }
            }
        }
    }

    /// A failed exchange, classified as every outbound call is ([`outbound::failure_class`]);
    /// a poll has no use for "the request's fault", so that counts as a connection failure.
    fn request_error(&self, e: reqwest::Error) -> PollError {
        match outbound::failure_class(&e) {
            FailureClass::Timeout => PollError::Timeout {
                url: self.display_url.clone(),
                timeout: self.timeout,
            },
            _ => PollError::Connection {
                url: self.display_url.clone(),
                message: outbound::chain(&e.without_url()),
            },
        }
    }

    /// Polls every interval until `shutdown`. After a failure the next poll waits
    /// `interval × 2^n` (n failures in a row), at most ten intervals. A warning is logged when
    /// a failure streak starts or its error changes, and an info line when polls succeed again.
    /// A poll in flight when `shutdown` fires is finished (it is bounded by the timeout and
    /// the bus), so what it emitted is remembered.
    pub async fn run(mut self, sink: Arc<dyn Sink>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.poll_once(sink.as_ref()).await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(
                            bot = %self.bot, source = %self.source, url = %self.display_url,
                            failures, "polling works again"
                        );
                    }
                    if n > 0 {
                        tracing::debug!(bot = %self.bot, source = %self.source, emitted = n, "polled");
                    }
                    failures = 0;
                    last_error = None;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let message = e.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(
                            bot = %self.bot, source = %self.source, class = e.class(),
                            failures, error = %message, "poll failed; backing off"
                        );
                    } else {
                        tracing::debug!(
                            bot = %self.bot, source = %self.source, failures,
                            error = %message, "poll failed again"
                        );
                    }
                    last_error = Some(message);
                }
            }
            let wait = backoff(self.interval, failures);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The wait before the next poll after `failures` failures in a row.
fn backoff(interval: Duration, failures: u32) -> Duration {
    crate::delivery::retry::exponential_backoff(interval, failures, interval.saturating_mul(10))
}

fn header_text(headers: &header::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn state_error(path: &Path, message: String) -> PollError {
    PollError::State {
        path: path.display().to_string(),
        message,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash leaves either the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "poll-state".into());
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::{
        Router,
        http::{HeaderMap, StatusCode},
        response::{IntoResponse, Response},
        routing::get,
    };
    use futures::future::BoxFuture;
    use inputbot_api::common::{HeaderValue as SpecHeader, SecretKeyRef};
    use serde_json::json;

    use super::*;
    use crate::sources::MemorySink;

    /// What the test server answers: given the request headers, a response.
    type Handler = Arc<dyn Fn(&HeaderMap) -> Response + Send + Sync>;

    /// A local HTTP server on 127.0.0.1 serving `handler` at `/feed`; returns the feed URL.
    async fn serve(handler: Handler) -> String {
        let app = Router::new().route(
            "/feed",
            get(move |headers: HeaderMap| {
                let handler = handler.clone();
                async move { handler(&headers) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://{addr}/feed")
    }

    fn json_response(body: &Value) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    fn spec(url: &str) -> PollSource {
        PollSource {
            url: url.to_owned(),
            interval: "1s".into(),
            headers: Default::default(),
            items_path: None,
            id_field: None,
            timeout: Some("2s".into()),
            event_type: None,
        }
    }

    fn no_secrets() -> Secrets {
        Secrets::Mounted {
            dir: PathBuf::from("/nonexistent-inputbot-test-secrets"),
        }
    }

    fn poller(spec: &PollSource, state: Option<PathBuf>) -> Poller {
        Poller::new(
            "team-a/bot",
            "feed",
            spec,
            &no_secrets(),
            reqwest::Client::new(),
            state,
        )
        .unwrap()
    }

    fn subjects(sink: &MemorySink) -> Vec<String> {
        sink.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.subject.clone().unwrap_or_default())
            .collect()
    }

    /// A sink that takes `ok` events, then refuses every further one.
    struct RefusingSink {
        ok: usize,
        inner: MemorySink,
    }

    impl Sink for RefusingSink {
        fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
            let mut events = self.inner.events.lock().unwrap();
            if events.len() >= self.ok {
                return Box::pin(async {
                    Err(BusError::Full {
                        topic: "raw".into(),
                        waited: Duration::from_millis(1),
                    })
                });
            }
            events.push(event);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn dedupes_items_across_polls_by_id() {
        let body = Arc::new(Mutex::new(json!([{"id": "a"}, {"id": "b"}, {"id": "c"}])));
        let b = body.clone();
        let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
        let mut s = spec(&url);
        s.id_field = Some("/id".into());
        let mut p = poller(&s, None);
        let sink = MemorySink::default();

        assert_eq!(p.poll_once(&sink).await.unwrap(), 3);
        *body.lock().unwrap() = json!([{"id": "d"}, {"id": "a"}, {"id": "b"}, {"id": "c"}]);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(subjects(&sink), ["a", "b", "c", "d"]);
        let events = sink.events.lock().unwrap();
        assert_eq!(events[3].ty, DEFAULT_EVENT_TYPE);
        assert_eq!(events[3].data, json!({"id": "d"}));
        assert_eq!(events[3].bot, "team-a/bot");
        assert_eq!(events[3].bot_source, "feed");
    }

    #[tokio::test]
    async fn honours_etag_and_emits_nothing_on_304() {
        let requests = Arc::new(AtomicUsize::new(0));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (r, nm) = (requests.clone(), not_modified.clone());
        let url = serve(Arc::new(move |h| {
            r.fetch_add(1, Ordering::SeqCst);
            if h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
                nm.fetch_add(1, Ordering::SeqCst);
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let mut resp = json_response(&json!([{"n": 1}, {"n": 2}]));
            resp.headers_mut()
                .insert(header::ETAG, "\"v1\"".parse().unwrap());
            resp
        }))
        .await;
        let mut s = spec(&url);
        s.event_type = Some("com.example.status".into());
        let mut p = poller(&s, None);
        let sink = MemorySink::default();

        assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert_eq!(not_modified.load(Ordering::SeqCst), 2);
        let events = sink.events.lock().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].ty, "com.example.status");
        assert_eq!(events[0].subject, None);
    }

    #[tokio::test]
    async fn honours_last_modified_with_if_modified_since() {
        const STAMP: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
        let not_modified = Arc::new(AtomicUsize::new(0));
        let nm = not_modified.clone();
        let url = serve(Arc::new(move |h| {
            if h.get("if-modified-since").and_then(|v| v.to_str().ok()) == Some(STAMP) {
                nm.fetch_add(1, Ordering::SeqCst);
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let mut resp = json_response(&json!({"status": "ok"}));
            resp.headers_mut()
                .insert(header::LAST_MODIFIED, STAMP.parse().unwrap());
            resp
        }))
        .await;
        let mut p = poller(&spec(&url), None);
        let sink = MemorySink::default();

        assert_eq!(
            p.poll_once(&sink).await.unwrap(),
            1,
            "a non-array body is one item"
        );
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(not_modified.load(Ordering::SeqCst), 1);
        assert_eq!(sink.events.lock().unwrap()[0].data, json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn an_unchanged_body_without_validators_or_ids_is_not_emitted_again() {
        let body = Arc::new(Mutex::new(json!([1, 2])));
        let b = body.clone();
        let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
        let mut p = poller(&spec(&url), None);
        let sink = MemorySink::default();

        assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        *body.lock().unwrap() = json!([1, 2, 3]);
        assert_eq!(
            p.poll_once(&sink).await.unwrap(),
            3,
            "without idField every item of a changed response is emitted"
        );
    }

    #[tokio::test]
    async fn follows_items_path_and_id_field_pointers_with_numeric_ids() {
        let body = Arc::new(Mutex::new(json!({
            "data": {"incidents": [{"meta": {"id": 1}, "t": "x"}, {"meta": {"id": 2}, "t": "y"}]}
        })));
        let b = body.clone();
        let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
        let mut s = spec(&url);
        s.items_path = Some("/data/incidents".into());
        s.id_field = Some("/meta/id".into());
        let mut p = poller(&s, None);
        let sink = MemorySink::default();

        assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
        body.lock().unwrap()["data"]["incidents"]
            .as_array_mut()
            .unwrap()
            .push(json!({"meta": {"id": 3}, "t": "z"}));
        assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
        assert_eq!(subjects(&sink), ["1", "2", "3"]);
        assert_eq!(
            sink.events.lock().unwrap()[2].data,
            json!({"meta": {"id": 3}, "t": "z"})
        );
    }

    #[tokio::test]
    async fn items_without_an_id_are_emitted_once() {
        let url = serve(Arc::new(|_| {
            json_response(&json!([{"id": "a"}, {"other": true}, {"id": {"nested": 1}}]))
        }))
        .await;
        let mut s = spec(&url);
        s.id_field = Some("/id".into());
        let mut p = poller(&s, None);
        let sink = MemorySink::default();

        assert_eq!(p.poll_once(&sink).await.unwrap(), 3);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(subjects(&sink), ["a", "", ""]);
    }

    #[tokio::test]
    async fn a_non_array_at_items_path_is_a_clear_error() {
        let url = serve(Arc::new(|_| json_response(&json!({"items": {"a": 1}})))).await;
        let mut s = spec(&url);
        s.items_path = Some("/items".into());
        let mut p = poller(&s, None);
        let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                PollError::ItemsNotArray {
                    found: "an object",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&url) && text.contains("\"/items\"") && text.contains("an array"));

        s.items_path = Some("/missing".into());
        let mut p = poller(&s, None);
        let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                PollError::ItemsNotArray {
                    found: "missing",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_a_clear_error() {
        let url = serve(Arc::new(|_| "<html>oops</html>".into_response())).await;
        let mut p = poller(&spec(&url), None);
        let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
        assert!(matches!(&err, PollError::NotJson { .. }), "{err:?}");
        assert!(err.to_string().contains(&url));
    }

    #[tokio::test]
    async fn a_server_error_fails_the_poll_and_a_later_poll_succeeds() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = failing.clone();
        let url = serve(Arc::new(move |_| {
            if f.load(Ordering::SeqCst) {
                (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
            } else {
                json_response(&json!([{"id": 7}]))
            }
        }))
        .await;
        let mut s = spec(&url);
        s.id_field = Some("/id".into());
        let mut p = poller(&s, None);
        let sink = MemorySink::default();

        let err = p.poll_once(&sink).await.unwrap_err();
        assert!(
            matches!(&err, PollError::Status { status: 500, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        failing.store(false, Ordering::SeqCst);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
        assert_eq!(subjects(&sink), ["7"]);
    }

    #[tokio::test]
    async fn a_slow_server_times_out_and_an_absent_one_is_a_connection_error() {
        let app = Router::new().route(
            "/feed",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "[]"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let mut s = spec(&format!("http://{addr}/feed"));
        s.timeout = Some("200ms".into());
        let err = poller(&s, None)
            .poll_once(&MemorySink::default())
            .await
            .unwrap_err();
        assert!(matches!(&err, PollError::Timeout { .. }), "{err:?}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = poller(&spec(&format!("http://127.0.0.1:{port}/feed")), None)
            .poll_once(&MemorySink::default())
            .await
            .unwrap_err();
        assert!(matches!(&err, PollError::Connection { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_state_file_survives_a_new_poller() {
        let requests_with_etag = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(json!([{"id": "a"}, {"id": "b"}])));
        let (b, e) = (body.clone(), requests_with_etag.clone());
        let url = serve(Arc::new(move |h| {
            if h.contains_key("if-none-match") {
                e.fetch_add(1, Ordering::SeqCst);
            }
            // A server whose ETag never matches: the ids alone must prevent re-emits.
            let mut resp = json_response(&b.lock().unwrap());
            resp.headers_mut()
                .insert(header::ETAG, "\"x\"".parse().unwrap());
            resp
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/feed.json");
        let mut s = spec(&url);
        s.id_field = Some("/id".into());
        let sink = MemorySink::default();

        let mut first = poller(&s, Some(state.clone()));
        assert_eq!(first.poll_once(&sink).await.unwrap(), 2);
        drop(first);
        assert!(state.exists());

        let mut second = poller(&s, Some(state.clone()));
        assert_eq!(second.seen_len(), 2);
        assert_eq!(
            second.poll_once(&sink).await.unwrap(),
            0,
            "no re-emit after a restart"
        );
        assert_eq!(
            requests_with_etag.load(Ordering::SeqCst),
            1,
            "the ETag was restored"
        );
        body.lock()
            .unwrap()
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "c"}));
        assert_eq!(
            second.poll_once(&sink).await.unwrap(),
            1,
            "new items are not missed"
        );
        drop(second);

        let mut third = poller(&s, Some(state.clone()));
        assert_eq!(third.poll_once(&sink).await.unwrap(), 0);
        assert_eq!(subjects(&sink), ["a", "b", "c"]);

        std::fs::write(&state, "not json").unwrap();
        let err = Poller::new(
            "team-a/bot",
            "feed",
            &s,
            &no_secrets(),
            reqwest::Client::new(),
            Some(state),
        )
        .unwrap_err();
        assert!(matches!(&err, PollError::State { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_emit_failure_does_not_mark_items_seen() {
        let url = serve(Arc::new(|h| {
            if h.contains_key("if-none-match") {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let mut resp = json_response(&json!([{"id": "a"}, {"id": "b"}, {"id": "c"}]));
            resp.headers_mut()
                .insert(header::ETAG, "\"v1\"".parse().unwrap());
            resp
        }))
        .await;
        let mut s = spec(&url);
        s.id_field = Some("/id".into());
        let mut p = poller(&s, None);

        let refusing = RefusingSink {
            ok: 1,
            inner: MemorySink::default(),
        };
        let err = p.poll_once(&refusing).await.unwrap_err();
        assert!(
            matches!(&err, PollError::Emit { emitted: 1, .. }),
            "{err:?}"
        );
        assert_eq!(subjects(&refusing.inner), ["a"]);

        // The ETag of the failed poll was not kept, so the retry gets the items again.
        let sink = MemorySink::default();
        assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
        assert_eq!(subjects(&sink), ["b", "c"]);
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_emit_failure_without_ids_resumes_after_what_was_emitted() {
        let url = serve(Arc::new(|_| json_response(&json!([1, 2, 3])))).await;
        let mut p = poller(&spec(&url), None);
        let refusing = RefusingSink {
            ok: 2,
            inner: MemorySink::default(),
        };
        assert!(p.poll_once(&refusing).await.is_err());
        let sink = MemorySink::default();
        assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
        assert_eq!(sink.events.lock().unwrap()[0].data, json!(3));
        assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_header_from_a_secret_is_sent() {
        let url = serve(Arc::new(|h| {
            let token = h.get("authorization").and_then(|v| v.to_str().ok());
            let plain = h.get("x-plain").and_then(|v| v.to_str().ok());
            if token == Some("Bearer s3cr3t") && plain == Some("yes") {
                json_response(&json!([{"ok": true}]))
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("feed-token")).unwrap();
        std::fs::write(dir.path().join("feed-token/header"), "Bearer s3cr3t\n").unwrap();
        let secrets = Secrets::Mounted {
            dir: dir.path().to_path_buf(),
        };
        let mut s = spec(&url);
        s.headers.insert(
            "Authorization".into(),
            SpecHeader {
                value: None,
                secret_ref: Some(SecretKeyRef {
                    name: "feed-token".into(),
                    key: "header".into(),
                }),
            },
        );
        s.headers.insert(
            "X-Plain".into(),
            SpecHeader {
                value: Some("yes".into()),
                secret_ref: None,
            },
        );
        let mut p = Poller::new(
            "team-a/bot",
            "feed",
            &s,
            &secrets,
            reqwest::Client::new(),
            None,
        )
        .unwrap();
        assert_eq!(p.poll_once(&MemorySink::default()).await.unwrap(), 1);
        assert!(!format!("{p:?}").contains("s3cr3t"));

        // A missing Secret names the header and the reference.
        s.headers.get_mut("Authorization").unwrap().secret_ref = Some(SecretKeyRef {
            name: "absent".into(),
            key: "token".into(),
        });
        let err = Poller::new(
            "team-a/bot",
            "feed",
            &s,
            &secrets,
            reqwest::Client::new(),
            None,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Authorization") && text.contains("absent") && text.contains("token"),
            "{text}"
        );

        // An invalid value names the reference, not the value.
        std::fs::write(dir.path().join("feed-token/header"), "bad\u{1}value").unwrap();
        s.headers.get_mut("Authorization").unwrap().secret_ref = Some(SecretKeyRef {
            name: "feed-token".into(),
            key: "header".into(),
        });
        let err = Poller::new(
            "team-a/bot",
            "feed",
            &s,
            &secrets,
            reqwest::Client::new(),
            None,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("feed-token") && !text.contains("bad"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn run_polls_until_shutdown() {
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        let url = serve(Arc::new(move |_| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            json_response(&json!([{"id": n}]))
        }))
        .await;
        let mut s = spec(&url);
        s.interval = "20ms".into();
        s.id_field = Some("/id".into());
        let p = poller(&s, None);
        let sink = Arc::new(MemorySink::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(p.run(sink.clone(), shutdown.clone()));
        for _ in 0..200 {
            if sink.events.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run stops on shutdown")
            .unwrap();
        assert!(sink.events.lock().unwrap().len() >= 3);
    }

    #[test]
    fn backoff_doubles_and_is_capped_at_ten_intervals() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), i * 2);
        assert_eq!(backoff(i, 3), i * 8);
        assert_eq!(backoff(i, 4), i * 10);
        assert_eq!(backoff(i, u32::MAX), i * 10);
    }

    #[test]
    fn seen_ids_are_bounded_and_forget_the_least_recently_seen() {
        let mut seen = SeenIds::new(3);
        for id in ["a", "b", "c"] {
            seen.touch(id);
        }
        seen.touch("a");
        seen.touch("d");
        assert!(!seen.contains("b"));
        assert_eq!(seen.to_vec(), ["c", "a", "d"]);
        for i in 0..1000 {
            seen.touch(&i.to_string());
        }
        assert_eq!(seen.ticks.len(), 3);
        assert!(seen.order.len() <= 2 * 3 + 64);
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        let mut s = spec("ftp://127.0.0.1/x");
        let err =
            Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
        assert!(matches!(err, PollError::Config { field: "url", .. }));
        s.url = "http://127.0.0.1/x".into();
        s.id_field = Some("id".into());
        let err =
            Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
        assert!(matches!(
            err,
            PollError::Config {
                field: "idField",
                ..
            }
        ));
        s.id_field = None;
        s.interval = "0s".into();
        let err =
            Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
        assert!(matches!(
            err,
            PollError::Config {
                field: "interval",
                ..
            }
        ));
    }
}
