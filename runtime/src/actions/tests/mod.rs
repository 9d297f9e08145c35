//! Tests of the actions, against a recording HTTP server and a fake SMTP server: the fixtures,
//! slack, log, build errors and secrets here; http in `http.rs`, email in `email.rs`, teams and
//! sms in `messaging.rs`.

mod email;
use email::email_spec;
mod http;
mod messaging;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use inputbot_api::{
    binding::Backoff,
    config::{RetryOn, RetryPolicy},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

use ::http::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use inputbot_api::binding::{Action, LogAction};

use super::{log::LogImpl, *};
use crate::outbound::preview;

const TOKEN: &str = "Bearer s3cr3t-t0ken-9f8e7d";
const SMTP_PASSWORD: &str = "pa55-w0rd-q1w2e3";

// -- a recording HTTP server --------------------------------------------------------------

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    delay: Duration,
}

impl Reply {
    fn ok() -> Self {
        Self::status(200, "ok")
    }

    fn status(status: u16, body: &'static str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn server(reply: Reply) -> Server {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: ::http::Method, uri: ::http::Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let reply = reply.clone();
            async move {
                record.lock().unwrap().push(Seen {
                    method: method.to_string(),
                    uri: uri.to_string(),
                    headers,
                    body,
                });
                tokio::time::sleep(reply.delay).await;
                let mut response = ::http::Response::builder().status(reply.status);
                for (name, value) in reply.headers {
                    response = response.header(name, value);
                }
                response.body(axum::body::Body::from(reply.body)).unwrap()
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, seen }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

// -- a fake SMTP server ---------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Mail {
    auth: Option<String>,
    from: String,
    rcpts: Vec<String>,
    data: String,
}

/// Speaks enough SMTP for lettre: greeting, EHLO (offering AUTH PLAIN), AUTH, MAIL, RCPT,
/// DATA, RSET, QUIT. `after_data` is the reply to the end of the message (`250 …` to
/// accept); `auth_reply` the reply to AUTH.
async fn fake_smtp(
    after_data: &'static str,
    auth_reply: &'static str,
) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let record = mails.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let mut mail = Mail::default();
                write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                for _ in 0..1000 {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &str = if upper.starts_with("EHLO") {
                        "250-fake\r\n250 AUTH PLAIN\r\n"
                    } else if upper.starts_with("AUTH") {
                        mail.auth = Some(line.trim().to_owned());
                        auth_reply
                    } else if upper.starts_with("MAIL FROM:") {
                        mail.from = line[10..].trim().to_owned();
                        "250 ok\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        mail.rcpts.push(line[8..].trim().to_owned());
                        "250 ok\r\n"
                    } else if upper.starts_with("DATA") {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        for _ in 0..100_000 {
                            let mut data = String::new();
                            if lines.read_line(&mut data).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if data == ".\r\n" {
                                break;
                            }
                            mail.data.push_str(&data);
                        }
                        if after_data.starts_with("250") {
                            record.lock().unwrap().push(std::mem::take(&mut mail));
                        }
                        after_data
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                        "250 ok\r\n"
                    } else {
                        "500 unknown command\r\n"
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, mails)
}

// -- fixtures -------------------------------------------------------------------------------

fn secrets(dir: &Path, entries: &[(&str, &str, &str)]) -> Secrets {
    for (name, key, value) in entries {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join(key), value).unwrap();
    }
    Secrets::Mounted {
        dir: dir.to_path_buf(),
    }
}

fn action(spec: Value) -> Action {
    serde_json::from_value(spec).unwrap()
}

fn event() -> Event {
    let mut e = Event::new(
        "team-a/support-intake",
        "zendesk",
        "ticket.created",
        json!({"ticket": 42, "from": "ann@example.com", "text": "please refund"}),
    );
    e.labels.push("billing".into());
    e
}

fn build_ok(spec: Value, secrets: &Secrets) -> Arc<dyn ActionImpl> {
    build(&action(spec), secrets, reqwest::Client::new()).unwrap()
}

fn build_err(spec: Value, secrets: &Secrets) -> String {
    build(&action(spec), secrets, reqwest::Client::new())
        .unwrap_err()
        .to_string()
}

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        backoff: Backoff::Exponential,
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        jitter: true,
        retry_on: vec![
            RetryOn::Status(429),
            RetryOn::Class(5),
            RetryOn::Timeout,
            RetryOn::Connection,
        ],
        honor_retry_after: true,
    }
}

