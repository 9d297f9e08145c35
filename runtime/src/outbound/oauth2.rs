//! OAuth2 client credentials (RFC 6749 section 4.4) for every outbound call that takes them:
//! the http action, the enrich step and the poll source use this one implementation.
//!
//! - The token is fetched from the token endpoint (`grant_type=client_credentials`, `scope`,
//!   `audience`; the client authenticated with HTTP basic or in the form body) with a timeout
//!   and a size-limited read.
//! - It is cached until shortly before it expires ([`refresh_margin`]: a tenth of its
//!   lifetime, at most a minute); without `expires_in`, until the target answers `401`, at
//!   most [`UNDATED_TOKEN_LIFETIME`].
//! - Concurrent callers that find no usable token wait for one fetch (single flight).
//! - [`send_request_with`]: a `401` from the target drops that token (only that one: a token
//!   fetched meanwhile by another caller stays), fetches a new one and sends the request once
//!   more; a second `401` is the answer (the delivery policy decides: by default, the dead
//!   letter).
//!
//! The client secret and the tokens never reach a message, a log line or `Debug` output:
//! header values are marked sensitive, and token endpoint errors quote the `error` code only.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use inputbot_api::{
    auth::{OAuth2ClientAuth, OAuth2ClientCredentials},
    config::FailureClass,
};
use reqwest::Url;
use serde::Deserialize;

use super::{chain, human, read_limited, redact_url, send_request};
use crate::{
    delivery::AttemptError,
    secrets::{FieldError, Secrets},
};

/// Timeout of one token request unless the spec sets one.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token response read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a token without `expires_in` is used at most.
pub const UNDATED_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long before its expiry a token of this lifetime is replaced: a tenth of the lifetime,
/// at most a minute.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// An access token.
pub struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// When to stop using it.
    use_until: Instant,
}

impl Token {
    /// The `Authorization` header value (`Bearer …`, marked sensitive).
    pub fn authorization(&self) -> HeaderValue {
        self.header.clone()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").finish_non_exhaustive()
    }
}

/// The token source of one component (an http action, an enrich step, a poll source).
pub struct OAuth2 {
    token_url: Url,
    display: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    audience: Option<String>,
    client_auth: OAuth2ClientAuth,
    timeout: Duration,
    client: reqwest::Client,
    current: Mutex<Option<Arc<Token>>>,
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.display)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

impl OAuth2 {
    /// Reads the client id and secret (Secrets) now. `field` is the spec field of the
    /// `oauth2` block, e.g. `http.oauth2`; errors name it, never a value.
    pub fn new(
        spec: &OAuth2ClientCredentials,
        secrets: &Secrets,
        field: &str,
        client: reqwest::Client,
    ) -> Result<Self, FieldError> {
        let token_url = Url::parse(&spec.token_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                FieldError::invalid(format!("{field}.tokenUrl"), "expected an http or https URL")
            })?;
        let secret = |r, sub: &str| {
            secrets.get_string(r).map_err(|error| FieldError::Secret {
                field: format!("{field}.{sub}"),
                error,
            })
        };
        let client_id = match (&spec.client_id, &spec.client_id_secret_ref) {
            (Some(id), None) => id.clone(),
            (None, Some(r)) => secret(r, "clientIdSecretRef")?.trim().to_owned(),
            _ => {
                return Err(FieldError::invalid(
                    field,
                    "set exactly one of clientId or clientIdSecretRef",
                ));
            }
        };
        let client_secret = secret(&spec.client_secret_ref, "clientSecretRef")?
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if client_id.is_empty() || client_secret.is_empty() {
            return Err(FieldError::invalid(
                field,
                "the client id and the client secret must not be empty",
            ));
        }
        let timeout = match &spec.timeout {
            Some(t) => t
                .to_std()
                .map_err(|e| FieldError::invalid(format!("{field}.timeout"), e))?,
            None => DEFAULT_TOKEN_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(FieldError::invalid(
                format!("{field}.timeout"),
                "must be longer than 0",
            ));
        }
        Ok(Self {
            display: redact_url(&token_url),
            token_url,
            client_id,
            client_secret,
            scope: (!spec.scopes.is_empty()).then(|| spec.scopes.join(" ")),
            audience: spec.audience.clone(),
            client_auth: spec.client_auth.unwrap_or_default(),
            timeout,
            client,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn usable(&self) -> Option<Arc<Token>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|t| Instant::now() < t.use_until)
            .cloned()
    }

