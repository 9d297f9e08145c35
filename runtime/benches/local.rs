//! Local throughput and latency: webhook → pipeline → HTTP action on the embedded bus, and the
//! rejection path, each as a ratio against a baseline measured in the same run on the same
//! machine: a do-nothing axum server answering 202, hit by the same client with the same
//! requests. Absolute numbers move with the machine's load; the ratios are what to compare.
//!
//! The bot runs twice, on the durable bus (`--bus disk`, the default) and on the in-memory one,
//! so the cost of durability is a ratio too. After each saturating run the same bot gets half
//! the rate it just reached, open loop, for up to 5 s: end-to-end latency at a load it keeps
//! up with (at saturation, latency is only the length of the queue before the slowest stage).
//!
//!     cargo bench -p inputbot-runtime --bench local [-- REQUESTS CONCURRENCY]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use futures::{StreamExt, stream::FuturesUnordered};
use hmac::{Hmac, Mac};
use inputbot_api::manifest::{self, ResourceSet};
use inputbot_runtime::local::{Engine, LocalOptions};
use sha2::Sha256;

const SECRET: &str = "bench-secret";

/// The allocator the `inputbot` binary uses (the baseline server in this process shares it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Request {
    body: Vec<u8>,
    signature: String,
    delivery: String,
}

fn requests(n: usize, secret: &str) -> Vec<Request> {
    requests_from(0, n, secret)
}

/// Requests numbered `from..from + n` (distinct bodies: the replay key is the signed body).
fn requests_from(from: usize, n: usize, secret: &str) -> Vec<Request> {
    (from..from + n)
        .map(|i| {
            let body = format!(r#"{{"kind":"ticket","n":{i},"text":"please refund order {i}"}}"#)
                .into_bytes();
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&body);
            Request {
                signature: format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
                body,
                delivery: format!("bench-{i}"),
            }
        })
        .collect()
}

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
    statuses: HashMap<u16, usize>,
    ids: Vec<(String, Instant)>,
}

impl Run {
    fn new(requests: usize) -> Run {
        Run {
            elapsed: Duration::ZERO,
            latencies: Vec::with_capacity(requests),
            statuses: HashMap::new(),
            ids: Vec::new(),
        }
    }

    fn record(&mut self, (status, sent, latency, id): Answer) {
        *self.statuses.entry(status).or_default() += 1;
        self.latencies.push(latency);
        if let Some(id) = id {
            self.ids.push((id, sent));
        }
    }
}

/// One answer: its status, when the request was sent, how long the answer took, the event id.
type Answer = (u16, Instant, Duration, Option<String>);

/// Sends one signed request (owning what it sends, so it can run as a task of its own).
async fn send(client: reqwest::Client, url: String, r: (Vec<u8>, String, String)) -> Answer {
    let (body, signature, delivery) = r;
    let sent = Instant::now();
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .header("x-github-delivery", delivery)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        sent,
        sent.elapsed(),
        body["id"].as_str().map(str::to_owned),
    )
}

impl Request {
    fn parts(&self) -> (Vec<u8>, String, String) {
        (
            self.body.clone(),
            self.signature.clone(),
            self.delivery.clone(),
        )
    }
}

/// Closed loop: `concurrency` requests in flight, the next sent as soon as one is answered.
async fn fire(url: &str, reqs: &[Request], concurrency: usize) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut run = Run::new(reqs.len());
    let mut iter = reqs.iter();
    loop {
        while pending.len() < concurrency {
            let Some(r) = iter.next() else { break };
            pending.push(send(client.clone(), url.to_owned(), r.parts()));
        }
        let Some(answer) = pending.next().await else {
            break;
        };
        run.record(answer);
    }
    run.elapsed = start.elapsed();
    run
}

