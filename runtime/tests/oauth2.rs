//! OAuth2 client credentials against a real token endpoint and a real target on 127.0.0.1,
//! both counting what they receive: concurrent deliveries share one token fetch; an expired
//! token is replaced; a `401` refreshes the token once and retries once; a second `401`
//! dead-letters the delivery with its reason; the poll source, the enrich step and the http
//! action all send tokens; no secret or token reaches a dead letter.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::{HeaderMap, StatusCode, Uri};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use inputbot_api::auth::OAuth2ClientCredentials;
use inputbot_runtime::{
    outbound::{self, OAuth2},
    secrets::Secrets,
};
use serde_json::json;
use support::*;

/// (Authorization header, form body) of each token request.
type TokenRequests = Arc<Mutex<Vec<(Option<String>, String)>>>;
/// (path, Authorization header) of each API request.
type ApiRequests = Arc<Mutex<Vec<(String, Option<String>)>>>;

const CLIENT_SECRET: &str = "s3cr3t-client-value";

/// A token endpoint: each request gets `tok-<n>`, valid for `expires_in` seconds, after
/// `delay`.
#[derive(Clone)]
struct TokenServer {
    url: String,
    requests: TokenRequests,
}

impl TokenServer {
    async fn start(expires_in: u64, delay: Duration) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(AtomicUsize::new(0));
        let (r, n) = (requests.clone(), issued.clone());
        let app = axum::Router::new().route(
            "/oauth/token",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (r, n) = (r.clone(), n.clone());
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    r.lock().unwrap().push((auth, body));
                    tokio::time::sleep(delay).await;
                    let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                    axum::Json(json!({
                        "access_token": format!("tok-{n}"),
                        "token_type": "Bearer",
                        "expires_in": expires_in,
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/oauth/token"),
            requests,
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A target that records (path, Authorization) and answers `401` to refused tokens.
#[derive(Clone)]
struct Api {
    base: String,
    seen: ApiRequests,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Api {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let (s, f) = (seen.clone(), refused.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                s.lock()
                    .unwrap()
                    .push((uri.path().to_owned(), auth.clone()));
                let refused = f.lock().unwrap().clone();
                let ok = auth.as_deref().is_some_and(|a| {
                    a.starts_with("Bearer tok-")
                        && !refused
                            .iter()
                            .any(|r| r == "*" || r == uri.path() || a == format!("Bearer {r}"))
                });
                if !ok {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let body = match uri.path() {
                    "/feed" => r#"[{"id": 1, "name": "first"}]"#,
                    "/customers" => r#"{"tier": "gold"}"#,
                    _ => "{}",
                };
                (StatusCode::OK, body.to_owned())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            seen,
            refused,
        }
    }

    /// Refuses a token (`tok-1`), every token on a path (`/tickets`), or every token (`*`).
    fn refuse(&self, token: &str) {
        self.refused.lock().unwrap().push(token.to_owned());
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

fn secret_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: crm-oauth}}\nstringData: {{secret: {CLIENT_SECRET}}}\n"
    )
}

fn source(token_url: &str) -> OAuth2 {
    let spec: OAuth2ClientCredentials = serde_json::from_value(json!({
        "tokenUrl": token_url,
        "clientId": "inputbot-client",
        "clientSecretRef": {"name": "crm-oauth", "key": "secret"},
        "scopes": ["tickets.write", "customers.read"],
        "audience": "https://api.crm.test",
    }))
    .unwrap();
    let secrets = Secrets::Manifests {
        set: Arc::new(resources(&secret_yaml())),
        namespace: "default".into(),
    };
    OAuth2::new(&spec, &secrets, "http.oauth2", outbound::client().unwrap()).unwrap()
}

async fn call(oauth: &OAuth2, url: &str) -> Result<u16, inputbot_runtime::delivery::AttemptError> {
    let client = outbound::client().unwrap();
    let request = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
    outbound::send_request_with(
        &client,
        Some(oauth),
        request,
        Duration::from_secs(5),
        "",
        url,
    )
    .await
    .map(|(status, _, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_deliveries_fetch_one_token() {
    let tokens = TokenServer::start(3600, Duration::from_millis(200)).await;
    let api = Api::start().await;
    let oauth = Arc::new(source(&tokens.url));
    let url = format!("{}/tickets", api.base);
    let calls = (0..100).map(|_| {
        let (oauth, url) = (oauth.clone(), url.clone());
        tokio::spawn(async move { call(&oauth, &url).await })
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().unwrap(), 200);
    }
    assert_eq!(
        tokens.count(),
        1,
        "one token fetch for 100 concurrent callers"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer tok-1"))
    );
    // The token request as RFC 6749 4.4 and 2.3.1 describe it.
    let (auth, body) = tokens.requests.lock().unwrap()[0].clone();
    let basic = auth.unwrap().strip_prefix("Basic ").unwrap().to_owned();
    assert_eq!(
        String::from_utf8(B64.decode(basic).unwrap()).unwrap(),
        format!("inputbot-client:{CLIENT_SECRET}")
    );
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        form,
        [
            ("grant_type".into(), "client_credentials".into()),
            ("scope".into(), "tickets.write customers.read".into()),
            ("audience".into(), "https://api.crm.test".into()),
        ]
    );
    assert!(!format!("{oauth:?}").contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_before_use() {
    let tokens = TokenServer::start(1, Duration::ZERO).await;
    let api = Api::start().await;
    let oauth = source(&tokens.url);
    let url = format!("{}/tickets", api.base);
    assert_eq!(call(&oauth, &url).await.unwrap(), 200);
    assert_eq!(call(&oauth, &url).await.unwrap(), 200);
    assert_eq!(tokens.count(), 1, "a fresh token is reused");
    // A one-second token is replaced a tenth of its lifetime before it expires.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(call(&oauth, &url).await.unwrap(), 200);
    assert_eq!(tokens.count(), 2);
    let auths: Vec<Option<String>> = api.seen().into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        auths,
        [
            Some("Bearer tok-1".into()),
            Some("Bearer tok-1".into()),
            Some("Bearer tok-2".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once_and_retries_once() {
    let tokens = TokenServer::start(3600, Duration::ZERO).await;
    let api = Api::start().await;
    let oauth = source(&tokens.url);
    let url = format!("{}/tickets", api.base);
    assert_eq!(call(&oauth, &url).await.unwrap(), 200);
    // The provider revokes tok-1 before it expires.
    api.refuse("tok-1");
    assert_eq!(call(&oauth, &url).await.unwrap(), 200);
    assert_eq!(tokens.count(), 2);
    let auths: Vec<Option<String>> = api.seen().into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        auths,
        [
            Some("Bearer tok-1".into()),
            Some("Bearer tok-1".into()),
            Some("Bearer tok-2".into())
        ]
    );
    // Refused outright: one refresh, one retry, and the second 401 is the answer.
    api.refuse("*");
    let error = call(&oauth, &url).await.unwrap_err();
    assert_eq!(error.status, Some(401));
    assert_eq!(tokens.count(), 3);
    assert_eq!(api.seen().len(), 5);
    assert!(
        error
            .message
            .contains("refused a freshly fetched oauth2 token too"),
        "{}",
        error.message
    );
}

/// A bot whose poll source, enrich step and http action each authenticate with OAuth2.
fn bot(tokens: &str, api: &str) -> String {
    let oauth = format!(
        "{{tokenUrl: '{tokens}', clientId: inputbot-client, clientSecretRef: {{name: crm-oauth, key: secret}}, scopes: [crm]}}"
    );
    format!(
        r#"{}---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: feed}}
spec:
  sources:
    - name: feed
      poll: {{url: '{api}/feed', interval: 1h, idField: /id, oauth2: {oauth}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: feed}}
  steps:
    - enrich: {{http: {{url: '{api}/customers', resultField: customer, oauth2: {oauth}}}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: out}}
spec:
  pipelineRef: {{name: flow}}
  action: {{http: {{url: '{api}/tickets', oauth2: {oauth}}}}}
  delivery: {{retry: {{maxAttempts: 3, initialDelay: 10ms}}}}
"#,
        secret_yaml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_enrich_and_http_send_tokens_and_a_second_401_dead_letters_the_delivery() {
    let tokens = TokenServer::start(3600, Duration::ZERO).await;
    let api = Api::start().await;
    // The tickets endpoint refuses every token: the action's delivery must end in the dead
    // letter, with the poll and the enrichment done with their own tokens.
    api.refuse("/tickets");
    let (engine, dir) = start(&bot(&tokens.url, &api.base)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.seen().iter().filter(|(p, _)| p == "/tickets").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", api.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(engine.settle(Duration::from_secs(10)).await);
    engine.shutdown().await;
    let seen = api.seen();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths[..2], ["/feed", "/customers"], "{seen:?}");
    assert!(
        seen.iter()
            .all(|(_, a)| a.as_deref().is_some_and(|a| a.starts_with("Bearer tok-")))
    );
    let dead =
        inputbot_runtime::dlq::read(&dir.path().join("dlq/inputbot.default.out.act.dlq.jsonl"))
            .unwrap();
    let tickets = seen.iter().filter(|(p, _)| p == "/tickets").count();
    assert_eq!(dead.len(), 1);
    let error = &dead[0].error;
    assert_eq!(error.status, Some(401));
    assert_eq!(
        error.attempts, 1,
        "401 is not retried by default: dead letter at once"
    );
    assert!(
        error
            .message
            .contains("refused a freshly fetched oauth2 token too"),
        "{}",
        error.message
    );
    assert_eq!(
        tickets, 2,
        "one attempt: the first send and one retry with a new token"
    );
    let record = serde_json::to_string(&dead[0]).unwrap();
    assert!(
        !record.contains(CLIENT_SECRET) && !record.contains("tok-"),
        "{record}"
    );
    // Three components, three token sources; the action's refused token was replaced once.
    assert_eq!(tokens.count(), 4, "{:?}", tokens.requests.lock().unwrap());
}
