//! Authentication types beyond the shared-secret schemes: JSON Web Tokens and API keys at
//! webhook intake, and OAuth2 client credentials for outbound calls (http actions, enrich
//! steps, poll sources).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, SecretKeyRef};

/// Largest accepted token unless `maxTokenBytes` says otherwise: 8 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: u32 = 8192;
/// Clock skew allowed on `exp`, `nbf` and `iat` unless `clockSkew` says otherwise.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
/// Timeout of one JWKS fetch unless `jwks.timeout` says otherwise.
pub const DEFAULT_JWKS_TIMEOUT_SECS: u64 = 5;
/// How long a fetched JWKS is used before it is fetched again, unless `jwks.cacheTTL` says
/// otherwise.
pub const DEFAULT_JWKS_CACHE_TTL_SECS: u64 = 3600;
/// Least time between two JWKS fetches caused by unknown key ids, unless
/// `jwks.minRefreshInterval` says otherwise.
pub const DEFAULT_JWKS_MIN_REFRESH_SECS: u64 = 60;
/// Largest JWKS document read unless `jwks.maxBytes` says otherwise: 64 KiB.
pub const DEFAULT_JWKS_MAX_BYTES: u32 = 65536;
/// Header carrying an API key unless `header` says otherwise.
pub const DEFAULT_API_KEY_HEADER: &str = "X-API-Key";

/// Verify a JSON Web Token sent as `Authorization: Bearer <JWT>` (Google Pub/Sub push,
/// GitHub Actions OIDC, Azure Event Grid, any OIDC issuer). The signature is checked against
/// exactly one key source — `jwks` (a JWKS URL), `keySecretRefs` (public keys from Secrets) or
/// `sharedSecretRefs` (HMAC secrets) — then `iss`, `aud`, `exp`, `nbf` and `iat`. The verified
/// claims are visible to CEL as `auth.claims`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.jwks), has(self.keySecretRefs), has(self.sharedSecretRefs)].filter(x, x).size() == 1").message("set exactly one of jwks, keySecretRefs or sharedSecretRefs"),
    validation = Rule::new("!has(self.algorithms) || !self.algorithms.exists(a, a.startsWith('HS')) || has(self.sharedSecretRefs)").message("HS256, HS384 and HS512 need sharedSecretRefs: an HMAC algorithm is never accepted with public keys"),
    validation = Rule::new("!has(self.sharedSecretRefs) || has(self.algorithms) && self.algorithms.all(a, a.startsWith('HS'))").message("sharedSecretRefs need algorithms, and only HS256, HS384 or HS512")
)]
pub struct JwtAuth {
    /// The `iss` claim every token must carry, e.g. `https://accounts.google.com` or
    /// `https://token.actions.githubusercontent.com`.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values: the token's `aud` must contain one of them (for Pub/Sub push, the
    /// audience configured on the subscription).
    #[schemars(length(min = 1, max = 8))]
    pub audience: Vec<String>,
    /// Fetch the signing keys from a JWKS URL (an OIDC provider's `jwks_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSource>,
    /// Public keys from Secrets: each key holds a JWKS document (`{"keys": […]}`) or a PEM
    /// public key (RSA, EC or Ed25519). Several at once allow rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub key_secret_refs: Vec<SecretKeyRef>,
    /// Shared secrets for HS256/HS384/HS512 tokens. Several at once allow rotation; needs
    /// `algorithms` listing only HMAC algorithms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub shared_secret_refs: Vec<SecretKeyRef>,
    /// Accepted signature algorithms (`alg`). `none` is never accepted. Defaults to every
    /// public-key algorithm: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 and EdDSA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 12))]
    #[x_kube(validation = Rule::new("self.all(a, self.filter(b, b == a).size() == 1)").message("algorithms must not repeat"))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// How far `exp`, `nbf` and `iat` may be off to allow for clocks that differ. Defaults to
    /// 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<Duration>,
    /// Largest accepted token in bytes; longer ones get `401` before any decoding. Defaults to
    /// 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 65536))]
    pub max_token_bytes: Option<u32>,
}

/// Where the signing keys of a JWT issuer are published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksSource {
    /// The JWKS URL, e.g. `https://www.googleapis.com/oauth2/v3/certs`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Timeout of one fetch. Defaults to 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How long fetched keys are used before they are fetched again. Defaults to 1h.
    #[serde(default, rename = "cacheTTL", skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<Duration>,
    /// Least time between two fetches caused by a token whose `kid` is not among the cached
    /// keys (a key rotation); tokens with other unknown ids meanwhile get `401`. Defaults to 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_refresh_interval: Option<Duration>,
    /// Largest JWKS document read, in bytes. Defaults to 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_bytes: Option<u32>,
}

// A JWS signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (only with `sharedSecretRefs`).
    HS256,
    /// HMAC with SHA-384 (only with `sharedSecretRefs`).
    HS384,
    /// HMAC with SHA-512 (only with `sharedSecretRefs`).
    HS512,
}

impl JwtAlgorithm {
    /// Every public-key algorithm: the default allowlist.
    pub const PUBLIC_KEY: [JwtAlgorithm; 9] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// Whether this is an HMAC (shared-secret) algorithm.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// Require an API key in a header (or, when enabled, a query parameter), compared in constant
/// time with every configured key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Header carrying the key. Defaults to `X-API-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// Also accept the key in this query parameter, for senders that cannot set headers.
    /// Off unless set: keys in URLs end up in access logs and browser histories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub query_parameter: Option<String>,
    /// The accepted keys, one per Secret key. Several at once allow rotation: add the new key,
    /// move the senders, remove the old one.
    #[schemars(length(min = 1, max = 5))]
    pub secret_refs: Vec<SecretKeyRef>,
}

/// OAuth2 client credentials (RFC 6749 section 4.4): a bearer token fetched from the token
/// endpoint and sent as `Authorization: Bearer …` on every request. The token is cached until
/// shortly before it expires, fetched once for all concurrent callers, and refreshed once when
/// the target answers `401` (the request is then retried once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientId) != has(self.clientIdSecretRef)").message("set exactly one of clientId or clientIdSecretRef"))]
pub struct OAuth2ClientCredentials {
    /// The token endpoint, e.g. `https://login.example.com/oauth2/token`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub token_url: String,
    /// The client id, written out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub client_id: Option<String>,
    /// The client id, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_secret_ref: Option<SecretKeyRef>,
    /// The client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes asked for (sent space-separated as `scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// The `audience` parameter some providers need (Auth0, Okta custom servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint: `basic` (HTTP basic, the default)
    /// or `post` (`client_id` and `client_secret` in the form body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<OAuth2ClientAuth>,
    /// Timeout of one token request. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

// How a client authenticates to the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OAuth2ClientAuth {
    /// `client_secret_basic`: HTTP basic authentication.
    #[default]
    Basic,
    /// `client_secret_post`: the credentials in the form body.
    Post,
}
