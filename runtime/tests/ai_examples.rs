//! The ai examples (`examples/ai-*.yaml`) run as `inputbot run` runs them — the whole bot in
//! one process on the embedded bus — with the model URL pointed at a local server speaking the
//! Chat Completions wire format, and the Teams webhook and Twilio's API at a local recorder.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use support::*;

/// The example's text with the model pointed at `model` and, when given, the notification
/// targets at `target`.
fn example(name: &str, model: &str, target: Option<&Target>) -> String {
    let path = format!("{}/../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("http://127.0.0.1:11434"),
        "{name} names no local model"
    );
    text = text.replace("http://127.0.0.1:11434", model);
    if let Some(target) = target {
        text = text.replace(
            "https://teams.example.com/webhookb2/change-me",
            &target.url("/webhookb2/change-me"),
        );
        text = text.replace(
            "      from: \"+15005550006\"",
            &format!(
                "      apiUrl: {}\n      from: \"+15005550006\"",
                target.url("")
            ),
        );
    }
    text
}

/// A Chat Completions server answering by the schema's name, recording each request.
#[derive(Clone, Default)]
struct Model {
    requests: Arc<Mutex<Vec<Value>>>,
    /// Answer this text to everything instead (a model that ignores the schema).
    garbage: Option<&'static str>,
}

async fn complete(State(model): State<Model>, Json(request): Json<Value>) -> Json<Value> {
    let name = request["response_format"]["json_schema"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let user = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    model.requests.lock().unwrap().push(request);
    let answer = match name.as_str() {
        "ticket_intent" if user.contains("billed twice") => {
            json!({"intent": "billing", "urgency": "urgent", "summary": "Charged twice; wants a refund."})
        }
        "ticket_intent" => json!({"intent": "bug", "urgency": "low", "summary": "A typo."}),
        "email_entities" if user.contains("88213") => json!({
            "customer_name": "Bob Miller", "order_ids": ["88213"], "products": ["USB-C cable"],
            "amounts": [{"value": 19.9, "currency": "EUR"}]}),
        "email_entities" => {
            json!({"customer_name": null, "order_ids": [], "products": [], "amounts": []})
        }
        "sentiment" if user.contains("cancelling") => {
            json!({"sentiment": "negative", "score": -0.9, "reason": "repeated outages"})
        }
        "sentiment" => json!({"sentiment": "positive", "score": 0.8, "reason": "praise"}),
        other => panic!("unexpected schema name {other:?}"),
    };
    let content = model
        .garbage
        .map_or_else(|| answer.to_string(), str::to_owned);
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3.1:8b",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": null}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    }))
}

impl Model {
    async fn start() -> (Self, String) {
        Self::start_with(None).await
    }