/// Open loop: request `i` is sent at `i / rate` seconds whatever the answers so far (at most
/// 1,024 in flight), so latency is measured at a load the bot sustains, not at saturation where
/// it is only the length of a queue.
async fn fire_paced(url: &str, reqs: &[Request], rate: f64) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    let mut run = Run::new(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        while pending.len() >= 1024 {
            run.record(pending.join_next().await.unwrap().unwrap());
        }
        pending.spawn(send(client.clone(), url.to_owned(), r.parts()));
    }
    while let Some(answer) = pending.join_next().await {
        run.record(answer.unwrap());
    }
    run.elapsed = start.elapsed();
    run
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn sink(State(arrivals): State<Arrivals>, headers: HeaderMap, _body: Bytes) -> &'static str {
    if let Some(id) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        arrivals
            .lock()
            .unwrap()
            .insert(id.to_owned(), Instant::now());
    }
    ""
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn bot(target: &str) -> ResourceSet {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{hmac: {SECRET}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: bench}}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {{hmac: {{preset: github, secretRef: {{name: creds, key: hmac}}}}}}
        schema: {{type: object, required: [kind]}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: bench}}
  steps:
    - transform: {{jq: '{{n: .n, text: .text}}'}}
    - classify: {{rules: [{{when: 'data.text.contains("refund")', label: billing}}]}}
    - filter: {{when: '"billing" in labels'}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: sink}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http: {{url: {target}/sink, body: {{jq: '{{n: .n}}'}}}}
"#
    );
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "bench.yaml", &yaml, "default").unwrap();
    set
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".to_owned(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1_048_576.0)
        });
    format!("{cores} cores, {mem}")
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(20_000);
    let concurrency = args.get(1).copied().unwrap_or(32);
    let good = requests(n, SECRET);
    let bad = requests(n, "not-the-secret");
    println!(
        "machine: {}; {n} requests, {concurrency} concurrent, release build",
        machine()
    );

    // Baseline: the same client and requests against a server that does nothing.
    let baseline_url = serve(Router::new().route(
        "/gh",
        post(|| async { (axum::http::StatusCode::ACCEPTED, "{\"id\":\"x\"}") }),
    ))
    .await;
    let _warm = fire(
        &format!("{baseline_url}/gh"),
        &good[..n.min(2000)],
        concurrency,
    )
    .await;
    let base = fire(&format!("{baseline_url}/gh"), &good, concurrency).await;
    let base_rps = n as f64 / base.elapsed.as_secs_f64();

    let memory = through_the_bot(&good, &bad, concurrency, false).await;
    let disk = through_the_bot(&good, &bad, concurrency, true).await;

    let mut base_lat = base.latencies.clone();
    base_lat.sort();
    println!(
        "baseline (do-nothing axum server): {base_rps:>9.0} req/s  p50 {:>7.2?}  p99 {:>7.2?}",
        percentile(&base_lat, 0.5),
        percentile(&base_lat, 0.99)
    );
    for (bus, f) in [("memory", &memory), ("disk", &disk)] {
        println!(
            "[{bus:>6} bus] webhook → action (end to end): {:>9.0} ev/s   p50 {:>7.2?}  p99 {:>7.2?}  ratio {:.2} of baseline",
            f.e2e_rps,
            percentile(&f.e2e, 0.5),
            percentile(&f.e2e, 0.99),
            f.e2e_rps / base_rps
        );
        println!(
            "[{bus:>6} bus] webhook → action at half that rate ({:.0} ev/s, open loop): p50 {:>7.2?}  p99 {:>7.2?}  p999 {:>7.2?}",
            f.paced_rate,
            percentile(&f.e2e_paced, 0.5),
            percentile(&f.e2e_paced, 0.99),
            percentile(&f.e2e_paced, 0.999)
        );
        println!(
            "[{bus:>6} bus] webhook accepted (202 latency):              p50 {:>7.2?}  p99 {:>7.2?}",
            percentile(&f.accept, 0.5),
            percentile(&f.accept, 0.99)
        );
        println!(
            "[{bus:>6} bus] rejection path (bad signature 401): {:>8.0} req/s  ratio {:.2} of baseline",
            f.reject_rps,
            f.reject_rps / base_rps
        );
    }
    println!(
        "durable (disk) webhook → action: {:.2} of in-memory",
        disk.e2e_rps / memory.e2e_rps
    );
}

