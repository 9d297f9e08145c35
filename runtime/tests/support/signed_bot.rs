//! The signed GitHub-webhook bot most local-run tests drive: a schema-checked webhook, a
//! filter, a jq transform and a classify step, and an http action whose body is a jq program.

use serde_json::{Value, json};

use super::{NEXT, github_signature};

pub const SECRET: &str = "s3cret-for-tests";

/// A delivery policy that retries at once, twice, and never opens the breaker.
pub const FAST_RETRY: &str = "    retry: {maxAttempts: 3, initialDelay: 1ms, maxDelay: 5ms, jitter: false}\n    circuitBreaker: {minRequests: 100000}";

/// The bot, its pipeline `flow` and its binding `crm` posting to `target`; `extra_source` is
/// appended to the InputBot's sources and `delivery` is the binding's delivery policy (YAML
/// indented four spaces).
pub fn bot(target: &str, extra_source: &str, delivery: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{hmac: {SECRET}, token: tok-123}}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: intake}}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {{hmac: {{preset: github, secretRef: {{name: creds, key: hmac}}}}}}
        maxBodyBytes: 4096
        schema:
          type: object
          required: [kind]
          properties:
            kind: {{enum: [ticket, skip]}}
            n: {{type: integer}}
{extra_source}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: intake}}
  steps:
    - name: drop-skips
      filter: {{when: 'data.kind != "skip"'}}
    - name: shape
      transform: {{jq: '{{n: .n, text: ("ticket " + (.n | tostring))}}'}}
    - classify: {{rules: [{{when: 'data.n % 2 == 0', label: even}}], defaultLabel: odd}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: crm}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http:
      url: {target}
      headers: {{Authorization: {{secretRef: {{name: creds, key: token}}}}}}
      body: {{jq: '{{ticket: .n, text: .text}}'}}
  delivery:
{delivery}
"#
    )
}

/// Posts `body` signed as GitHub does. Each request gets a distinct `delivery` field: the
/// replay key is the signed body, and identical bodies would be one delivery.
pub async fn post_signed(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert(
            "delivery".into(),
            json!(NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
        );
    }
    let bytes = serde_json::to_vec(&body).unwrap();
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", github_signature(SECRET, &bytes))
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .body(bytes)
        .send()
        .await
        .unwrap()
}
