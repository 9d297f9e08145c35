//! Table-driven invalid specs: each case changes one field of a valid bot and asserts that the
//! problem reported names that field and says what is wrong. The checks are the ones
//! `inputbot validate` runs: the CRD schema (strict), the CEL rules, then `validate`.

use inputbot_api::{
    manifest::{self, ResourceSet},
    validate::{self, Options, Severity},
};
use serde_json::{Value, json};

/// A valid bot using every source and step kind and an action with a full delivery policy.
const BASE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {hmac: k1, token: t1, hook: "https://chat.example.com/x"}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: bot}
spec:
  sources:
    - name: hook
      webhook:
        path: /hook
        auth: {hmac: {preset: github, secretRef: {name: creds, key: hmac}}}
        schema: {type: object, required: [id]}
        idempotencyKey: "headers['x-github-delivery']"
        rateLimit: {perSecond: 10}
    - name: feed
      poll:
        url: https://status.example.com/api
        interval: 60s
        itemsPath: /items
        idField: /id
        headers: {Authorization: {secretRef: {name: creds, key: token}}}
    - name: nightly
      schedule: {cron: "0 2 * * *", timeZone: Europe/Berlin, payload: {kind: nightly}}
  ingest: {autoscaling: {minReplicas: 1, maxReplicas: 3}}
  topic: {partitions: 6, retention: 7d}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  botRef: {name: bot}
  steps:
    - validate: {schema: {type: object}}
    - transform: {jq: "{id: .id, text: (.text // \"\")}"}
    - enrich: {http: {url: "https://crm.example.com/c/{{ data.id }}", resultField: customer, timeout: 2s}}
    - classify: {rules: [{when: 'data.text.contains("refund")', label: billing}]}
    - filter: {when: 'data.id != 0'}
  processing: {maxInFlight: 16}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: act}
spec:
  pipelineRef: {name: flow}
  when: '"billing" in labels'
  action:
    http:
      url: https://crm.example.com/leads
      headers: {Authorization: {secretRef: {name: creds, key: token}}}
      body: {jq: "{id: .id}"}
  delivery:
    retry: {maxAttempts: 5, initialDelay: 1s, maxDelay: 60s, retryOn: ["429", "5xx", timeout]}
    circuitBreaker: {failureRatio: 0.5, minRequests: 10, openFor: 30s}
    rateLimit: {perSecond: 5}
  notify:
    onDeadLetter:
      slack: {webhookSecretRef: {name: creds, key: hook}, text: "{{ error.message }}"}
"#;

fn documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(BASE)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every message `inputbot validate` would print for these documents, errors only.
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

enum Change {
    Set(&'static str),
    Remove,
}

struct Case {
    name: &'static str,
    kind: &'static str,
    pointer: &'static str,
    change: Change,
    field: &'static str,
    message: &'static str,
}

const fn set(
    name: &'static str,
    kind: &'static str,
    pointer: &'static str,
    value: &'static str,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        kind,
        pointer,
        change: Change::Set(value),
        field,
        message,
    }
}

const fn remove(
    name: &'static str,
    kind: &'static str,
    pointer: &'static str,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        kind,
        pointer,
        change: Change::Remove,
        field,
        message,
    }
}

