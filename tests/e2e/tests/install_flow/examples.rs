//! The shipped examples as a user applies them, with what a user changes: the Secrets get this
//! test's values (same names and keys), and the actions that call an external service call
//! the local receiver instead — through the Secret the example already reads the URL from
//! where it has one, else by replacing exactly the one URL field (each replacement checks the
//! example's own value first, so the test knows what it changed). Everything else is applied
//! as shipped.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use inputbot_e2e::receiver::{Receiver, Reply, Request};
use inputbot_e2e::smtp::MailSink;
use inputbot_e2e::{repo_root, yaml_documents};
use serde_json::{Value, json};
use sha2::Sha256;

/// The examples this suite drives, by file name; a new example fails the suite until it is
/// added here (with its Secrets' test values and its flow).
pub const EXAMPLES: [&str; 4] = [
    "github-triage.yaml",
    "quickstart.yaml",
    "status-page.yaml",
    "support-to-crm.yaml",
];

/// The examples whose events this suite does not drive yet, each with where its flow is
/// tested end to end today (the whole bot in one process, against local stand-ins of the
/// model, Teams, Twilio, the JWKS and the token endpoint). They are applied by the operator
/// suite (`every_example_gets_exactly_its_children_and_becomes_ready`) and the API server
/// smoke test. A new example must be added to one list or the other.
pub const DRIVEN_ELSEWHERE: [(&str, &str); 7] = [
    ("ai-entities.yaml", "runtime/tests/ai_examples.rs"),
    ("ai-sentiment.yaml", "runtime/tests/ai_examples.rs"),
    ("ai-ticket-intent.yaml", "runtime/tests/ai_examples.rs"),
    ("crm-oauth2.yaml", "runtime/tests/auth_examples.rs"),
    ("github-actions-oidc.yaml", "runtime/tests/auth_examples.rs"),
    ("partner-api-key.yaml", "runtime/tests/auth_examples.rs"),
    ("pubsub-push-jwt.yaml", "runtime/tests/auth_examples.rs"),
];

pub const QUICKSTART_KEY: &str = "flow-quickstart-key";
pub const GITHUB_KEY: &str = "flow-github-key";
pub const HELPDESK_KEY: &str = "flow-helpdesk-current";
pub const HELPDESK_PREVIOUS_KEY: &str = "flow-helpdesk-previous";
pub const CRM_TOKEN: &str = "Bearer flow-crm-token";
pub const STATUS_TOKEN: &str = "Bearer flow-status-token";

/// The test's value of every Secret key the examples have.
pub fn secret_values(outside: &Receiver) -> BTreeMap<(&'static str, &'static str), String> {
    BTreeMap::from([
        (("quickstart", "webhook-secret"), QUICKSTART_KEY.to_owned()),
        (("github-webhook", "secret"), GITHUB_KEY.to_owned()),
        (("chat-webhook", "url"), outside.url("/hooks/github-chat")),
        (("helpdesk", "signing-key"), HELPDESK_KEY.to_owned()),
        (
            ("helpdesk", "previous-signing-key"),
            HELPDESK_PREVIOUS_KEY.to_owned(),
        ),
        (("crm", "token"), CRM_TOKEN.to_owned()),
        (("support-chat", "url"), outside.url("/hooks/support-chat")),
        (("status-api", "token"), STATUS_TOKEN.to_owned()),
        (("ops-chat", "url"), outside.url("/hooks/ops-chat")),
        (("smtp", "password"), "flow-smtp-password".to_owned()),
    ])
}

/// The fields pointing at an external service, each as (kind, name, JSON pointer, the
/// example's value, the local stand-in's): the CRM and the status page become receiver URLs,
/// the SMTP relay the local mail sink (plain SMTP: there is no TLS certificate for a test
/// address that the action would trust).
fn external_fields(
    outside: &Receiver,
    mail: &MailSink,
) -> Vec<(&'static str, &'static str, &'static str, Value, Value)> {
    vec![
        (
            "ActionBinding",
            "crm-lead",
            "/spec/action/http/url",
            json!("https://crm.example.com/api/v2/leads"),
            json!(outside.url("/api/v2/leads")),
        ),
        (
            "InputBot",
            "vendor-status",
            "/spec/sources/0/poll/url",
            json!("https://status.example.com/api/v2/incidents/unresolved.json"),
            json!(outside.url("/api/v2/incidents/unresolved.json")),
        ),
        (
            "ActionBinding",
            "incident-mail",
            "/spec/action/email/smtp/host",
            json!("smtp.example.com"),
            json!(mail.host),
        ),
        (
            "ActionBinding",
            "incident-mail",
            "/spec/action/email/smtp/port",
            json!(587),
            json!(mail.addr.port()),
        ),
        (
            "ActionBinding",
            "incident-mail",
            "/spec/action/email/smtp/tls",
            json!("starttls"),
            json!("none"),
        ),
    ]
}

