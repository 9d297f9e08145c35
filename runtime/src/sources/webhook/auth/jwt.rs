//! JSON Web Tokens: `Authorization: Bearer <JWT>`, verified with the `jsonwebtoken` crate
//! against keys from a JWKS URL ([`super::jwks`]), public keys from Secrets, or shared secrets
//! (HS256/384/512 only).
//!
//! The order of checks, each failure a `401` with its own reason label:
//! size (`token_too_large`, before any decoding) → header (`token_malformed`; `alg: none` does
//! not parse) → the algorithm allowlist (`token_algorithm`) → the key, by `kid` (`token_unknown_key`;
//! the JWKS is fetched again first, at most once per `minRefreshInterval`) → the signature with
//! keys of the algorithm's family only (`token_signature`: an HS256 token is never checked with
//! a public key) → `iss` (`token_issuer`) → `aud` (`token_audience`) → `exp`, `nbf`, `iat`
//! against the request's time with the clock skew (`token_expired`, `token_not_yet_valid`,
//! `token_issued_in_future`). Keys that cannot be had at all (the JWKS never answered) fail
//! closed: `503`, reason `keys_unavailable`.

use std::{sync::Arc, time::Duration, time::SystemTime};

use http::header::HeaderMap;
use inputbot_api::{
    auth::{
        DEFAULT_CLOCK_SKEW_SECS, DEFAULT_JWKS_CACHE_TTL_SECS, DEFAULT_JWKS_MAX_BYTES,
        DEFAULT_JWKS_MIN_REFRESH_SECS, DEFAULT_JWKS_TIMEOUT_SECS, DEFAULT_MAX_TOKEN_BYTES,
        JwtAlgorithm, JwtAuth,
    },
    common::SecretKeyRef,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::Jwk};
use serde_json::{Value, json};

use super::{AuthConfigError, AuthError, Verified, authorization, jwks::Jwks, resolve};

/// One verification key.
pub(super) struct Key {
    /// The JWK's `kid`, when it has one.
    pub(super) kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl Key {
    /// A key from a JWK; symmetric (`oct`) keys and encryption keys are never used.
    pub(super) fn from_jwk(jwk: &Jwk) -> Option<Key> {
        use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            || matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
        Some(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        })
    }
}

/// A set of keys (a JWKS document, or the keys of the Secrets).
#[derive(Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
}

impl KeySet {
    /// The keys of a JWKS document (`{"keys": [...]}`); keys that cannot be used are skipped.
    pub(super) fn from_jwks(doc: &Value) -> Result<KeySet, String> {
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err(
                "expected a JWKS document {\"keys\": [...]}, found another JSON value".into(),
            );
        };
        let keys: Vec<Key> = keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|jwk| Key::from_jwk(&jwk))
            .collect();
        Ok(KeySet { keys })
    }

    /// Whether a token naming `kid` has a key here (a key without an id counts).
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.kid.as_deref().is_none_or(|id| id == kid))
    }

    /// The keys that may verify a token with this `alg` and `kid`.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> impl Iterator<Item = &Key> {
        let family = alg.family();
        self.keys.iter().filter(move |k| {
            k.key.family() == family
                && k.alg.is_none_or(|a| a == alg)
                // A key without an id may verify any token; a key with one only tokens naming it.
                && match (kid, k.kid.as_deref()) {
                    (Some(wanted), Some(id)) => wanted == id,
                    _ => true,
                }
        })
    }
}

enum Keys {
    Static(Arc<KeySet>),
    Jwks(Box<Jwks>),
}

pub(super) struct JwtVerifier {
    pub(super) issuer: String,
    pub(super) audience: Vec<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) skew: Duration,
    pub(super) max_token_bytes: usize,
    keys: Keys,
}

impl JwtVerifier {
    pub(super) fn source(&self) -> String {
        match &self.keys {
            Keys::Static(set) => format!("{} key(s) from Secrets", set.keys.len()),
            Keys::Jwks(j) => format!("JWKS {}", j.display_url()),
        }
    }