/// What one run through the bot measured.
struct Figures {
    e2e_rps: f64,
    /// Sent → arrived at the target, sorted.
    e2e: Vec<Duration>,
    /// Sent → answered 202, sorted.
    accept: Vec<Duration>,
    /// Events/s of the open-loop run (half of `e2e_rps`).
    paced_rate: f64,
    /// Sent → arrived at the target in the open-loop run, sorted.
    e2e_paced: Vec<Duration>,
    reject_rps: f64,
}

/// Webhook → pipeline → HTTP action end to end, then the rejection path, on a fresh bot whose
/// bus is the durable log (`disk`) or memory only.
async fn through_the_bot(
    good: &[Request],
    bad: &[Request],
    concurrency: usize,
    disk: bool,
) -> Figures {
    let n = good.len();
    // Webhook → pipeline → HTTP action, end to end.
    let paced_requests = requests_from(n, (n / 2).max(1), SECRET);
    let arrivals: Arrivals = Arc::default();
    let target = serve(
        Router::new()
            .route("/sink", post(sink))
            .with_state(arrivals.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(Some("127.0.0.1:0".parse().unwrap()), dir.path());
    options.queue_capacity = 4096;
    if !disk {
        options.log = None;
    }
    let engine = Engine::start(bot(&target), options).await.unwrap();
    let url = format!("http://{}/gh", engine.addr().unwrap());
    let run = fire(&url, good, concurrency).await;
    assert!(
        engine.settle(Duration::from_secs(300)).await,
        "not every event was delivered"
    );
    let done = Instant::now();
    let arrivals_handle = arrivals;
    let arrivals = arrivals_handle.lock().unwrap().clone();
    assert_eq!(
        run.statuses.get(&202).copied().unwrap_or(0),
        n,
        "{:?}",
        run.statuses
    );
    assert_eq!(arrivals.len(), n, "every event reaches the target");
    let first = run.ids.iter().map(|(_, s)| *s).min().unwrap();
    let last = arrivals.values().max().copied().unwrap_or(done);
    let e2e_rps = n as f64 / last.duration_since(first).as_secs_f64();
    let mut e2e: Vec<Duration> = run
        .ids
        .iter()
        .filter_map(|(id, sent)| arrivals.get(id).map(|a| a.duration_since(*sent)))
        .collect();
    e2e.sort();
    let mut accept = run.latencies.clone();
    accept.sort();

    // The same path at half the rate just measured, open loop: the latency of an event when
    // the bot keeps up, for at most 5 s of sending.
    let paced_rate = e2e_rps / 2.0;
    let count = paced_requests.len().min((paced_rate * 5.0) as usize).max(1);
    let seen_before = arrivals.len();
    let paced = fire_paced(&url, &paced_requests[..count], paced_rate).await;
    assert!(
        engine.settle(Duration::from_secs(300)).await,
        "not every paced event was delivered"
    );
    assert_eq!(
        paced.statuses.get(&202).copied().unwrap_or(0),
        count,
        "{:?}",
        paced.statuses
    );
    let arrivals_now = arrivals_handle.lock().unwrap().clone();
    assert_eq!(
        arrivals_now.len(),
        seen_before + count,
        "every paced event reaches the target"
    );
    let mut e2e_paced: Vec<Duration> = paced
        .ids
        .iter()
        .filter_map(|(id, sent)| arrivals_now.get(id).map(|a| a.duration_since(*sent)))
        .collect();
    e2e_paced.sort();

    // Rejections: bad signatures, answered 401 before the body is parsed.
    let rejected = fire(&url, bad, concurrency).await;
    assert_eq!(
        rejected.statuses.get(&401).copied().unwrap_or(0),
        n,
        "{:?}",
        rejected.statuses
    );
    let reject_rps = n as f64 / rejected.elapsed.as_secs_f64();
    engine.shutdown().await;

    Figures {
        e2e_rps,
        e2e,
        accept,
        paced_rate,
        e2e_paced,
        reject_rps,
    }
}
