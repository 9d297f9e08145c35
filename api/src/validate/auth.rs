//! The checks of the token and key schemes: `jwt` and `apiKey` webhook auth, and OAuth2
//! client credentials on http actions, enrich steps and poll sources.

use std::collections::BTreeSet;

use super::{Checker, fields::is_header_name};
use crate::{
    auth::{ApiKeyAuth, JwtAlgorithm, JwtAuth, OAuth2ClientCredentials},
    common::Headers,
};

impl Checker<'_> {
    pub(super) fn jwt(&mut self, f: &str, j: &JwtAuth) {
        if j.issuer.trim().is_empty() {
            self.error(
                &format!("{f}.issuer"),
                "expected the issuer every token must name in iss, found an empty string",
            );
        }
        if j.audience.is_empty() {
            self.error(
                &format!("{f}.audience"),
                "expected at least one accepted audience (aud)",
            );
        }
        for (i, aud) in j.audience.iter().enumerate() {
            if aud.trim().is_empty() {
                self.error(
                    &format!("{f}.audience[{i}]"),
                    "expected an audience, found an empty string",
                );
            }
        }
        let sources = [
            j.jwks.is_some(),
            !j.key_secret_refs.is_empty(),
            !j.shared_secret_refs.is_empty(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            self.error(
                f,
                format!(
                    "set exactly one of jwks, keySecretRefs or sharedSecretRefs, found {sources}"
                ),
            );
        }
        if let Some(jwks) = &j.jwks {
            let f = format!("{f}.jwks");
            self.url(&format!("{f}.url"), &jwks.url, false);
            self.positive_duration(&format!("{f}.timeout"), jwks.timeout.as_ref());
            self.positive_duration(&format!("{f}.cacheTTL"), jwks.cache_ttl.as_ref());
            self.duration(
                &format!("{f}.minRefreshInterval"),
                jwks.min_refresh_interval.as_ref(),
            );
        }
        for (i, r) in j.key_secret_refs.iter().enumerate() {
            let field = format!("{f}.keySecretRefs[{i}]");
            self.secret(&field, r);
            let ns = self.namespace.clone();
            if let Some(value) = self.set.secret_value(&ns, &r.name, &r.key) {
                self.check(&field, public_key_shape(&value));
            }
        }
        for (i, r) in j.shared_secret_refs.iter().enumerate() {
            self.secret(&format!("{f}.sharedSecretRefs[{i}]"), r);
        }
        let mut seen = BTreeSet::new();
        for (i, a) in j.algorithms.iter().enumerate() {
            if !seen.insert(format!("{a:?}")) {
                self.error(
                    &format!("{f}.algorithms[{i}]"),
                    format!("{a:?} is listed twice"),
                );
            }
        }
        let hmac = j.algorithms.iter().any(|a| a.is_hmac());
        if j.shared_secret_refs.is_empty() {
            if hmac {
                self.error(
                    &format!("{f}.algorithms"),
                    "HS256, HS384 and HS512 need sharedSecretRefs: an HMAC algorithm is never accepted with public keys (that would let a token signed with the public key pass)",
                );
            }
        } else if j.algorithms.is_empty() || !j.algorithms.iter().all(|a| a.is_hmac()) {
            self.error(
                &format!("{f}.algorithms"),
                format!(
                    "sharedSecretRefs need algorithms listing only HS256, HS384 or HS512, found {}",
                    if j.algorithms.is_empty() {
                        "none".to_owned()
                    } else {
                        names(&j.algorithms)
                    }
                ),
            );
        }
        if let Some(d) = self.duration(&format!("{f}.clockSkew"), j.clock_skew.as_ref())
            && d > std::time::Duration::from_secs(600)
        {
            self.error(
                &format!("{f}.clockSkew"),
                "expected at most 10m: a larger skew keeps expired tokens valid",
            );
        }
        if let Some(n) = j.max_token_bytes
            && !(256..=65536).contains(&n)
        {
            self.error(
                &format!("{f}.maxTokenBytes"),
                format!("expected 256 to 65536 bytes, found {n}"),
            );
        }
    }

    pub(super) fn api_key(&mut self, f: &str, k: &ApiKeyAuth) {
        if let Some(h) = &k.header
            && !is_header_name(h)
        {
            self.error(
                &format!("{f}.header"),
                format!("expected an HTTP header name, found {h:?}"),
            );
        }
        if let Some(q) = &k.query_parameter
            && (q.is_empty() || q.contains(['&', '=', '#', '?', ' ']))
        {
            self.error(
                &format!("{f}.queryParameter"),
                format!("expected a query parameter name (no &, =, #, ? or spaces), found {q:?}"),
            );
        }
        if k.secret_refs.is_empty() {
            self.error(&format!("{f}.secretRefs"), "expected at least one key");
        }
        for (i, r) in k.secret_refs.iter().enumerate() {
            self.secret(&format!("{f}.secretRefs[{i}]"), r);
        }
    }

    /// `f` is the `oauth2` field; `headers` the headers configured beside it, which must not
    /// set `Authorization` (the token goes there).
    pub(super) fn oauth2(&mut self, f: &str, o: &OAuth2ClientCredentials, headers: &Headers) {
        self.url(&format!("{f}.tokenUrl"), &o.token_url, false);
        if let Some(name) = headers
            .keys()
            .find(|h| h.eq_ignore_ascii_case("authorization"))
        {
            let parent = f.strip_suffix(".oauth2").unwrap_or(f);
            self.error(
                &format!("{parent}.headers[{name}]"),
                "cannot be set together with oauth2, which sends the Authorization header",
            );
        }
        match (&o.client_id, &o.client_id_secret_ref) {
            (Some(id), None) if id.trim().is_empty() => self.error(
                &format!("{f}.clientId"),
                "expected a client id, found an empty string",
            ),
            (Some(_), None) => {}
            (None, Some(r)) => self.secret(&format!("{f}.clientIdSecretRef"), r),
            _ => self.error(f, "set exactly one of clientId or clientIdSecretRef"),
        }
        self.secret(&format!("{f}.clientSecretRef"), &o.client_secret_ref);
        for (i, s) in o.scopes.iter().enumerate() {
            // RFC 6749 3.3: scope tokens are visible ASCII without `"` and `\`.
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
            {
                self.error(
                    &format!("{f}.scopes[{i}]"),
                    format!("expected a scope token (visible ASCII, no spaces, quotes or backslashes), found {s:?}"),
                );
            }
        }
        self.positive_duration(&format!("{f}.timeout"), o.timeout.as_ref());
    }
}

fn names(algorithms: &[JwtAlgorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a public-key Secret must hold: a JWKS document or PEM public key(s).
fn public_key_shape(value: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        if text.contains("PRIVATE KEY") {
            return Err(
                "holds a PEM private key; expected the public key (a JWKS document or a PEM PUBLIC KEY)"
                    .to_owned(),
            );
        }
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.get("keys").is_some_and(|k| k.is_array()) => Ok(()),
        Ok(v) if v.get("kty").is_some() => Ok(()),
        _ => Err(
            "expected a JWKS document ({\"keys\": [...]}), a JWK, or a PEM public key; found neither"
                .to_owned(),
        ),
    }
}
