//! The three roles as processes on the real broker under faults, each over
//! `INPUTBOT_FAULT_EVENTS` signed webhooks (default 100,000; needs `KAFKA_BOOTSTRAP`, and the
//! harness for the broker restart; see docs/testing.md): a target failing 30 % of its requests,
//! the broker stopped for 10 s mid-stream, the process role SIGKILLed mid-stream, the act role
//! scaled 1 → 3 → 1 mid-stream, and 3 ingest replicas given every idempotency key twice.
//!
//! Each test sends with 64 webhooks in flight, counts what was answered 2xx as accepted, and
//! asserts *accepted = delivered + dead-lettered + filtered* on the sets of events (nothing
//! lost, nothing invented, no event both delivered and dead-lettered), that each event reached
//! the action under one event id (a repeat is a redelivery, never a copy), and bounds the
//! redeliveries. Every figure is printed as one `fault figures:` line.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use inputbot_e2e::runtime::{RoleProcess, read_topic};
use inputbot_e2e::stream::{
    Accepted, Load, Setup, Tally, Webhook, counter, fault_events, harness, topic_len, wait_until,
    wait_until_async,
};
use inputbot_runtime::dlq::DeadLetter;
use serde_json::json;

const SECRET: &str = "e2e-faults-signing-key";
const READY: Duration = Duration::from_secs(30);
/// Webhooks in flight at once.
const CONCURRENCY: usize = 64;
/// Partitions of every topic (the default a resource gets).
const PARTITIONS: i32 = 6;

/// The tests here start several processes and stream many events: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A keyed webhook source (`x-request-id`), a pipeline dropping every tenth event and shaping
/// the rest, and one HTTP binding at `url` retrying once, its breaker out of the way.
fn bot(url: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: intake}}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {{hmac: {{preset: github, secretRef: {{name: creds, key: hmac}}}}}}
        idempotencyKey: "headers['x-request-id']"
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
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: crm}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http: {{url: "{url}", body: {{jq: '{{ticket: .n, text: .text}}'}}}}
  delivery:
    retry: {{maxAttempts: 2, initialDelay: 1ms, maxDelay: 5ms, jitter: false}}
    circuitBreaker: {{failureRatio: 1.0, minRequests: 100000}}
"#
    )
}

/// Whether event `n` is one the pipeline filters out.
fn skipped(n: u64) -> bool {
    n % 10 == 9
}

/// Webhook `n` of a one-replica stream: its own key.
fn webhook(n: u64) -> Webhook {
    let kind = if skipped(n) { "skip" } else { "ticket" };
    Webhook {
        replica: 0,
        body: json!({"kind": kind, "n": n}),
        key: format!("k-{n}"),
    }
}

/// A bound for every wait of a test of `events` events: generous on a shared 2-core machine.
fn deadline(events: u64) -> Duration {
    Duration::from_secs(120 + events / 250)
}

/// The three roles of the test bot, ready.
struct Roles {
    setup: Setup,
    act: Vec<RoleProcess>,
    process: RoleProcess,
    ingest: Vec<RoleProcess>,
}

impl Roles {
    async fn start(target: &Tally, ingest_replicas: usize) -> Roles {
        let setup = Setup::new(&bot(&target.url("/tickets")), SECRET, PARTITIONS).await;
        let mut act = vec![setup.start("act", "crm")];
        let mut process = setup.start("process", "flow");
        let mut ingest: Vec<RoleProcess> = (0..ingest_replicas)
            .map(|_| setup.start("ingest", "intake"))
            .collect();
        for r in act
            .iter_mut()
            .chain(std::iter::once(&mut process))
            .chain(ingest.iter_mut())
        {
            r.wait_ready(READY).await;
        }
        Roles {
            setup,
            act,
            process,
            ingest,
        }
    }

    /// Starts the roles with `ingest_replicas` ingest replicas, and a [`Load`] of `events`
    /// webhooks as `make` builds them.
    async fn stream(
        target: &Tally,
        ingest_replicas: usize,
        events: u64,
        make: impl Fn(u64) -> Webhook + Send + Sync + 'static,
    ) -> (Roles, Load) {
        let roles = Roles::start(target, ingest_replicas).await;
        let urls = roles.ingest.iter().map(|r| r.url("/gh")).collect();
        let load = Load::start(urls, SECRET, events, CONCURRENCY, deadline(events), make);
        (roles, load)
    }

