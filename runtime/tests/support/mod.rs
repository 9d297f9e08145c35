//! Test support for runtime integration tests: a bot started in-process on an ephemeral port,
//! and a real HTTP target on 127.0.0.1 that records what it receives and fails on demand.

#![allow(dead_code)]

pub mod signed_bot;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hmac::{Hmac, Mac};
use inputbot_api::manifest::{self, ResourceSet};
use inputbot_runtime::local::{Engine, LocalOptions};
use sha2::Sha256;

/// One request the target received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub event_id: String,
    pub body: String,
    pub headers: HeaderMap,
    pub status: u16,
}

/// How the target answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Always 200.
    Ok,
    /// 503 with this probability (deterministic per attempt counter).
    FailRatio(f64),
    /// 503 for the first N attempts of each event, then 200.
    FailFirst(usize),
    /// Always this status.
    Always(u16),
}

#[derive(Debug)]
pub struct TargetState {
    pub behaviour: Mutex<Behaviour>,
    pub received: Mutex<Vec<Received>>,
    attempts: Mutex<HashMap<String, usize>>,
    counter: AtomicU64,
}

/// A real HTTP server on 127.0.0.1:0.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub state: Arc<TargetState>,
}

impl Target {
    pub async fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(TargetState {
            behaviour: Mutex::new(behaviour),
            received: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Ids the target answered with 2xx.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.status < 300)
            .map(|r| r.event_id)
            .collect()
    }
}

async fn handle(
    State(state): State<Arc<TargetState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let event_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = {
        let mut attempts = state.attempts.lock().unwrap();
        let n = attempts.entry(event_id.clone()).or_default();
        *n += 1;
        *n
    };
    let behaviour = state.behaviour.lock().unwrap().clone();
    let status = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::Always(s) => s,
        Behaviour::FailFirst(n) => {
            if attempt <= n {
                503
            } else {
                200
            }
        }
        Behaviour::FailRatio(p) => {
            // A deterministic pseudo-random stream: splitmix64 of a counter.
            let mut z = state
                .counter
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if (z as f64 / u64::MAX as f64) < p {
                503
            } else {
                200
            }
        }
    };
    state.received.lock().unwrap().push(Received {
        at: Instant::now(),
        event_id,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
        status,
    });
    (StatusCode::from_u16(status).unwrap(), "")
}

/// An InputBot `bot` with one unauthenticated webhook source `hook` at `/hook`.
pub fn open_webhook(bot: &str) -> String {
    format!(
        r#"
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: {bot}}}
spec:
  sources:
    - name: hook
      webhook: {{path: /hook, auth: {{none: {{}}}}}}
"#
    )
}

/// A Pipeline `flow` of `bot` that passes every event on, and an ActionBinding `out` of it
/// doing `action` (YAML flow text, e.g. `{log: {}}`), with `delivery` (flow text, or empty).
pub fn pass_through(bot: &str, action: &str, delivery: &str) -> String {
    let delivery = if delivery.is_empty() {
        String::new()
    } else {
        format!("\n  delivery: {delivery}")
    };
    format!(
        r#"
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: {bot}}}
  steps: [{{filter: {{when: 'true'}}}}]
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: out}}
spec:
  pipelineRef: {{name: flow}}
  action: {action}{delivery}
"#
    )
}

/// Loads YAML text into a resource set.
pub fn resources(yaml: &str) -> ResourceSet {
    let mut set = ResourceSet::default();
    manifest::load_str(&mut set, "test.yaml", yaml, "default").unwrap();
    set
}

/// Starts a bot on 127.0.0.1:0 with its data in a temporary directory.
pub async fn start(yaml: &str) -> (Engine, tempfile::TempDir) {
    start_with(yaml, |_| {}).await
}

pub async fn start_with(
    yaml: &str,
    tweak: impl FnOnce(&mut LocalOptions),
) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(Some("127.0.0.1:0".parse().unwrap()), dir.path());
    options.drain_timeout = Duration::from_secs(20);
    tweak(&mut options);
    let engine = Engine::start(resources(yaml), options).await.unwrap();
    (engine, dir)
}

/// `sha256=<hex>` as GitHub signs.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A client for the bot.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Counts of a metric family in the exposition text, summed over labels.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A counter for ids.
pub static NEXT: AtomicUsize = AtomicUsize::new(0);