const CASES: &[Case] = &[
    // ---- InputBot: names ----
    set(
        "bot name too long for its Service",
        "InputBot",
        "/metadata/name",
        r#""a-very-long-bot-name-that-does-not-fit-in-a-service-name-xx""#,
        "metadata.name",
        "at most 56",
    ),
    set(
        "bot name with upper case",
        "InputBot",
        "/metadata/name",
        r#""Bot""#,
        "metadata.name",
        "lower-case letters",
    ),
    set(
        "namespace with a dot",
        "InputBot",
        "/metadata/namespace",
        r#""team.a""#,
        "metadata.namespace",
        "lower-case letters",
    ),
    // ---- InputBot: sources ----
    set(
        "no sources",
        "InputBot",
        "/spec/sources",
        "[]",
        "spec.sources",
        "has less than 1 item",
    ),
    set(
        "duplicate source names",
        "InputBot",
        "/spec/sources/1/name",
        r#""hook""#,
        "spec.sources",
        "source names must be unique",
    ),
    set(
        "source with two kinds",
        "InputBot",
        "/spec/sources/0/poll",
        r#"{"url": "https://x.example.com", "interval": "60s"}"#,
        "spec.sources[0]",
        "exactly one of webhook, poll, schedule or kafka",
    ),
    remove(
        "source with no kind",
        "InputBot",
        "/spec/sources/2/schedule",
        "spec.sources[2]",
        "exactly one of webhook, poll, schedule or kafka",
    ),
    set(
        "source name with upper case",
        "InputBot",
        "/spec/sources/0/name",
        r#""Hook""#,
        "spec.sources[0].name",
        "does not match",
    ),
    set(
        "unknown field",
        "InputBot",
        "/spec/sorces",
        "[]",
        "spec",
        "'sorces' was unexpected",
    ),
    // ---- webhook ----
    set(
        "webhook path without a slash",
        "InputBot",
        "/spec/sources/0/webhook/path",
        r#""hook""#,
        "spec.sources[0].webhook.path",
        "path must start with '/'",
    ),
    set(
        "webhook path reserved",
        "InputBot",
        "/spec/sources/0/webhook/path",
        r#""/metrics""#,
        "spec.sources[0].webhook.path",
        "must not be /healthz, /readyz or /metrics",
    ),
    set(
        "duplicate webhook paths",
        "InputBot",
        "/spec/sources/1",
        r#"{"name": "hook2", "webhook": {"path": "/hook", "auth": {"none": {}}}}"#,
        "spec.sources",
        "webhook paths must be unique",
    ),
    set(
        "auth with no kind",
        "InputBot",
        "/spec/sources/0/webhook/auth",
        "{}",
        "spec.sources[0].webhook.auth",
        "exactly one of hmac, bearer, basic, jwt, apiKey or none",
    ),
    set(
        "auth with two kinds",
        "InputBot",
        "/spec/sources/0/webhook/auth/none",
        "{}",
        "spec.sources[0].webhook.auth",
        "exactly one of hmac, bearer, basic, jwt, apiKey or none",
    ),
    remove(
        "auth missing",
        "InputBot",
        "/spec/sources/0/webhook/auth",
        "spec.sources[0].webhook",
        "auth",
    ),
    set(
        "generic hmac without header",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/preset",
        r#""generic""#,
        "spec.sources[0].webhook.auth.hmac",
        "a generic hmac needs header",
    ),
    set(
        "unknown hmac preset",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/preset",
        r#""gitlab""#,
        "spec.sources[0].webhook.auth.hmac.preset",
        "gitlab",
    ),
    set(
        "secret name not a DNS name",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/secretRef/name",
        r#""My_Secret""#,
        "spec.sources[0].webhook.auth.hmac.secretRef.name",
        "DNS subdomain",
    ),
    set(
        "secret key with a slash",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/secretRef/key",
        r#""a/b""#,
        "spec.sources[0].webhook.auth.hmac.secretRef.key",
        "Secret key",
    ),
    set(
        "secret key missing from the Secret",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/secretRef/key",
        r#""nope""#,
        "spec.sources[0].webhook.auth.hmac.secretRef.key",
        "has no key \"nope\"",
    ),
    set(
        "tolerance not a duration",
        "InputBot",
        "/spec/sources/0/webhook/auth/hmac/tolerance",
        r#""5 minutes""#,
        "spec.sources[0].webhook.auth.hmac.tolerance",
        "does not match",
    ),
    set(
        "edge schema not a JSON Schema",
        "InputBot",
        "/spec/sources/0/webhook/schema",
        r#"{"type": 12}"#,
        "spec.sources[0].webhook.schema",
        "not a valid JSON Schema",
    ),
    set(
        "idempotency key not CEL",
        "InputBot",
        "/spec/sources/0/webhook/idempotencyKey",
        r#""headers[""#,
        "spec.sources[0].webhook.idempotencyKey",
        "invalid CEL expression",
    ),
    set(
        "idempotency key uses labels",
        "InputBot",
        "/spec/sources/0/webhook/idempotencyKey",
        r#""labels[0]""#,
        "spec.sources[0].webhook.idempotencyKey",
        "unknown name \"labels\"",
    ),
    set(
        "body limit zero",
        "InputBot",
        "/spec/sources/0/webhook/maxBodyBytes",
        "0",
        "spec.sources[0].webhook.maxBodyBytes",
        "minimum",
    ),
    set(
        "rate limit zero",
        "InputBot",
        "/spec/sources/0/webhook/rateLimit/perSecond",
        "0",
        "spec.sources[0].webhook.rateLimit.perSecond",
        "minimum",
    ),
    // ---- poll ----
    set(
        "poll url not http",
        "InputBot",
        "/spec/sources/1/poll/url",
        r#""ftp://x.example.com""#,
        "spec.sources[1].poll.url",
        "does not match",
    ),
    set(
        "poll url without host",
        "InputBot",
        "/spec/sources/1/poll/url",
        r#""https://""#,
        "spec.sources[1].poll.url",
        "expected an http or https URL",
    ),
    set(
        "poll interval below a second",
        "InputBot",
        "/spec/sources/1/poll/interval",
        r#""500ms""#,
        "spec.sources[1].poll.interval",
        "at least 1s",
    ),
    set(
        "poll items path not a pointer",
        "InputBot",
        "/spec/sources/1/poll/itemsPath",
        r#""items""#,
        "spec.sources[1].poll.itemsPath",
        "JSON pointer",
    ),
    set(
        "poll header with value and secret",
        "InputBot",
        "/spec/sources/1/poll/headers/Authorization/value",
        r#""x""#,
        "spec.sources[1].poll.headers.Authorization",
        "exactly one of value or secretRef",
    ),
    set(
        "poll header name invalid",
        "InputBot",
        "/spec/sources/1/poll/headers",
        r#"{"Bad Header": {"value": "x"}}"#,
        "spec.sources[1].poll.headers[Bad Header]",
        "HTTP header name",
    ),
    // ---- schedule, kafka ----
    set(
        "cron minute out of range",
        "InputBot",
        "/spec/sources/2/schedule/cron",
        r#""61 * * * *""#,
        "spec.sources[2].schedule.cron",
        "invalid cron expression",
    ),
    set(
        "cron with six fields",
        "InputBot",
        "/spec/sources/2/schedule/cron",
        r#""0 0 2 * * *""#,
        "spec.sources[2].schedule.cron",
        "expected five cron fields",
    ),
    set(
        "unknown time zone",
        "InputBot",
        "/spec/sources/2/schedule/timeZone",
        r#""Mars/Olympus""#,
        "spec.sources[2].schedule.timeZone",
        "IANA time zone",
    ),
    set(
        "kafka topic with a space",
        "InputBot",
        "/spec/sources/2",
        r#"{"name": "k", "kafka": {"topic": "bad topic"}}"#,
        "spec.sources[2].kafka.topic",
        "does not match",
    ),
    // ---- workload, topic ----
    set(
        "autoscaling min above max",
        "InputBot",
        "/spec/ingest/autoscaling/minReplicas",
        "5",
        "spec.ingest.autoscaling",
        "minReplicas must be less than or equal to maxReplicas",
    ),
    set(
        "lag scaling on ingest",
        "InputBot",
        "/spec/ingest/autoscaling/lag",
        r#"{"target": 100}"#,
        "spec.ingest.autoscaling.lag",
        "lag-based scaling",
    ),
    set(
        "retention not a duration",
        "InputBot",
        "/spec/topic/retention",
        r#""forever""#,
        "spec.topic.retention",
        "does not match",
    ),
    set(
        "partitions zero",
        "InputBot",
        "/spec/topic/partitions",
        "0",
        "spec.topic.partitions",
        "minimum",
    ),
    set(
        "unknown deletion policy",
        "InputBot",
        "/spec/deletionPolicy",
        r#""Keep""#,
        "spec.deletionPolicy",
        "Keep",
    ),
    // ---- Pipeline ----
    set(
        "pipeline name too long",
        "Pipeline",
        "/metadata/name",
        r#""a-pipeline-name-that-is-much-too-long-for-process-suffix""#,
        "metadata.name",
        "at most 55",
    ),
    set(
        "pipeline of a missing bot",
        "Pipeline",
        "/spec/botRef/name",
        r#""ghost""#,
        "spec.botRef.name",
        "InputBot default/ghost is not among",
    ),
    set(
        "no steps",
        "Pipeline",
        "/spec/steps",
        "[]",
        "spec.steps",
        "has less than 1 item",
    ),
    set(
        "step with two kinds",
        "Pipeline",
        "/spec/steps/0/filter",
        r#"{"when": "true"}"#,
        "spec.steps[0]",
        "exactly one of validate, transform, enrich, classify, filter or ai",
    ),
    set(
        "validate schema invalid",
        "Pipeline",
        "/spec/steps/0/validate/schema",
        r#"{"minLength": "x"}"#,
        "spec.steps[0].validate.schema",
        "not a valid JSON Schema",
    ),
    set(
        "jq syntax error",
        "Pipeline",
        "/spec/steps/1/transform/jq",
        r#""{id: .id""#,
        "spec.steps[1].transform.jq",
        "invalid jq program",
    ),
    set(
        "jq unknown function",
        "Pipeline",
        "/spec/steps/1/transform/jq",
        r#""frobnicate""#,
        "spec.steps[1].transform.jq",
        "frobnicate",
    ),
    set(
        "jq reading the environment",
        "Pipeline",
        "/spec/steps/1/transform/jq",
        r#""$ENV.TOKEN""#,
        "spec.steps[1].transform.jq",
        "invalid jq program",
    ),
    set(
        "enrich url template broken",
        "Pipeline",
        "/spec/steps/2/enrich/http/url",
        r#""https://crm.example.com/{{ data.id""#,
        "spec.steps[2].enrich.http.url",
        "without a closing",
    ),
    set(
        "enrich result field invalid",
        "Pipeline",
        "/spec/steps/2/enrich/http/resultField",
        r#""1x""#,
        "spec.steps[2].enrich.http.resultField",
        "does not match",
    ),
    set(
        "enrich timeout zero",
        "Pipeline",
        "/spec/steps/2/enrich/http/timeout",
        r#""0s""#,
        "spec.steps[2].enrich.http.timeout",
        "greater than zero",
    ),
    set(
        "classify rule unknown function",
        "Pipeline",
        "/spec/steps/3/classify/rules/0/when",
        r#""data.text.contans('x')""#,
        "spec.steps[3].classify.rules[0].when",
        "unknown function \"contans\"",
    ),
    set(
        "filter uses headers",
        "Pipeline",
        "/spec/steps/4/filter/when",
        r#""headers['x'] == 'y'""#,
        "spec.steps[4].filter.when",
        "unknown name \"headers\"",
    ),
    set(
        "duplicate step names",
        "Pipeline",
        "/spec/steps/0/name",
        r#""transform-2""#,
        "spec.steps[1].name",
        "step names must be unique",
    ),
    set(
        "max in flight zero",
        "Pipeline",
        "/spec/processing/maxInFlight",
        "0",
        "spec.processing.maxInFlight",
        "minimum",
    ),
    // ---- ActionBinding ----
    set(
        "binding with both references",
        "ActionBinding",
        "/spec/botRef",
        r#"{"name": "bot"}"#,
        "spec",
        "set exactly one of pipelineRef or botRef",
    ),
    remove(
        "binding with no reference",
        "ActionBinding",
        "/spec/pipelineRef",
        "spec",
        "set exactly one of pipelineRef or botRef",
    ),
    set(
        "binding of a missing pipeline",
        "ActionBinding",
        "/spec/pipelineRef/name",
        r#""ghost""#,
        "spec.pipelineRef.name",
        "Pipeline default/ghost is not among",
    ),
    set(
        "when not CEL",
        "ActionBinding",
        "/spec/when",
        r#""labels.exists(""#,
        "spec.when",
        "invalid CEL expression",
    ),
    set(
        "action with no kind",
        "ActionBinding",
        "/spec/action",
        "{}",
        "spec.action",
        "exactly one of http, slack, email, kafka, log, teams or sms",
    ),
    set(
        "http method unknown",
        "ActionBinding",
        "/spec/action/http/method",
        r#""FETCH""#,
        "spec.action.http.method",
        "FETCH",
    ),
    set(
        "body with jq and template",
        "ActionBinding",
        "/spec/action/http/body/template",
        r#""x""#,
        "spec.action.http.body",
        "exactly one of jq or template",
    ),
    set(
        "body template uses error",
        "ActionBinding",
        "/spec/action/http/body",
        r#"{"template": "{{ error.message }}"}"#,
        "spec.action.http.body.template",
        "unknown name \"error\"",
    ),
    set(
        "initial delay above max delay",
        "ActionBinding",
        "/spec/delivery/retry/initialDelay",
        r#""2m""#,
        "spec.delivery.retry.initialDelay",
        "must not exceed maxDelay",
    ),
    set(
        "retry on an unknown class",
        "ActionBinding",
        "/spec/delivery/retry/retryOn/0",
        r#""6xx""#,
        "spec.delivery.retry.retryOn[0]",
        "does not match",
    ),
    set(
        "zero attempts",
        "ActionBinding",
        "/spec/delivery/retry/maxAttempts",
        "0",
        "spec.delivery.retry.maxAttempts",
        "minimum",
    ),
    set(
        "failure ratio above one",
        "ActionBinding",
        "/spec/delivery/circuitBreaker/failureRatio",
        "1.5",
        "spec.delivery.circuitBreaker.failureRatio",
        "maximum",
    ),
    set(
        "email recipient without a domain",
        "ActionBinding",
        "/spec/action",
        r#"{"email": {"smtp": {"host": "smtp.example.com"}, "from": "bot@example.com", "to": ["oncall"], "subject": "s", "body": "b"}}"#,
        "spec.action.email.to[0]",
        "expected an address",
    ),
    set(
        "kafka action topic invalid",
        "ActionBinding",
        "/spec/action",
        r#"{"kafka": {"topic": "a/b"}}"#,
        "spec.action.kafka.topic",
        "does not match",
    ),
    set(
        "notify text template broken",
        "ActionBinding",
        "/spec/notify/onDeadLetter/slack/text",
        r#""{{ }}""#,
        "spec.notify.onDeadLetter.slack.text",
        "empty",
    ),
    set(
        "workers min above max",
        "ActionBinding",
        "/spec/workers",
        r#"{"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}"#,
        "spec.workers.autoscaling",
        "minReplicas must be less than or equal to maxReplicas",
    ),
    remove(
        "slack webhook Secret missing",
        "Secret",
        "",
        "spec.notify.onDeadLetter.slack.webhookSecretRef",
        "Secret default/creds is not among",
    ),
];