    pub(super) fn new(
        spec: &JwtAuth,
        secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    ) -> Result<Self, AuthConfigError> {
        let invalid = |field: &str, message: String| AuthConfigError::Invalid {
            field: format!("jwt.{field}"),
            message,
        };
        if spec.issuer.is_empty() {
            return Err(invalid("issuer", "expected the issuer, found none".into()));
        }
        if spec.audience.is_empty() {
            return Err(invalid("audience", "expected at least one audience".into()));
        }
        let algorithms: Vec<JwtAlgorithm> = if spec.algorithms.is_empty() {
            JwtAlgorithm::PUBLIC_KEY.to_vec()
        } else {
            spec.algorithms.clone()
        };
        let hmac = algorithms.iter().any(|a| a.is_hmac());
        let shared = !spec.shared_secret_refs.is_empty();
        if hmac != shared || (shared && !algorithms.iter().all(|a| a.is_hmac())) {
            return Err(invalid(
                "algorithms",
                "HS256, HS384 and HS512 go with sharedSecretRefs only, and sharedSecretRefs with them only".into(),
            ));
        }
        let duration = |d: &Option<inputbot_api::common::Duration>, field: &str, default: u64| {
            d.as_ref()
                .map(|d| d.to_std().map_err(|e| invalid(field, e)))
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        let skew = duration(&spec.clock_skew, "clockSkew", DEFAULT_CLOCK_SKEW_SECS)?;
        let keys = match (&spec.jwks, spec.key_secret_refs.is_empty(), shared) {
            (Some(jwks), true, false) => {
                let timeout = duration(&jwks.timeout, "jwks.timeout", DEFAULT_JWKS_TIMEOUT_SECS)?;
                let ttl = duration(
                    &jwks.cache_ttl,
                    "jwks.cacheTTL",
                    DEFAULT_JWKS_CACHE_TTL_SECS,
                )?;
                let min_refresh = duration(
                    &jwks.min_refresh_interval,
                    "jwks.minRefreshInterval",
                    DEFAULT_JWKS_MIN_REFRESH_SECS,
                )?;
                let max_bytes = jwks.max_bytes.unwrap_or(DEFAULT_JWKS_MAX_BYTES) as usize;
                Keys::Jwks(Box::new(Jwks::new(
                    &jwks.url,
                    timeout,
                    ttl,
                    min_refresh,
                    max_bytes,
                )?))
            }
            (None, false, false) => {
                let mut set = KeySet::default();
                for (i, r) in spec.key_secret_refs.iter().enumerate() {
                    let field = format!("jwt.keySecretRefs[{i}]");
                    let value = resolve(secret, field.clone(), r)?;
                    let keys = public_keys(&value).map_err(|message| AuthConfigError::Invalid {
                        field: format!("{field} (secret {:?}, key {:?})", r.name, r.key),
                        message,
                    })?;
                    set.keys.extend(keys);
                }
                Keys::Static(Arc::new(set))
            }
            (None, true, true) => {
                let mut set = KeySet::default();
                for (i, r) in spec.shared_secret_refs.iter().enumerate() {
                    let value = resolve(secret, format!("jwt.sharedSecretRefs[{i}]"), r)?;
                    let key = DecodingKey::from_secret(&value).map_err(|e| {
                        invalid(&format!("sharedSecretRefs[{i}]"), format!("unusable: {e}"))
                    })?;
                    set.keys.push(Key {
                        kid: None,
                        alg: None,
                        key,
                    });
                }
                Keys::Static(Arc::new(set))
            }
            _ => {
                return Err(AuthConfigError::Invalid {
                    field: "jwt".into(),
                    message: "set exactly one of jwks, keySecretRefs or sharedSecretRefs".into(),
                });
            }
        };
        Ok(Self {
            issuer: spec.issuer.clone(),
            audience: spec.audience.clone(),
            algorithms: algorithms.into_iter().map(algorithm).collect(),
            skew,
            max_token_bytes: spec.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES) as usize,
            keys,
        })
    }

    /// Verifies the request's token, fetching the JWKS first when the token's key is not at
    /// hand.
    pub(super) async fn check(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let token = self.token(headers)?;
        let header = header(token)?;
        self.allowed(header.alg)?;
        let keys = match &self.keys {
            Keys::Static(set) => set.clone(),
            Keys::Jwks(jwks) => jwks.keys_for(header.kid.as_deref()).await?,
        };
        self.verify_with(token, &header, &keys, now)
    }

    /// Verifies with the keys at hand, without fetching (the JWKS as last fetched).
    pub(super) fn verify(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let token = self.token(headers)?;
        let header = header(token)?;
        self.allowed(header.alg)?;
        let keys = match &self.keys {
            Keys::Static(set) => set.clone(),
            Keys::Jwks(jwks) => jwks.cached(),
        };
        self.verify_with(token, &header, &keys, now)
    }

