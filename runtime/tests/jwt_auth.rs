//! `jwt` webhook auth through the running bot, with tokens minted here by a real JOSE library
//! (jsonwebtoken, with keys made by the RustCrypto crates) and a real JWKS server on
//! 127.0.0.1: valid RS256, ES256 and EdDSA tokens are accepted and their claims reach CEL
//! (`auth.claims`); every kind of bad token is refused with `401` and its reason; a key
//! rotation at the JWKS is picked up without a restart, and unknown key ids do not hammer the
//! JWKS; a JWKS that never answers fails closed (`503`) with a clear log line.

mod support;

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk};
use serde_json::{Value, json};
use support::*;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://bot.test/push";

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
    /// The public key as PEM (RSA only: the algorithm-confusion attack signs with it).
    public_pem: Option<String>,
}

impl Signer {
    fn new(alg: Algorithm, kid: &str) -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let mut rng = rand10::rng();
        let mut okp = None;
        let (key, public_pem) = match alg {
            Algorithm::RS256 => {
                use rsa::{pkcs1::EncodeRsaPrivateKey as _, pkcs8::EncodePublicKey as _};
                let private = rsa_key();
                let pem = private
                    .to_public_key()
                    .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                    .unwrap();
                (
                    EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
                    Some(pem),
                )
            }
            Algorithm::ES256 => {
                use p256::{elliptic_curve::Generate as _, pkcs8::EncodePrivateKey as _};
                let secret = p256::SecretKey::generate_from_rng(&mut rng);
                (
                    EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
                    None,
                )
            }
            Algorithm::EdDSA => {
                let signing = ed25519_dalek::SigningKey::generate(&mut rng);
                okp = Some(B64URL.encode(signing.verifying_key().to_bytes()));
                (
                    EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
                    None,
                )
            }
            other => panic!("no test key for {other:?}"),
        };
        // An Ed25519 JWK is written out (RFC 8037); the others come from the JOSE library.
        let jwk = match okp {
            Some(x) => json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": kid}),
            None => {
                let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
                jwk.common.key_id = Some(kid.to_owned());
                serde_json::to_value(jwk).unwrap()
            }
        };
        Self {
            alg,
            kid: kid.to_owned(),
            key,
            jwk,
            public_pem,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.key).unwrap()
    }
}

/// A fresh 2048-bit RSA key.
fn rsa_key() -> rsa::PrivateKey {
    rsa::PrivateKey::new(&mut rand10::rng(), 2048).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "pubsub-push@corp.example",
        "email": "pubsub-push@corp.example",
        "iat": now(),
        "exp": now() + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// A JWKS server on 127.0.0.1 whose document can be replaced, counting fetches.
#[derive(Clone)]
struct JwksServer {
    url: String,
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[&Signer]) -> Self {
        let doc = Arc::new(Mutex::new(Value::Null));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(d.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let server = Self {
            url: format!("http://{addr}/jwks"),
            doc,
            fetches,
        };
        server.publish(keys);
        server
    }

    fn publish(&self, keys: &[&Signer]) {
        *self.doc.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A bot whose webhook verifies JWTs from `jwks_url`, and an http action to `target` whose
/// body is the verified email claim; classify labels mail from corp.example.
fn bot(jwks_url: &str, min_refresh: &str, target: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: push}}
spec:
  sources:
    - name: pubsub
      webhook:
        path: /push
        idempotencyKey: auth.claims.jti
        auth:
          jwt:
            issuer: {ISSUER}
            audience: [{AUDIENCE}]
            algorithms: [RS256, ES256, EdDSA]
            jwks: {{url: '{jwks_url}', minRefreshInterval: {min_refresh}, timeout: 2s}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: push}}
  steps:
    - classify: {{rules: [{{when: 'auth.claims.email.endsWith("@corp.example")', label: corp}}]}}
    - filter: {{when: '"corp" in labels'}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: out}}
spec:
  pipelineRef: {{name: flow}}
  action: {{http: {{url: '{target}', body: {{template: '{{{{ auth.claims.email }}}} via {{{{ auth.scheme }}}}'}}}}}}
  delivery: {{retry: {{maxAttempts: 1}}}}
"#
    )
}

