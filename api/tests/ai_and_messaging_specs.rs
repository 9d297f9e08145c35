//! Invalid specs of the ai step and the teams and sms actions: each case changes one field of
//! a valid bot and asserts that the problem reported names that field and says what is wrong,
//! through the checks `inputbot validate` runs (the CRD schema, strictly, its CEL rules, then
//! `validate`).

use inputbot_api::{
    manifest::{self, ResourceSet},
    validate::{self, Options, Severity},
};
use serde_json::Value;

const BASE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {llm: sk-1, teams: "https://teams.example.com/hook", sid: AC0123, token: t0k}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: bot}
spec:
  sources: [{name: hook, webhook: {path: /hook, auth: {none: {}}}}]
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  botRef: {name: bot}
  steps:
    - name: intent
      ai:
        url: http://127.0.0.1:11434/v1/chat/completions
        model: llama3.1
        apiKeySecretRef: {name: creds, key: llm}
        systemPrompt: "Classify the ticket."
        userPrompt: "{{ data.text }}"
        responseSchema:
          type: object
          additionalProperties: false
          required: [intent]
          properties: {intent: {enum: [billing, bug, other]}}
        resultField: ai
        timeout: 20s
        retry: {maxAttempts: 3, initialDelay: 1s, maxDelay: 10s}
        maxConcurrency: 4
        cache: {ttl: 1h, maxEntries: 100}
    - classify: {rules: [{when: 'data.ai.intent == "billing"', label: billing}]}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: chat}
spec:
  pipelineRef: {name: flow}
  action:
    teams:
      webhookSecretRef: {name: creds, key: teams}
      title: "Ticket {{ data.id }}"
      text: "{{ data.text }}"
      facts: [{title: Intent, value: "{{ data.ai.intent }}"}]
      timeout: 10s
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: text}
spec:
  pipelineRef: {name: flow}
  action:
    sms:
      accountSidSecretRef: {name: creds, key: sid}
      authTokenSecretRef: {name: creds, key: token}
      from: "+15005550006"
      to: "{{ data.phone }}"
      body: "Ticket {{ data.id }}: {{ data.ai.intent }}"
      apiUrl: http://127.0.0.1:9
"#;

fn documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(BASE)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every error `inputbot validate` would print for these documents.
fn problems(docs: &[Value]) -> Vec<String> {
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let mut set = ResourceSet::default();
    if let Err(errors) = manifest::load_str(&mut set, "case.yaml", &text, "default") {
        return errors.iter().map(ToString::to_string).collect();
    }
    validate::validate(&set, Options::LOCAL)
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect()
}

