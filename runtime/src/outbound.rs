//! Outbound HTTP, the one place every call out of the runtime goes through: the http, slack,
//! teams and sms actions, the enrich and ai steps, the dead-letter notice and the poll source.
//!
//! It owns what they must all do the same way:
//! - [`send`] / [`send_request`] (and [`exchange`], which hands back any answer): one
//!   exchange under one timeout (connect, request, response body), with every failure
//!   classified for the retry policy ([`failure_class`]): timeout → [`FailureClass::Timeout`];
//!   cannot connect, connection broke → [`FailureClass::Connection`]; non-2xx →
//!   [`FailureClass::Status`] with [`Retry-After`](parse_retry_after); a request that cannot be
//!   built, too many redirects, or a body over the limit → [`FailureClass::Other`];
//! - [`read_limited`]: response bodies are read up to a limit, so memory stays bounded;
//! - [`redact_url`]: the one rule for showing a URL in a message, a log or `Debug` output —
//!   without query, fragment, user name and password, any of which may carry a credential;
//! - [`client`]: the one HTTP client, whose redirect policy follows a redirect only on the same
//!   origin (scheme, host and port), so configured headers — secret ones included — never
//!   reach another host, nor the same host over plain HTTP; another origin's `3xx` is the
//!   answer (a [`FailureClass::Status`]);
//! - [`render_url`]: URL templates, each hole percent-encoded as one path segment and `.` or
//!   `..` refused, so an event cannot move the request elsewhere in the path;
//! - [`resolve_headers`]: configured headers, literal or from Secrets (marked sensitive);
//! - the message helpers ([`chain`], [`one_line`], [`human`]) that keep errors on one line and
//!   free of URLs;
//! - [`oauth2`]: OAuth2 client credentials — the token cache, its single-flight fetch, and
//!   [`send_request_with`], which refreshes the token once on a `401` and sends once more.

pub mod oauth2;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::{HeaderMap, HeaderName, HeaderValue, header::RETRY_AFTER};
use inputbot_api::{
    common::Headers,
    config::FailureClass,
    expr::{Activation, Template},
};

use crate::{
    delivery::AttemptError,
    secrets::{FieldError, Secrets},
};

pub use self::oauth2::{OAuth2, send_request_with};

/// [`FailureClass::Other`] (memory stays bounded).
pub const MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;
/// How much of an error response body [`send`] reads (for the message).
pub const ERROR_BODY_BYTES: usize = 4096;
/// Characters of an error response body quoted in the message.
pub const ERROR_BODY_CHARS: usize = 200;

/// Redirects followed at most, on the same origin.
pub const MAX_REDIRECTS: usize = 5;

/// The runtime's HTTP client: same-origin redirects only (see the module docs).
pub fn client() -> reqwest::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if attempt.url().origin() == first.origin() {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("inputbot/", env!("CARGO_PKG_VERSION")))
        .redirect(policy)
        .build()
}

/// Renders a URL template: each hole percent-encoded as one path segment; a hole that
/// renders as `.` or `..` (which would move the request up or along the path) is refused.
pub fn render_url(template: &Template, vars: &Activation) -> Result<String, String> {
    let dot_segment = std::cell::Cell::new(false);
    let url = template.render_with(vars, |s| {
        if s == "." || s == ".." {
            dot_segment.set(true);
        }
        urlencoding::encode(s).into_owned()
    })?;
    if dot_segment.get() {
        return Err(
            "a template hole rendered as `.` or `..`, which would move the request in the URL path"
                .into(),
        );
    }
    Ok(url)
}

/// Builds and sends `request`: the form used by the enrich step and the dead-letter notice.
///
/// Sends `request` with `timeout` over the whole exchange (connect, request, response body) and
/// classifies failures: timeout → [`FailureClass::Timeout`]; connect and I/O errors →
/// [`FailureClass::Connection`]; a non-2xx answer → [`FailureClass::Status`]`(code)` with
/// `retry_after` from `Retry-After` (delta-seconds or HTTP-date) and the message
/// `HTTP 503 from <method> <url without query>: <first 200 characters of the body>`; a request
/// that cannot be built, too many redirects or a 2xx body over [`MAX_RESPONSE_BYTES`] →
/// [`FailureClass::Other`]. When `what` is not empty, every message starts with `<what>: `
/// (e.g. `enrich customer: HTTP 503 from GET http://…`).
///
/// Returns the status, the response headers and the body of a 2xx answer.
pub async fn send(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
    timeout: Duration,
    what: &str,
) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    let request = request.build().map_err(|e| {
        AttemptError::new(
            FailureClass::Other,
            format!(
                "{prefix}cannot build the request: {}",
                chain(&e.without_url())
            ),
        )
    })?;
    let target = format!("{} {}", request.method(), redact_url(request.url()));
    send_request(client, request, timeout, &prefix, &target).await
}

/// Resolves `Headers` (literal or Secret) into a HeaderMap. Errors name the header
/// (`<field>.<name>`), never its value; values read from Secrets are marked sensitive.
pub fn resolve_headers(
    headers: &Headers,
    secrets: &Secrets,
    field: &str,
) -> Result<HeaderMap, FieldError> {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let here = format!("{field}.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            FieldError::invalid(
                &here,
                "not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            )
        })?;
        let value = match (&value.value, &value.secret_ref) {
            (Some(literal), None) => HeaderValue::from_str(literal).map_err(|_| {
                FieldError::invalid(
                    &here,
                    "the value is not a valid header value (visible ASCII characters and spaces only)",
                )
            })?,
            (None, Some(secret)) => {
                let text = secrets.get_string(secret).map_err(|error| FieldError::Secret {
                    field: format!("{here}.secretRef"),
                    error,
                })?;
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    FieldError::invalid(
                        format!("{here}.secretRef"),
                        format!(
                            "{} holds a value that is not a valid header value (visible ASCII characters and spaces only)",
                            secrets.label(secret)
                        ),
                    )
                })?;
                value.set_sensitive(true);
                value
            }
            _ => return Err(FieldError::invalid(&here, "set exactly one of value or secretRef")),
        };
        out.append(header, value);
    }
    Ok(out)
}

