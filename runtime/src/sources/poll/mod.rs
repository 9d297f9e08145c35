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
//! - seen ids are bounded ([`SEEN_CAPACITY`], the least recently seen are forgotten first),
//!   but never below the length of the current response, so a long feed is not re-emitted;
//!   with a state file they are persisted atomically after every poll that changed them, so a
//!   restart neither re-emits old items nor misses new ones.
//!
//! An item without a usable id (no value at `idField`, or one that is neither a string nor a
//! number) is identified by a fingerprint of its content instead, so it is emitted once, not on//!
//! ```text
//!  poll/
//!   mod.rs    the Poller: one conditional GET, items → events, the loop with backoff
//!   error.rs  PollError and its stable class labels
//!   state.rs  seen ids (bounded, least recently seen forgotten first) and the state file
//! ```
//!
//! Requests go through [`crate::outbound`] (size-limited reads, failure classification, URL
//! redaction), like every other outbound call.

mod error;
mod state;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use inputbot_api::{bot::PollSource, config::FailureClass};
use reqwest::{StatusCode, Url, header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use self::error::PollError;
use self::state::SeenIds;
use super::{Sink, state::SourceState};
use crate::{bus::kafka::dedupe, event::Event, outbound, secrets::Secrets};

/// How many item ids a poller remembers; the least recently seen are forgotten first.
pub const SEEN_CAPACITY: usize = 10_000;

/// The largest response body a poll reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Event type when the spec sets none.
pub const DEFAULT_EVENT_TYPE: &str = "dev.inputbot.poll";

/// How long a re-emitted item counts as a duplicate downstream.
pub const DEDUPE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// Request timeout when the spec sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
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
    oauth2: Option<outbound::OAuth2>,
    items_path: Option<String>,
    id_field: Option<String>,
    client: reqwest::Client,
    state: Option<SourceState>,
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
        state: Option<SourceState>,
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

        let oauth2 = spec
            .oauth2
            .as_ref()
            .map(|o| outbound::OAuth2::new(o, secrets, "oauth2", client.clone()))
            .transpose()
            .map_err(|e| PollError::OAuth2Config(e.to_string()))?;
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
            oauth2,
            items_path: spec.items_path.clone(),
            id_field: spec.id_field.clone(),
            client,
            state,
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

    /// One poll: a GET with the configured headers and the validators of the last complete
    /// response (`If-None-Match`, `If-Modified-Since`). `304` (and `204`) emit nothing; any
    /// other 2xx is parsed as JSON and each new item is emitted. Returns how many were emitted.
    pub async fn poll_once(&mut self, sink: &dyn Sink) -> Result<usize, PollError> {
        let mut response = self.get().await?;
        // OAuth2: a refused token is replaced once and the poll sent once more.
        if response.0.status() == StatusCode::UNAUTHORIZED
            && let (Some(oauth), Some(token)) = (&self.oauth2, &response.1)
        {
            oauth.invalidate(token);
            response = self.get().await?;
        }
        let response = response.0;
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
        if self.id_field.is_some() {
            self.seen.hold_at_least(items.len());
        }
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
            // Emitted again (a restart between the emit and the state save, a forgotten id
            // back in the feed), the item is still one event downstream.
            if let Some(key) = &key {
                dedupe::mark(&mut event, "poll", key, chrono::Utc::now() + DEDUPE_WINDOW);
            }
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
    /// One conditional GET, with a token when the source has OAuth2 (returned too, so that a
    /// `401` can drop it).
    async fn get(
        &self,
    ) -> Result<(reqwest::Response, Option<Arc<outbound::oauth2::Token>>), PollError> {
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
        let token = match &self.oauth2 {
            Some(oauth) => Some(
                oauth
                    .token()
                    .await
                    .map_err(|e| PollError::Token { message: e.message })?,
            ),
            None => None,
        };
        if let Some(token) = &token {
            request = request.header(header::AUTHORIZATION, token.authorization());
        }
        let response = request.send().await.map_err(|e| self.request_error(e))?;
        Ok((response, token))
    }

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
