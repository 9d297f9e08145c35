//! What several replicas share, on the real broker (needs `KAFKA_BOOTSTRAP`; see
//! docs/runtime-kafka.md): three ingest replicas as processes receiving every delivery three
//! times — by idempotency key and by replay id — and the action sees each once, also after the
//! process role and every ingest replica restarted (the window rebuilt from the compacted
//! dedupe topic); and a poller restarted with an empty disk resuming from the compacted state
//! topic without emitting anything again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use inputbot_e2e::runtime::{RoleProcess, Target, read_topic, serve};
use inputbot_e2e::stream::{Setup, counter, signature, wait_until_async as wait_until};
use serde_json::{Value, json};

const SECRET: &str = "e2e-replicas-signing-key";
const READY: Duration = Duration::from_secs(30);

/// The tests here start several processes each: one at a time on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BOT: &str = r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: intake}
spec:
  sources:
    - name: keyed
      webhook:
        path: /keyed
        auth: {hmac: {preset: github, secretRef: {name: creds, key: hmac}}}
        idempotencyKey: "headers['x-request-id']"
    - name: signed
      webhook:
        path: /signed
        auth: {hmac: {preset: github, secretRef: {name: creds, key: hmac}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  botRef: {name: intake}
  steps:
    - transform: {jq: '{path: .path, n: .n}'}
"#;

fn binding(url: &str) -> String {
    format!(
        r#"---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: crm}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http: {{url: "{url}"}}
  delivery:
    retry: {{maxAttempts: 2, initialDelay: 1ms, maxDelay: 5ms, jitter: false}}
"#
    )
}

const KEYS: i64 = 60;

/// Sends every key to every replica (the keyed source by `x-request-id`, the signed one as the
/// same signed request); each answer must be a 202.
async fn send_everything_to_every_replica(client: &reqwest::Client, replicas: &[String]) {
    let requests: Vec<(String, &'static str, i64)> = (0..KEYS)
        .flat_map(|n| {
            replicas.iter().flat_map(move |r| {
                [(r.clone(), "/keyed", n), (r.clone(), "/signed", n)].into_iter()
            })
        })
        .collect();
    futures::stream::iter(requests)
        .for_each_concurrent(12, |(replica, path, n)| {
            let client = client.clone();
            async move {
                let body = serde_json::to_vec(&json!({"path": path, "n": n})).expect("json");
                // The keyed source's deliveries differ in delivery id (a new attempt of the
                // sender); the signed source's are the very same request sent again.
                let delivery = if path == "/keyed" {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    format!("delivery-{n}")
                };
                let r = client
                    .post(format!("{replica}{path}"))
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature(SECRET, &body))
                    .header("x-github-delivery", delivery)
                    .header("x-request-id", format!("req-{n}"))
                    .body(body)
                    .send()
                    .await
                    .expect("ingest answers");
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
            }
        })
        .await;
}

/// `(path, n)` of every request the target received.
fn delivered(target: &Target) -> Vec<(String, i64)> {
    target
        .received()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.body).expect("json body");
            (
                v["path"].as_str().expect("path").to_owned(),
                v["n"].as_i64().expect("n"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingest_replicas_given_every_delivery_three_times_reach_the_action_once_per_key() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(200).await;
    // A binding on the raw topic itself (`botRef`) drops the copies in its own group too.
    let direct = Target::start(200).await;
    let direct_binding = format!(
        r#"---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: direct}}
spec:
  botRef: {{name: intake}}
  action:
    http: {{url: "{}"}}
"#,
        direct.url("/direct")
    );
    let setup = Setup::new(
        &format!("{BOT}{}{direct_binding}", binding(&target.url("/crm"))),
        SECRET,
        3,
    )
    .await;
    let group = setup.resolved.process[0].consumer_group.clone();
    let mut act = setup.start("act", "crm");
    let mut act_direct = setup.start("act", "direct");
    act_direct.wait_ready(READY).await;
    let mut process = setup.start("process", "flow");
    let mut ingest: Vec<RoleProcess> = (0..3).map(|_| setup.start("ingest", "intake")).collect();
    for r in std::iter::once(&mut act)
        .chain(std::iter::once(&mut process))
        .chain(ingest.iter_mut())
    {
        r.wait_ready(READY).await;
    }
    let client = reqwest::Client::new();
    let urls: Vec<String> = ingest.iter().map(|r| r.url("")).collect();
    send_everything_to_every_replica(&client, &urls).await;

    // Each replica published what it had not seen itself: up to three copies per key reached
    // the raw topic. Wait until the process role dropped every copy but one.
    let expected: BTreeSet<(String, i64)> = (0..KEYS)
        .flat_map(|n| [("/keyed".to_owned(), n), ("/signed".to_owned(), n)])
        .collect();
    let on_raw = setup.raw();
    assert!(
        on_raw > expected.len(),
        "copies reached the raw topic through different replicas: {on_raw}"
    );
    let metrics = process.url("/metrics");
    let dropped_name = "inputbot_kafka_duplicates_dropped_total";
    let want_dropped = (on_raw - expected.len()) as f64;
    wait_until("the copies dropped", Duration::from_secs(60), async || {
        counter(&client, &metrics, dropped_name, &group).await >= want_dropped
    })
    .await;
    wait_until("every key delivered", Duration::from_secs(30), async || {
        target.received().len() >= expected.len()
    })
    .await;
    let got = delivered(&target);
    let distinct: BTreeSet<(String, i64)> = got.iter().cloned().collect();
    assert_eq!(distinct, expected, "every key reached the action");
    assert_eq!(got.len(), expected.len(), "and each only once");
    wait_until(
        "every key delivered directly",
        Duration::from_secs(30),
        async || direct.received().len() >= expected.len(),
    )
    .await;

    // Restart the process role and every ingest replica (their own memory of keys is gone),
    // and send everything again: the raw topic gets every key again, and the process role's
    // window, rebuilt from the compacted dedupe topic, drops all of it.
    process.kill();
    for r in &mut ingest {
        let status = r.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{}", r.log_text());
    }
    let mut process = setup.start("process", "flow");
    let mut ingest: Vec<RoleProcess> = (0..3).map(|_| setup.start("ingest", "intake")).collect();
    for r in std::iter::once(&mut process).chain(ingest.iter_mut()) {
        r.wait_ready(READY).await;
    }
    let urls: Vec<String> = ingest.iter().map(|r| r.url("")).collect();
    let before = setup.raw();
    send_everything_to_every_replica(&client, &urls).await;
    let resent = setup.raw() - before;
    assert!(
        resent >= expected.len(),
        "fresh replicas publish every key again: {resent}"
    );
    let metrics = process.url("/metrics");
    wait_until(
        "the resent copies dropped",
        Duration::from_secs(60),
        async || counter(&client, &metrics, dropped_name, &group).await >= resent as f64,
    )
    .await;
    assert!(
        process.log_text().contains("dedupe window rebuilt"),
        "{}",
        process.log_text()
    );
    // Give a wrongly passed copy the time to reach the target.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Every key reached the action as one event (one event id). The SIGKILLed process role
    // may hand the last events it had not committed to the action again — the same event,
    // with the same id (its `Idempotency-Key`): at-least-once, bounded, not a copy.
    let mut ids_of: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    for (r, key) in target.received().iter().zip(delivered(&target)) {
        ids_of.entry(key).or_default().insert(r.event_id.clone());
    }
    let keys: BTreeSet<(String, i64)> = ids_of.keys().cloned().collect();
    assert_eq!(keys, expected);
    let copies: Vec<_> = ids_of.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        copies.is_empty(),
        "copies (other event ids) reached the action: {copies:?}"
    );
    let redelivered = target.received().len() - expected.len();
    eprintln!(
        "{} keys, {on_raw} + {resent} records on the raw topic, each key delivered as one event; {redelivered} redelivered after the SIGKILL",
        expected.len()
    );

    // The botRef binding, never restarted, dropped every copy of both rounds.
    let direct_got = delivered(&direct);
    assert_eq!(
        direct_got.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every key reached the botRef binding"
    );
    assert_eq!(
        direct_got.len(),
        expected.len(),
        "each once, through both rounds"
    );

    for r in ingest
        .iter_mut()
        .chain([&mut process, &mut act, &mut act_direct].into_iter())
    {
        let status = r.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "inputbot {}: {}", r.role, r.log_text());
    }
    setup.remove();
}

/// A feed with validators: `ETag` per content, `304` for a matching `If-None-Match`.
#[derive(Default)]
struct Feed {
    items: Mutex<Vec<Value>>,
    /// `If-None-Match` of every request (`""` when absent).
    requests: Mutex<Vec<String>>,
}

impl Feed {
    fn etag(&self) -> String {
        format!("\"v{}\"", self.items.lock().expect("lock").len())
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn feed(State(feed): State<Arc<Feed>>, headers: HeaderMap) -> axum::response::Response {
    let sent = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    feed.requests.lock().expect("lock").push(sent.clone());
    let etag = feed.etag();
    if sent == etag {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let items = feed.items.lock().expect("lock").clone();
    ([(header::ETAG, etag)], axum::Json(json!({"items": items}))).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_restarted_on_an_empty_disk_resumes_from_the_state_topic_and_emits_nothing_again()
{
    let _serial = SERIAL.lock().await;
    let state = Arc::new(Feed::default());
    *state.items.lock().expect("lock") = vec![json!({"id": "a"}), json!({"id": "b"})];
    let app = Router::new()
        .route("/feed", get(feed))
        .with_state(state.clone());
    let addr = serve(app).await;
    let yaml = format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: feed}}
spec:
  sources:
    - name: items
      poll: {{url: "http://{addr}/feed", interval: 1s, itemsPath: /items, idField: /id}}
"#
    );
    let setup = Setup::new(&yaml, SECRET, 3).await;
    assert!(setup.resolved.ingest[0].state_topic.is_some());
    let disk = |n: u32| {
        setup
            .dir
            .join(format!("state-{n}"))
            .to_string_lossy()
            .into_owned()
    };
    let first_disk = disk(1);
    let mut poller = setup.start_with("ingest", "feed", &[("INPUTBOT_STATE_DIR", &first_disk)]);
    poller.wait_ready(READY).await;
    wait_until(
        "both items on the raw topic",
        Duration::from_secs(20),
        async || setup.raw() >= 2,
    )
    .await;
    // Polled again with the validator: the state is saved.
    wait_until("a conditional poll", Duration::from_secs(20), async || {
        state.requests().iter().any(|s| s == "\"v2\"")
    })
    .await;
    // SIGKILL, and a new pod with a fresh disk: only the state topic remembers.
    poller.kill();
    let seen_before = state.requests().len();
    let second_disk = disk(2);
    let mut poller = setup.start_with("ingest", "feed", &[("INPUTBOT_STATE_DIR", &second_disk)]);
    poller.wait_ready(READY).await;
    wait_until(
        "three polls by the new poller",
        Duration::from_secs(20),
        async || state.requests().len() >= seen_before + 3,
    )
    .await;
    let after_restart: Vec<String> = state.requests()[seen_before..].to_vec();
    assert!(
        after_restart.iter().all(|s| s == "\"v2\""),
        "the new poller sends the saved ETag from its first poll: {after_restart:?}"
    );
    assert_eq!(setup.raw(), 2, "nothing emitted again after the restart");
    // A new item is emitted once.
    state.items.lock().expect("lock").push(json!({"id": "c"}));
    wait_until("the new item", Duration::from_secs(20), async || {
        setup.raw() >= 3
    })
    .await;
    let raw = read_topic(&setup.bootstrap, setup.raw_topic());
    let subjects: BTreeMap<String, usize> = raw.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers["ce_subject"].clone()).or_default() += 1;
        m
    });
    assert_eq!(
        subjects,
        BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
    );
    let status = poller.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", poller.log_text());
    setup.remove();
}
