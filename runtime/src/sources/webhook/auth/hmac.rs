//! HMAC signatures: the verifier built from a preset (see [`presets`](super::presets)) and the
//! spec's overrides, which decodes the signature candidates, checks the signed timestamp's
//! freshness, compares every configured secret against every candidate in constant time, and
//! records the replay key once the signature verified.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName};
use inputbot_api::{
    bot::{HmacAlgorithm, HmacAuth, HmacPreset, SignatureEncoding},
    common::SecretKeyRef,
};
use subtle::{Choice, ConstantTimeEq};

use super::{
    AuthConfigError, AuthError, BASE64, DEFAULT_TOLERANCE, REPLAY_CAPACITY,
    UNTIMESTAMPED_REPLAY_WINDOW, Verified, header_name, non_empty,
    presets::{self, Layout, Preset},
    replay::{ReplayTable, Seen},
    resolve, sha256,
};

pub(super) struct HmacVerifier {
    pub(super) preset: &'static str,
    pub(super) layout: Layout,
    pub(super) header: HeaderName,
    pub(super) algorithm: HmacAlgorithm,
    pub(super) encoding: SignatureEncoding,
    pub(super) prefix: String,
    pub(super) timestamp_header: Option<HeaderName>,
    pub(super) tolerance: Duration,
    pub(super) delivery_id_header: Option<HeaderName>,
    pub(super) secrets: Vec<Vec<u8>>,
    pub(super) replay: Mutex<ReplayTable>,
}

impl HmacVerifier {
    pub(super) fn new(
        h: &HmacAuth,
        secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    ) -> Result<Self, AuthConfigError> {
        let Preset {
            name,
            layout,
            header,
            algorithm,
            encoding,
            prefix,
            timestamp_header: ts_header,
            delivery_id_header: id_header,
        } = *presets::preset(h.preset.unwrap_or(HmacPreset::Generic));
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
            if layout == Layout::StandardWebhooks
                && let Some(encoded) = value.strip_prefix(b"whsec_")
            {
                value = BASE64
                    .decode(encoded)
                    .map_err(|_| AuthConfigError::SecretEncoding {
                        field: field.clone(),
                        name: r.name.clone(),
                        key: r.key.clone(),
                    })?;
                value = non_empty(value, field, r)?;
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

    pub(super) fn verify(
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

        // The replay key is what the signature covers, never an unsigned header (a captured
        // request resent with a new delivery id must still be a repeat): the signed id of
        // standard webhooks, else the signed timestamp and a digest of the body, else the
        // digest of the body alone. The delivery id header, when configured, must be present.
        if id.is_none() {
            if let Some(h) = &self.delivery_id_header {
                self.delivery_id(headers, h)?;
            }
            let digest = hex::encode(&sha256(body)[..16]);
            id = Some(match &ts_text {
                Some(ts) => format!("{ts}.{digest}"),
                None => format!("body.{digest}"),
            });
        }
        let mut replay_until = None;
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
            replay_until = Some(expires);
            let mut table = self
                .replay
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match table.insert(key, now, expires) {
                Seen::New => {}
                Seen::Accepted => {
                    return Ok(Verified {
                        delivery_id: id,
                        repeat: true,
                        replay_until,
                        auth: None,
                    });
                }
                Seen::Pending => {
                    return Err(AuthError::Replayed {
                        delivery_id: key.clone(),
                        window_secs: window.as_secs(),
                    });
                }
            }
        }
        Ok(Verified {
            delivery_id: id,
            repeat: false,
            replay_until,
            auth: None,
        })
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
        let enc_name = match encoding {
            SignatureEncoding::Hex => "hex",
            SignatureEncoding::Base64 => "base64",
        };
        let malformed = |found: String| AuthError::Malformed {
            header: self.header.as_str().to_owned(),
            expected: if prefix.is_empty() {
                format!("a {enc_name} signature")
            } else {
                format!("{prefix:?} followed by a {enc_name} signature")
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
