//! Webhook authentication for the intake: checks a request's signature or credentials before
//! its body is parsed.
//!
//! A [`WebhookAuthenticator`] is built once per webhook from its [`WebhookAuth`] spec (secrets
//! are resolved up front) and shared behind an `Arc`. [`WebhookAuthenticator::verify`] runs on
//! the raw body bytes and returns either [`Verified`] or an [`AuthError`] whose
//! [`reason`](AuthError::reason) is a stable metric label and whose
//! [`status`](AuthError::status) is the HTTP answer.
//!
//! Schemes:
//!
//! | scheme | signature | signed content | replay key |
//! |---|---|---|---|
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | body | digest of the body |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>…` | `{t}.{body}` | `t` + digest of the body |
//! | `slack` | `X-Slack-Signature: v0=<hex>` | `v0:{ts}:{body}` | ts + digest of the body |
//! | `shopify` | `X-Shopify-Hmac-Sha256: <base64>` | body | digest of the body |
//! | `standard-webhooks` | `webhook-signature: v1,<base64> …` | `{id}.{ts}.{body}` | `webhook-id` |
//! | `generic` | configured | body, or `{ts}.{body}` | (ts +) digest of the body |
//! | `bearer` | `Authorization: Bearer <token>` | — | — |
//! | `basic` | `Authorization: Basic base64(user:pass)` | — | — |
//! | `jwt` | `Authorization: Bearer <JWT>` | header.payload | — |
//! | `apiKey` | `X-API-Key: <key>` (or a query parameter, opt-in) | — | — |
//! | `none` | — | — | — |
//!
//! Every comparison is constant-time, and every configured secret (the `secretRef` and the
//! `additionalSecretRefs` used for rotation) is tried, whether or not an earlier one matched.
//! The replay key is what the signature covers, never an unsigned header: GitHub's and
//! Shopify's delivery ids (and a generic `deliveryIdHeader`) are not signed, so a captured
//! request resent with a new id is still the same delivery. A repeat of a delivery already
//! accepted is answered `202` with `"duplicate": true` and not published again (a sender's
//! retry must not look like a failure); a repeat while the first copy is still being made
//! durable gets `409`. Two deliveries with byte-identical signed content inside the window
//! are one delivery. Replay keys are recorded only after the signature verified, for
//! `tolerance` (timestamped schemes) or 24 hours (others), in a bounded table ([`REPLAY_CAPACITY`] entries, oldest
//! evicted first). Error messages say what was expected and what was found, but never contain
//! a secret, a computed signature or a received signature.//!
//! ```text
//!  auth/
//!   mod.rs      WebhookAuthenticator: spec → scheme; verify; the errors and their labels
//!   presets.rs  the HMAC presets, one named row each
//!   hmac.rs     the HMAC verifier
//!   bearer.rs   Bearer tokens
//!   basic.rs    Basic credentials
//!   jwt.rs      JSON Web Tokens: algorithm allowlist, keys, signature, iss/aud/exp/nbf/iat
//!   jwks.rs     a JWKS URL's keys: fetched with limits, cached, refreshed on unknown kids
//!   apikey.rs   API keys in a header or (opt-in) a query parameter
//!   replay.rs   the bounded replay table
//! ```

mod apikey;
mod basic;
mod bearer;
mod hmac;
mod jwks;
mod jwt;
mod presets;
mod replay;
#[cfg(test)]
mod tests;

use std::{fmt, time::Duration, time::SystemTime};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use inputbot_api::bot::WebhookAuth;
use inputbot_api::common::SecretKeyRef;
use sha2::Digest as _;

use self::{apikey::ApiKey, basic::Basic, bearer::Bearer, hmac::HmacVerifier, jwt::JwtVerifier};

/// How many replay keys are remembered at most; the oldest is evicted first.
pub const REPLAY_CAPACITY: usize = 100_000;

