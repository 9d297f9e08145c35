//! The ai step against a local server speaking the Chat Completions wire format (request and
//! answer bodies as OpenAI documents them, `usage` included), on 127.0.0.1.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use inputbot_api::{expr::Limits, manifest};
use serde_json::{Value, json};

use super::Ai;
use crate::{event::Event, metrics::Metrics, secrets::Secrets};

const API_KEY: &str = "sk-test-very-secret-key";

/// One scripted answer of the fake server.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

/// A `200` chat completion whose message content is `content`.
fn completion(content: &str) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1_741_569_952,
            "model": "gpt-test",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}
        })
        .to_string(),
        delay: Duration::ZERO,
    }
}

fn status(code: u16, headers: Vec<(&'static str, String)>) -> Reply {
    Reply {
        status: code,
        headers,
        body: json!({"error": {"message": "Rate limit reached", "type": "requests",
                                "param": null, "code": "rate_limit_exceeded"}})
        .to_string(),
        delay: Duration::ZERO,
    }
}

#[derive(Default)]
struct ServerState {
    /// Answers in order; the last one repeats.
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<(HeaderMap, Value, Instant)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

struct FakeModel {
    url: String,
    state: Arc<ServerState>,
}

impl FakeModel {
    async fn start(script: Vec<Reply>) -> Self {
        let state = Arc::new(ServerState {
            script: Mutex::new(script.into()),
            ..ServerState::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/v1/chat/completions"),
            state,
        }
    }

    fn requests(&self) -> Vec<(HeaderMap, Value, Instant)> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn answer(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state
        .requests
        .lock()
        .unwrap()
        .push((headers, body, Instant::now()));
    let reply = {
        let mut script = state.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap()
        }
    };
    tokio::time::sleep(reply.delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, http::HeaderValue::from_str(&value).unwrap());
    }
    response
}

const SCHEMA: &str = r#"{"type": "object", "additionalProperties": false, "required": ["intent", "confidence"],
  "properties": {"intent": {"enum": ["billing", "bug", "other"]}, "confidence": {"type": "number"}}}"#;

fn secrets() -> Secrets {
    let mut set = manifest::ResourceSet::default();
    manifest::load_str(
        &mut set,
        "t.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: llm}}\nstringData: {{key: {API_KEY}}}\n"
        ),
        "default",
    )
    .unwrap();
    Secrets::Manifests {
        set: Arc::new(set),
        namespace: "default".into(),
    }
}

