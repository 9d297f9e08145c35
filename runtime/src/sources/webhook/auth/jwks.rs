//! A JWKS URL's keys, fetched with a timeout and a size limit, cached for `cacheTTL`, and
//! fetched again when a token names a `kid` that is not cached — at most once per
//! `minRefreshInterval`, by one request however many callers wait for it.
//!
//! When a fetch fails the keys fetched before stay in use (a stale JWKS is better than none),
//! and a warning says so. When no keys were ever fetched, tokens are refused with
//! [`AuthError::KeysUnavailable`] (`503`): intake fails closed.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use reqwest::Url;
use serde_json::Value;

use super::{AuthConfigError, AuthError, jwt::KeySet};
use crate::outbound;

struct Cache {
    keys: Arc<KeySet>,
    /// When the keys were fetched (never: `None`).
    fetched: Option<Instant>,
    /// When the last fetch started, successful or not.
    attempted: Option<Instant>,
}

pub(super) struct Jwks {
    url: Url,
    display: String,
    client: reqwest::Client,
    timeout: Duration,
    ttl: Duration,
    min_refresh: Duration,
    max_bytes: usize,
    cache: RwLock<Cache>,
    /// Held while fetching: concurrent callers wait for one fetch instead of starting theirs.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        ttl: Duration,
        min_refresh: Duration,
        max_bytes: usize,
    ) -> Result<Self, AuthConfigError> {
        let invalid = |message: String| AuthConfigError::Invalid {
            field: "jwt.jwks.url".into(),
            message,
        };
        let parsed = Url::parse(url).map_err(|e| {
            invalid(format!(
                "expected an http or https URL, found one that does not parse: {e}"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "expected an http or https URL, found scheme {:?}",
                parsed.scheme()
            )));
        }
        if timeout.is_zero() {
            return Err(AuthConfigError::Invalid {
                field: "jwt.jwks.timeout".into(),
                message: "expected a duration greater than zero, found 0".into(),
            });
        }
        let client = outbound::client()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            display: outbound::redact_url(&parsed),
            url: parsed,
            client,
            timeout,
            ttl,
            min_refresh,
            max_bytes,
            cache: RwLock::new(Cache {
                keys: Arc::new(KeySet::default()),
                fetched: None,
                attempted: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn display_url(&self) -> &str {
        &self.display
    }

    /// The keys as last fetched.
    pub(super) fn cached(&self) -> Arc<KeySet> {
        self.read(|c| c.keys.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Cache) -> T) -> T {
        f(&self.cache.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the cache answers for `kid` as it is: fetched, fresh, and holding the key.
    fn satisfies(&self, kid: Option<&str>) -> bool {
        self.read(|c| {
            c.fetched.is_some_and(|at| at.elapsed() < self.ttl)
                && kid.is_none_or(|kid| c.keys.has_kid(kid))
        })
    }

    /// The keys to verify a token with key id `kid`: the cache when it has the key and is
    /// fresh, else the JWKS fetched again (once per `minRefreshInterval` at most).
    pub(super) async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, AuthError> {
        if self.satisfies(kid) {
            return Ok(self.cached());
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if self.satisfies(kid) {
            return Ok(self.cached());
        }
        let (recently, ever) = self.read(|c| {
            (
                c.attempted
                    .is_some_and(|at| at.elapsed() < self.min_refresh),
                c.fetched.is_some(),
            )
        });
        if recently {
            return if ever {
                // The key is unknown (or the cache stale) but the JWKS was asked moments ago:
                // the cached keys decide (an unknown kid gets 401).
                Ok(self.cached())
            } else {
                Err(self.unavailable("its last fetch failed moments ago"))
            };
        }
        self.write(|c| c.attempted = Some(Instant::now()));
        match self.fetch().await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                tracing::info!(
                    target: "inputbot::intake",
                    jwks = %self.display, keys = keys.keys.len(), "fetched the JWKS"
                );
                self.write(|c| {
                    c.keys = keys.clone();
                    c.fetched = Some(Instant::now());
                });
                Ok(keys)
            }
            Err(reason) => {
                if ever {
                    tracing::warn!(
                        target: "inputbot::intake",
                        jwks = %self.display,
                        "cannot fetch the JWKS, still using the keys fetched before: {reason}"
                    );
                    Ok(self.cached())
                } else {
                    tracing::error!(
                        target: "inputbot::intake",
                        jwks = %self.display,
                        "cannot fetch the JWKS, refusing every token until it answers (fail closed): {reason}"
                    );
                    Err(self.unavailable(&reason))
                }
            }
        }
    }

    fn write(&self, f: impl FnOnce(&mut Cache)) {
        f(&mut self.cache.write().unwrap_or_else(|p| p.into_inner()));
    }

    fn unavailable(&self, reason: &str) -> AuthError {
        AuthError::KeysUnavailable {
            url: self.display.clone(),
            reason: reason.to_owned(),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut request = reqwest::Request::new(reqwest::Method::GET, self.url.clone());
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json, application/jwk-set+json"),
        );
        *request.timeout_mut() = Some(self.timeout);
        let exchange = async {
            let response = self.client.execute(request).await?;
            let status = response.status();
            let (body, complete) = outbound::read_limited(response, self.max_bytes).await?;
            Ok::<_, reqwest::Error>((status, body, complete))
        };
        let (status, body, complete) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(format!(
                    "no answer from GET {} within {}",
                    self.display,
                    outbound::human(self.timeout)
                ));
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot reach GET {}: {}",
                    self.display,
                    outbound::chain(&e.without_url())
                ));
            }
            Ok(Ok(x)) => x,
        };
        if !status.is_success() {
            return Err(format!(
                "HTTP {} from GET {}{}",
                status.as_u16(),
                self.display,
                outbound::preview(&body)
            ));
        }
        if !complete {
            return Err(format!(
                "the JWKS at {} is larger than {} bytes (jwks.maxBytes)",
                self.display, self.max_bytes
            ));
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the JWKS at {} is not JSON: {e}", self.display))?;
        let keys = KeySet::from_jwks(&doc).map_err(|e| format!("{}: {e}", self.display))?;
        if keys.keys.is_empty() {
            return Err(format!(
                "the JWKS at {} holds no usable signing key",
                self.display
            ));
        }
        Ok(keys)
    }
}