/// The `Debug` output of the concrete action (a `dyn ActionImpl` prints only its kind).
fn debug_of(spec: Value, secrets: &Secrets) -> String {
    let action = action(spec);
    match action.kind().unwrap() {
        ActionKind::Http(h) => format!(
            "{:?}",
            HttpImpl::build(h, secrets, reqwest::Client::new()).unwrap()
        ),
        ActionKind::Slack(s) => format!(
            "{:?}",
            SlackImpl::build(s, secrets, reqwest::Client::new()).unwrap()
        ),
        ActionKind::Email(e) => format!("{:?}", EmailImpl::build(e, secrets).unwrap()),
        ActionKind::Log(l) => format!("{:?}", LogImpl::build(l).unwrap()),
        ActionKind::Teams(t) => format!(
            "{:?}",
            TeamsImpl::build(t, secrets, reqwest::Client::new()).unwrap()
        ),
        ActionKind::Sms(s) => format!(
            "{:?}",
            SmsImpl::build(s, secrets, reqwest::Client::new()).unwrap()
        ),
        ActionKind::Kafka(_) => unreachable!(),
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

// -- slack ----------------------------------------------------------------------------------

#[tokio::test]
async fn slack_posts_the_rendered_text_as_json() {
    let server = server(Reply::ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(
        dir.path(),
        &[("slack", "url", &server.url("/services/T0/B0/XyZ"))],
    );
    let slack = build_ok(
        json!({"slack": {
            "webhookSecretRef": {"name": "slack", "key": "url"},
            "text": "New ticket #{{ data.ticket }} from {{ data.from }}",
        }}),
        &secrets,
    );
    assert_eq!(slack.kind(), "slack");
    slack.attempt(&event(), 1).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/services/T0/B0/XyZ");
    assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
        json!({"text": "New ticket #42 from ann@example.com"})
    );
}

// -- log ------------------------------------------------------------------------------------

#[tokio::test]
async fn log_prints_the_template_or_the_data_and_fails_only_on_a_template_error() {
    let e = event();
    let plain = LogImpl::build(&LogAction { template: None }).unwrap();
    assert_eq!(plain.line(&e).unwrap(), e.data.to_string());
    let text = LogImpl::build(&LogAction {
        template: Some("{{ event.type }} #{{ data.ticket }}".into()),
    })
    .unwrap();
    assert_eq!(text.line(&e).unwrap(), "ticket.created #42");
    let log = build_ok(
        json!({"log": {}}),
        &Secrets::Mounted {
            dir: "/nonexistent".into(),
        },
    );
    assert_eq!(log.kind(), "log");
    log.attempt(&e, 1).await.unwrap();
    let broken = build_ok(
        json!({"log": {"template": "{{ data.nope.deeper }}"}}),
        &Secrets::Mounted {
            dir: "/nonexistent".into(),
        },
    );
    let err = broken.attempt(&e, 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(err.message.starts_with("log.template: "), "{}", err.message);
}

// -- build errors and secrets ---------------------------------------------------------------

#[test]
fn build_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let cases = [
        (
            json!({"http": {"url": "ftp://x"}}),
            "http.url: must start with http",
        ),
        (
            json!({"http": {"url": "http://x/{{ dta.id }}"}}),
            "http.url: in template: ",
        ),
        (
            json!({"http": {"url": "http://x", "body": {"jq": "{a: .b"}}}),
            "http.body.jq: invalid jq program",
        ),
        (
            json!({"http": {"url": "http://x", "headers": {"bad header": {"value": "v"}}}}),
            "http.headers.bad header: not a valid header name",
        ),
        (
            json!({"http": {"url": "http://x", "headers": {"X-A": {"secretRef": {"name": "ns-x", "key": "k"}}}}}),
            "http.headers.X-A.secretRef: cannot read Secret ns-x key \"k\"",
        ),
        (
            json!({"http": {"url": "http://x", "timeout": "soon"}}),
            "http.timeout: expected a duration",
        ),
        (
            json!({"slack": {"webhookSecretRef": {"name": "x", "key": "url"}, "text": "hi"}}),
            "slack.webhookSecretRef: cannot read Secret x key \"url\"",
        ),
        (
            json!({"kafka": {"topic": "orders"}}),
            "kafka.topic: writing to Kafka topic \"orders\" needs the Kafka bus, and the local embedded run has none",
        ),
        (
            json!({"log": {}, "kafka": {"topic": "orders"}}),
            "action: set exactly one of",
        ),
        (
            {
                let mut spec = email_spec(25, false);
                spec["email"]["to"][1] = json!("not an address");
                spec
            },
            "email.to[1]: \"not an address\" is not an email address",
        ),
        (
            {
                let mut spec = email_spec(25, false);
                spec["email"]["smtp"]["username"] = json!("bot");
                spec
            },
            "email.smtp.passwordSecretRef: required when username is set",
        ),
        (
            {
                let mut spec = email_spec(25, false);
                spec["email"]["subject"] = json!("{{ nope }}");
                spec
            },
            "email.subject: in template",
        ),
    ];
    for (spec, want) in cases {
        let err = build_err(spec.clone(), &secrets);
        assert!(err.starts_with(want), "{spec}: {err}");
    }
}

#[tokio::test]
async fn secret_values_never_appear_in_errors_or_debug_output() {
    let slack_server = server(Reply::status(404, "no_service")).await;
    let slack_url = slack_server.url("/services/T0/B0/S3CR3TPATH");
    let dead_port = closed_port().await;
    let dead_slack = format!("http://127.0.0.1:{dead_port}/services/T0/B0/S3CR3TPATH");
    let api = server(Reply::status(500, "boom")).await;
    let (smtp_port, _) = fake_smtp("250 ok\r\n", "535 5.7.8 authentication failed\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(
        dir.path(),
        &[
            ("api", "token", TOKEN),
            ("api", "broken", "Bearer abc\u{1}S3CR3TPATH"),
            ("slack", "url", &slack_url),
            ("dead", "url", &dead_slack),
            ("notaurl", "url", "S3CR3TPATH not a url"),
            ("smtp", "password", SMTP_PASSWORD),
        ],
    );
    let secret_texts = [TOKEN, "s3cr3t", "S3CR3TPATH", SMTP_PASSWORD];
    let check = |what: &str, text: &str| {
        for secret in secret_texts {
            assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
        }
    };

    let spec = json!({"http": {"url": api.url("/"), "headers": {"Authorization": {"secretRef": {"name": "api", "key": "token"}}}}});
    let debug = debug_of(spec.clone(), &secrets);
    assert!(debug.contains("authorization"), "{debug}");
    check("http Debug", &debug);
    let http = build_ok(spec, &secrets);
    assert_eq!(format!("{http:?}"), "ActionImpl(http)");
    let err = http.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Status(500));
    check("http error", &format!("{err} {err:?}"));
    let headers = resolve_headers(
        &serde_json::from_value(
            json!({"Authorization": {"secretRef": {"name": "api", "key": "token"}}}),
        )
        .unwrap(),
        &secrets,
        "enrich.headers",
    )
    .unwrap();
    check("resolved headers Debug", &format!("{headers:?}"));

    let err = build_err(
        json!({"http": {"url": "http://x", "headers": {"Authorization": {"secretRef": {"name": "api", "key": "broken"}}}}}),
        &secrets,
    );
    assert!(
        err.starts_with("http.headers.Authorization.secretRef: Secret api key \"broken\" holds a value that is not a valid header value"),
        "{err}"
    );
    check("header build error", &err);

    for name in ["slack", "dead"] {
        let spec =
            json!({"slack": {"webhookSecretRef": {"name": name, "key": "url"}, "text": "hi"}});
        check("slack Debug", &debug_of(spec.clone(), &secrets));
        let slack = build_ok(spec, &secrets);
        let err = slack.attempt(&event(), 1).await.unwrap_err();
        check("slack error", &format!("{err} {err:?}"));
        assert!(
            err.message
                .contains(&format!("Slack webhook (Secret {name} key \"url\")")),
            "{}",
            err.message
        );
    }
    let err = build_err(
        json!({"slack": {"webhookSecretRef": {"name": "notaurl", "key": "url"}, "text": "hi"}}),
        &secrets,
    );
    assert!(
        err.starts_with(
            "slack.webhookSecretRef: Secret notaurl key \"url\" does not hold a valid URL"
        ),
        "{err}"
    );
    check("slack build error", &err);

    let debug = debug_of(email_spec(smtp_port, true), &secrets);
    assert!(debug.contains("bot@example.com"), "{debug}");
    check("email Debug", &debug);
    let email = build_ok(email_spec(smtp_port, true), &secrets);
    let err = email.attempt(&event(), 1).await.unwrap_err();
    assert!(err.message.contains("SMTP 535"), "{}", err.message);
    assert_eq!(err.class, FailureClass::Other);
    check("email error", &format!("{err} {err:?}"));
}
