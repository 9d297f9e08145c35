//! JWTs with shared secrets (HS256/384/512) and API keys, verified without a network; the
//! JWKS and public-key paths run against a real JWKS server in `runtime/tests/jwt_auth.rs`.

use http::HeaderValue;
use inputbot_api::auth::{ApiKeyAuth, JwtAlgorithm, JwtAuth};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const SHARED: &[u8] = b"a-shared-secret-of-some-length-0123";

fn jwt_auth(spec: JwtAuth) -> WebhookAuth {
    WebhookAuth {
        hmac: None,
        bearer: None,
        basic: None,
        jwt: Some(spec),
        api_key: None,
        none: None,
    }
}

fn shared_spec(algorithms: Vec<JwtAlgorithm>) -> JwtAuth {
    JwtAuth {
        issuer: "https://issuer.test".into(),
        audience: vec!["bot".into()],
        jwks: None,
        key_secret_refs: vec![],
        shared_secret_refs: vec![sref("shared")],
        algorithms,
        clock_skew: Some(SpecDuration::from("30s")),
        max_token_bytes: None,
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn token(alg: jsonwebtoken::Algorithm, key: &[u8], claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(key).unwrap(),
    )
    .unwrap()
}

fn claims(exp: u64) -> serde_json::Value {
    json!({"iss": "https://issuer.test", "aud": ["other", "bot"], "exp": exp, "sub": "s"})
}

#[test]
fn an_hs256_token_with_the_shared_secret_passes_and_its_claims_are_returned() {
    let auth = build(
        &jwt_auth(shared_spec(vec![JwtAlgorithm::HS256])),
        &[("shared", SHARED)],
    )
    .unwrap();
    let t = token(jsonwebtoken::Algorithm::HS256, SHARED, claims(NOW + 60));
    let v = auth.verify(&bearer(&t), b"", at(NOW)).unwrap();
    assert_eq!(
        v.auth.unwrap()["claims"]["sub"],
        json!("s"),
        "claims under auth.claims"
    );
}

#[test]
fn the_clock_skew_bounds_exp_and_an_algorithm_off_the_list_is_refused() {
    let auth = build(
        &jwt_auth(shared_spec(vec![JwtAlgorithm::HS256])),
        &[("shared", SHARED)],
    )
    .unwrap();
    // Expired 20s ago: inside the 30s skew.
    let t = token(jsonwebtoken::Algorithm::HS256, SHARED, claims(NOW - 20));
    assert!(auth.verify(&bearer(&t), b"", at(NOW)).is_ok());
    // Expired 40s ago: outside.
    let t = token(jsonwebtoken::Algorithm::HS256, SHARED, claims(NOW - 40));
    let err = auth.verify(&bearer(&t), b"", at(NOW)).unwrap_err();
    assert_eq!(err.reason(), "token_expired", "{err}");
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    // HS512 is not on this source's list, though the secret would verify it.
    let t = token(jsonwebtoken::Algorithm::HS512, SHARED, claims(NOW + 60));
    let err = auth.verify(&bearer(&t), b"", at(NOW)).unwrap_err();
    assert_eq!(err.reason(), "token_algorithm", "{err}");
    // Another secret.
    let t = token(
        jsonwebtoken::Algorithm::HS256,
        b"another-secret",
        claims(NOW + 60),
    );
    let err = auth.verify(&bearer(&t), b"", at(NOW)).unwrap_err();
    assert_eq!(err.reason(), "token_signature", "{err}");
    assert!(!err.to_string().contains(&t));
}

#[test]
fn hmac_algorithms_are_refused_without_shared_secrets_and_shared_secrets_without_them() {
    let mut spec = shared_spec(vec![JwtAlgorithm::RS256]);
    let err = build(&jwt_auth(spec.clone()), &[("shared", SHARED)]).unwrap_err();
    assert!(err.to_string().contains("jwt.algorithms"), "{err}");
    spec.shared_secret_refs.clear();
    spec.key_secret_refs = vec![sref("pem")];
    spec.algorithms = vec![JwtAlgorithm::HS256];
    let err = build(&jwt_auth(spec), &[("pem", b"-----BEGIN PUBLIC KEY-----")]).unwrap_err();
    assert!(err.to_string().contains("jwt.algorithms"), "{err}");
}

#[test]
fn a_public_key_secret_holding_a_private_key_is_refused_naming_the_field() {
    let mut spec = shared_spec(vec![]);
    spec.shared_secret_refs.clear();
    spec.key_secret_refs = vec![sref("pem")];
    let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    let err = build(&jwt_auth(spec), &[("pem", pem)]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("jwt.keySecretRefs[0]") && text.contains("private key"),
        "{text}"
    );
    assert!(!text.contains("MC4CAQ"), "{text}");
}

#[test]
fn debug_output_of_jwt_and_api_key_authenticators_shows_no_secret() {
    let auth = build(
        &jwt_auth(shared_spec(vec![JwtAlgorithm::HS256])),
        &[("shared", SHARED)],
    )
    .unwrap();
    let text = format!("{auth:?}");
    assert!(
        text.contains("jwt") && !text.contains("a-shared-secret"),
        "{text}"
    );
    let keys = WebhookAuth {
        hmac: None,
        bearer: None,
        basic: None,
        jwt: None,
        api_key: Some(ApiKeyAuth {
            header: None,
            query_parameter: Some("key".into()),
            secret_refs: vec![sref("k1")],
        }),
        none: None,
    };
    let auth = build(&keys, &[("k1", b"the-api-key-value")]).unwrap();
    let text = format!("{auth:?}");
    assert!(
        text.contains("apiKey") && !text.contains("the-api-key-value"),
        "{text}"
    );
    // The sync path takes the header only; the query needs `check`.
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static("the-api-key-value"));
    assert!(auth.verify(&h, b"", at(NOW)).is_ok());
    let err = auth.verify(&HeaderMap::new(), b"", at(NOW)).unwrap_err();
    assert_eq!(err.reason(), "missing_credentials");
    assert!(err.to_string().contains("\"key\" query parameter"), "{err}");
}