    async fn start_with(garbage: Option<&'static str>) -> (Self, String) {
        let model = Model {
            garbage,
            ..Model::default()
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(model.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (model, format!("http://{addr}"))
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

/// The value of a metric line with these labels (0 when absent).
fn value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{{labels}")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn post_json(url: &str, token: Option<&str>, body: Value) -> u16 {
    let mut request = client().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_ticket_intent_example_routes_on_the_models_answer_and_posts_urgent_ones_to_teams() {
    let (model, model_url) = Model::start().await;
    let teams = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&example("ai-ticket-intent", &model_url, Some(&teams))).await;
    let url = format!("http://{}/tickets", engine.addr().unwrap());
    let token = Some("change-me-intake-token");
    let urgent = json!({"id": 4711, "subject": "Charged twice", "from": "ann@example.com",
                        "text": "I was billed twice this month, please refund one!"});
    assert_eq!(post_json(&url, token, urgent).await, 202);
    let minor =
        json!({"id": 4712, "subject": "Typo", "text": "There is a typo on the pricing page."});
    assert_eq!(post_json(&url, token, minor).await, 202);
    assert!(engine.settle(Duration::from_secs(20)).await);

    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "llama3.1:8b");
    let user = requests
        .iter()
        .map(|r| r["messages"][1]["content"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(
        user.contains(
            &"Subject: Charged twice\n\nI was billed twice this month, please refund one!\n"
        ),
        "{user:?}"
    );

    let cards = teams.received();
    assert_eq!(cards.len(), 1, "only the urgent ticket reaches Teams");
    let card: Value = serde_json::from_str(&cards[0].body).unwrap();
    let body = &card["attachments"][0]["content"]["body"];
    assert_eq!(body[0]["text"], "Urgent ticket #4711: Charged twice");
    assert_eq!(body[1]["text"], "Charged twice; wants a refund.");
    assert_eq!(
        body[2]["facts"],
        json!([{"title": "Intent", "value": "billing"}, {"title": "Urgency", "value": "urgent"},
               {"title": "From", "value": "ann@example.com"}])
    );

    let text = engine.metrics().encode();
    let log = r#"resource="default/ticket-log",stage="log""#;
    assert_eq!(
        value(&text, "inputbot_events_delivered_total", log),
        2.0,
        "{text}"
    );
    let tokens = r#"resource="default/ticket-intent",step="intent",kind="prompt""#;
    assert_eq!(
        value(&text, "inputbot_ai_tokens_total", tokens),
        240.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "inputbot_events_dead_lettered_total"),
        0,
        "{text}"
    );
    assert!(!text.contains("change-me-llm-api-key"));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_model_that_ignores_the_schema_dead_letters_the_ticket_with_class_model_output() {
    let (model, model_url) = Model::start_with(Some("The intent is billing, I think.")).await;
    let teams = Target::start(Behaviour::Ok).await;
    let (engine, dir) = start(&example("ai-ticket-intent", &model_url, Some(&teams))).await;
    let url = format!("http://{}/tickets", engine.addr().unwrap());
    let ticket = json!({"id": 1, "subject": "Charged twice", "text": "I was billed twice."});
    assert_eq!(
        post_json(&url, Some("change-me-intake-token"), ticket).await,
        202
    );
    assert!(engine.settle(Duration::from_secs(20)).await);
    assert_eq!(model.requests().len(), 2, "asked once more, then given up");
    assert!(teams.received().is_empty());
    engine.shutdown().await;
    let dead = inputbot_runtime::dlq::read(
        &dir.path()
            .join("dlq/inputbot.default.ticket-intent.dlq.jsonl"),
    )
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error.class, "model-output");
    assert_eq!(dead[0].failed_at.name, "intent");
    assert!(
        dead[0].error.message.contains("not JSON"),
        "{}",
        dead[0].error.message
    );
    assert_eq!(dead[0].event.data["id"], 1);
    assert!(dead[0].event.data.get("ai").is_none());
    let record = serde_json::to_string(&dead[0]).unwrap();
    assert!(!record.contains("change-me-llm-api-key"));
}

#[tokio::test]
async fn the_entities_example_keeps_emails_that_name_an_order() {
    let (model, model_url) = Model::start().await;
    let (engine, _dir) = start(&example("ai-entities", &model_url, None)).await;
    let url = format!("http://{}/mail", engine.addr().unwrap());
    let order = json!({"from": "bob@example.com", "subject": "Order 88213",
                       "body": "Hi, this is Bob Miller. My order 88213 (2 x USB-C cable) arrived broken. I paid 19.90 EUR."});
    assert_eq!(post_json(&url, None, order).await, 202);
    let chat = json!({"from": "eve@example.com", "body": "Just saying hello!"});
    assert_eq!(post_json(&url, None, chat).await, 202);
    assert!(engine.settle(Duration::from_secs(20)).await);
    assert_eq!(model.requests().len(), 2);
    let text = engine.metrics().encode();
    let log = r#"resource="default/order-log",stage="log""#;
    assert_eq!(
        value(&text, "inputbot_events_delivered_total", log),
        1.0,
        "{text}"
    );
    let filtered = r#"resource="default/mail-entities",stage="orders-only""#;
    assert_eq!(
        value(&text, "inputbot_events_filtered_total", filtered),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "inputbot_events_dead_lettered_total"),
        0,
        "{text}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn the_sentiment_example_texts_the_on_call_phone_for_an_unhappy_enterprise_customer() {
    let (model, model_url) = Model::start().await;
    let twilio = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&example("ai-sentiment", &model_url, Some(&twilio))).await;
    let url = format!("http://{}/messages", engine.addr().unwrap());
    let angry = json!({"customer": "acme", "plan": "enterprise",
                       "text": "Third outage this week. We are cancelling."});
    assert_eq!(post_json(&url, None, angry.clone()).await, 202);
    let happy = json!({"customer": "globex", "text": "Love the new dashboard!"});
    assert_eq!(post_json(&url, None, happy).await, 202);
    assert!(engine.settle(Duration::from_secs(20)).await);
    // The same message again, once the first answer is in: the cache answers it.
    assert_eq!(post_json(&url, None, angry).await, 202);
    assert!(engine.settle(Duration::from_secs(20)).await);
    assert_eq!(
        model.requests().len(),
        2,
        "the repeated message is answered from the cache"
    );

    let texts = twilio.received();
    assert_eq!(texts.len(), 2, "both angry messages are texted");
    let form: Vec<(String, String)> = url::form_urlencoded::parse(texts[0].body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form[0], ("To".into(), "+15005550010".into()));
    assert_eq!(form[1], ("From".into(), "+15005550006".into()));
    assert_eq!(
        form[2],
        (
            "Body".into(),
            "Unhappy enterprise customer acme (-0.9): Third outage this week. We are cancelling."
                .into()
        )
    );
    assert!(
        texts[0].headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );

    let text = engine.metrics().encode();
    let hits = r#"resource="default/sentiment",step="sentiment",result="hit""#;
    assert_eq!(
        value(&text, "inputbot_ai_cache_lookups_total", hits),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "inputbot_events_dead_lettered_total"),
        0,
        "{text}"
    );
    engine.shutdown().await;
}

/// The binary itself: `inputbot run -f` on the entities example prints its log line.
#[cfg(unix)]
#[tokio::test]
async fn inputbot_run_serves_the_entities_example_and_prints_the_extracted_order() {
    use std::{io::Read, process::Stdio};
    let (model, model_url) = Model::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ai-entities.yaml");
    std::fs::write(&file, example("ai-entities", &model_url, None)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inputbot"))
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
    let url = format!("http://127.0.0.1:{port}/mail");
    let order = json!({"from": "bob@example.com", "subject": "Order 88213",
                       "body": "My order 88213 (2 x USB-C cable) arrived broken. I paid 19.90 EUR."});
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client().post(&url).json(&order).send().await {
            Ok(r) => break r.status().as_u16(),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the bot never listened: {e}"),
        }
    };
    assert_eq!(status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while model.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the model was never asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM drains: the answer is stored and the line printed before the process exits.
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bot did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "{stderr}");
    assert!(
        stdout.contains("order email from bob@example.com: orders 88213, products USB-C cable"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}
