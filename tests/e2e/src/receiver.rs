//! A real HTTP server on 127.0.0.1 standing in for the external services of the examples (a
//! CRM, a chat webhook, a status page): it records every request — method, path, headers,
//! body — and answers each with what a rule decides, so a test can make one request fail and
//! another succeed, or serve JSON to a poll source.
//!
//! Against a cluster whose pods really run (`INPUTBOT_E2E_HOST` set, e.g. kind), pods must
//! reach it: it then listens on all interfaces and its URLs name that host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ….
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased (the last value of a repeated header).
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Request {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the receiver answers: status, content type and body.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: String::new(),
        }
    }

    /// `200` with a JSON body.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: value.to_string(),
        }
    }
}

type Rule = dyn Fn(&Request) -> Reply + Send + Sync;

struct Shared {
    rule: Box<Rule>,
    received: Mutex<Vec<Request>>,
}

/// Where the test's stand-ins listen and the address their URLs name: loopback, or with
/// `INPUTBOT_E2E_HOST` (the address the cluster's pods reach this machine at) all interfaces.
pub fn listen_hosts() -> (String, String) {
    match crate::setting("INPUTBOT_E2E_HOST") {
        Some(host) => ("0.0.0.0".to_owned(), host),
        None => ("127.0.0.1".to_owned(), "127.0.0.1".to_owned()),
    }
}

/// A running receiver; it stops with the test's runtime.
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The host its URLs name.
    pub host: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts a receiver on a free port ([`listen_hosts`]) answering every request with `rule`.
    pub async fn start(rule: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Receiver {
        let shared = Arc::new(Shared {
            rule: Box::new(rule),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (bind, host) = listen_hosts();
        let listener = tokio::net::TcpListener::bind((bind.as_str(), 0))
            .await
            .expect("a port for the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, host, shared }
    }

    /// `http://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.addr.port())
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Request> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// The requests so far that `matches` selects.
    pub fn matching(&self, matches: impl Fn(&Request) -> bool) -> Vec<Request> {
        self.received().into_iter().filter(|r| matches(r)).collect()
    }

    /// Waits until `n` requests that `matches` selects arrived (panics after `timeout`,
    /// listing what did arrive), and returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        matches: impl Fn(&Request) -> bool,
    ) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self.matching(&matches);
            if found.len() >= n {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {n} request(s): {what}; the receiver \
                     got {} request(s) in all, {} matching:\n{:#?}",
                    self.received().len(),
                    found.len(),
                    self.received()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Request {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| uri.path().to_owned()),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let reply = (shared.rule)(&request);
    shared.received.lock().expect("lock").push(request);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}