/// The step with `extra` fields merged over a base spec pointing at `url`.
fn step(url: &str, extra: Value) -> (Ai, Arc<Metrics>) {
    let mut spec = json!({
        "url": url,
        "model": "gpt-test",
        "apiKeySecretRef": {"name": "llm", "key": "key"},
        "systemPrompt": "Classify the ticket from {{ data.from }}.",
        "userPrompt": "Subject: {{ data.subject }}",
        "responseSchema": serde_json::from_str::<Value>(SCHEMA).unwrap(),
        "resultField": "ai",
        "temperature": 0,
        "retry": {"initialDelay": "1ms", "maxDelay": "5s", "jitter": false}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let spec = serde_json::from_value(spec).unwrap();
    let metrics = Metrics::new();
    let ai = Ai::new(
        &spec,
        &secrets(),
        crate::outbound::client().unwrap(),
        metrics.clone(),
        "default/triage",
        "intent",
    )
    .unwrap();
    (ai, metrics)
}

fn ticket() -> Event {
    Event::new(
        "default/bot",
        "hook",
        "t",
        json!({"subject": "Refund my invoice", "from": "ann@example.com"}),
    )
}

fn metric(metrics: &Metrics, line_start: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_valid_answer_lands_under_the_result_field_and_the_prompt_and_schema_reach_the_server() {
    let server = FakeModel::start(vec![completion(
        r#"{"intent": "billing", "confidence": 0.93}"#,
    )])
    .await;
    let (ai, metrics) = step(&server.url, json!({"maxTokens": 50}));
    let mut event = ticket();
    ai.apply(&mut event, Limits::default()).await.unwrap();
    assert_eq!(
        event.data["ai"],
        json!({"intent": "billing", "confidence": 0.93})
    );
    assert_eq!(event.data["subject"], "Refund my invoice");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let (headers, body, _) = &requests[0];
    assert_eq!(headers["authorization"], format!("Bearer {API_KEY}"));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "Classify the ticket from ann@example.com."},
            {"role": "user", "content": "Subject: Refund my invoice"}
        ])
    );
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "answer", "schema": serde_json::from_str::<Value>(SCHEMA).unwrap(), "strict": true}})
    );
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 50);

    let text = metrics.encode();
    assert!(
        text.contains(
            r#"inputbot_ai_calls_total{resource="default/triage",step="intent",result="ok"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"inputbot_ai_tokens_total{resource="default/triage",step="intent",kind="prompt"} 19"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"inputbot_ai_tokens_total{resource="default/triage",step="intent",kind="completion"} 10"#), "{text}");
    assert!(
        text.contains("inputbot_ai_call_duration_seconds_count"),
        "{text}"
    );
    assert!(!text.contains(API_KEY));
    assert!(!format!("{ai:?}").contains(API_KEY));
}

#[tokio::test]
async fn a_malformed_answer_is_asked_for_once_more_then_fails_with_class_model_output() {
    let server = FakeModel::start(vec![
        completion("Sure! The intent is billing."),
        completion(r#"{"intent": "refunds", "confidence": 1}"#),
    ])
    .await;
    let (ai, metrics) = step(&server.url, json!({}));
    let mut event = ticket();
    let before = event.clone();
    let failure = ai.apply(&mut event, Limits::default()).await.unwrap_err();
    assert_eq!(failure.class, "model-output", "{failure:?}");
    assert!(failure.message.contains("not JSON"), "{}", failure.message);
    assert!(failure.message.contains("/intent"), "{}", failure.message);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(event, before, "a failed step leaves the event as it was");
    assert_eq!(
        metric(
            &metrics,
            r#"inputbot_ai_calls_total{resource="default/triage",step="intent",result="invalid"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn a_malformed_answer_followed_by_a_valid_one_succeeds() {
    let server = FakeModel::start(vec![
        completion(r#"{"intent": "billing"}"#),
        completion("```json\n{\"intent\": \"bug\", \"confidence\": 0.5}\n```"),
    ])
    .await;
    let (ai, _) = step(&server.url, json!({}));
    let mut event = ticket();
    ai.apply(&mut event, Limits::default()).await.unwrap();
    assert_eq!(event.data["ai"]["intent"], "bug");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_timeout_is_retried_then_fails_the_step_with_class_ai() {
    let mut slow = completion(r#"{"intent": "bug", "confidence": 0.5}"#);
    slow.delay = Duration::from_secs(5);
    let server = FakeModel::start(vec![slow]).await;
    let (ai, _) = step(
        &server.url,
        json!({"timeout": "200ms", "retry": {"maxAttempts": 2, "initialDelay": "1ms", "jitter": false}}),
    );
    let started = Instant::now();
    let failure = ai
        .apply(&mut ticket(), Limits::default())
        .await
        .unwrap_err();
    assert_eq!(failure.class, "ai");
    assert!(
        failure
            .message
            .contains("no answer from POST http://127.0.0.1"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("within 200ms (after 2 attempts)"),
        "{}",
        failure.message
    );
    assert_eq!(failure.status, None);
    assert_eq!(server.requests().len(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_429_with_retry_after_waits_as_asked_then_succeeds() {
    let server = FakeModel::start(vec![
        status(429, vec![("retry-after", "1".into())]),
        completion(r#"{"intent": "other", "confidence": 0.1}"#),
    ])
    .await;
    let (ai, _) = step(&server.url, json!({}));
    let mut event = ticket();
    ai.apply(&mut event, Limits::default()).await.unwrap();
    assert_eq!(event.data["ai"]["intent"], "other");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].2 - requests[0].2;
    // The backoff alone is 1ms: the second call waited for Retry-After.
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
}

#[tokio::test]
async fn a_429_that_persists_fails_with_its_status_after_the_attempts() {
    let server = FakeModel::start(vec![status(429, vec![("retry-after", "0".into())])]).await;
    let (ai, _) = step(&server.url, json!({}));
    let failure = ai
        .apply(&mut ticket(), Limits::default())
        .await
        .unwrap_err();
    assert_eq!((failure.class, failure.status), ("ai", Some(429)));
    assert!(failure.message.contains("HTTP 429"), "{}", failure.message);
    assert!(
        failure.message.contains("Rate limit reached"),
        "{}",
        failure.message
    );
    assert_eq!(server.requests().len(), 3, "three attempts by default");
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let server = FakeModel::start(vec![status(400, vec![])]).await;
    let (ai, _) = step(&server.url, json!({}));
    let failure = ai
        .apply(&mut ticket(), Limits::default())
        .await
        .unwrap_err();
    assert_eq!((failure.class, failure.status), ("ai", Some(400)));
    assert_eq!(server.requests().len(), 1);
    assert!(!failure.message.contains(API_KEY));
}

#[tokio::test]
async fn the_cache_answers_an_identical_prompt_without_a_call() {
    let server = FakeModel::start(vec![completion(
        r#"{"intent": "billing", "confidence": 0.9}"#,
    )])
    .await;
    let (ai, metrics) = step(&server.url, json!({"cache": {"ttl": "1h"}}));
    let (mut first, mut second) = (ticket(), ticket());
    ai.apply(&mut first, Limits::default()).await.unwrap();
    ai.apply(&mut second, Limits::default()).await.unwrap();
    assert_eq!(second.data["ai"], first.data["ai"]);
    assert_eq!(server.requests().len(), 1);
    let mut other = ticket();
    other.data["subject"] = json!("App crashes");
    ai.apply(&mut other, Limits::default()).await.unwrap();
    assert_eq!(server.requests().len(), 2, "another prompt is another call");
    let hits =
        r#"inputbot_ai_cache_lookups_total{resource="default/triage",step="intent",result="hit"}"#;
    let misses =
        r#"inputbot_ai_cache_lookups_total{resource="default/triage",step="intent",result="miss"}"#;
    assert_eq!(
        (metric(&metrics, hits), metric(&metrics, misses)),
        (1.0, 2.0)
    );
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_wait() {
    let mut slow = completion(r#"{"intent": "billing", "confidence": 0.9}"#);
    slow.delay = Duration::from_millis(100);
    let server = FakeModel::start(vec![slow]).await;
    let (ai, _) = step(&server.url, json!({"maxConcurrency": 2}));
    let ai = Arc::new(ai);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let ai = ai.clone();
        tasks.spawn(async move { ai.apply(&mut ticket(), Limits::default()).await.is_ok() });
    }
    while let Some(ok) = tasks.join_next().await {
        assert!(ok.unwrap());
    }
    assert_eq!(server.requests().len(), 6);
    assert_eq!(server.state.most_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refusal_and_an_api_key_header_are_handled() {
    let mut refusal = completion("");
    refusal.body = json!({"choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]})
    .to_string();
    let server = FakeModel::start(vec![refusal]).await;
    let (ai, _) = step(&server.url, json!({"apiKeyHeader": "api-key"}));
    let failure = ai
        .apply(&mut ticket(), Limits::default())
        .await
        .unwrap_err();
    assert_eq!(failure.class, "model-output");
    assert!(failure.message.contains("refused"), "{}", failure.message);
    let requests = server.requests();
    assert_eq!(requests[0].0["api-key"], API_KEY);
    assert!(requests[0].0.get("authorization").is_none());
}
