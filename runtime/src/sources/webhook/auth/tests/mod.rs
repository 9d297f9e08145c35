//! Tests of the webhook authenticator: the helpers and the properties every scheme shares
//! here; HMAC signatures in `signatures.rs`, Bearer and Basic credentials in `credentials.rs`,
//! JWTs with shared secrets and API keys in `tokens.rs` (JWKS and public keys: `runtime/tests/jwt_auth.rs`).

mod credentials;
mod signatures;
mod tokens;

use std::{collections::HashMap, time::UNIX_EPOCH};

use ::hmac::{Hmac, Mac};
use base64::Engine as _;
use inputbot_api::bot::{HmacAlgorithm, HmacAuth, HmacPreset, SignatureEncoding};

use super::*;
use inputbot_api::bot::{BasicAuth, BearerAuth, NoAuth};
use inputbot_api::common::Duration as SpecDuration;

/// 2023-11-14T22:13:20Z, the "now" of most tests.
const NOW: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn sref(name: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.to_owned(),
        key: "key".to_owned(),
    }
}

fn hmac_spec(preset: HmacPreset) -> HmacAuth {
    HmacAuth {
        preset: Some(preset),
        secret_ref: sref("primary"),
        additional_secret_refs: Vec::new(),
        header: None,
        algorithm: None,
        encoding: None,
        prefix: None,
        timestamp_header: None,
        tolerance: None,
        delivery_id_header: None,
    }
}

fn hmac_auth(h: HmacAuth) -> WebhookAuth {
    WebhookAuth {
        hmac: Some(h),
        bearer: None,
        basic: None,
        jwt: None,
        api_key: None,
        none: None,
    }
}

