//! API keys: a named header (default `X-API-Key`) or, when the spec opts in, a query
//! parameter, compared as SHA-256 digests in constant time with every configured key (all of
//! them are compared, whether or not one matched, so timing says nothing about which).

use http::header::{HeaderMap, HeaderName};
use inputbot_api::{
    auth::{ApiKeyAuth, DEFAULT_API_KEY_HEADER},
    common::SecretKeyRef,
};
use serde_json::json;
use subtle::{Choice, ConstantTimeEq};

use super::{AuthConfigError, AuthError, Verified, header_name, resolve, sha256};

pub(super) struct ApiKey {
    pub(super) header: HeaderName,
    pub(super) query: Option<String>,
    /// Digest of each key, and the `secret/key` it came from (shown to CEL as `auth.key`).
    keys: Vec<([u8; 32], String)>,
}

impl ApiKey {
    pub(super) fn new(
        spec: &ApiKeyAuth,
        secret: &dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>,
    ) -> Result<Self, AuthConfigError> {
        let header = header_name(
            "apiKey.header",
            spec.header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER),
        )?;
        if spec.secret_refs.is_empty() {
            return Err(AuthConfigError::Invalid {
                field: "apiKey.secretRefs".into(),
                message: "expected at least one key".into(),
            });
        }
        let mut keys = Vec::new();
        for (i, r) in spec.secret_refs.iter().enumerate() {
            let value = resolve(secret, format!("apiKey.secretRefs[{i}]"), r)?;
            keys.push((sha256(&value), format!("{}/{}", r.name, r.key)));
        }
        Ok(Self {
            header,
            query: spec.query_parameter.clone(),
            keys,
        })
    }

    pub(super) fn keys(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Verified, AuthError> {
        let given = match headers.get(&self.header) {
            Some(v) => v.as_bytes().to_vec(),
            None => match self.in_query(query) {
                Some(v) => v,
                None => {
                    return Err(AuthError::MissingApiKey {
                        expected: match &self.query {
                            Some(q) => format!(
                                "a {} header or a {q:?} query parameter",
                                self.header.as_str()
                            ),
                            None => format!("a {} header", self.header.as_str()),
                        },
                    });
                }
            },
        };
        let digest = sha256(&given);
        let mut matched: Option<&str> = None;
        let mut any = Choice::from(0);
        for (key, label) in &self.keys {
            let eq = digest.ct_eq(key);
            any |= eq;
            if bool::from(eq) {
                matched = Some(label);
            }
        }
        match (bool::from(any), matched) {
            (true, Some(label)) => Ok(Verified {
                auth: Some(json!({"scheme": "apiKey", "key": label})),
                ..Verified::default()
            }),
            _ => Err(AuthError::BadCredentials {
                what: "the API key",
            }),
        }
    }

    /// The key in the query string, when the spec allows one there.
    fn in_query(&self, query: Option<&str>) -> Option<Vec<u8>> {
        let name = self.query.as_deref()?;
        url::form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned().into_bytes())
    }
}