async fn post(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"message":{"data":"aGk="}}"#);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn reason(answer: &Value) -> &str {
    answer["error"]["reason"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valid_rs256_es256_and_eddsa_tokens_are_accepted_and_their_claims_reach_cel() {
    let (rs, es, ed) = (
        Signer::new(Algorithm::RS256, "rs-1"),
        Signer::new(Algorithm::ES256, "es-1"),
        Signer::new(Algorithm::EdDSA, "ed-1"),
    );
    let jwks = JwksServer::start(&[&rs, &es, &ed]).await;
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&jwks.url, "1h", &target.url("/in"))).await;
    let url = format!("http://{}/push", engine.addr().unwrap());
    for signer in [&rs, &es, &ed] {
        let (status, answer) = post(&url, Some(&signer.sign(&claims()))).await;
        assert_eq!(status, 202, "{:?}: {answer}", signer.alg);
    }
    // The idempotency key is a claim: the same token again is a duplicate.
    let token = rs.sign(&claims());
    assert_eq!(post(&url, Some(&token)).await.0, 202);
    let (status, answer) = post(&url, Some(&token)).await;
    assert_eq!((status, answer["duplicate"].clone()), (202, json!(true)));
    // A token from outside corp.example passes auth but the classify rule on its claims
    // keeps it from the action.
    let mut outsider = claims();
    outsider["email"] = json!("someone@elsewhere.example");
    assert_eq!(post(&url, Some(&es.sign(&outsider))).await.0, 202);
    assert!(engine.settle(Duration::from_secs(10)).await);
    let bodies: Vec<String> = target.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert!(
        bodies
            .iter()
            .all(|b| b == "pubsub-push@corp.example via jwt"),
        "{bodies:?}"
    );
    assert_eq!(jwks.fetches(), 1, "one fetch serves every key id it holds");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_each_get_401_with_their_reason() {
    let rs = Signer::new(Algorithm::RS256, "rs-1");
    let stranger = Signer::new(Algorithm::ES256, "not-published");
    let jwks = JwksServer::start(&[&rs]).await;
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&jwks.url, "1h", &target.url("/in"))).await;
    let url = format!("http://{}/push", engine.addr().unwrap());

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        rs.sign(&c)
    };
    let valid = rs.sign(&claims());
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let mut changed = claims();
    changed["email"] = json!("admin@corp.example");
    let tampered = format!("{head}.{}.{signature}", B64URL.encode(changed.to_string()));
    let none = format!(
        "{}.{}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims().to_string())
    );
    // Algorithm confusion: HS256 with the RSA public key (published, so known to anyone) as
    // the HMAC secret.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rs-1".into());
        let pem = rs.public_pem.clone().unwrap();
        encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| {
                c["exp"] = json!(now() - 3600);
                c["iat"] = json!(now() - 7200);
            }),
            "token_expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 3600)),
            "token_not_yet_valid",
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 3600)),
            "token_issued_in_future",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.test")),
            "token_issuer",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("https://other.test")),
            "token_audience",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "token_claims",
        ),
        ("unknown kid", stranger.sign(&claims()), "token_unknown_key"),
        ("alg none", none, "token_malformed"),
        ("HS256 with the RSA public key", confused, "token_algorithm"),
        ("tampered payload", tampered, "token_signature"),
        (
            "oversized",
            with(&|c| c["pad"] = json!("x".repeat(9000))),
            "token_too_large",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "token_malformed"),
    ];
    for (what, token, expected) in &cases {
        let (status, answer) = post(&url, Some(token)).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(reason(&answer), *expected, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains(token.as_str()),
            "{what}: the message quotes the token"
        );
    }
    let (status, answer) = post(&url, None).await;
    assert_eq!((status, reason(&answer)), (401, "missing_credentials"));
    // The one valid token still passes: nothing above poisoned the key cache.
    assert_eq!(post(&url, Some(&valid)).await.0, 202);
    assert!(engine.settle(Duration::from_secs(10)).await);
    let delivered = target.received();
    assert_eq!(delivered.len(), 1, "only the valid token was delivered");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotation_at_the_jwks_is_picked_up_without_a_restart() {
    let old = Signer::new(Algorithm::ES256, "2026-01");
    let new = Signer::new(Algorithm::EdDSA, "2026-02");
    let jwks = JwksServer::start(&[&old]).await;
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&jwks.url, "0s", &target.url("/in"))).await;
    let url = format!("http://{}/push", engine.addr().unwrap());
    assert_eq!(post(&url, Some(&old.sign(&claims()))).await.0, 202);
    assert_eq!(jwks.fetches(), 1);
    // The issuer rotates: the new key is published, the old one withdrawn.
    jwks.publish(&[&new]);
    let (status, answer) = post(&url, Some(&new.sign(&claims()))).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(jwks.fetches(), 2, "the unknown kid fetched the JWKS once");
    // The withdrawn key's tokens are refused once the JWKS no longer has it.
    let (status, answer) = post(&url, Some(&old.sign(&claims()))).await;
    assert_eq!(
        (status, reason(&answer)),
        (401, "token_unknown_key"),
        "{answer}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_key_ids_fetch_the_jwks_at_most_once_per_interval() {
    let known = Signer::new(Algorithm::ES256, "known");
    let jwks = JwksServer::start(&[&known]).await;
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&jwks.url, "1h", &target.url("/in"))).await;
    let url = format!("http://{}/push", engine.addr().unwrap());
    assert_eq!(post(&url, Some(&known.sign(&claims()))).await.0, 202);
    let futures = (0..20).map(|i| {
        let url = url.clone();
        async move {
            let stranger = Signer::new(Algorithm::EdDSA, &format!("made-up-{i}"));
            post(&url, Some(&stranger.sign(&claims()))).await
        }
    });
    for (status, answer) in futures::future::join_all(futures).await {
        assert_eq!(
            (status, reason(&answer)),
            (401, "token_unknown_key"),
            "{answer}"
        );
    }
    assert_eq!(
        jwks.fetches(),
        1,
        "unknown kids inside minRefreshInterval fetch nothing"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_from_a_secret_verify_without_any_jwks() {
    let rs = Signer::new(Algorithm::RS256, "rs-1");
    let other = Signer::new(Algorithm::RS256, "rs-2");
    let pem = rs.public_pem.clone().unwrap().replace('\n', "\n    ");
    let target = Target::start(Behaviour::Ok).await;
    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData:
  current: |
    {pem}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: push}}