fn apply(docs: &mut Vec<Value>, case: &Case) {
    let index = docs
        .iter()
        .position(|d| d["kind"] == case.kind)
        .unwrap_or_else(|| panic!("{}: no {} document", case.name, case.kind));
    if case.pointer.is_empty() {
        docs.remove(index);
        return;
    }
    let (parent, last) = case.pointer.rsplit_once('/').unwrap();
    let target = docs[index]
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{}: no {parent} in {}", case.name, case.kind));
    match (&case.change, target) {
        (Change::Set(v), Value::Object(map)) => {
            map.insert(last.to_owned(), serde_json::from_str(v).unwrap());
        }
        (Change::Set(v), Value::Array(items)) => {
            items[last.parse::<usize>().unwrap()] = serde_json::from_str(v).unwrap();
        }
        (Change::Remove, Value::Object(map)) => {
            map.remove(last)
                .unwrap_or_else(|| panic!("{}: nothing at {}", case.name, case.pointer));
        }
        _ => panic!("{}: cannot apply at {}", case.name, case.pointer),
    }
}

#[test]
fn the_base_bot_is_valid() {
    let found = problems(&documents());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn each_invalid_spec_is_reported_at_its_field() {
    assert!(CASES.len() >= 40, "only {} cases", CASES.len());
    let mut failures = Vec::new();
    for case in CASES {
        let mut docs = documents();
        apply(&mut docs, case);
        let found = problems(&docs);
        let hit = found
            .iter()
            .any(|p| p.contains(case.field) && p.contains(case.message));
        if !hit {
            failures.push(format!(
                "{}: expected a problem at {:?} saying {:?}, got {found:#?}",
                case.name, case.field, case.message
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
fn missing_references_are_warnings_when_checking_files_before_apply() {
    let docs: Vec<Value> = documents()
        .into_iter()
        .filter(|d| d["kind"] != "InputBot" && d["kind"] != "Secret")
        .collect();
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "case.yaml", &text, "default").unwrap();
    let found = validate::validate(&set, Options::FILES);
    assert!(!validate::has_errors(&found), "{found:#?}");
    assert!(
        found.iter().any(|p| p.severity == Severity::Warning
            && p.field == "spec.botRef.name"
            && p.message.contains("must exist in the cluster")),
        "{found:#?}"
    );
}

#[test]
fn resolve_fills_every_default_and_names_topics() {
    let text = BASE;
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "base.yaml", text, "team-a").unwrap();
    let resolved = inputbot_api::resolve::resolve(&set, Options::LOCAL).unwrap();
    assert_eq!(resolved.ingest[0].topic, "inputbot.team-a.bot.raw");
    let p = &resolved.process[0];
    assert_eq!(p.input_topic, "inputbot.team-a.bot.raw");
    assert_eq!(p.output_topic, "inputbot.team-a.flow.out");
    assert_eq!(p.dead_letter_topic, "inputbot.team-a.flow.dlq");
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "validate-1",
            "transform-2",
            "enrich-3",
            "classify-4",
            "filter-5"
        ]
    );
    assert_eq!(p.max_in_flight, 16);
    let a = &resolved.act[0];
    assert_eq!(a.input_topic, "inputbot.team-a.flow.out");
    assert_eq!(
        a.dead_letter_topic.as_deref(),
        Some("inputbot.team-a.act.act.dlq")
    );
    assert_eq!(a.delivery.retry.max_attempts, 5);
    assert!(a.delivery.retry.jitter);
    assert!(a.delivery.retry.honor_retry_after);
    assert_eq!(a.delivery.circuit_breaker.open_for.as_secs(), 30);
    // The resolved config carries Secret references, never Secret values.
    let json = json!(resolved).to_string();
    assert!(!json.contains("k1") && !json.contains("t1"), "{json}");
}
