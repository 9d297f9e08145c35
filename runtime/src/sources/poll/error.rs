//! Why a poller could not be built or a poll failed, with a stable class label per variant
//! for logs and metrics.

use std::time::Duration;

use crate::bus::BusError;

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
    /// The OAuth2 block cannot be used (its Secrets, its URL).
    #[error("poll source {0}")]
    OAuth2Config(String),
    /// No OAuth2 token could be had.
    #[error("poll source: {message}")]
    Token {
        /// Why (names the token URL, never a credential).
        message: String,
    },
    /// The saved state could not be read or written.
    #[error("poll state {path}: {message}")]
    State {
        /// The state file, or the state topic and key.
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
    /// The response body is larger than [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES).
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
            PollError::OAuth2Config(_) => "config",
            PollError::Token { .. } => "oauth2",
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
