//! The runtime's three roles as separate processes of the built `inputbot` binary on the real
//! broker, each started as its Deployment starts it (needs `KAFKA_BOOTSTRAP`; see
//! docs/testing.md): signed webhooks in, rendered bodies at a local HTTP target, failures in
//! the dead-letter topic with their reason, a process role SIGKILLed mid-stream losing nothing,
//! and `503` while the broker is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use inputbot_e2e::runtime::{
    RoleProcess, Target, free_port, inputbot_binary, read_topic, write_configs, write_secret,
};
use inputbot_e2e::stream::{Setup, post_signed, wait_until};
use inputbot_e2e::unique_suffix;
use inputbot_runtime::dlq::DeadLetter;
use serde_json::{Value, json};

const SECRET: &str = "e2e-webhook-signing-key";
const READY: Duration = Duration::from_secs(30);

/// The tests here start several processes each: one at a time on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bot(fast_retry: &str, bindings: &[(&str, String)]) -> String {
    let mut yaml = String::from(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: intake}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {hmac: {preset: github, secretRef: {name: creds, key: hmac}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  botRef: {name: intake}
  steps:
    - name: drop-skips
      filter: {when: 'data.kind != "skip"'}
    - name: shape
      transform: {jq: '{n: .n, text: ("ticket " + (.n | tostring))}'}
"#,
    );
    for (name, url) in bindings {
        yaml.push_str(&format!(
            r#"---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: {name}}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http: {{url: "{url}", body: {{jq: '{{ticket: .n, text: .text}}'}}}}
  delivery:
{fast_retry}
"#
        ));
    }
    yaml
}

const FAST_RETRY: &str = "    retry: {maxAttempts: 2, initialDelay: 1ms, maxDelay: 5ms, jitter: false}\n    circuitBreaker: {minRequests: 100000}";

/// The topics the tests here look at, by a short name.
fn topics(setup: &Setup) -> BTreeMap<&'static str, String> {
    let resolved = &setup.resolved;
    let mut topics = BTreeMap::new();
    topics.insert("raw", resolved.ingest[0].topic.clone());
    topics.insert("out", resolved.process[0].output_topic.clone());
    topics.insert("flow-dlq", resolved.process[0].dead_letter_topic.clone());
    for act in &resolved.act {
        let key: &'static str = if act.binding.name == "broken" {
            "broken-dlq"
        } else {
            "crm-dlq"
        };
        topics.insert(key, act.dead_letter_topic.clone().expect("dead letters on"));
    }
    topics
}

