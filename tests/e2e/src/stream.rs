//! Streams of signed webhooks through the runtime's roles as processes, shared by the Kafka-role
//! suites (`tests/runtime_kafka_roles.rs`, `…_replicas.rs`, `…_faults.rs`): a test's
//! [`Setup`] (configs, mounted Secrets and every topic the operator would create), the GitHub
//! signature, bounded waits, `/metrics` counters, a [`Tally`] target that counts deliveries per
//! event without keeping every body, and a [`Load`] sender that drives many events with bounded
//! concurrency and records what was accepted (answered 2xx) and when.
//!
//! Everything is loopback traffic; every loop is bounded by a deadline.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use inputbot_api::config::Resolved;
use serde_json::Value;
use sha2::Sha256;

use crate::runtime::{
    RoleProcess, all_topics, create_topics, read_topic, serve, write_configs, write_secret,
};
use crate::{kafka_bootstrap, unique_suffix};

/// How many events each fault test streams: `INPUTBOT_FAULT_EVENTS`, default 100,000.
pub fn fault_events() -> u64 {
    crate::setting("INPUTBOT_FAULT_EVENTS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// `sha256=<hex HMAC-SHA256 of body>`, as GitHub signs a webhook.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("an HMAC key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` to `url` as JSON signed with `secret` as GitHub signs it, with a fresh delivery id.
pub async fn post_signed(
    client: &reqwest::Client,
    secret: &str,
    url: &str,
    body: &Value,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).expect("json");
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature(secret, &bytes))
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .body(bytes)
        .send()
        .await
        .expect("ingest answers")
}

/// A test's components: configs, Secrets (`creds/hmac`) and every topic, in a temporary
/// directory.
pub struct Setup {
    /// The directory of the configs and logs.
    pub dir: PathBuf,
    /// The mounted Secrets.
    pub secrets: PathBuf,
    /// The broker.
    pub bootstrap: String,
    /// What the operator resolved.
    pub resolved: Resolved,
}

impl Setup {
    /// Resolves `yaml` into a fresh namespace, writes the configs and the signing key
    /// `secret`, and creates every topic with `partitions`.
    pub async fn new(yaml: &str, secret: &str, partitions: i32) -> Setup {
        let bootstrap = kafka_bootstrap();
        let ns = format!("e2e-{}", unique_suffix());
        let dir = std::env::temp_dir().join(format!("inputbot-e2e-{ns}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let secrets = dir.join("secrets");
        write_secret(&secrets, "creds", "hmac", secret);
        let resolved = write_configs(&dir, yaml, &ns);
        let topics = all_topics(&resolved, partitions);
        let topics: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        create_topics(&bootstrap, &topics).await;
        Setup {
            dir,
            secrets,
            bootstrap,
            resolved,
        }
    }

    /// Starts `role` of the component `name` (its config `<role>-<name>.json`).
    pub fn start(&self, role: &str, name: &str) -> RoleProcess {
        self.start_with(role, name, &[])
    }

    /// The same, with extra environment.
    pub fn start_with(&self, role: &str, name: &str, env: &[(&str, &str)]) -> RoleProcess {
        RoleProcess::start_with(
            role,
            &self.dir.join(format!("{role}-{name}.json")),
            &self.secrets,
            &self.bootstrap,
            env,
        )
    }

    /// The first bot's raw topic.
    pub fn raw_topic(&self) -> &str {
        &self.resolved.ingest[0].topic
    }

    /// Records on the raw topic now.
    pub fn raw(&self) -> usize {
        read_topic(&self.bootstrap, self.raw_topic()).len()
    }

    /// The dead-letter topic of the binding `name`.
    pub fn binding_dlq(&self, name: &str) -> String {
        self.resolved
            .act
            .iter()
            .find(|a| a.binding.name == name)
            .and_then(|a| a.dead_letter_topic.clone())
            .unwrap_or_else(|| panic!("binding {name} with dead letters"))
    }

    /// Every dead-letter topic: each pipeline's, then each binding's.
    pub fn dead_letter_topics(&self) -> Vec<String> {
        let process = self
            .resolved
            .process
            .iter()
            .map(|p| p.dead_letter_topic.clone());
        let act = self
            .resolved
            .act
            .iter()
            .filter_map(|a| a.dead_letter_topic.clone());
        process.chain(act).collect()
    }

    /// Removes the directory (configs, Secrets, logs).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `done` every 100 ms until it holds; panics after `timeout` naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_until`] for an asynchronous condition (polled every 200 ms).
pub async fn wait_until_async(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A counter of `/metrics` at `url`, summed over its label sets that contain `labels`.
pub async fn counter(client: &reqwest::Client, url: &str, name: &str, labels: &str) -> f64 {
    let text = client
        .get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the [`Tally`] saw of one event (the body's `ticket`).
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    /// Requests answered 2xx.
    pub ok: u32,
    /// Requests answered 500.
    pub failed: u32,
    /// The distinct `Idempotency-Key`s (event ids) of its requests.
    pub ids: Vec<String>,
}

#[derive(Default)]
struct TallyState {
    /// Per mille of requests answered 500.
    fail_permille: AtomicU32,
    seq: AtomicU64,
    by_ticket: Mutex<HashMap<i64, Deliveries>>,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// An HTTP action target on 127.0.0.1 counting requests per event (`ticket` of the JSON body),
/// failing a chosen share of them with `500` (a fixed pseudo-random sequence, so a run is
/// repeatable).
#[derive(Clone)]
pub struct Tally {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<TallyState>,
}

impl Tally {
    /// Starts a target answering `500` to `fail_permille` ‰ of the requests, `200` to the rest.
    pub async fn start(fail_permille: u32) -> Tally {
        let state = Arc::new(TallyState::default());
        state.fail_permille.store(fail_permille, Ordering::Relaxed);
        let app = Router::new()
            .route("/{*path}", post(tally))
            .with_state(state.clone());
        let addr = serve(app).await;
        Tally { addr, state }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Distinct events answered 2xx at least once.
    pub fn delivered(&self) -> usize {
        self.state
            .by_ticket
            .lock()
            .expect("lock")
            .values()
            .filter(|d| d.ok > 0)
            .count()
    }

    /// Requests answered 2xx.
    pub fn ok_requests(&self) -> u64 {
        self.state.ok.load(Ordering::Relaxed)
    }

    /// Requests answered 500.
    pub fn failed_requests(&self) -> u64 {
        self.state.failed.load(Ordering::Relaxed)
    }

    /// Everything seen, per ticket.
    pub fn snapshot(&self) -> BTreeMap<i64, Deliveries> {
        let map = self.state.by_ticket.lock().expect("lock");
        map.iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

/// SplitMix64: a fixed, well-spread sequence from a counter.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

async fn tally(
    State(state): State<Arc<TallyState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let ticket = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["ticket"].as_i64());
    let Some(ticket) = ticket else {
        return StatusCode::BAD_REQUEST;
    };
    let seq = state.seq.fetch_add(1, Ordering::Relaxed);
    let fail = splitmix(seq) % 1000 < u64::from(state.fail_permille.load(Ordering::Relaxed));
    let id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    {
        let mut map = state.by_ticket.lock().expect("lock");
        let d = map.entry(ticket).or_default();
        if fail {
            d.failed += 1;
        } else {
            d.ok += 1;
        }
        if !d.ids.iter().any(|i| i == id) {
            d.ids.push(id.to_owned());
        }
    }
    if fail {
        state.failed.fetch_add(1, Ordering::Relaxed);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        state.ok.fetch_add(1, Ordering::Relaxed);
        StatusCode::OK
    }
}

/// One webhook of a [`Load`]: which ingest URL, the JSON body and the `x-request-id`
/// (the idempotency key of a keyed source).
pub struct Webhook {
    /// Index into the load's URLs.
    pub replica: usize,
    /// The body.
    pub body: Value,
    /// `x-request-id`.
    pub key: String,
}

/// One accepted webhook: its number, when it was first sent and when the 2xx came.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    /// The webhook's number.
    pub n: u64,
    /// When its first attempt was sent.
    pub sent: Instant,
    /// When the 2xx answer arrived.
    pub answered: Instant,
}

#[derive(Default)]
struct LoadState {
    accepted: Mutex<Vec<Accepted>>,
    count: AtomicU64,
    /// Non-2xx answers (each one retried).
    refused: AtomicU64,
    /// Requests that got no answer at all (retried).
    errors: AtomicU64,
}

/// A sender of `events` signed webhooks with at most `concurrency` in flight, each retried
/// (50 ms apart) until it is answered 2xx or the deadline passes.
pub struct Load {
    state: Arc<LoadState>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Load {
    /// Starts sending webhook `0..events` as `make` builds them, to `urls`, signed with
    /// `secret`; gives up on what is not accepted within `deadline`.
    pub fn start(
        urls: Vec<String>,
        secret: &str,
        events: u64,
        concurrency: usize,
        deadline: Duration,
        make: impl Fn(u64) -> Webhook + Send + Sync + 'static,
    ) -> Load {
        let state = Arc::new(LoadState::default());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let started = Instant::now();
        let end = started + deadline;
        let (urls, secret, make) = (Arc::new(urls), Arc::new(secret.to_owned()), Arc::new(make));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                futures::stream::iter(0..events)
                    .for_each_concurrent(concurrency, |n| {
                        let (client, urls, secret, make, state) = (
                            client.clone(),
                            urls.clone(),
                            secret.clone(),
                            make.clone(),
                            state.clone(),
                        );
                        async move {
                            let w = make(n);
                            let bytes = serde_json::to_vec(&w.body).expect("json");
                            let sig = signature(&secret, &bytes);
                            let sent = Instant::now();
                            while Instant::now() < end {
                                let r = client
                                    .post(&urls[w.replica])
                                    .header("content-type", "application/json")
                                    .header("x-hub-signature-256", &sig)
                                    .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
                                    .header("x-request-id", &w.key)
                                    .body(bytes.clone())
                                    .send()
                                    .await;
                                match r {
                                    Ok(r) if r.status().is_success() => {
                                        let answered = Instant::now();
                                        state.accepted.lock().expect("lock").push(Accepted {
                                            n,
                                            sent,
                                            answered,
                                        });
                                        state.count.fetch_add(1, Ordering::Relaxed);
                                        return;
                                    }
                                    Ok(_) => state.refused.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => state.errors.fetch_add(1, Ordering::Relaxed),
                                };
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    })
                    .await;
            })
        };
        Load {
            state,
            task,
            started,
        }
    }

    /// Webhooks accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Non-2xx answers so far (each retried).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Requests without an answer so far (each retried).
    pub fn errors(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the sender to finish (bounded by its deadline) and returns what was accepted.
    pub async fn finish(self) -> Vec<Accepted> {
        self.task.await.expect("the sender ran");
        std::mem::take(&mut *self.state.accepted.lock().expect("lock"))
    }
}

/// Records on `topic` now (the sum of its partitions' high − low watermarks).
pub fn topic_len(bootstrap: &str, topic: &str) -> u64 {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "inputbot-e2e-reader-unused")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut total = 0;
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        total += (high - low).max(0) as u64;
    }
    total
}

/// Runs `scripts/harness.sh <verb>` on the harness the tests use (`INPUTBOT_HARNESS_DIR`,
/// `INPUTBOT_PORT_BASE`); `None` when the tests run against a broker no harness of ours
/// started (it cannot be stopped from here).
pub fn harness(verb: &str) -> Option<std::process::ExitStatus> {
    let dir = crate::setting("INPUTBOT_HARNESS_DIR")?;
    let mut cmd = std::process::Command::new(crate::repo_root().join("scripts/harness.sh"));
    cmd.arg(verb).env("INPUTBOT_HARNESS_DIR", dir);
    if let Some(base) = crate::setting("INPUTBOT_PORT_BASE") {
        cmd.env("INPUTBOT_PORT_BASE", base);
    }
    Some(cmd.status().expect("scripts/harness.sh runs"))
}