/// Parses a `Retry-After` value: delta-seconds (`7`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, a date in the past meaning zero).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Sends a built request; `target` names it in messages (`POST http://host/path`, or a label
/// when the URL itself is a credential).
pub async fn send_request(
    client: &reqwest::Client,
    request: reqwest::Request,
    timeout: Duration,
    prefix: &str,
    target: &str,
) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
    let answer = exchange(client, request, timeout, prefix, target).await?;
    if !(200..300).contains(&answer.status) {
        return Err(answer.status_error(prefix, target, &preview(&answer.body)));
    }
    if !answer.complete {
        return Err(AttemptError::new(
            FailureClass::Other,
            format!(
                "{prefix}the answer from {target} is larger than {} MiB",
                MAX_RESPONSE_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok((answer.status, answer.headers, answer.body))
}

/// What the target answered, whatever the status.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body: up to [`MAX_RESPONSE_BYTES`] of a 2xx, [`ERROR_BODY_BYTES`] of another status.
    pub body: Bytes,
    /// Whether the whole body was read.
    pub complete: bool,
}

impl Answer {
    /// The error for a non-2xx answer: [`FailureClass::Status`] with the target's
    /// `Retry-After`, and the message `<prefix>HTTP <code> from <target><detail>`.
    pub fn status_error(&self, prefix: &str, target: &str, detail: &str) -> AttemptError {
        let code = self.status;
        let mut error =
            AttemptError::status(code, format!("{prefix}HTTP {code} from {target}{detail}"));
        if let Some(after) = self.retry_after() {
            error = error.with_retry_after(after);
        }
        error
    }

    /// The `Retry-After` the target sent, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    }
}

/// One exchange under `timeout` (connect, request, response body), whatever the status: for
/// callers that read an error answer themselves (the sms action reads Twilio's error codes).
/// Timeouts, connection and request failures are classified as in [`send_request`].
pub async fn exchange(
    client: &reqwest::Client,
    mut request: reqwest::Request,
    timeout: Duration,
    prefix: &str,
    target: &str,
) -> Result<Answer, AttemptError> {
    *request.timeout_mut() = Some(timeout);
    let exchange = async {
        let response = client.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let limit = if status.is_success() {
            MAX_RESPONSE_BYTES
        } else {
            ERROR_BODY_BYTES
        };
        let (body, complete) = read_limited(response, limit).await?;
        Ok::<_, reqwest::Error>(Answer {
            status: status.as_u16(),
            headers,
            body,
            complete,
        })
    };
    let timed_out = || {
        AttemptError::new(
            FailureClass::Timeout,
            format!("{prefix}no answer from {target} within {}", human(timeout)),
        )
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(timed_out()),
        Ok(Err(e)) => {
            // The URL may carry credentials (a Slack webhook, a query token): never quoted.
            let e = e.without_url();
            Err(if e.is_timeout() {
                timed_out()
            } else if e.is_builder() || e.is_redirect() {
                AttemptError::new(
                    FailureClass::Other,
                    format!("{prefix}cannot send to {target}: {}", chain(&e)),
                )
            } else {
                AttemptError::new(
                    FailureClass::Connection,
                    format!("{prefix}cannot reach {target}: {}", chain(&e)),
                )
            })
        }
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// Reads at most `limit` bytes of the body; `false` when there was more.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf.freeze(), false));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), true))
}

/// `: <first 200 characters>` of an error body, on one line; empty for an empty body.
pub fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut quoted = one_line(&text.chars().take(ERROR_BODY_CHARS).collect::<String>());
    if text.chars().nth(ERROR_BODY_CHARS).is_some() {
        quoted.push('…');
    }
    format!(": {quoted}")
}

pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The URL without query, fragment, user name and password: the one way the runtime shows a
/// URL in a message, a log line or `Debug` output.
pub fn redact_url(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// [`redact_url`] for a URL held as text; text that is not a URL is cut at its query.
pub fn redact_url_str(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => url.split(['?', '#']).next().unwrap_or(url).to_owned(),
    }
}

/// How a failed exchange is classified for the retry policy: timeout, a request that could
/// not be sent as built (builder, redirects) — the caller's fault — or the connection.
pub fn failure_class(e: &reqwest::Error) -> FailureClass {
    if e.is_timeout() {
        FailureClass::Timeout
    } else if e.is_builder() || e.is_redirect() {
        FailureClass::Other
    } else {
        FailureClass::Connection
    }
}

/// An error and its sources, joined with `: ` (repeated texts once).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    one_line(&parts.join(": "))
}

/// A timeout as people write it: `10s`, or `250ms`.
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_errors_hide_passwords() {
        let url = url::Url::parse("http://user:pw@127.0.0.1/feed").unwrap();
        assert!(!redact_url(&url).contains("pw"));
        assert_eq!(redact_url(&url), "http://127.0.0.1/feed");
    }

    #[test]
    fn redaction_drops_query_fragment_and_credentials() {
        assert_eq!(
            redact_url_str("https://u:p@h.example/a/b?token=t#frag"),
            "https://h.example/a/b"
        );
        assert_eq!(redact_url_str("not a url?token=t"), "not a url");
    }
}