    fn token<'a>(&self, headers: &'a HeaderMap) -> Result<&'a str, AuthError> {
        let token = authorization(headers, "Bearer", "a Bearer JWT")?;
        if token.len() > self.max_token_bytes {
            return Err(AuthError::token(
                "token_too_large",
                format!(
                    "expected a token of at most {} bytes, found {} bytes",
                    self.max_token_bytes,
                    token.len()
                ),
            ));
        }
        Ok(token)
    }

    fn allowed(&self, alg: Algorithm) -> Result<(), AuthError> {
        if self.algorithms.contains(&alg) {
            return Ok(());
        }
        let allowed: Vec<String> = self.algorithms.iter().map(|a| format!("{a:?}")).collect();
        Err(AuthError::token(
            "token_algorithm",
            format!(
                "expected a token signed with one of {}, found {alg:?}",
                allowed.join(", ")
            ),
        ))
    }

    fn verify_with(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        keys: &KeySet,
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let kid = header.kid.as_deref();
        let mut candidates = keys.candidates(header.alg, kid).peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::token(
                "token_unknown_key",
                match kid {
                    Some(kid) => format!(
                        "expected a key id known to {}, found {kid:?}",
                        self.source()
                    ),
                    None => format!(
                        "expected a {:?} key among {}, found none",
                        header.alg,
                        self.source()
                    ),
                },
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // exp, nbf and iat are checked below against the request's time.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    self.times(&data.claims, now)?;
                    return Ok(Verified {
                        auth: Some(json!({"scheme": "jwt", "claims": data.claims})),
                        ..Verified::default()
                    });
                }
                // Another key of the same id or family may still verify it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(self.claim_error(e)),
            }
        }
        Err(AuthError::token(
            "token_signature",
            format!(
                "expected a {:?} signature made with {}, found one that matches none of them",
                header.alg,
                self.source()
            ),
        ))
    }

    fn claim_error(&self, e: jsonwebtoken::errors::Error) -> AuthError {
        match e.kind() {
            ErrorKind::InvalidIssuer => AuthError::token(
                "token_issuer",
                format!("expected iss {:?}, found another issuer", self.issuer),
            ),
            ErrorKind::InvalidAudience => AuthError::token(
                "token_audience",
                format!(
                    "expected aud to contain one of {:?}, found none of them",
                    self.audience
                ),
            ),
            ErrorKind::MissingRequiredClaim(c) => AuthError::token(
                "token_claims",
                format!("expected the {c} claim, found none"),
            ),
            ErrorKind::InvalidClaimFormat(c) => AuthError::token(
                "token_claims",
                format!("expected a valid {c} claim, found one of another type"),
            ),
            _ => AuthError::token(
                "token_malformed",
                format!("expected a JWT, found one that cannot be decoded ({e})"),
            ),
        }
    }

    /// `exp` (required), `nbf` and `iat` against `now`, with the clock skew.
    fn times(&self, claims: &Value, now: SystemTime) -> Result<(), AuthError> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let skew = self.skew.as_secs_f64();
        let time = |name: &str| -> Result<Option<f64>, AuthError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(_) => Err(AuthError::token(
                    "token_claims",
                    format!("expected {name} to be a number of seconds, found another type"),
                )),
            }
        };
        match time("exp")? {
            None => {
                return Err(AuthError::token(
                    "token_claims",
                    "expected the exp claim, found none",
                ));
            }
            Some(exp) if exp + skew < now => {
                return Err(AuthError::token(
                    "token_expired",
                    format!(
                        "expected a token valid now, found one that expired {}s ago (clock skew {}s)",
                        (now - exp).round(),
                        skew
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(nbf) = time("nbf")?
            && nbf - skew > now
        {
            return Err(AuthError::token(
                "token_not_yet_valid",
                format!(
                    "expected a token valid now, found one valid only in {}s (nbf, clock skew {}s)",
                    (nbf - now).round(),
                    skew
                ),
            ));
        }
        if let Some(iat) = time("iat")?
            && iat - skew > now
        {
            return Err(AuthError::token(
                "token_issued_in_future",
                format!(
                    "expected iat in the past, found one {}s in the future (clock skew {}s)",
                    (iat - now).round(),
                    skew
                ),
            ));
        }
        Ok(())
    }
}

fn header(token: &str) -> Result<jsonwebtoken::Header, AuthError> {
    jsonwebtoken::decode_header(token).map_err(|e| {
        let found = match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => {
                "a header whose alg is not a signature algorithm inputbot accepts (alg none never is)"
                    .to_owned()
            }
            _ => format!("something else ({e})"),
        };
        AuthError::token(
            "token_malformed",
            format!("expected a signed JWT (header.payload.signature), found {found}"),
        )
    })
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

/// The public keys in a Secret's value: a JWKS document, one JWK, or PEM public keys.
fn public_keys(value: &[u8]) -> Result<Vec<Key>, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "expected a JWKS document or PEM public keys, found binary data".to_owned())?
        .trim();
    if text.starts_with('{') {
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            format!("expected a JWKS document, found JSON that does not parse: {e}")
        })?;
        let set = if doc.get("keys").is_some() {
            KeySet::from_jwks(&doc)?
        } else {
            let jwk: Jwk = serde_json::from_value(doc)
                .map_err(|e| format!("expected a JWK, found one that does not parse: {e}"))?;
            KeySet {
                keys: Key::from_jwk(&jwk).into_iter().collect(),
            }
        };
        if set.keys.is_empty() {
            return Err(
                "expected at least one usable public key (RSA, EC or OKP), found none".into(),
            );
        }
        return Ok(set.keys);
    }
    let blocks = pem::parse_many(text).map_err(|e| {
        format!("expected a JWKS document or PEM public keys, found PEM that does not parse: {e}")
    })?;
    let mut keys = Vec::new();
    for block in blocks {
        let label = block.tag().to_owned();
        if label.contains("PRIVATE") {
            return Err("holds a private key; expected public keys only".into());
        }
        let encoded = pem::encode(&block);
        let pem = encoded.as_bytes();
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| {
                format!("the PEM block {label:?} is not an RSA, EC or Ed25519 public key")
            })?;
        keys.push(Key {
            kid: None,
            alg: None,
            key,
        });
    }
    if keys.is_empty() {
        return Err("expected a JWKS document or PEM public keys, found neither".into());
    }
    Ok(keys)
}