    /// A usable token: the cached one, or one fetched now (once for all concurrent callers).
    pub async fn token(&self) -> Result<Arc<Token>, AttemptError> {
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        let _one = self.fetching.lock().await;
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        let token = Arc::new(self.fetch().await?);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    /// Drops `token` if it is still the cached one (the target refused it).
    pub fn invalidate(&self, token: &Arc<Token>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, token)) {
            *current = None;
        }
    }

    /// The token request's form body, and its `Authorization` header for `basic`.
    fn form(&self, prefix: &str) -> Result<(String, Option<HeaderValue>), AttemptError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        let authorization = match self.client_auth {
            OAuth2ClientAuth::Basic => {
                // RFC 6749 2.3.1: both form-encoded, then basic authentication.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(&self.client_id), enc(&self.client_secret));
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| other(prefix, "the client credentials are not valid in a header"))?;
                value.set_sensitive(true);
                Some(value)
            }
            OAuth2ClientAuth::Post => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", &self.client_secret);
                None
            }
        };
        Ok((form.finish(), authorization))
    }

    async fn fetch(&self) -> Result<Token, AttemptError> {
        let prefix = format!("oauth2 token from POST {}", self.display);
        let (body, authorization) = self.form(&prefix)?;
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let mut request = reqwest::Request::new(reqwest::Method::POST, self.token_url.clone());
        *request.headers_mut() = headers;
        *request.body_mut() = Some(body.into());
        *request.timeout_mut() = Some(self.timeout);
        let exchange = async {
            let response = self.client.execute(request).await?;
            let status = response.status();
            let (body, complete) = read_limited(response, MAX_TOKEN_RESPONSE_BYTES).await?;
            Ok::<_, reqwest::Error>((status, body, complete))
        };
        let (status, body, complete) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(AttemptError::new(
                    FailureClass::Timeout,
                    format!("{prefix}: no answer within {}", human(self.timeout)),
                ));
            }
            Ok(Err(e)) => {
                let class = super::failure_class(&e);
                return Err(AttemptError::new(
                    class,
                    format!("{prefix}: {}", chain(&e.without_url())),
                ));
            }
            Ok(Ok(x)) => x,
        };
        if !status.is_success() {
            // Quote the RFC 6749 error code only: a description might echo what was sent.
            let code = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| {
                    format!(
                        " ({})",
                        super::one_line(&e.error.chars().take(64).collect::<String>())
                    )
                })
                .unwrap_or_default();
            return Err(AttemptError::status(
                status.as_u16(),
                format!("{prefix}: HTTP {}{code}", status.as_u16()),
            ));
        }
        if !complete {
            return Err(other(&prefix, "the answer is larger than 64 KiB"));
        }
        let answer: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            other(
                &prefix,
                &format!(
                    "expected a JSON object with access_token, found something else ({})",
                    e.classify_name()
                ),
            )
        })?;
        if let Some(ty) = &answer.token_type
            && !ty.eq_ignore_ascii_case("bearer")
        {
            return Err(other(
                &prefix,
                &format!(
                    "expected token_type Bearer, found {:?}",
                    ty.chars().take(32).collect::<String>()
                ),
            ));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| other(&prefix, "the access token is not valid in a header"))?;
        value.set_sensitive(true);
        let lifetime = match &answer.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64().map(|s| s.max(0.0)),
            // Some providers send the number as a string.
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok().map(|s| s.max(0.0)),
            _ => None,
        }
        .map(|s| Duration::from_secs_f64(s.min(UNDATED_TOKEN_LIFETIME.as_secs_f64() * 24.0)));
        let use_for = match lifetime {
            Some(l) => l - refresh_margin(l),
            None => UNDATED_TOKEN_LIFETIME,
        };
        tracing::debug!(
            target: "inputbot::outbound",
            token_url = %self.display, valid_for = ?lifetime, "fetched an oauth2 token"
        );
        Ok(Token {
            header: value,
            use_until: Instant::now() + use_for,
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Data => "a JSON value of another shape",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            serde_json::error::Category::Io => "an unreadable body",
        }
    }
}

fn other(prefix: &str, message: &str) -> AttemptError {
    AttemptError::new(FailureClass::Other, format!("{prefix}: {message}"))
}

/// Sends `request` (see [`send_request`]), with a token from `oauth` when it is set: a `401`
/// from the target drops the token, fetches another and sends once more.
pub async fn send_request_with(
    client: &reqwest::Client,
    oauth: Option<&OAuth2>,
    request: reqwest::Request,
    timeout: Duration,
    prefix: &str,
    target: &str,
) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
    let Some(oauth) = oauth else {
        return send_request(client, request, timeout, prefix, target).await;
    };
    let retry = request.try_clone();
    let token = oauth.token().await.map_err(|e| prefixed(prefix, e))?;
    let mut first = request;
    first
        .headers_mut()
        .insert(header::AUTHORIZATION, token.header.clone());
    match send_request(client, first, timeout, prefix, target).await {
        Err(e) if e.status == Some(401) => {
            let Some(mut again) = retry else {
                return Err(e);
            };
            oauth.invalidate(&token);
            let token = oauth.token().await.map_err(|e| prefixed(prefix, e))?;
            again
                .headers_mut()
                .insert(header::AUTHORIZATION, token.header.clone());
            send_request(client, again, timeout, prefix, target)
                .await
                .map_err(|mut e| {
                    if e.status == Some(401) {
                        e.message =
                            format!("{} (refused a freshly fetched oauth2 token too)", e.message);
                    }
                    e
                })
        }
        other => other,
    }
}

fn prefixed(prefix: &str, mut e: AttemptError) -> AttemptError {
    if !prefix.is_empty() {
        e.message = format!("{prefix}{}", e.message);
    }
    e
}
