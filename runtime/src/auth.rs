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
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | body | `X-GitHub-Delivery` |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>…` | `{t}.{body}` | `t` + digest of the body |
//! | `slack` | `X-Slack-Signature: v0=<hex>` | `v0:{ts}:{body}` | ts + digest of the body |
//! | `shopify` | `X-Shopify-Hmac-Sha256: <base64>` | body | `X-Shopify-Webhook-Id` |
//! | `standard-webhooks` | `webhook-signature: v1,<base64> …` | `{id}.{ts}.{body}` | `webhook-id` |
//! | `generic` | configured | body, or `{ts}.{body}` | `deliveryIdHeader`, else ts + digest |
//! | `bearer` | `Authorization: Bearer <token>` | — | — |
//! | `basic` | `Authorization: Basic base64(user:pass)` | — | — |
//! | `none` | — | — | — |
//!
//! Every comparison is constant-time, and every configured secret (the `secretRef` and the
//! `additionalSecretRefs` used for rotation) is tried, whether or not an earlier one matched.
//! Replay keys are recorded only after the signature verified, for `tolerance` (timestamped
//! schemes) or 24 hours (others), in a bounded table ([`REPLAY_CAPACITY`] entries, oldest
//! evicted first). Error messages say what was expected and what was found, but never contain
//! a secret, a computed signature or a received signature.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use inputbot_api::bot::{HmacAlgorithm, HmacAuth, HmacPreset, SignatureEncoding, WebhookAuth};
use inputbot_api::common::SecretKeyRef;
use sha2::Digest as _;
use subtle::{Choice, ConstantTimeEq};

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
#[derive(Clone, Debug)]
pub struct Verified {
    /// The key recorded against replays (a sender's delivery id, or for senders without one a
    /// timestamp plus a digest of the body); pass it to [`WebhookAuthenticator::forget`] when
    /// the event could not be made durable.
    pub delivery_id: Option<String>,
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
    /// The delivery was already accepted inside the replay window.
    #[error("replayed: delivery {delivery_id:?} was already accepted in the last {window_secs}s")]
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
        }
    }

    /// The HTTP status to answer with: 409 for a replay, 400 for a malformed header, 401
    /// otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Replayed { .. } => StatusCode::CONFLICT,
            AuthError::Malformed { .. } => StatusCode::BAD_REQUEST,
            AuthError::MissingSignature { .. }
            | AuthError::BadSignature { .. }
            | AuthError::StaleTimestamp { .. }
            | AuthError::MissingCredentials { .. }
            | AuthError::BadCredentials { .. } => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why a webhook's auth spec cannot be used. Messages name secret refs, never their values.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The spec sets no kind of auth, or more than one.
    #[error("webhook auth: expected exactly one of hmac, bearer, basic or none, found {found}")]
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
    Hmac(HmacVerifier),
    Bearer {
        token_digest: [u8; 32],
    },
    Basic {
        username_digest: [u8; 32],
        password_digest: [u8; 32],
    },
    None,
}

/// Where the signature, timestamp and id live and how the signed content is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// One signature in `header` (after `prefix`), over the body or `{ts}.{body}`.
    Simple,
    /// `t=<ts>,v1=<hex>[,v1=…]` in one header, over `{t}.{body}`.
    Stripe,
    /// `v0=<hex>` over `v0:{ts}:{body}`.
    Slack,
    /// `v1,<base64> …` over `{id}.{ts}.{body}`.
    StandardWebhooks,
}

struct HmacVerifier {
    preset: &'static str,
    layout: Layout,
    header: HeaderName,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: String,
    timestamp_header: Option<HeaderName>,
    tolerance: Duration,
    delivery_id_header: Option<HeaderName>,
    secrets: Vec<Vec<u8>>,
    replay: Mutex<ReplayTable>,
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
            Scheme::Bearer { .. } => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"bearer")
                .finish_non_exhaustive(),
            Scheme::Basic { .. } => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"basic")
                .finish_non_exhaustive(),
            Scheme::None => f
                .debug_struct("WebhookAuthenticator")
                .field("scheme", &"none")
                .finish(),
        }
    }
}

fn header_name(field: &'static str, value: &str) -> Result<HeaderName, AuthConfigError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| AuthConfigError::HeaderName {
        field,
        value: value.to_owned(),
    })
}

fn resolve(
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
    if value.is_empty() {
        return Err(AuthConfigError::EmptySecret {
            field,
            name: r.name.clone(),
            key: r.key.clone(),
        });
    }
    Ok(value)
}

fn sha256(data: &[u8]) -> [u8; 32] {
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
            Scheme::Hmac(HmacVerifier::new(h, secret)?)
        } else if let Some(b) = &auth.bearer {
            let token = resolve(secret, "bearer.secretRef".to_owned(), &b.secret_ref)?;
            Scheme::Bearer {
                token_digest: sha256(&token),
            }
        } else if let Some(b) = &auth.basic {
            let password = resolve(
                secret,
                "basic.passwordSecretRef".to_owned(),
                &b.password_secret_ref,
            )?;
            Scheme::Basic {
                username_digest: sha256(b.username.as_bytes()),
                password_digest: sha256(&password),
            }
        } else {
            Scheme::None
        };
        Ok(WebhookAuthenticator { scheme })
    }

    /// Checks a request before its body is parsed: its signature over the raw `body` (or its
    /// credentials), the freshness of a signed timestamp against `now`, and replays. A
    /// delivery that passes is recorded against replays.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        match &self.scheme {
            Scheme::Hmac(v) => v.verify(headers, body, now),
            Scheme::Bearer { token_digest } => {
                let token = authorization(headers, "Bearer", "a Bearer token")?;
                let ok = sha256(token.as_bytes()).ct_eq(token_digest);
                if bool::from(ok) {
                    Ok(Verified { delivery_id: None })
                } else {
                    Err(AuthError::BadCredentials {
                        what: "the bearer token",
                    })
                }
            }
            Scheme::Basic {
                username_digest,
                password_digest,
            } => {
                let encoded = authorization(headers, "Basic", "Basic credentials")?;
                let malformed = |found: &str| AuthError::Malformed {
                    header: AUTHORIZATION.as_str().to_owned(),
                    expected: "Basic followed by base64 of user:password".to_owned(),
                    found: found.to_owned(),
                };
                let decoded = BASE64
                    .decode(encoded.trim())
                    .map_err(|_| malformed("credentials that are not valid base64"))?;
                let colon = decoded
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or_else(|| malformed("decoded credentials without a colon"))?;
                let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
                let ok = sha256(user).ct_eq(username_digest) & sha256(pass).ct_eq(password_digest);
                if bool::from(ok) {
                    Ok(Verified { delivery_id: None })
                } else {
                    Err(AuthError::BadCredentials {
                        what: "the user name or password",
                    })
                }
            }
            Scheme::None => Ok(Verified { delivery_id: None }),
        }
    }

    /// Forgets a delivery id recorded by [`verify`](Self::verify), so that the sender's retry
    /// is accepted (the intake calls this when the event could not be made durable).
    pub fn forget(&self, delivery_id: &str) {
        if let Scheme::Hmac(v) = &self.scheme {
            v.replay
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .forget(delivery_id);
        }
    }
}

/// The credentials after `<scheme> ` in the `Authorization` header.
fn authorization<'a>(
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
        // Only the scheme word is echoed, and only when it looks like one (a bare token
        // pasted into the header would otherwise be echoed back).
        let found = if !rest.is_empty()
            && given.len() <= 16
            && given.bytes().all(|b| b.is_ascii_alphabetic())
        {
            format!("the {given} scheme")
        } else {
            "a value without a recognizable scheme".to_owned()
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

impl HmacVerifier {
    fn new(
        h: &HmacAuth,
        secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    ) -> Result<Self, AuthConfigError> {
        let preset = h.preset.unwrap_or(HmacPreset::Generic);
        // (name, layout, header, algorithm, encoding, prefix, timestamp header, delivery id)
        let (name, layout, header, algorithm, encoding, prefix, ts_header, id_header) = match preset
        {
            HmacPreset::Github => (
                "github",
                Layout::Simple,
                Some("x-hub-signature-256"),
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                "sha256=",
                None,
                Some("x-github-delivery"),
            ),
            HmacPreset::Stripe => (
                "stripe",
                Layout::Stripe,
                Some("stripe-signature"),
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                "",
                None,
                None,
            ),
            HmacPreset::Slack => (
                "slack",
                Layout::Slack,
                Some("x-slack-signature"),
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                "v0=",
                Some("x-slack-request-timestamp"),
                None,
            ),
            HmacPreset::Shopify => (
                "shopify",
                Layout::Simple,
                Some("x-shopify-hmac-sha256"),
                HmacAlgorithm::Sha256,
                SignatureEncoding::Base64,
                "",
                None,
                Some("x-shopify-webhook-id"),
            ),
            HmacPreset::StandardWebhooks => (
                "standard-webhooks",
                Layout::StandardWebhooks,
                Some("webhook-signature"),
                HmacAlgorithm::Sha256,
                SignatureEncoding::Base64,
                "",
                Some("webhook-timestamp"),
                Some("webhook-id"),
            ),
            HmacPreset::Generic => (
                "generic",
                Layout::Simple,
                None,
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                "",
                None,
                None,
            ),
        };
        if layout != Layout::Simple {
            // These presets fix the format of the signature and the signed content.
            if h.algorithm.is_some() {
                return Err(AuthConfigError::FixedByPreset {
                    field: "algorithm",
                    preset: name,
                });
            }
            if h.encoding.is_some() {
                return Err(AuthConfigError::FixedByPreset {
                    field: "encoding",
                    preset: name,
                });
            }
            if h.prefix.is_some() {
                return Err(AuthConfigError::FixedByPreset {
                    field: "prefix",
                    preset: name,
                });
            }
            if layout == Layout::Stripe && h.timestamp_header.is_some() {
                return Err(AuthConfigError::FixedByPreset {
                    field: "timestampHeader",
                    preset: name,
                });
            }
        }
        let header = match (h.header.as_deref(), header) {
            (Some(explicit), _) => header_name("hmac.header", explicit)?,
            (None, Some(default)) => HeaderName::from_static(default),
            (None, None) => return Err(AuthConfigError::MissingHeader),
        };
        let timestamp_header = match (h.timestamp_header.as_deref(), ts_header) {
            (Some(explicit), _) => Some(header_name("hmac.timestampHeader", explicit)?),
            (None, default) => default.map(HeaderName::from_static),
        };
        let delivery_id_header = match (h.delivery_id_header.as_deref(), id_header) {
            (Some(explicit), _) => Some(header_name("hmac.deliveryIdHeader", explicit)?),
            (None, default) => default.map(HeaderName::from_static),
        };
        let tolerance = match &h.tolerance {
            Some(d) => {
                let t = d
                    .to_std()
                    .map_err(|reason| AuthConfigError::Tolerance { reason })?;
                if t.is_zero() {
                    return Err(AuthConfigError::Tolerance {
                        reason: format!("expected a duration above zero, found {:?}", d.0),
                    });
                }
                t
            }
            None => DEFAULT_TOLERANCE,
        };

        let mut secrets = Vec::with_capacity(1 + h.additional_secret_refs.len());
        let refs = std::iter::once(("hmac.secretRef".to_owned(), &h.secret_ref)).chain(
            h.additional_secret_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("hmac.additionalSecretRefs[{i}]"), r)),
        );
        for (field, r) in refs {
            let mut value = resolve(secret, field.clone(), r)?;
            if layout == Layout::StandardWebhooks {
                if let Some(encoded) = value.strip_prefix(b"whsec_") {
                    value =
                        BASE64
                            .decode(encoded)
                            .map_err(|_| AuthConfigError::SecretEncoding {
                                field: field.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            })?;
                    if value.is_empty() {
                        return Err(AuthConfigError::EmptySecret {
                            field,
                            name: r.name.clone(),
                            key: r.key.clone(),
                        });
                    }
                }
            }
            secrets.push(value);
        }

        Ok(HmacVerifier {
            preset: name,
            layout,
            header,
            algorithm: h.algorithm.unwrap_or(algorithm),
            encoding: h.encoding.unwrap_or(encoding),
            prefix: h.prefix.clone().unwrap_or_else(|| prefix.to_owned()),
            timestamp_header,
            tolerance,
            delivery_id_header,
            secrets,
            replay: Mutex::new(ReplayTable::new(REPLAY_CAPACITY)),
        })
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let sig_value = match headers.get(&self.header) {
            None => {
                return Err(AuthError::MissingSignature {
                    header: self.header.as_str().to_owned(),
                });
            }
            Some(v) => v.to_str().map_err(|_| AuthError::Malformed {
                header: self.header.as_str().to_owned(),
                expected: "a value in visible ASCII".to_owned(),
                found: "non-ASCII or control characters".to_owned(),
            })?,
        };

        // The signature candidates, the timestamp (if signed) and the signed-content prefix.
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        let timestamp: Option<(i64, String)>;
        let mut id: Option<String> = None;
        match self.layout {
            Layout::Simple => {
                candidates.push(self.decode_prefixed(sig_value, &self.prefix, self.encoding)?);
                timestamp = match &self.timestamp_header {
                    Some(h) => Some((self.timestamp(headers, h)?, h.as_str().to_owned())),
                    None => None,
                };
            }
            Layout::Slack => {
                candidates.push(self.decode_prefixed(sig_value, "v0=", SignatureEncoding::Hex)?);
                let h = self
                    .timestamp_header
                    .as_ref()
                    .expect("slack always has a timestamp header");
                timestamp = Some((self.timestamp(headers, h)?, h.as_str().to_owned()));
            }
            Layout::Stripe => {
                let mut t = None;
                for part in sig_value.split(',') {
                    let (k, v) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
                    match k {
                        "t" => {
                            if t.is_some() {
                                return Err(self.malformed_stripe("more than one t= element"));
                            }
                            t = Some(parse_unix(v).ok_or_else(|| {
                                self.malformed_stripe("a t= element that is not a Unix time")
                            })?);
                        }
                        "v1" => {
                            candidates.push(hex::decode(v).map_err(|_| {
                                self.malformed_stripe("a v1= element that is not hex")
                            })?)
                        }
                        // v0 (legacy test-mode) and unknown elements are ignored.
                        _ => {}
                    }
                }
                let t = t.ok_or_else(|| self.malformed_stripe("no t= element"))?;
                if candidates.is_empty() {
                    return Err(self.malformed_stripe("no v1= element"));
                }
                timestamp = Some((t, format!("{} t=", self.header.as_str())));
            }
            Layout::StandardWebhooks => {
                for part in sig_value.split_ascii_whitespace() {
                    if let Some(encoded) = part.strip_prefix("v1,") {
                        candidates.push(BASE64.decode(encoded).map_err(|_| {
                            AuthError::Malformed {
                                header: self.header.as_str().to_owned(),
                                expected: "space-separated v1,<base64> signatures".to_owned(),
                                found: "a v1 signature that is not valid base64".to_owned(),
                            }
                        })?);
                    }
                    // Other versions (e.g. v1a, asymmetric) are not ours to check.
                }
                if candidates.is_empty() {
                    return Err(AuthError::Malformed {
                        header: self.header.as_str().to_owned(),
                        expected: "space-separated v1,<base64> signatures".to_owned(),
                        found: "no v1 signature".to_owned(),
                    });
                }
                let h = self
                    .timestamp_header
                    .as_ref()
                    .expect("standard webhooks always have a timestamp header");
                timestamp = Some((self.timestamp(headers, h)?, h.as_str().to_owned()));
                let id_header = self
                    .delivery_id_header
                    .as_ref()
                    .expect("standard webhooks always have an id header");
                id = Some(self.delivery_id(headers, id_header)?);
            }
        }

        if let Some((ts, field)) = &timestamp {
            self.check_fresh(*ts, field, now)?;
        }

        // The signed content, as the parts that are fed to the MAC in order.
        let ts_text = timestamp.as_ref().map(|(ts, _)| ts.to_string());
        let parts: Vec<&[u8]> = match (self.layout, &ts_text) {
            (Layout::StandardWebhooks, Some(ts)) => vec![
                id.as_deref().unwrap_or_default().as_bytes(),
                b".",
                ts.as_bytes(),
                b".",
                body,
            ],
            (Layout::Slack, Some(ts)) => vec![b"v0:", ts.as_bytes(), b":", body],
            (_, Some(ts)) => vec![ts.as_bytes(), b".", body],
            (_, None) => vec![body],
        };

        // Every secret against every candidate, without stopping at the first match.
        let mut ok = Choice::from(0);
        for secret in &self.secrets {
            let mac = compute_mac(self.algorithm, secret, &parts);
            for candidate in &candidates {
                ok |= mac.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if !bool::from(ok) {
            return Err(AuthError::BadSignature {
                header: self.header.as_str().to_owned(),
                secrets: self.secrets.len(),
                candidates: candidates.len(),
            });
        }

        // The replay key: the sender's delivery id, or a timestamp plus a digest of the body.
        if id.is_none() {
            if let Some(h) = &self.delivery_id_header {
                id = Some(self.delivery_id(headers, h)?);
            } else if let Some(ts) = &ts_text {
                let digest = sha256(body);
                id = Some(format!("{ts}.{}", hex::encode(&digest[..16])));
            }
        }
        if let Some(key) = &id {
            let window = self.replay_window();
            // Keep the key until the request's timestamp can no longer pass either.
            let now_expiry = now + window;
            let expires = match &timestamp {
                Some((ts, _)) => {
                    let ts_expiry = unix_to_system(*ts) + self.tolerance;
                    now_expiry.max(ts_expiry)
                }
                None => now_expiry,
            };
            let mut table = self
                .replay
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !table.insert(key, now, expires) {
                return Err(AuthError::Replayed {
                    delivery_id: key.clone(),
                    window_secs: window.as_secs(),
                });
            }
        }
        Ok(Verified { delivery_id: id })
    }

    fn replay_window(&self) -> Duration {
        if self.timestamp_header.is_some() || self.layout == Layout::Stripe {
            self.tolerance
        } else {
            UNTIMESTAMPED_REPLAY_WINDOW
        }
    }

    fn malformed_stripe(&self, found: &str) -> AuthError {
        AuthError::Malformed {
            header: self.header.as_str().to_owned(),
            expected: "t=<unix time>,v1=<hex>[,v1=<hex>…]".to_owned(),
            found: found.to_owned(),
        }
    }

    /// Decodes `<prefix><signature>`; the prefix is matched case-insensitively.
    fn decode_prefixed(
        &self,
        value: &str,
        prefix: &str,
        encoding: SignatureEncoding,
    ) -> Result<Vec<u8>, AuthError> {
        let value = value.trim();
        let (enc_name, alg_len) = match encoding {
            SignatureEncoding::Hex => ("hex", "hex"),
            SignatureEncoding::Base64 => ("base64", "base64"),
        };
        let malformed = |found: String| AuthError::Malformed {
            header: self.header.as_str().to_owned(),
            expected: if prefix.is_empty() {
                format!("a {alg_len} signature")
            } else {
                format!("{prefix:?} followed by a {alg_len} signature")
            },
            found,
        };
        let rest = match value.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
            _ => {
                return Err(malformed(format!(
                    "a value of {} characters without that prefix",
                    value.len()
                )));
            }
        };
        let decoded = match encoding {
            SignatureEncoding::Hex => hex::decode(rest).ok(),
            SignatureEncoding::Base64 => BASE64.decode(rest).ok(),
        };
        decoded.ok_or_else(|| {
            malformed(format!(
                "{} characters that are not valid {enc_name}",
                rest.len()
            ))
        })
    }

    fn timestamp(&self, headers: &HeaderMap, h: &HeaderName) -> Result<i64, AuthError> {
        let malformed = |found: &str| AuthError::Malformed {
            header: h.as_str().to_owned(),
            expected: "a Unix time in seconds".to_owned(),
            found: found.to_owned(),
        };
        let value = headers.get(h).ok_or_else(|| malformed("no such header"))?;
        let value = value
            .to_str()
            .map_err(|_| malformed("non-ASCII characters"))?;
        parse_unix(value).ok_or_else(|| {
            if value.len() <= 32 {
                malformed(&format!("{value:?}"))
            } else {
                malformed(&format!("a value of {} characters", value.len()))
            }
        })
    }

    fn delivery_id(&self, headers: &HeaderMap, h: &HeaderName) -> Result<String, AuthError> {
        let malformed = |found: &str| AuthError::Malformed {
            header: h.as_str().to_owned(),
            expected: "a non-empty delivery id".to_owned(),
            found: found.to_owned(),
        };
        let value = headers.get(h).ok_or_else(|| malformed("no such header"))?;
        let value = value
            .to_str()
            .map_err(|_| malformed("non-ASCII or control characters"))?
            .trim();
        if value.is_empty() {
            return Err(malformed("an empty value"));
        }
        Ok(value.to_owned())
    }

    fn check_fresh(&self, ts: i64, field: &str, now: SystemTime) -> Result<(), AuthError> {
        let now_ms = system_to_unix_ms(now);
        let diff_ms = now_ms - i128::from(ts) * 1000;
        let tolerance_ms = self.tolerance.as_millis() as i128;
        if diff_ms.abs() > tolerance_ms {
            let secs = diff_ms.abs() / 1000;
            let skew = if diff_ms > 0 {
                format!("{secs}s in the past")
            } else {
                format!("{secs}s in the future")
            };
            return Err(AuthError::StaleTimestamp {
                header: field.to_owned(),
                tolerance_secs: self.tolerance.as_secs(),
                skew,
            });
        }
        Ok(())
    }
}

fn parse_unix(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn system_to_unix_ms(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

fn unix_to_system(ts: i64) -> SystemTime {
    // `parse_unix` only yields non-negative values of at most 12 digits.
    UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

fn compute_mac(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Replay keys accepted recently. Keys are stored as SHA-256 digests, so memory is bounded by
/// the capacity whatever the sender puts in its id header.
struct ReplayTable {
    capacity: usize,
    /// Digest of the key → (expiry, insertion sequence number).
    entries: HashMap<[u8; 32], (SystemTime, u64)>,
    /// Insertion order; an element is stale when its sequence number no longer matches.
    order: VecDeque<(u64, [u8; 32])>,
    next_seq: u64,
}

impl ReplayTable {
    fn new(capacity: usize) -> Self {
        ReplayTable {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Records `key` until `expires`; false if it is already recorded and not yet expired.
    fn insert(&mut self, key: &str, now: SystemTime, expires: SystemTime) -> bool {
        let digest = sha256(key.as_bytes());
        if let Some((expiry, _)) = self.entries.get(&digest) {
            if *expiry > now {
                return false;
            }
        }
        self.prune(now);
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some((seq, d)) => {
                    if self.entries.get(&d).is_some_and(|(_, s)| *s == seq) {
                        self.entries.remove(&d);
                    }
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(digest, (expires, seq));
        self.order.push_back((seq, digest));
        if self.order.len() > 2 * self.capacity.max(16) {
            // Drop elements left behind by `forget` and re-inserts.
            let entries = &self.entries;
            self.order
                .retain(|(seq, d)| entries.get(d).is_some_and(|(_, s)| s == seq));
        }
        true
    }

    /// Drops expired or stale entries from the front of the insertion order.
    fn prune(&mut self, now: SystemTime) {
        while let Some((seq, d)) = self.order.front().copied() {
            match self.entries.get(&d) {
                Some((expiry, s)) if *s == seq => {
                    if *expiry > now {
                        break;
                    }
                    self.entries.remove(&d);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    fn forget(&mut self, key: &str) {
        self.entries.remove(&sha256(key.as_bytes()));
    }
}