/// The tolerance of timestamped schemes unless the spec sets `tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How long a delivery id is remembered for schemes without a signed timestamp.
pub const UNTIMESTAMPED_REPLAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Base64 that accepts input with or without padding (senders differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A request that passed authentication.
#[derive(Clone, Debug, Default)]
pub struct Verified {
    /// The key recorded against replays — what the signature covers: the signed id
    /// (`standard-webhooks`), else the signed timestamp plus a digest of the body, else the
    /// digest of the body. Pass it to [`WebhookAuthenticator::confirm`] once the event is
    /// durable, or to [`WebhookAuthenticator::forget`] when it could not be made durable.
    pub delivery_id: Option<String>,
    /// The same signed content was accepted before, inside the replay window: answer `2xx`
    /// as a duplicate and publish nothing (a sender's retry, or a captured request resent).
    pub repeat: bool,
    /// Until when the replay key is remembered (the replay window, or the signed timestamp's
    /// tolerance if later): a copy that reached another replica is dropped downstream until
    /// then.
    pub replay_until: Option<SystemTime>,
    /// What CEL sees as `auth` for this request, when the scheme says more than "passed":
    /// `{"scheme": "jwt", "claims": {…}}` or `{"scheme": "apiKey", "key": "<secret>/<key>"}`.
    pub auth: Option<serde_json::Value>,
}

/// Why a request was refused. Messages never contain a secret or a signature value.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The signature header is absent.
    #[error("missing signature: expected a {header} header, found none")]
    MissingSignature {
        /// The header that should carry the signature.
        header: String,
    },
    /// The signature matched none of the configured secrets.
    #[error(
        "bad signature: expected the {header} header to carry a signature made with one of the \
         {secrets} configured secret(s), found {candidates} signature(s) that match none of them"
    )]
    BadSignature {
        /// The header that carried the signature.
        header: String,
        /// How many secrets were tried.
        secrets: usize,
        /// How many signatures the request carried.
        candidates: usize,
    },
    /// The signed timestamp is too far from now, in the past or in the future.
    #[error("stale timestamp: expected {header} within {tolerance_secs}s of now, found one {skew}")]
    StaleTimestamp {
        /// The header (or field) carrying the timestamp.
        header: String,
        /// The allowed distance from now, in seconds.
        tolerance_secs: u64,
        /// How far off it is, e.g. `"600s in the past"`.
        skew: String,
    },
    /// The same signed content is still being accepted (its first copy is not yet durable).
    #[error(
        "replayed: delivery {delivery_id:?} is still being accepted (replay window {window_secs}s); retry"
    )]
    Replayed {
        /// The replay key that repeated.
        delivery_id: String,
        /// The replay window, in seconds.
        window_secs: u64,
    },
    /// A header is present but not in the expected format.
    #[error("malformed {header} header: expected {expected}, found {found}")]
    Malformed {
        /// The offending header.
        header: String,
        /// What the header should look like.
        expected: String,
        /// A description of what was found (never the value of a signature or credential).
        found: String,
    },
    /// The `Authorization` header is absent or uses another scheme.
    #[error("missing credentials: expected an Authorization header with {expected}, found {found}")]
    MissingCredentials {
        /// The expected scheme, e.g. `a Bearer token`.
        expected: &'static str,
        /// What was found instead, e.g. `no Authorization header`.
        found: String,
    },
    /// The credentials do not match.
    #[error("bad credentials: {what} does not match the configured value")]
    BadCredentials {
        /// What was checked, e.g. `the bearer token`.
        what: &'static str,
    },
    /// No API key where the spec expects one.
    #[error("missing API key: expected {expected}, found none")]
    MissingApiKey {
        /// Where the key was expected.
        expected: String,
    },
    /// A JSON Web Token that does not verify.
    #[error("invalid token: {message}")]
    Token {
        /// A stable label: `token_too_large`, `token_malformed`, `token_algorithm`,
        /// `token_unknown_key`, `token_signature`, `token_issuer`, `token_audience`,
        /// `token_claims`, `token_expired`, `token_not_yet_valid`, `token_issued_in_future`.
        label: &'static str,
        /// What was expected and found (never the token).
        message: String,
    },
    /// The keys to verify tokens with cannot be had (the JWKS never answered): fail closed.
    #[error(
        "keys unavailable: cannot verify tokens until the JWKS at {url} answers ({reason}); retry later"
    )]
    KeysUnavailable {
        /// The JWKS URL, redacted.
        url: String,
        /// Why the fetch failed.
        reason: String,
    },
}