fn n_of(body: &str) -> i64 {
    serde_json::from_str::<Value>(body).expect("json body")["ticket"]
        .as_i64()
        .expect("ticket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_roles_as_processes_deliver_signed_webhooks_and_dead_letter_failures() {
    let _serial = SERIAL.lock().await;
    let ok = Target::start(200).await;
    let failing = Target::start(500).await;
    let yaml = bot(
        FAST_RETRY,
        &[
            ("crm", ok.url("/tickets")),
            ("broken", failing.url("/down")),
        ],
    );
    let setup = Setup::new(&yaml, SECRET, 3).await;
    let topics = topics(&setup);
    let mut roles = vec![
        setup.start("act", "crm"),
        setup.start("act", "broken"),
        setup.start("process", "flow"),
        setup.start("ingest", "intake"),
    ];
    for r in &mut roles {
        r.wait_ready(READY).await;
    }
    let client = reqwest::Client::new();
    let ingest = roles[3].url("/gh");
    for n in 0..20 {
        let kind = if n % 5 == 4 { "skip" } else { "ticket" };
        let r = post_signed(&client, SECRET, &ingest, &json!({"kind": kind, "n": n})).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
    let expected: BTreeSet<i64> = (0..20).filter(|n| n % 5 != 4).collect();

    wait_until("16 deliveries", Duration::from_secs(30), || {
        ok.received().len() >= expected.len()
    })
    .await;
    let received = ok.received();
    let bodies: BTreeSet<String> = received.iter().map(|r| r.body.clone()).collect();
    let want: BTreeSet<String> = expected
        .iter()
        .map(|n| format!(r#"{{"ticket":{n},"text":"ticket {n}"}}"#))
        .collect();
    assert_eq!(
        bodies, want,
        "the target receives exactly the rendered bodies"
    );

    // The trace context travels webhook → raw → out → action.
    let raw = read_topic(&setup.bootstrap, &topics["raw"]);
    assert_eq!(raw.len(), 20, "every accepted webhook is on the raw topic");
    for r in &raw {
        // No idempotency key on this source: records are keyed by the event source.
        assert_eq!(r.key.as_deref(), Some(r.headers["ce_source"].as_str()));
    }
    let trace_of: BTreeMap<&str, &str> = raw
        .iter()
        .map(|r| {
            (
                r.headers["ce_id"].as_str(),
                r.headers["traceparent"].as_str(),
            )
        })
        .collect();
    for r in &received {
        let tp = r
            .traceparent
            .as_deref()
            .expect("the action sends traceparent");
        let sent = trace_of[r.event_id.as_str()];
        assert_eq!(
            tp.split('-').nth(1),
            sent.split('-').nth(1),
            "one trace id end to end"
        );
    }

    // The failing binding dead-letters every event to its own topic, with the reason.
    let dlq_topic = topics["broken-dlq"].clone();
    let bootstrap = setup.bootstrap.clone();
    let start = Instant::now();
    let dead = loop {
        let records = read_topic(&bootstrap, &dlq_topic);
        if records.len() >= expected.len() {
            break records;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dead letters: {} of 16",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut dead_ns = BTreeSet::new();
    for d in &dead {
        assert_eq!(d.headers["inputbot_dlq_stage"], "action");
        assert_eq!(d.headers["inputbot_dlq_name"], "http");
        assert_eq!(d.headers["inputbot_dlq_class"], "status");
        assert_eq!(d.headers["inputbot_dlq_status"], "500");
        assert_eq!(d.headers["inputbot_dlq_attempts"], "2");
        assert!(d.headers["inputbot_dlq_resource"].ends_with("/broken"));
        let record: DeadLetter = serde_json::from_slice(&d.value).expect("a dead-letter record");
        assert_eq!(record.error.status, Some(500));
        assert!(record.first_failure <= record.last_failure);
        assert_eq!(record.input_topic, topics["out"]);
        assert_eq!(
            record.trace_id.as_deref(),
            d.headers.get("inputbot_dlq_trace_id").map(String::as_str)
        );
        dead_ns.insert(record.event.data["n"].as_i64().expect("n"));
    }
    assert_eq!(dead_ns, expected);
    assert!(
        failing.received().len() >= 2 * expected.len(),
        "two attempts each"
    );
    assert!(
        read_topic(&setup.bootstrap, &topics["crm-dlq"]).is_empty(),
        "nothing failed at the healthy target"
    );

    // `dlq inspect` lists them from the topic; once the target recovers, `dlq redrive` puts
    // them back to the failed binding only (the healthy binding sees nothing twice).
    let dlq = |args: &[&str]| {
        std::process::Command::new(inputbot_binary())
            .args(["dlq"])
            .args(args)
            .args(["--kafka-topic", &dlq_topic])
            .env("INPUTBOT_KAFKA_BOOTSTRAP", &setup.bootstrap)
            .output()
            .expect("inputbot dlq runs")
    };
    let out = dlq(&["inspect", "--json", "--class", "status", "--name", "http"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, expected.len(), "one JSON line per dead letter");
    let out = dlq(&["inspect", "--json", "--class", "timeout"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0);
    let out = dlq(&["redrive", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(failing.received().len() < 3 * expected.len() + 1);
    failing.set_status(200);
    let before_ok = ok.received().len();
    let out = dlq(&[
        "redrive",
        "--rate",
        "1000",
        "--filter",
        "error.status == 500",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the redriven events delivered",
        Duration::from_secs(30),
        || {
            failing
                .received()
                .iter()
                .filter(|r| r.status == 200)
                .count()
                >= expected.len()
        },
    )
    .await;
    let redelivered: BTreeSet<i64> = failing
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| n_of(&r.body))
        .collect();
    assert_eq!(redelivered, expected);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ok.received().len(),
        before_ok,
        "the other binding skips redriven events"
    );

    // What an HPA and a person watch: produce latency, commits and lag per partition.
    let metrics = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text")
        }
    };
    let process_metrics = metrics(roles[2].url("/metrics")).await;
    assert!(
        process_metrics.contains(&format!(
            "inputbot_kafka_produce_duration_seconds_count{{topic=\"{}\"}}",
            topics["out"]
        )),
        "{process_metrics}"
    );
    assert!(
        process_metrics.contains("inputbot_kafka_commits_total{"),
        "{process_metrics}"
    );
    let start = Instant::now();
    loop {
        let act_metrics = metrics(roles[0].url("/metrics")).await;
        if act_metrics.contains("inputbot_kafka_consumer_lag{") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(12),
            "no lag metric:\n{act_metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // SIGTERM: every role drains, commits and exits 0.
    for r in roles.iter_mut().rev() {
        let status = r.terminate(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "inputbot {} exited with {status}:\n{}",
            r.role,
            r.log_text()
        );
        let log = r.log_text();
        assert!(log.contains("stopped"), "{log}");
    }
    setup.remove();
}

/// How a role is stopped mid-stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: nothing drains; what was not committed is redelivered.
    Kill,
    /// SIGTERM: in-flight events finish and the watermark is committed before the exit.
    Term,
}

/// Streams 1,500 signed webhooks through ingest → process → act while `role` is stopped and
/// restarted a third of the way in, then checks the accounting.
async fn restart_mid_stream(role: &str, stop: Stop) {
    let _serial = SERIAL.lock().await;
    const EVENTS: i64 = 1500;
    let ok = Target::start(200).await;
    let setup = Setup::new(&bot(FAST_RETRY, &[("crm", ok.url("/tickets"))]), SECRET, 3).await;
    let topics = topics(&setup);
    let mut act = setup.start("act", "crm");
    let mut process = setup.start("process", "flow");
    let mut ingest = setup.start("ingest", "intake");
    for r in [&mut act, &mut process, &mut ingest] {
        r.wait_ready(READY).await;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .expect("client");
    let url = ingest.url("/gh");
    let accepted = std::sync::Arc::new(Mutex::new(BTreeSet::new()));
    let sender = {
        let (client, url, accepted) = (client.clone(), url.clone(), accepted.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..EVENTS)
                .map(|n| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let kind = if n % 10 == 9 { "skip" } else { "ticket" };
                        // A sender retries what was not accepted; 503s are allowed, never loss.
                        for _ in 0..50 {
                            let r =
                                post_signed(&client, SECRET, &url, &json!({"kind": kind, "n": n}))
                                    .await;
                            if r.status() == 202 {
                                return Some(n);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        None
                    }
                })
                .buffer_unordered(16)
                .for_each(|n| {
                    if let Some(n) = n {
                        accepted.lock().expect("lock").insert(n);
                    }
                    async {}
                })
                .await;
        })
    };

    // Stop the role once a third of the events went through, mid-stream.
    wait_until("a third delivered", Duration::from_secs(60), || {
        ok.received().len() as i64 >= EVENTS / 3
    })
    .await;
    let victim = if role == "process" {
        &mut process
    } else {
        &mut act
    };
    match stop {
        Stop::Kill => victim.kill(),
        Stop::Term => {
            let status = victim.terminate(Duration::from_secs(20)).await;
            assert!(status.success(), "{}", victim.log_text());
        }
    }
    let delivered_at_kill = ok.received().len();
    let accepted_at_kill = accepted.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let name = if role == "process" { "flow" } else { "crm" };
    *victim = setup.start(role, name);
    victim.wait_ready(READY).await;
    sender.await.expect("the sender finished");

    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(
        accepted.len() as i64,
        EVENTS,
        "every event was accepted in the end"
    );
    let filtered: BTreeSet<i64> = accepted.iter().copied().filter(|n| n % 10 == 9).collect();
    let want: BTreeSet<i64> = accepted.difference(&filtered).copied().collect();
    wait_until(
        "every accepted event delivered",
        Duration::from_secs(90),
        || {
            let got: BTreeSet<i64> = ok.received().iter().map(|r| n_of(&r.body)).collect();
            got.len() >= want.len()
        },
    )
    .await;
    let received = ok.received();
    let delivered: BTreeSet<i64> = received.iter().map(|r| n_of(&r.body)).collect();
    let dead_lettered = read_topic(&setup.bootstrap, &topics["flow-dlq"]).len()
        + read_topic(&setup.bootstrap, &topics["crm-dlq"]).len();
    let duplicates = received.len() - delivered.len();
    let distinct_ids: BTreeSet<&str> = received.iter().map(|r| r.event_id.as_str()).collect();
    eprintln!(
        "distinct event ids at the target: {} (of {} requests)",
        distinct_ids.len(),
        received.len()
    );
    assert_eq!(
        distinct_ids.len(),
        delivered.len(),
        "each event was accepted once (one id per n): duplicates are redeliveries only"
    );
    eprintln!(
        "{role} {}: accepted {} = delivered {} + dead-lettered {dead_lettered} + filtered {}; duplicates {duplicates} \
         (before the kill: accepted {accepted_at_kill}, delivered {delivered_at_kill})",
        if stop == Stop::Kill {
            "SIGKILLed"
        } else {
            "SIGTERMed"
        },
        accepted.len(),
        delivered.len(),
        filtered.len()
    );
    assert_eq!(delivered, want, "nothing lost, nothing invented");
    assert_eq!(dead_lettered, 0);
    assert_eq!(
        accepted.len(),
        delivered.len() + dead_lettered + filtered.len(),
        "accepted = delivered + dead-lettered + filtered"
    );
    // Duplicates come only from what the killed process had handled but not committed (about
    // a commit interval of work plus what was in flight), so never more than it had seen.
    assert!(
        duplicates <= accepted_at_kill,
        "{duplicates} duplicates, but only {accepted_at_kill} events were accepted before the kill"
    );
    if stop == Stop::Term && role == "act" {
        // A graceful stop finishes what is in flight and commits it: nothing is done twice.
        assert_eq!(duplicates, 0, "a drained act role redelivers nothing");
    }

    for r in [&mut ingest, &mut process, &mut act] {
        let status = r.terminate(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "inputbot {} exited with {status}:\n{}",
            r.role,
            r.log_text()
        );
    }
    setup.remove();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_role_killed_mid_stream_and_restarted_loses_nothing() {
    restart_mid_stream("process", Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_act_role_stopped_with_sigterm_mid_stream_drains_commits_and_repeats_nothing() {
    restart_mid_stream("act", Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_with_retry_after_while_the_broker_is_unreachable() {
    let _serial = SERIAL.lock().await;
    let dir = std::env::temp_dir().join(format!("inputbot-e2e-down-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secrets = dir.join("secrets");
    write_secret(&secrets, "creds", "hmac", SECRET);
    write_configs(&dir, &bot(FAST_RETRY, &[]), "e2e-down");
    let closed = format!("127.0.0.1:{}", free_port());
    let mut ingest =
        RoleProcess::start("ingest", &dir.join("ingest-intake.json"), &secrets, &closed);
    ingest.wait_status("/healthz", 200, READY).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(ingest.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "not ready while the broker is down");
    for n in 0..3 {
        let started = Instant::now();
        let r = post_signed(
            &client,
            SECRET,
            &ingest.url("/gh"),
            &json!({"kind": "ticket", "n": n}),
        )
        .await;
        assert_eq!(r.status(), 503);
        assert!(
            r.headers().get("retry-after").is_some(),
            "Retry-After is set"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered without waiting out the delivery timeout"
        );
    }
    let status = ingest.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", ingest.log_text());
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