    /// SIGTERM to every role: each drains, commits and exits 0.
    async fn stop(mut self) {
        for r in self
            .ingest
            .iter_mut()
            .chain(std::iter::once(&mut self.process))
            .chain(self.act.iter_mut())
        {
            let status = r.terminate(Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "inputbot {} exited with {status}:\n{}",
                r.role,
                r.log_text()
            );
        }
        self.setup.remove();
    }
}

/// What a test measured.
#[derive(Debug)]
#[allow(dead_code)] // read through `Debug` in the assertion messages
struct Figures {
    events: u64,
    accepted: usize,
    delivered: usize,
    dead_lettered: usize,
    filtered: usize,
    /// Requests answered 2xx beyond the first per event, plus dead letters beyond the first.
    duplicates: usize,
    /// From the first webhook to the last delivery or dead letter.
    seconds: f64,
}

/// Waits until every accepted event that passes the filter was delivered or dead-lettered,
/// then checks *accepted = delivered + dead-lettered + filtered* on the sets of events, one
/// event id per event at the target, and returns the figures. `number` maps an accepted
/// webhook to its event's number (the `n` of the body).
async fn account(
    name: &str,
    roles: &Roles,
    target: &Tally,
    load: Load,
    events: u64,
    number: impl Fn(u64) -> u64,
) -> (Figures, Vec<Accepted>) {
    let started = load.started();
    let accepted = load.finish().await;
    let ns: BTreeSet<u64> = accepted.iter().map(|a| number(a.n)).collect();
    let sent = accepted.len();
    let filtered: BTreeSet<u64> = ns.iter().copied().filter(|n| skipped(*n)).collect();
    let want: BTreeSet<u64> = ns.difference(&filtered).copied().collect();
    let setup = &roles.setup;
    let dlqs = setup.dead_letter_topics();
    let dead_now = || -> u64 { dlqs.iter().map(|t| topic_len(&setup.bootstrap, t)).sum() };
    let start = Instant::now();
    while (target.delivered() as u64) + dead_now() < want.len() as u64 {
        assert!(
            start.elapsed() < deadline(events),
            "{name}: {} delivered + {} dead-lettered of {} after {:?}",
            target.delivered(),
            dead_now(),
            want.len(),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let sender_seconds = accepted
        .iter()
        .map(|a| a.answered - started)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    // Give a wrong extra delivery the time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seen = target.snapshot();
    let delivered: BTreeSet<u64> = seen
        .iter()
        .filter(|(_, d)| d.ok > 0)
        .map(|(n, _)| *n as u64)
        .collect();
    let mut dead = BTreeSet::new();
    let mut dead_records = 0;
    for topic in &dlqs {
        for r in read_topic(&setup.bootstrap, topic) {
            let record: DeadLetter = serde_json::from_slice(&r.value).expect("a dead letter");
            dead.insert(record.event.data["n"].as_u64().expect("n"));
            dead_records += 1;
        }
    }
    let ok_requests: usize = seen.values().map(|d| d.ok as usize).sum();
    let duplicates = ok_requests - delivered.len() + (dead_records - dead.len());
    let figures = Figures {
        events,
        accepted: ns.len(),
        delivered: delivered.len(),
        dead_lettered: dead.len(),
        filtered: filtered.len(),
        duplicates,
        seconds,
    };
    eprintln!(
        "fault figures: {name}: {events} events, {sent} webhooks accepted ({} events): delivered {} + \
         dead-lettered {} + filtered {}; duplicates {duplicates}; {seconds:.1} s ({:.0} events/s; \
         the last accepted after {sender_seconds:.1} s); target requests {} ok / {} failed",
        figures.accepted,
        figures.delivered,
        figures.dead_lettered,
        figures.filtered,
        events as f64 / seconds,
        target.ok_requests(),
        target.failed_requests(),
    );
    assert_eq!(
        ns.len() as u64,
        events,
        "{name}: every event was accepted in the end"
    );
    let both: Vec<_> = delivered.intersection(&dead).take(10).collect();
    assert!(
        both.is_empty(),
        "{name}: delivered and dead-lettered: {both:?}"
    );
    let reached: BTreeSet<u64> = delivered.union(&dead).copied().collect();
    let lost: Vec<_> = want.difference(&reached).take(10).collect();
    assert!(lost.is_empty(), "{name}: lost: {lost:?}…");
    let invented: Vec<_> = reached.difference(&want).take(10).collect();
    assert!(
        invented.is_empty(),
        "{name}: not accepted or filtered, yet reached: {invented:?}"
    );
    assert_eq!(
        figures.accepted,
        figures.delivered + figures.dead_lettered + figures.filtered,
        "{name}: accepted = delivered + dead-lettered + filtered"
    );
    let copies: Vec<_> = seen
        .iter()
        .filter(|(_, d)| d.ids.len() > 1)
        .take(10)
        .collect();
    assert!(
        copies.is_empty(),
        "{name}: events reached the action under several event ids: {copies:?}"
    );
    (figures, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_30_percent_gets_every_event_delivered_or_dead_lettered_once() {
    let _serial = SERIAL.lock().await;
    let events = fault_events();
    let target = Tally::start(300).await;
    let (roles, load) = Roles::stream(&target, 1, events, webhook).await;
    let (f, _) = account("target failing 30 %", &roles, &target, load, events, |n| n).await;
    // Two attempts each: about 0.3² of the events run out of attempts.
    let expected = 0.09 * (f.accepted - f.filtered) as f64;
    assert!(
        (f.dead_lettered as f64) > expected * 0.8 && (f.dead_lettered as f64) < expected * 1.2,
        "about 9 % dead-lettered: {f:?}"
    );
    assert_eq!(f.duplicates, 0, "no fault, no redelivery: {f:?}");
    roles.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open bug: after a broker restart the process role can stay on BrokerTransportFailure \
            and stop producing (docs/architecture.md, known limits); run with --ignored"]
async fn the_broker_stopped_for_10_s_mid_stream_loses_nothing_and_nothing_is_accepted_meanwhile() {
    let _serial = SERIAL.lock().await;
    if inputbot_e2e::setting("INPUTBOT_HARNESS_DIR").is_none() {
        eprintln!(
            "SKIPPED: the broker restart needs the local harness (INPUTBOT_HARNESS_DIR): a \
             broker named only by KAFKA_BOOTSTRAP cannot be stopped from here"
        );
        return;
    }
    let events = fault_events();
    let target = Tally::start(0).await;
    let (roles, load) = Roles::stream(&target, 1, events, webhook).await;
    wait_until("a third accepted", deadline(events), || {
        load.accepted_count() >= events / 3
    })
    .await;
    let stopping = Instant::now();
    let status = tokio::task::spawn_blocking(|| harness("kafka-stop"))
        .await
        .expect("join")
        .expect("a harness");
    assert!(status.success(), "harness.sh kafka-stop failed");
    let down = Instant::now();
    let refused_before = load.refused() + load.errors();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let refused_down = load.refused() + load.errors() - refused_before;
    let up = Instant::now();
    let status = tokio::task::spawn_blocking(|| harness("kafka-start"))
        .await
        .expect("join")
        .expect("a harness");
    assert!(status.success(), "harness.sh kafka-start failed");
    eprintln!(
        "broker: stop took {:?}, down {:?}, start took {:?}; {refused_down} webhooks refused meanwhile",
        down - stopping,
        up - down,
        up.elapsed()
    );
    let (f, accepted) = account("broker down 10 s", &roles, &target, load, events, |n| n).await;
    let while_down: Vec<&Accepted> = accepted
        .iter()
        .filter(|a| a.answered > down && a.answered < up)
        .collect();
    assert!(
        while_down.is_empty(),
        "{} webhooks answered 2xx while the broker was down, e.g. {:?}",
        while_down.len(),
        while_down.first()
    );
    assert!(
        refused_down > 0,
        "the sender was refused while the broker was down"
    );
    // Redeliveries come from what the consumers had handled but could not commit while the
    // broker was away: at most what was in flight in each role.
    assert!(
        f.duplicates <= 4 * CONCURRENCY,
        "redeliveries bounded: {f:?}"
    );
    roles.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_role_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let events = fault_events();
    let target = Tally::start(0).await;
    let (mut roles, load) = Roles::stream(&target, 1, events, webhook).await;
    wait_until("a third delivered", deadline(events), || {
        target.delivered() as u64 >= events / 3
    })
    .await;
    roles.process.kill();
    let delivered_at_kill = target.delivered();
    tokio::time::sleep(Duration::from_millis(500)).await;
    roles.process = roles.setup.start("process", "flow");
    roles.process.wait_ready(READY).await;
    let (f, _) = account("process SIGKILLed", &roles, &target, load, events, |n| n).await;
    // Redeliveries come only from what the killed process had produced but not committed:
    // about a commit interval of work plus what was in flight.
    assert!(
        f.duplicates <= delivered_at_kill,
        "redeliveries bounded: {f:?} (delivered before the kill: {delivered_at_kill})"
    );
    roles.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_act_role_scaled_1_3_1_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let events = fault_events();
    let target = Tally::start(0).await;
    let (mut roles, load) = Roles::stream(&target, 1, events, webhook).await;
    wait_until("a quarter delivered", deadline(events), || {
        target.delivered() as u64 >= events / 4
    })
    .await;
    // Scale up: two more members join the group (cooperative-sticky: the first keeps the
    // partitions it is not asked to give up).
    for _ in 0..2 {
        let mut r = roles.setup.start("act", "crm");
        r.wait_ready(READY).await;
        roles.act.push(r);
    }
    let client = reqwest::Client::new();
    let group = roles.setup.resolved.act[0].consumer_group.clone();
    // Each of the new members gets partitions and commits a share before they leave (the
    // stream must outlast the rebalance: a few thousand events at least).
    for r in &roles.act[1..] {
        let metrics = r.url("/metrics");
        wait_until_async(
            "a new member's first commit",
            deadline(events),
            async || counter(&client, &metrics, "inputbot_kafka_commits_total", "").await > 0.0,
        )
        .await;
    }
    let delivered_at_scale_down = target.delivered();
    eprintln!("act: scaled down after {delivered_at_scale_down} deliveries");
    // Scale down: the two leave as a Deployment's scale-down stops them (SIGTERM).
    for mut r in roles.act.drain(1..).collect::<Vec<_>>() {
        let status = r.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", r.log_text());
    }
    let (f, _) = account("act 1 → 3 → 1", &roles, &target, load, events, |n| n).await;
    eprintln!("act group {group}");
    // Each of the four rebalances abandons at most what the members had in flight.
    assert!(
        f.duplicates <= 4 * 3 * CONCURRENCY,
        "redeliveries bounded: {f:?}"
    );
    roles.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingest_replicas_given_every_key_twice_deliver_each_key_once() {
    let _serial = SERIAL.lock().await;
    let events = fault_events();
    let target = Tally::start(0).await;
    // Webhook n carries key n / 2: the two copies of a key go, back to back, to two different
    // replicas, so each replica publishes its copy and the process role drops the second.
    let (roles, load) = Roles::stream(&target, 3, events, |n| {
        let key = n / 2;
        let kind = if skipped(key) { "skip" } else { "ticket" };
        Webhook {
            replica: ((key + n % 2) % 3) as usize,
            body: json!({"kind": kind, "n": key}),
            key: format!("k-{key}"),
        }
    })
    .await;
    let (f, accepted) = account(
        "3 ingest replicas",
        &roles,
        &target,
        load,
        events / 2,
        |n| n / 2,
    )
    .await;
    assert_eq!(accepted.len() as u64, events, "every copy was accepted");
    assert_eq!(f.duplicates, 0, "no key reached the action twice: {f:?}");
    let raw = topic_len(&roles.setup.bootstrap, roles.setup.raw_topic());
    let client = reqwest::Client::new();
    let group = roles.setup.resolved.process[0].consumer_group.clone();
    let dropped = counter(
        &client,
        &roles.process.url("/metrics"),
        "inputbot_kafka_duplicates_dropped_total",
        &group,
    )
    .await;
    eprintln!(
        "3 ingest replicas: {events} webhooks, {} keys, {raw} records on the raw topic, {dropped} copies dropped by the process role",
        events / 2
    );
    assert!(raw > events / 2, "copies reached the raw topic: {raw}");
    assert_eq!(dropped as u64, raw - events / 2, "every copy dropped");
    roles.stop().await;
}