impl AuthError {
    /// A stable label for metrics: `missing_signature`, `bad_signature`, `stale_timestamp`,
    /// `replayed`, `malformed`, `missing_credentials` or `bad_credentials`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingSignature { .. } => "missing_signature",
            AuthError::BadSignature { .. } => "bad_signature",
            AuthError::StaleTimestamp { .. } => "stale_timestamp",
            AuthError::Replayed { .. } => "replayed",
            AuthError::Malformed { .. } => "malformed",
            AuthError::MissingCredentials { .. } => "missing_credentials",
            AuthError::BadCredentials { .. } => "bad_credentials",
            AuthError::MissingApiKey { .. } => "missing_credentials",
            AuthError::Token { label, .. } => label,
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
        }
    }

    pub(super) fn token(label: &'static str, message: impl Into<String>) -> Self {
        AuthError::Token {
            label,
            message: message.into(),
        }
    }

    /// The HTTP status to answer with: 409 for a replay, 400 for a malformed header, 503 when
    /// the keys cannot be had, 401 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Replayed { .. } => StatusCode::CONFLICT,
            AuthError::KeysUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Malformed { .. } => StatusCode::BAD_REQUEST,
            AuthError::MissingSignature { .. }
            | AuthError::BadSignature { .. }
            | AuthError::StaleTimestamp { .. }
            | AuthError::MissingCredentials { .. }
            | AuthError::BadCredentials { .. }
            | AuthError::MissingApiKey { .. }
            | AuthError::Token { .. } => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why a webhook's auth spec cannot be used. Messages name secret refs, never their values.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The spec sets no kind of auth, or more than one.
    #[error(
        "webhook auth: expected exactly one of hmac, bearer, basic, jwt, apiKey or none, found {found}"
    )]
    NotExactlyOne {
        /// The kinds that were set, e.g. `"none"` or `"hmac and bearer"`.
        found: String,
    },
    /// A secret could not be resolved.
    #[error("webhook auth: cannot read {field} (secret {name:?}, key {key:?}): {reason}")]
    Secret {
        /// The spec field, e.g. `hmac.secretRef`.
        field: String,
        /// The Secret's name.
        name: String,
        /// The key within the Secret.
        key: String,
        /// The resolver's error (which names the ref, never the value).
        reason: String,
    },
    /// A secret resolved to an empty value.
    #[error(
        "webhook auth: {field} (secret {name:?}, key {key:?}) is empty; expected a non-empty secret"
    )]
    EmptySecret {
        /// The spec field.
        field: String,
        /// The Secret's name.
        name: String,
        /// The key within the Secret.
        key: String,
    },
    /// A `whsec_` secret is not valid base64.
    #[error(
        "webhook auth: {field} (secret {name:?}, key {key:?}) starts with whsec_ but the rest is \
         not valid base64; expected whsec_<base64 key>"
    )]
    SecretEncoding {
        /// The spec field.
        field: String,
        /// The Secret's name.
        name: String,
        /// The key within the Secret.
        key: String,
    },
    /// A generic HMAC without a `header`.
    #[error("webhook auth: a generic hmac needs header; expected hmac.header, found none")]
    MissingHeader,
    /// A header name that HTTP does not allow.
    #[error("webhook auth: {field} must be a valid HTTP header name, found {value:?}")]
    HeaderName {
        /// The spec field.
        field: &'static str,
        /// The configured value.
        value: String,
    },
    /// A tolerance that cannot be parsed or is zero.
    #[error("webhook auth: hmac.tolerance: {reason}")]
    Tolerance {
        /// What was wrong.
        reason: String,
    },
    /// A field that cannot be used as written.
    #[error("webhook auth: {field}: {message}")]
    Invalid {
        /// The spec field, e.g. `jwt.jwks.url`.
        field: String,
        /// What is wrong (never a secret value).
        message: String,
    },
    /// A field the chosen preset fixes.
    #[error("webhook auth: hmac.{field} cannot be set with preset {preset}: the preset fixes it")]
    FixedByPreset {
        /// The spec field.
        field: &'static str,
        /// The preset.
        preset: &'static str,
    },
}

/// Checks webhook requests against one webhook's auth spec. `Send + Sync`; share it behind an
/// `Arc`. Its `Debug` output shows the scheme and headers, never a secret.
pub struct WebhookAuthenticator {
    scheme: Scheme,
}