/// The documents of every example, as this test applies them, and a line per change made.
pub fn prepared(outside: &Receiver, mail: &MailSink) -> (Vec<Value>, Vec<String>) {
    let mut files: Vec<String> = inputbot_e2e::yaml_files(&repo_root().join("examples"))
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    files.sort();
    let mut known: Vec<String> = EXAMPLES
        .iter()
        .chain(DRIVEN_ELSEWHERE.iter().map(|(f, _)| f))
        .map(|f| f.to_string())
        .collect();
    known.sort();
    assert_eq!(
        files, known,
        "examples/ changed: teach tests/e2e/tests/install_flow the new example's Secrets and flow \
         (or list it in DRIVEN_ELSEWHERE with the test that drives it)"
    );
    for (file, test) in DRIVEN_ELSEWHERE {
        let text = std::fs::read_to_string(repo_root().join(test)).expect("the test file");
        assert!(
            text.contains(file.trim_end_matches(".yaml")),
            "{test} does not name {file}"
        );
    }
    let values = secret_values(outside);
    let external = external_fields(outside, mail);
    let mut docs = Vec::new();
    let mut changes = Vec::new();
    for file in EXAMPLES {
        let path = repo_root().join("examples").join(file);
        let text = std::fs::read_to_string(&path).expect("the example");
        for mut doc in yaml_documents(&text).expect("the example parses") {
            prepare(&path, &mut doc, &values, &external, &mut changes);
            docs.push(doc);
        }
    }
    (docs, changes)
}

fn prepare(
    file: &Path,
    doc: &mut Value,
    values: &BTreeMap<(&'static str, &'static str), String>,
    external: &[(&str, &str, &str, Value, Value)],
    changes: &mut Vec<String>,
) {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if kind == "Secret" {
        let data = doc["stringData"]
            .as_object_mut()
            .unwrap_or_else(|| panic!("{}: Secret {name} has no stringData", file.display()));
        for (key, value) in data.iter_mut() {
            let test_value = values
                .iter()
                .find(|((s, k), _)| *s == name && k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: Secret {name} key {key} has no test value",
                        file.display()
                    )
                });
            *value = Value::String(test_value);
            changes.push(format!("Secret {name} key {key}: the test's value"));
        }
        return;
    }
    for (k, n, pointer, shipped, local) in external {
        if *k == kind && *n == name {
            let field = doc
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{}: {kind} {name} has no {pointer}", file.display()));
            assert_eq!(
                field,
                shipped,
                "{}: {kind} {name} {pointer} is not what this test replaces",
                file.display()
            );
            *field = local.clone();
            changes.push(format!("{kind} {name} {pointer}: {shipped} → {local}"));
        }
    }
}

// ------------------------------------------------------------------ the outside ---

/// The incidents the status page serves: one new and major, one resolved.
pub fn incidents() -> Value {
    json!({"incidents": [
        {"id": "inc-1", "name": "API outage", "status": "investigating", "impact": "major",
         "shortlink": "https://stspg.io/inc-1", "created_at": "2026-12-02T04:00:00Z"},
        {"id": "inc-2", "name": "Old hiccup", "status": "resolved", "impact": "minor",
         "shortlink": "https://stspg.io/inc-2", "created_at": "2026-12-01T04:00:00Z"}
    ]})
}

/// The one receiver standing in for every external service: the CRM (which refuses a lead
/// whose email says `reject`, with a 422 the binding does not retry), the chat webhooks and
/// the status page.
pub fn outside_rule(request: &Request) -> Reply {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/api/v2/incidents/unresolved.json") => Reply::json(&incidents()),
        ("POST", "/api/v2/leads") if request.body.contains("reject") => Reply::status(422),
        ("POST", "/api/v2/leads") => Reply::status(201),
        ("POST", p) if p.starts_with("/hooks/") => Reply::status(200),
        _ => Reply::status(404),
    }
}

// ------------------------------------------------------------------- signatures ---

fn mac(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The headers GitHub sends (the `github` preset): `X-Hub-Signature-256: sha256=<hex>`.
pub fn github_headers(key: &str, body: &str, delivery: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-github-event".into(), "issues".into()),
        ("x-github-delivery".into(), delivery.into()),
        (
            "x-hub-signature-256".into(),
            format!("sha256={}", hex::encode(mac(key, &[body.as_bytes()]))),
        ),
    ]
}

/// The headers of support-to-crm's helpdesk (the `generic` preset as the example sets it):
/// base64 HMAC-SHA256 of `{timestamp}.{body}` in `X-Helpdesk-Signature`.
pub fn helpdesk_headers(key: &str, body: &str, delivery: &str) -> Vec<(String, String)> {
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = mac(key, &[ts.as_bytes(), b".", body.as_bytes()]);
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-helpdesk-timestamp".into(), ts),
        ("x-helpdesk-delivery".into(), delivery.into()),
        (
            "x-helpdesk-signature".into(),
            base64::engine::general_purpose::STANDARD.encode(sig),
        ),
    ]
}

/// POSTs `body` with `headers` to `url`; returns the status and the answer's body.
pub async fn post(url: &str, headers: &[(String, String)], body: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .expect("a client");
    let mut req = client.post(url).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}