spec:
  sources:
    - name: pubsub
      webhook:
        path: /push
        auth: {{jwt: {{issuer: '{ISSUER}', audience: ['{AUDIENCE}'], keySecretRefs: [{{name: keys, key: current}}]}}}}
{}"#,
        pass_through(
            "push",
            &format!("{{http: {{url: '{}'}}}}", target.url("/in")),
            ""
        )
    );
    let (engine, _dir) = start(&yaml).await;
    let url = format!("http://{}/push", engine.addr().unwrap());
    assert_eq!(post(&url, Some(&rs.sign(&claims()))).await.0, 202);
    let (status, answer) = post(&url, Some(&other.sign(&claims()))).await;
    assert_eq!(
        (status, reason(&answer)),
        (401, "token_signature"),
        "{answer}"
    );
    engine.shutdown().await;
}

/// The JWKS never answers: every token is refused (fail closed) with `503`, and the log says
/// why — the whole binary, as a user runs it.
#[test]
fn a_jwks_that_is_down_fails_closed_with_a_clear_log_line() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bot.yaml");
    let jwks_url = format!("http://127.0.0.1:{closed}/jwks");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            bot(&jwks_url, "1m", "http://127.0.0.1:9/unused"),
            ""
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inputbot"))
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let signer = Signer::new(Algorithm::ES256, "k");
    let token = signer.sign(&claims());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, answer) = rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}/push");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = client()
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await;
            match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry = r.headers().get("retry-after").is_some();
                    break (status, (r.json::<Value>().await.unwrap(), retry));
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("the bot never listened: {e}"),
            }
        }
    });
    let (answer, retry_after) = answer;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(reason(&answer), "keys_unavailable", "{answer}");
    assert!(retry_after, "a 503 says when to retry");
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the bot did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr
            .contains("cannot fetch the JWKS, refusing every token until it answers (fail closed)")
            && stderr.contains(&format!("127.0.0.1:{closed}/jwks")),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "the log quotes the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jwks_larger_than_its_limit_is_not_used() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es]).await;
    // Valid keys, padded past the 64 KiB default of jwks.maxBytes.
    jwks.doc.lock().unwrap()["padding"] = json!("x".repeat(70 * 1024));
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&jwks.url, "0s", &target.url("/in"))).await;
    let url = format!("http://{}/push", engine.addr().unwrap());
    let (status, answer) = post(&url, Some(&es.sign(&claims()))).await;
    assert_eq!(
        (status, reason(&answer)),
        (503, "keys_unavailable"),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 65536 bytes")),
        "{answer}"
    );
    // Trimmed back, the same token passes without a restart.
    jwks.publish(&[&es]);
    assert_eq!(post(&url, Some(&es.sign(&claims()))).await.0, 202);
    engine.shutdown().await;
}