enum Scheme {
    Hmac(Box<HmacVerifier>),
    Bearer(Bearer),
    Basic(Basic),
    Jwt(Box<JwtVerifier>),
    ApiKey(ApiKey),
    None,
}

impl fmt::Debug for WebhookAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            Scheme::Hmac(v) => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"hmac")
                .field("preset", &v.preset)
                .field("header", &v.header.as_str())
                .field("algorithm", &v.algorithm)
                .field("encoding", &v.encoding)
                .field(
                    "timestamp_header",
                    &v.timestamp_header.as_ref().map(|h| h.as_str()),
                )
                .field("tolerance", &v.tolerance)
                .field(
                    "delivery_id_header",
                    &v.delivery_id_header.as_ref().map(|h| h.as_str()),
                )
                .field("secrets", &v.secrets.len())
                .finish_non_exhaustive(),
            Scheme::Bearer(_) => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"bearer")
                .finish_non_exhaustive(),
            Scheme::Basic(_) => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"basic")
                .finish_non_exhaustive(),
            Scheme::Jwt(j) => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"jwt")
                .field("issuer", &j.issuer)
                .field("audience", &j.audience)
                .field("algorithms", &j.algorithms)
                .field("keys", &j.source())
                .field("skew", &j.skew)
                .field("max_token_bytes", &j.max_token_bytes)
                .finish(),
            Scheme::ApiKey(k) => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"apiKey")
                .field("header", &k.header.as_str())
                .field("query", &k.query)
                .field("keys", &k.keys())
                .finish(),
            Scheme::None => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"none")
                .finish(),
        }
    }
}

pub(super) fn header_name(field: &'static str, value: &str) -> Result<HeaderName, AuthConfigError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| AuthConfigError::HeaderName {
        field,
        value: value.to_owned(),
    })
}

pub(super) fn resolve(
    secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    field: String,
    r: &SecretKeyRef,
) -> Result<Vec<u8>, AuthConfigError> {
    let value = secret(r).map_err(|reason| AuthConfigError::Secret {
        field: field.clone(),
        name: r.name.clone(),
        key: r.key.clone(),
        reason,
    })?;
    non_empty(value, field, r)
}

/// `value`, unless it is empty: an empty secret would accept any signature made with it.
fn non_empty(value: Vec<u8>, field: String, r: &SecretKeyRef) -> Result<Vec<u8>, AuthConfigError> {
    if value.is_empty() {
        return Err(AuthConfigError::EmptySecret {
            field,
            name: r.name.clone(),
            key: r.key.clone(),
        });
    }
    Ok(value)
}

pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

