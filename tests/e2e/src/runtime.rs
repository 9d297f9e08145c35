//! Support for the runtime-on-Kafka suites (`tests/runtime_kafka_*.rs`): the built `inputbot`
//! binary run as one role per child process, exactly as the operator's Deployments run it
//! (`--log-format json <role> --config … --secrets-dir … --listen …`, `INPUTBOT_KAFKA_*`),
//! topics created the way the operator creates them (the runtime never does), a recording HTTP
//! target, and a reader of whole topics.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use inputbot_api::config::{ComponentConfig, Resolved};
use inputbot_api::manifest::{self, ResourceSet};
use inputbot_api::{resolve, validate::Options};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// `target/<profile>/inputbot`, built by `cargo test --workspace` (scripts/test.sh builds it
/// before the e2e tier) or `cargo build -p inputbot-runtime`.
pub fn inputbot_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("inputbot");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p inputbot-runtime` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free loopback port (closed again: also what "a broker that is down" points at).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Creates topics as the operator would (`partitions`, replication 1); an existing one is fine.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .unwrap_or_else(|e| panic!("creating topics on {bootstrap}: {e}"));
    for r in results {
        if let Err((t, e)) = r
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Every topic the components of `resolved` read or write, as the operator provisions them:
/// `(name, partitions)` with `partitions` for all but the state topics (one partition).
pub fn all_topics(resolved: &Resolved, partitions: i32) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = Vec::new();
    let mut add = |t: &str, p: i32| {
        if !out.iter().any(|(n, _)| n == t) {
            out.push((t.to_owned(), p));
        }
    };
    for c in &resolved.ingest {
        add(&c.topic, partitions);
        if let Some(t) = &c.state_topic {
            add(t, 1);
        }
    }
    for c in &resolved.process {
        for t in [&c.input_topic, &c.output_topic, &c.dead_letter_topic] {
            add(t, partitions);
        }
        if let Some(t) = &c.dedupe_topic {
            add(t, partitions);
        }
    }
    for c in &resolved.act {
        add(&c.input_topic, partitions);
        for t in c.dead_letter_topic.iter().chain(&c.dedupe_topic) {
            add(t, partitions);
        }
    }
    out
}

/// Resolves YAML (as `kubectl apply`d) like the operator does, and writes one component config
/// file per component into `dir`: `ingest-<bot>.json`, `process-<pipeline>.json`,
/// `act-<binding>.json`.
pub fn write_configs(dir: &Path, yaml: &str, namespace: &str) -> Resolved {
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "test.yaml", yaml, namespace).expect("test YAML loads");
    let resolved = resolve::resolve(&set, Options::OPERATOR)
        .unwrap_or_else(|p| panic!("test resources do not validate: {p:?}"));
    let write = |name: String, c: ComponentConfig| {
        let text = serde_json::to_string_pretty(&c).expect("config serializes");
        std::fs::write(dir.join(name), text).expect("config written");
    };
    for c in &resolved.ingest {
        write(
            format!("ingest-{}.json", c.bot.name),
            ComponentConfig::Ingest(c.clone()),
        );
    }
    for c in &resolved.process {
        write(
            format!("process-{}.json", c.pipeline.name),
            ComponentConfig::Process(c.clone()),
        );
    }
    for c in &resolved.act {
        write(
            format!("act-{}.json", c.binding.name),
            ComponentConfig::Act(c.clone()),
        );
    }
    resolved
}

/// Writes a mounted Secret file `<dir>/<name>/<key>`.
pub fn write_secret(dir: &Path, name: &str, key: &str, value: &str) {
    std::fs::create_dir_all(dir.join(name)).expect("secret dir");
    std::fs::write(dir.join(name).join(key), value).expect("secret file");
}

/// One role of the runtime as a child process; killed when dropped.
pub struct RoleProcess {
    /// The role.
    pub role: String,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl RoleProcess {
    /// Starts `inputbot --log-format json <role> --config <config> --secrets-dir <secrets>
    /// --listen 127.0.0.1:<free>` with the Kafka env the operator renders, for `bootstrap`.
    pub fn start(role: &str, config: &Path, secrets: &Path, bootstrap: &str) -> RoleProcess {
        Self::start_with(role, config, secrets, bootstrap, &[])
    }

    /// The same, with extra environment.
    pub fn start_with(
        role: &str,
        config: &Path,
        secrets: &Path,
        bootstrap: &str,
        env: &[(&str, &str)],
    ) -> RoleProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = config.with_extension(format!("{}.log", free_port()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(inputbot_binary());
        cmd.args(["--log-format", "json", role, "--config"])
            .arg(config)
            .arg("--secrets-dir")
            .arg(secrets)
            .args(["--listen", &addr.to_string(), "--drain-timeout", "10"])
            .env("INPUTBOT_KAFKA_BOOTSTRAP", bootstrap)
            .env("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
            .env("POD_NAME", format!("{role}-{}", addr.port()))
            .env("POD_NAMESPACE", "e2e")
            .env(
                "INPUTBOT_STATE_DIR",
                config.parent().expect("dir").join("state"),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("inputbot starts");
        RoleProcess {
            role: role.to_owned(),
            addr,
            log,
            child: Some(child),
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (panics with the log after `timeout`).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        self.wait_status("/readyz", 200, timeout).await;
    }

    /// Waits until `path` answers `status`.
    pub async fn wait_status(&mut self, path: &str, status: u16, timeout: Duration) {
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url(path)).send().await
                && r.status().as_u16() == status
            {
                return;
            }
            if let Some(code) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "inputbot {} exited ({code}) before {path} answered {status}:\n{}",
                    self.role,
                    self.log_text()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "inputbot {}: {path} did not answer {status} within {timeout:?}:\n{}",
                    self.role,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most `timeout`, else SIGKILL and panic) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the process runs");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "inputbot {} did not stop within {timeout:?} of SIGTERM:\n{}",
                    self.role,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit by itself (at most `timeout`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the process runs");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                panic!("inputbot {} did not exit within {timeout:?}", self.role);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves `app` on a free loopback port until the test's runtime ends; returns the address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// One request the target received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `Idempotency-Key` (the event id, as the HTTP action sends it).
    pub event_id: String,
    /// The body.
    pub body: String,
    /// Status answered.
    pub status: u16,
    /// `traceparent`, if sent.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct TargetState {
    status: Mutex<u16>,
    received: Mutex<Vec<Received>>,
}

/// A real HTTP action target on 127.0.0.1 that records every request.
#[derive(Clone)]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<TargetState>,
}

impl Target {
    /// Starts a target answering `status` to every POST.
    pub async fn start(status: u16) -> Target {
        let state = Arc::new(TargetState {
            status: Mutex::new(status),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/{*path}", post(record))
            .with_state(state.clone());
        let addr = serve(app).await;
        Target { addr, state }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers `status` from now on.
    pub fn set_status(&self, status: u16) {
        *self.state.status.lock().expect("lock") = status;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }
}

async fn record(
    State(state): State<Arc<TargetState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = *state.status.lock().expect("lock");
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.received.lock().expect("lock").push(Received {
        event_id: get("idempotency-key").unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status,
        traceparent: get("traceparent"),
    });
    StatusCode::from_u16(status).expect("status")
}

/// One record of a topic.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<String>,
    /// Headers (UTF-8 values).
    pub headers: BTreeMap<String, String>,
    /// Value.
    pub value: Vec<u8>,
}

/// Every record of `topic` from the beginning up to its end now (no consumer group).
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("group.id", "inputbot-e2e-reader-unused")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))
                .expect("tpl");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("record");
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                headers.insert(
                    x.key.to_owned(),
                    x.value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
    }
    assert!(
        ends.is_empty(),
        "could not read {topic} to its end within 30 s"
    );
    out
}