/// Document index (2: the pipeline, 3: the teams binding, 4: the sms binding), JSON pointer,
/// new value (JSON; `null` removes the field), the field the problem names, and what it says.
type Case = (
    &'static str,
    usize,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const AI: &str = "/spec/steps/0/ai";
const TEAMS: &str = "/spec/action/teams";
const SMS: &str = "/spec/action/sms";

const CASES: &[Case] = &[
    (
        "ai url without a scheme",
        2,
        "/url",
        r#""127.0.0.1/v1/chat/completions""#,
        "spec.steps[0].ai.url",
        "^https?://",
    ),
    (
        "ai url that is not a URL",
        2,
        "/url",
        r#""http://""#,
        "spec.steps[0].ai.url",
        "expected an http or https URL",
    ),
    (
        "ai without a model",
        2,
        "/model",
        "null",
        "spec.steps[0].ai",
        "\"model\" is a required property",
    ),
    (
        "ai blank model",
        2,
        "/model",
        r#""  ""#,
        "spec.steps[0].ai.model",
        "expected a model name",
    ),
    (
        "ai api key from a missing Secret",
        2,
        "/apiKeySecretRef",
        r#"{"name": "nope", "key": "k"}"#,
        "spec.steps[0].ai.apiKeySecretRef",
        "Secret default/nope is not among",
    ),
    (
        "ai api key from a missing key",
        2,
        "/apiKeySecretRef",
        r#"{"name": "creds", "key": "nope"}"#,
        "spec.steps[0].ai.apiKeySecretRef.key",
        "has no key \"nope\"",
    ),
    (
        "ai api key header that is no header name",
        2,
        "/apiKeyHeader",
        r#""api key""#,
        "spec.steps[0].ai.apiKeyHeader",
        "expected an HTTP header name",
    ),
    (
        "ai user prompt with a bad expression",
        2,
        "/userPrompt",
        r#""{{ data.text + }}""#,
        "spec.steps[0].ai.userPrompt",
        "in template",
    ),
    (
        "ai system prompt with an unknown name",
        2,
        "/systemPrompt",
        r#""{{ headers.x }}""#,
        "spec.steps[0].ai.systemPrompt",
        "unknown name",
    ),
    (
        "ai without a user prompt",
        2,
        "/userPrompt",
        "null",
        "spec.steps[0].ai",
        "\"userPrompt\" is a required property",
    ),
    (
        "ai schema that is not JSON Schema",
        2,
        "/responseSchema",
        r#"{"type": "object", "properties": {"intent": {"type": 7}}}"#,
        "spec.steps[0].ai.responseSchema",
        "not a valid JSON Schema",
    ),
    (
        "ai schema whose answer is not an object",
        2,
        "/responseSchema",
        r#"{"type": "string"}"#,
        "spec.steps[0].ai.responseSchema",
        "the answer must be a JSON object",
    ),
    (
        "ai schema name with a space",
        2,
        "/schemaName",
        r#""my answer""#,
        "spec.steps[0].ai.schemaName",
        "does not match",
    ),
    (
        "ai result field with a dot",
        2,
        "/resultField",
        r#""a.b""#,
        "spec.steps[0].ai.resultField",
        "does not match",
    ),
    (
        "ai temperature above 2",
        2,
        "/temperature",
        "3",
        "spec.steps[0].ai.temperature",
        "maximum",
    ),
    (
        "ai zero timeout",
        2,
        "/timeout",
        r#""0s""#,
        "spec.steps[0].ai.timeout",
        "greater than zero",
    ),
    (
        "ai retry delays upside down",
        2,
        "/retry",
        r#"{"initialDelay": "20s", "maxDelay": "1s"}"#,
        "spec.steps[0].ai.retry.initialDelay",
        "must not exceed maxDelay",
    ),
    (
        "ai zero concurrency",
        2,
        "/maxConcurrency",
        "0",
        "spec.steps[0].ai.maxConcurrency",
        "minimum",
    ),
    (
        "ai cache without a ttl",
        2,
        "/cache",
        r#"{"maxEntries": 5}"#,
        "spec.steps[0].ai.cache",
        "\"ttl\" is a required property",
    ),
    (
        "ai cache with a zero ttl",
        2,
        "/cache",
        r#"{"ttl": "0s"}"#,
        "spec.steps[0].ai.cache.ttl",
        "greater than zero",
    ),
    (
        "ai beside another step kind",
        2,
        "/../filter",
        r#"{"when": "true"}"#,
        "spec.steps[0]",
        "set exactly one of validate, transform, enrich, classify, filter or ai",
    ),
    (
        "teams webhook from a missing Secret",
        3,
        "/webhookSecretRef",
        r#"{"name": "nope", "key": "url"}"#,
        "spec.action.teams.webhookSecretRef",
        "Secret default/nope is not among",
    ),
    (
        "teams without text",
        3,
        "/text",
        "null",
        "spec.action.teams",
        "\"text\" is a required property",
    ),
    (
        "teams title with a bad expression",
        3,
        "/title",
        r#""{{ data. }}""#,
        "spec.action.teams.title",
        "in template",
    ),
    (
        "teams fact with an unclosed hole",
        3,
        "/facts",
        r#"[{"title": "A", "value": "{{ data.x"}]"#,
        "spec.action.teams.facts[0].value",
        "without a closing",
    ),
    (
        "teams zero timeout",
        3,
        "/timeout",
        r#""0ms""#,
        "spec.action.teams.timeout",
        "greater than zero",
    ),
    (
        "teams beside another action kind",
        3,
        "/../log",
        "{}",
        "spec.action",
        "set exactly one of http, slack, email, kafka, log, teams or sms",
    ),
    (
        "sms account SID from a missing key",
        4,
        "/accountSidSecretRef",
        r#"{"name": "creds", "key": "nope"}"#,
        "spec.action.sms.accountSidSecretRef.key",
        "has no key \"nope\"",
    ),
    (
        "sms without an auth token",
        4,
        "/authTokenSecretRef",
        "null",
        "spec.action.sms",
        "\"authTokenSecretRef\" is a required property",
    ),
    (
        "sms from a number that is not E.164",
        4,
        "/from",
        r#""0151 1234""#,
        "spec.action.sms.from",
        "E.164",
    ),
    (
        "sms to a literal number that is not E.164",
        4,
        "/to",
        r#""+0123""#,
        "spec.action.sms.to",
        "E.164",
    ),
    (
        "sms to a template with a bad expression",
        4,
        "/to",
        r#""{{ data.phone ) }}""#,
        "spec.action.sms.to",
        "in template",
    ),
    (
        "sms body with an unknown name",
        4,
        "/body",
        r#""{{ error.message }}""#,
        "spec.action.sms.body",
        "unknown name",
    ),
    (
        "sms api URL without a scheme",
        4,
        "/apiUrl",
        r#""api.twilio.example""#,
        "spec.action.sms.apiUrl",
        "^https?://",
    ),
    (
        "sms zero timeout",
        4,
        "/timeout",
        r#""0s""#,
        "spec.action.sms.timeout",
        "greater than zero",
    ),
];

fn apply(docs: &mut [Value], (name, index, pointer, value, _, _): &Case) {
    let base = if *index == 2 {
        AI
    } else if *index == 3 {
        TEAMS
    } else {
        SMS
    };
    // `/../x` sets a sibling of the kind: a second kind beside it.
    let full = match pointer.strip_prefix("/..") {
        Some(rest) => format!("{}{rest}", base.rsplit_once('/').unwrap().0),
        None => format!("{base}{pointer}"),
    };
    let (parent, last) = full.rsplit_once('/').unwrap();
    let target = docs[*index]
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{name}: no object at {parent}"));
    let value: Value = serde_json::from_str(value).unwrap();
    if value.is_null() {
        target
            .remove(last)
            .unwrap_or_else(|| panic!("{name}: nothing at {full}"));
    } else {
        target.insert(last.to_owned(), value);
    }
}

#[test]
fn the_base_bot_with_an_ai_step_teams_and_sms_is_valid() {
    let found = problems(&documents());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn each_invalid_ai_teams_or_sms_spec_is_reported_at_its_field() {
    let mut failures = Vec::new();
    for case in CASES {
        let mut docs = documents();
        apply(&mut docs, case);
        let found = problems(&docs);
        let (name, _, _, _, field, message) = case;
        if !found
            .iter()
            .any(|p| p.contains(field) && p.contains(message))
        {
            failures.push(format!(
                "{name}: expected a problem at {field:?} saying {message:?}, got {found:#?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn a_loose_schema_under_strict_mode_is_a_warning_naming_the_object() {
    let mut docs = documents();
    docs[2]["spec"]["steps"][0]["ai"]["responseSchema"] = serde_json::json!({
        "type": "object", "additionalProperties": false, "required": ["intent"],
        "properties": {"intent": {"type": "string"},
                       "entities": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}
    });
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "case.yaml", &text, "default").unwrap();
    let found = validate::validate(&set, Options::LOCAL);
    let warning = found
        .iter()
        .find(|p| p.field == "spec.steps[0].ai.responseSchema")
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(warning.severity, Severity::Warning);
    assert!(
        warning.message.contains("the top-level object"),
        "{}",
        warning.message
    );
    assert!(
        warning.message.contains("nor 1 more"),
        "{}",
        warning.message
    );
    docs[2]["spec"]["steps"][0]["ai"]["strict"] = Value::Bool(false);
    assert!(problems(&docs).is_empty());
}