impl WebhookAuthenticator {
    /// Builds the authenticator, resolving every secret up front. `secret` resolves a
    /// [`SecretKeyRef`] to its bytes; its errors name the ref, never the value.
    pub fn new(
        auth: &WebhookAuth,
        secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    ) -> Result<Self, AuthConfigError> {
        let mut kinds = Vec::new();
        if auth.hmac.is_some() {
            kinds.push("hmac");
        }
        if auth.bearer.is_some() {
            kinds.push("bearer");
        }
        if auth.basic.is_some() {
            kinds.push("basic");
        }
        if auth.jwt.is_some() {
            kinds.push("jwt");
        }
        if auth.api_key.is_some() {
            kinds.push("apiKey");
        }
        if auth.none.is_some() {
            kinds.push("none");
        }
        if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none of them".to_owned()
            } else {
                kinds.join(" and ")
            };
            return Err(AuthConfigError::NotExactlyOne { found });
        }
        let scheme = if let Some(h) = &auth.hmac {
            Scheme::Hmac(Box::new(HmacVerifier::new(h, secret)?))
        } else if let Some(b) = &auth.bearer {
            let token = resolve(secret, "bearer.secretRef".to_owned(), &b.secret_ref)?;
            Scheme::Bearer(Bearer::new(&token))
        } else if let Some(b) = &auth.basic {
            let password = resolve(
                secret,
                "basic.passwordSecretRef".to_owned(),
                &b.password_secret_ref,
            )?;
            Scheme::Basic(Basic::new(&b.username, &password))
        } else if let Some(j) = &auth.jwt {
            Scheme::Jwt(Box::new(JwtVerifier::new(j, secret)?))
        } else if let Some(k) = &auth.api_key {
            Scheme::ApiKey(ApiKey::new(k, secret)?)
        } else {
            Scheme::None
        };
        Ok(WebhookAuthenticator { scheme })
    }

    /// Checks a request before its body is parsed: its signature over the raw `body` (or its
    /// credentials or token), the freshness of a signed timestamp or a token against `now`,
    /// and replays. A delivery that passes is recorded against replays. `query` is the
    /// request's query string (an `apiKey` may be there when the spec allows it). A `jwt`
    /// whose key is not at hand fetches the JWKS first.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        match &self.scheme {
            Scheme::Jwt(j) => j.check(headers, now).await,
            Scheme::ApiKey(k) => k.verify(headers, query),
            _ => self.verify(headers, body, now),
        }
    }

    /// [`check`](Self::check) without a query string and without fetching: a `jwt` is
    /// verified with the keys at hand (the JWKS as last fetched).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        match &self.scheme {
            Scheme::Hmac(v) => v.verify(headers, body, now),
            Scheme::Bearer(b) => b.verify(headers),
            Scheme::Basic(b) => b.verify(headers),
            Scheme::Jwt(j) => j.verify(headers, now),
            Scheme::ApiKey(k) => k.verify(headers, None),
            Scheme::None => Ok(Verified::default()),
        }
    }

    /// The `WWW-Authenticate` challenge a `401` carries: the scheme a caller must use
    /// (`Signature` for the HMAC presets, which have no registered HTTP scheme).
    pub fn challenge(&self) -> Option<&'static str> {
        match &self.scheme {
            Scheme::Hmac(_) => Some("Signature realm=\"inputbot\""),
            Scheme::Bearer(_) => Some("Bearer realm=\"inputbot\""),
            Scheme::Basic(_) => Some("Basic realm=\"inputbot\", charset=\"UTF-8\""),
            Scheme::Jwt(_) => Some("Bearer realm=\"inputbot\", error=\"invalid_token\""),
            Scheme::ApiKey(_) => Some("ApiKey realm=\"inputbot\""),
            Scheme::None => None,
        }
    }

    /// Marks a replay key recorded by [`verify`](Self::verify) accepted (its event is durable):
    /// a repeat is then answered as a duplicate.
    pub fn confirm(&self, delivery_id: &str) {
        self.with_replays(|t| t.confirm(delivery_id));
    }

    /// Forgets a delivery id recorded by [`verify`](Self::verify), so that the sender's retry
    /// is accepted (the intake calls this when the event could not be made durable).
    pub fn forget(&self, delivery_id: &str) {
        self.with_replays(|t| t.forget(delivery_id));
    }

    /// Runs `f` on the replay table, for schemes that have one.
    fn with_replays(&self, f: impl FnOnce(&mut replay::ReplayTable)) {
        if let Scheme::Hmac(v) = &self.scheme {
            f(&mut v.replay.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// The credentials after `<scheme> ` in the `Authorization` header.
pub(super) fn authorization<'a>(
    headers: &'a HeaderMap,
    scheme: &str,
    expected: &'static str,
) -> Result<&'a str, AuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(AuthError::MissingCredentials {
            expected,
            found: "no Authorization header".to_owned(),
        });
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed {
        header: AUTHORIZATION.as_str().to_owned(),
        expected: format!("{scheme} <credentials> in visible ASCII"),
        found: "a value with non-ASCII or control characters".to_owned(),
    })?;
    let (given, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !given.eq_ignore_ascii_case(scheme) {
        // Only a registered scheme name is echoed: anything else may be a credential.
        const KNOWN: [&str; 11] = [
            "Basic",
            "Bearer",
            "Digest",
            "HOBA",
            "Mutual",
            "Negotiate",
            "NTLM",
            "OAuth",
            "SCRAM-SHA-1",
            "SCRAM-SHA-256",
            "Token",
        ];
        let found = match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(given)) {
            Some(known) => format!("the {known} scheme"),
            None => "a value without a recognized scheme".to_owned(),
        };
        return Err(AuthError::MissingCredentials { expected, found });
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(AuthError::MissingCredentials {
            expected,
            found: format!("the {scheme} scheme with empty credentials"),
        });
    }
    Ok(rest)
}