/// Builds an authenticator whose secrets are looked up by ref name.
fn build(
    auth: &WebhookAuth,
    secrets: &[(&str, &[u8])],
) -> Result<WebhookAuthenticator, AuthConfigError> {
    let map: HashMap<String, Vec<u8>> = secrets
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .collect();
    WebhookAuthenticator::new(auth, &|r: &SecretKeyRef| {
        map.get(&r.name)
            .cloned()
            .ok_or_else(|| format!("secret {:?} has no key {:?}", r.name, r.key))
    })
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

fn h(pairs: &[(&str, &str)]) -> HeaderMap {
    headers(
        &pairs
            .iter()
            .map(|(n, v)| (*n, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

/// Every HMAC flavour the tests exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Github,
    Stripe,
    Slack,
    Shopify,
    StandardWebhooks,
    /// sha512, base64, prefix `sha512=`, delivery id `x-delivery`.
    Generic,
    /// sha1, hex, timestamp header `x-timestamp`, tolerance 2m, no delivery id.
    GenericTimestamped,
}

const KINDS: [Kind; 7] = [
    Kind::Github,
    Kind::Stripe,
    Kind::Slack,
    Kind::Shopify,
    Kind::StandardWebhooks,
    Kind::Generic,
    Kind::GenericTimestamped,
];

impl Kind {
    fn spec(self) -> HmacAuth {
        match self {
            Kind::Github => hmac_spec(HmacPreset::Github),
            Kind::Stripe => hmac_spec(HmacPreset::Stripe),
            Kind::Slack => hmac_spec(HmacPreset::Slack),
            Kind::Shopify => hmac_spec(HmacPreset::Shopify),
            Kind::StandardWebhooks => hmac_spec(HmacPreset::StandardWebhooks),
            Kind::Generic => HmacAuth {
                header: Some("X-Signature".to_owned()),
                algorithm: Some(HmacAlgorithm::Sha512),
                encoding: Some(SignatureEncoding::Base64),
                prefix: Some("sha512=".to_owned()),
                delivery_id_header: Some("X-Delivery".to_owned()),
                ..hmac_spec(HmacPreset::Generic)
            },
            Kind::GenericTimestamped => HmacAuth {
                preset: None,
                header: Some("x-sig".to_owned()),
                algorithm: Some(HmacAlgorithm::Sha1),
                timestamp_header: Some("x-timestamp".to_owned()),
                tolerance: Some(SpecDuration::from("2m")),
                ..hmac_spec(HmacPreset::Generic)
            },
        }
    }

    fn auth(self) -> WebhookAuth {
        hmac_auth(self.spec())
    }

    fn tolerance(self) -> Option<u64> {
        match self {
            Kind::Stripe | Kind::Slack | Kind::StandardWebhooks => Some(300),
            Kind::GenericTimestamped => Some(120),
            Kind::Github | Kind::Shopify | Kind::Generic => None,
        }
    }

    fn signature_header(self) -> &'static str {
        match self {
            Kind::Github => "x-hub-signature-256",
            Kind::Stripe => "stripe-signature",
            Kind::Slack => "x-slack-signature",
            Kind::Shopify => "x-shopify-hmac-sha256",
            Kind::StandardWebhooks => "webhook-signature",
            Kind::Generic => "x-signature",
            Kind::GenericTimestamped => "x-sig",
        }
    }

    /// The secret as stored: standard webhooks keys are written `whsec_<base64>`.
    fn stored(self, key: &[u8]) -> Vec<u8> {
        if self == Kind::StandardWebhooks {
            format!("whsec_{}", BASE64.encode(key)).into_bytes()
        } else {
            key.to_vec()
        }
    }

    /// The MAC the sender computes, written independently of the code under test.
    fn mac(self, key: &[u8], body: &[u8], ts: u64, id: &str) -> Vec<u8> {
        let ts = ts.to_string();
        let content = match self {
            Kind::Github | Kind::Shopify | Kind::Generic => body.to_vec(),
            Kind::Stripe | Kind::GenericTimestamped => [ts.as_bytes(), b".", body].concat(),
            Kind::Slack => [b"v0:", ts.as_bytes(), b":", body].concat(),
            Kind::StandardWebhooks => [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat(),
        };
        match self {
            Kind::Generic => {
                let mut m = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
                m.update(&content);
                m.finalize().into_bytes().to_vec()
            }
            Kind::GenericTimestamped => {
                let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
                m.update(&content);
                m.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
                m.update(&content);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// How the sender writes `mac` into its signature header.
    fn encode(self, mac: &[u8]) -> String {
        match self {
            Kind::Github => format!("sha256={}", hex::encode(mac)),
            Kind::Stripe | Kind::GenericTimestamped => hex::encode(mac),
            Kind::Slack => format!("v0={}", hex::encode(mac)),
            Kind::Shopify => BASE64.encode(mac),
            Kind::StandardWebhooks => format!("v1,{}", BASE64.encode(mac)),
            Kind::Generic => format!("sha512={}", BASE64.encode(mac)),
        }
    }

    /// A request as the sender would make it, with `mac` as its signature.
    fn request_with_mac(self, mac: &[u8], ts: u64, id: &str) -> HeaderMap {
        let sig = self.encode(mac);
        let ts = ts.to_string();
        let id = id.to_owned();
        headers(&match self {
            Kind::Github => vec![("X-Hub-Signature-256", sig), ("X-GitHub-Delivery", id)],
            Kind::Stripe => vec![("Stripe-Signature", format!("t={ts},v1={sig}"))],
            Kind::Slack => vec![
                ("X-Slack-Signature", sig),
                ("X-Slack-Request-Timestamp", ts),
            ],
            Kind::Shopify => vec![("X-Shopify-Hmac-Sha256", sig), ("X-Shopify-Webhook-Id", id)],
            Kind::StandardWebhooks => vec![
                ("webhook-id", id),
                ("webhook-timestamp", ts),
                ("webhook-signature", sig),
            ],
            Kind::Generic => vec![("X-Signature", sig), ("X-Delivery", id)],
            Kind::GenericTimestamped => vec![("X-Sig", sig), ("X-Timestamp", ts)],
        })
    }

    fn request(self, key: &[u8], body: &[u8], ts: u64, id: &str) -> HeaderMap {
        self.request_with_mac(&self.mac(key, body, ts, id), ts, id)
    }
}

const KEY: &[u8] = b"s3cr3t-primary-signing-key";
const OTHER_KEY: &[u8] = b"s3cr3t-rotated-signing-key";
const BODY: &[u8] = br#"{"action":"opened","number":7}"#;

fn authenticator(kind: Kind) -> WebhookAuthenticator {
    build(&kind.auth(), &[("primary", &kind.stored(KEY))]).unwrap()
}

/// Asserts that neither the message nor the debug form of an error contains any of the
/// forbidden strings (secrets and signatures), nor a 12-character piece of one.
fn assert_clean(err: &dyn std::fmt::Debug, display: String, forbidden: &[String]) {
    let debug = format!("{err:?}");
    for text in [&display, &debug] {
        for f in forbidden {
            assert!(!text.contains(f.as_str()), "{text:?} contains {f:?}");
            if f.len() >= 12 {
                for start in 0..=f.len() - 12 {
                    if let Some(piece) = f.get(start..start + 12) {
                        assert!(!text.contains(piece), "{text:?} contains a piece of {f:?}");
                    }
                }
            }
        }
    }
}

/// Secrets, and every signature of `BODY`/`tampered` in every encoding the tests use.
fn forbidden(kind: Kind, bodies: &[&[u8]], ts: u64, id: &str) -> Vec<String> {
    let mut out = vec![
        String::from_utf8_lossy(KEY).into_owned(),
        String::from_utf8_lossy(OTHER_KEY).into_owned(),
        String::from_utf8_lossy(&kind.stored(KEY)).into_owned(),
    ];
    for key in [KEY, OTHER_KEY] {
        for body in bodies {
            let mac = kind.mac(key, body, ts, id);
            out.push(hex::encode(&mac));
            out.push(BASE64.encode(&mac));
            out.push(kind.encode(&mac));
        }
    }
    out
}

#[test]
fn none_passes_everything() {
    let auth = build(
        &WebhookAuth {
            hmac: None,
            bearer: None,
            basic: None,
            jwt: None,
            api_key: None,
            none: Some(NoAuth {}),
        },
        &[],
    )
    .unwrap();
    let v = auth.verify(&HeaderMap::new(), BODY, at(NOW)).unwrap();
    assert_eq!(v.delivery_id, None);
    auth.forget("anything");
}

#[test]
fn reasons_and_statuses_are_stable() {
    let s = String::new;
    let table: Vec<(AuthError, &str, u16)> = vec![
        (
            AuthError::MissingSignature { header: s() },
            "missing_signature",
            401,
        ),
        (
            AuthError::BadSignature {
                header: s(),
                secrets: 1,
                candidates: 1,
            },
            "bad_signature",
            401,
        ),
        (
            AuthError::StaleTimestamp {
                header: s(),
                tolerance_secs: 1,
                skew: s(),
            },
            "stale_timestamp",
            401,
        ),
        (
            AuthError::Replayed {
                delivery_id: s(),
                window_secs: 1,
            },
            "replayed",
            409,
        ),
        (
            AuthError::Malformed {
                header: s(),
                expected: s(),
                found: s(),
            },
            "malformed",
            400,
        ),
        (
            AuthError::MissingCredentials {
                expected: "",
                found: s(),
            },
            "missing_credentials",
            401,
        ),
        (
            AuthError::BadCredentials { what: "" },
            "bad_credentials",
            401,
        ),
    ];
    for (err, reason, status) in table {
        assert_eq!(err.reason(), reason);
        assert_eq!(err.status().as_u16(), status);
    }
}

#[test]
fn configuration_errors_name_the_ref_never_the_value() {
    let none = WebhookAuth {
        hmac: None,
        bearer: None,
        basic: None,
        jwt: None,
        api_key: None,
        none: None,
    };
    let err = build(&none, &[]).unwrap_err();
    assert!(
        matches!(err, AuthConfigError::NotExactlyOne { .. }),
        "{err}"
    );
    let two = WebhookAuth {
        none: Some(NoAuth {}),
        ..Kind::Github.auth()
    };
    let err = build(&two, &[]).unwrap_err();
    assert!(err.to_string().contains("hmac and none"), "{err}");

    let err = build(&Kind::Github.auth(), &[]).unwrap_err();
    assert!(matches!(err, AuthConfigError::Secret { .. }), "{err}");
    assert!(err.to_string().contains("\"primary\""), "{err}");
    assert!(err.to_string().contains("hmac.secretRef"), "{err}");

    let spec = HmacAuth {
        additional_secret_refs: vec![sref("empty")],
        ..Kind::Github.spec()
    };
    let err = build(&hmac_auth(spec), &[("primary", KEY), ("empty", b"")]).unwrap_err();
    assert!(matches!(err, AuthConfigError::EmptySecret { .. }), "{err}");
    assert!(err.to_string().contains("additionalSecretRefs[0]"), "{err}");

    let bad = b"whsec_not*base64*s3cr3t";
    let err = build(&Kind::StandardWebhooks.auth(), &[("primary", bad)]).unwrap_err();
    assert!(
        matches!(err, AuthConfigError::SecretEncoding { .. }),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err}");

    let err = build(
        &hmac_auth(hmac_spec(HmacPreset::Generic)),
        &[("primary", KEY)],
    )
    .unwrap_err();
    assert!(matches!(err, AuthConfigError::MissingHeader), "{err}");

    let spec = HmacAuth {
        header: Some("bad header".to_owned()),
        ..hmac_spec(HmacPreset::Generic)
    };
    let err = build(&hmac_auth(spec), &[("primary", KEY)]).unwrap_err();
    assert!(matches!(err, AuthConfigError::HeaderName { .. }), "{err}");

    for tolerance in ["5 minutes", "0s"] {
        let spec = HmacAuth {
            tolerance: Some(SpecDuration::from(tolerance)),
            ..hmac_spec(HmacPreset::Slack)
        };
        let err = build(&hmac_auth(spec), &[("primary", KEY)]).unwrap_err();
        assert!(matches!(err, AuthConfigError::Tolerance { .. }), "{err}");
    }

    let spec = HmacAuth {
        algorithm: Some(HmacAlgorithm::Sha1),
        ..hmac_spec(HmacPreset::Stripe)
    };
    let err = build(&hmac_auth(spec), &[("primary", KEY)]).unwrap_err();
    assert!(
        matches!(
            err,
            AuthConfigError::FixedByPreset {
                field: "algorithm",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn debug_output_omits_secrets() {
    for kind in KINDS {
        let debug = format!("{:?}", authenticator(kind));
        assert!(debug.contains(kind.signature_header()), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(!debug.contains(&hex::encode(KEY)), "{debug}");
    }
}

#[test]
fn the_authenticator_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<WebhookAuthenticator>();
    check::<std::sync::Arc<WebhookAuthenticator>>();
}

/// SplitMix64: a deterministic generator for the property-style test.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

#[test]
fn any_single_bit_flip_of_body_signature_or_secret_fails_over_200_random_cases() {
    let mut rng = SplitMix(0x1b0_7e57);
    for i in 0..200 {
        let kind = KINDS[i % KINDS.len()];
        let key_len = 1 + rng.below(64);
        let key = rng.bytes(key_len);
        let body_len = 1 + rng.below(300);
        let body = rng.bytes(body_len);
        let id = format!("d-{i}");
        let ts = NOW - rng.below(60) as u64;
        let auth = build(&kind.auth(), &[("primary", &kind.stored(&key))]).unwrap();
        let mac = kind.mac(&key, &body, ts, &id);

        // A flipped body bit.
        let bad_body = flip(&body, rng.below(body.len() * 8));
        let req = kind.request_with_mac(&mac, ts, &id);
        let err = auth.verify(&req, &bad_body, at(NOW)).unwrap_err();
        assert_eq!(err.reason(), "bad_signature", "case {i} {kind:?}: {err}");

        // A flipped signature bit.
        let bad_mac = flip(&mac, rng.below(mac.len() * 8));
        let req = kind.request_with_mac(&bad_mac, ts, &id);
        let err = auth.verify(&req, &body, at(NOW)).unwrap_err();
        assert_eq!(err.reason(), "bad_signature", "case {i} {kind:?}: {err}");

        // A flipped secret bit.
        let bad_key = flip(&key, rng.below(key.len() * 8));
        let req = kind.request(&bad_key, &body, ts, &id);
        let err = auth.verify(&req, &body, at(NOW)).unwrap_err();
        assert_eq!(err.reason(), "bad_signature", "case {i} {kind:?}: {err}");

        // None of those was recorded: the genuine request passes, once.
        let req = kind.request_with_mac(&mac, ts, &id);
        auth.verify(&req, &body, at(NOW))
            .unwrap_or_else(|e| panic!("case {i} {kind:?}: {e}"));
        assert_eq!(
            auth.verify(&req, &body, at(NOW)).unwrap_err().reason(),
            "replayed",
            "case {i} {kind:?}"
        );
    }
}
