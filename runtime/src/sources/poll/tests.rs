//! Tests of the poll source against a local HTTP server: validators (ETag, Last-Modified),
//! dedupe by id and by content, items paths, failures and backoff, the state file, and what
//! an emit failure leaves behind.

use std::path::PathBuf;
use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::future::BoxFuture;
use inputbot_api::common::{HeaderValue as SpecHeader, SecretKeyRef};
use serde_json::json;

use super::{state::SeenIds, *};
use crate::bus::BusError;
use crate::sources::MemorySink;

/// What the test server answers: given the request headers, a response.
type Handler = Arc<dyn Fn(&HeaderMap) -> Response + Send + Sync>;

/// A local HTTP server on 127.0.0.1 serving `handler` at `/feed`; returns the feed URL.
async fn serve(handler: Handler) -> String {
    let app = Router::new().route(
        "/feed",
        get(move |headers: HeaderMap| {
            let handler = handler.clone();
            async move { handler(&headers) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}/feed")
}

fn json_response(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn spec(url: &str) -> PollSource {
    PollSource {
        url: url.to_owned(),
        interval: "1s".into(),
        headers: Default::default(),
        items_path: None,
        id_field: None,
        timeout: Some("2s".into()),
        oauth2: None,
        event_type: None,
    }
}

fn no_secrets() -> Secrets {
    Secrets::Mounted {
        dir: PathBuf::from("/nonexistent-inputbot-test-secrets"),
    }
}

fn poller(spec: &PollSource, state: Option<PathBuf>) -> Poller {
    Poller::new(
        "team-a/bot",
        "feed",
        spec,
        &no_secrets(),
        reqwest::Client::new(),
        state.map(Into::into),
    )
    .unwrap()
}

fn subjects(sink: &MemorySink) -> Vec<String> {
    sink.events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.subject.clone().unwrap_or_default())
        .collect()
}

/// A sink that takes `ok` events, then refuses every further one.
struct RefusingSink {
    ok: usize,
    inner: MemorySink,
}

impl Sink for RefusingSink {
    fn emit(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
        let mut events = self.inner.events.lock().unwrap();
        if events.len() >= self.ok {
            return Box::pin(async {
                Err(BusError::Full {
                    topic: "raw".into(),
                    waited: Duration::from_millis(1),
                })
            });
        }
        events.push(event);
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn dedupes_items_across_polls_by_id() {
    let body = Arc::new(Mutex::new(json!([{"id": "a"}, {"id": "b"}, {"id": "c"}])));
    let b = body.clone();
    let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let mut p = poller(&s, None);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 3);
    *body.lock().unwrap() = json!([{"id": "d"}, {"id": "a"}, {"id": "b"}, {"id": "c"}]);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(subjects(&sink), ["a", "b", "c", "d"]);
    let events = sink.events.lock().unwrap();
    assert_eq!(events[3].ty, DEFAULT_EVENT_TYPE);
    assert_eq!(events[3].data, json!({"id": "d"}));
    assert_eq!(events[3].bot, "team-a/bot");
    assert_eq!(events[3].bot_source, "feed");
}

#[tokio::test]
async fn honours_etag_and_emits_nothing_on_304() {
    let requests = Arc::new(AtomicUsize::new(0));
    let not_modified = Arc::new(AtomicUsize::new(0));
    let (r, nm) = (requests.clone(), not_modified.clone());
    let url = serve(Arc::new(move |h| {
        r.fetch_add(1, Ordering::SeqCst);
        if h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
            nm.fetch_add(1, Ordering::SeqCst);
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let mut resp = json_response(&json!([{"n": 1}, {"n": 2}]));
        resp.headers_mut()
            .insert(header::ETAG, "\"v1\"".parse().unwrap());
        resp
    }))
    .await;
    let mut s = spec(&url);
    s.event_type = Some("com.example.status".into());
    let mut p = poller(&s, None);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(not_modified.load(Ordering::SeqCst), 2);
    let events = sink.events.lock().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].ty, "com.example.status");
    assert_eq!(events[0].subject, None);
}

#[tokio::test]
async fn honours_last_modified_with_if_modified_since() {
    const STAMP: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let not_modified = Arc::new(AtomicUsize::new(0));
    let nm = not_modified.clone();
    let url = serve(Arc::new(move |h| {
        if h.get("if-modified-since").and_then(|v| v.to_str().ok()) == Some(STAMP) {
            nm.fetch_add(1, Ordering::SeqCst);
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let mut resp = json_response(&json!({"status": "ok"}));
        resp.headers_mut()
            .insert(header::LAST_MODIFIED, STAMP.parse().unwrap());
        resp
    }))
    .await;
    let mut p = poller(&spec(&url), None);
    let sink = MemorySink::default();

    assert_eq!(
        p.poll_once(&sink).await.unwrap(),
        1,
        "a non-array body is one item"
    );
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(sink.events.lock().unwrap()[0].data, json!({"status": "ok"}));
}

#[tokio::test]
async fn an_unchanged_body_without_validators_or_ids_is_not_emitted_again() {
    let body = Arc::new(Mutex::new(json!([1, 2])));
    let b = body.clone();
    let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
    let mut p = poller(&spec(&url), None);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    *body.lock().unwrap() = json!([1, 2, 3]);
    assert_eq!(
        p.poll_once(&sink).await.unwrap(),
        3,
        "without idField every item of a changed response is emitted"
    );
}

#[tokio::test]
async fn follows_items_path_and_id_field_pointers_with_numeric_ids() {
    let body = Arc::new(Mutex::new(json!({
        "data": {"incidents": [{"meta": {"id": 1}, "t": "x"}, {"meta": {"id": 2}, "t": "y"}]}
    })));
    let b = body.clone();
    let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
    let mut s = spec(&url);
    s.items_path = Some("/data/incidents".into());
    s.id_field = Some("/meta/id".into());
    let mut p = poller(&s, None);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
    body.lock().unwrap()["data"]["incidents"]
        .as_array_mut()
        .unwrap()
        .push(json!({"meta": {"id": 3}, "t": "z"}));
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    assert_eq!(subjects(&sink), ["1", "2", "3"]);
    assert_eq!(
        sink.events.lock().unwrap()[2].data,
        json!({"meta": {"id": 3}, "t": "z"})
    );
}

#[tokio::test]
async fn items_without_an_id_are_emitted_once() {
    let url = serve(Arc::new(|_| {
        json_response(&json!([{"id": "a"}, {"other": true}, {"id": {"nested": 1}}]))
    }))
    .await;
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let mut p = poller(&s, None);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 3);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(subjects(&sink), ["a", "", ""]);
}

#[tokio::test]
async fn a_non_array_at_items_path_is_a_clear_error() {
    let url = serve(Arc::new(|_| json_response(&json!({"items": {"a": 1}})))).await;
    let mut s = spec(&url);
    s.items_path = Some("/items".into());
    let mut p = poller(&s, None);
    let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            PollError::ItemsNotArray {
                found: "an object",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&url) && text.contains("\"/items\"") && text.contains("an array"));

    s.items_path = Some("/missing".into());
    let mut p = poller(&s, None);
    let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            PollError::ItemsNotArray {
                found: "missing",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_clear_error() {
    let url = serve(Arc::new(|_| "<html>oops</html>".into_response())).await;
    let mut p = poller(&spec(&url), None);
    let err = p.poll_once(&MemorySink::default()).await.unwrap_err();
    assert!(matches!(&err, PollError::NotJson { .. }), "{err:?}");
    assert!(err.to_string().contains(&url));
}

#[tokio::test]
async fn a_server_error_fails_the_poll_and_a_later_poll_succeeds() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    let url = serve(Arc::new(move |_| {
        if f.load(Ordering::SeqCst) {
            (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        } else {
            json_response(&json!([{"id": 7}]))
        }
    }))
    .await;
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let mut p = poller(&s, None);
    let sink = MemorySink::default();

    let err = p.poll_once(&sink).await.unwrap_err();
    assert!(
        matches!(&err, PollError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    failing.store(false, Ordering::SeqCst);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    assert_eq!(subjects(&sink), ["7"]);
}

#[tokio::test]
async fn a_slow_server_times_out_and_an_absent_one_is_a_connection_error() {
    let app = Router::new().route(
        "/feed",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "[]"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut s = spec(&format!("http://{addr}/feed"));
    s.timeout = Some("200ms".into());
    let err = poller(&s, None)
        .poll_once(&MemorySink::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, PollError::Timeout { .. }), "{err:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = poller(&spec(&format!("http://127.0.0.1:{port}/feed")), None)
        .poll_once(&MemorySink::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, PollError::Connection { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn the_state_file_survives_a_new_poller() {
    let requests_with_etag = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(Mutex::new(json!([{"id": "a"}, {"id": "b"}])));
    let (b, e) = (body.clone(), requests_with_etag.clone());
    let url = serve(Arc::new(move |h| {
        if h.contains_key("if-none-match") {
            e.fetch_add(1, Ordering::SeqCst);
        }
        // A server whose ETag never matches: the ids alone must prevent re-emits.
        let mut resp = json_response(&b.lock().unwrap());
        resp.headers_mut()
            .insert(header::ETAG, "\"x\"".parse().unwrap());
        resp
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/feed.json");
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let sink = MemorySink::default();

    let mut first = poller(&s, Some(state.clone()));
    assert_eq!(first.poll_once(&sink).await.unwrap(), 2);
    drop(first);
    assert!(state.exists());

    let mut second = poller(&s, Some(state.clone()));
    assert_eq!(second.seen_len(), 2);
    assert_eq!(
        second.poll_once(&sink).await.unwrap(),
        0,
        "no re-emit after a restart"
    );
    assert_eq!(
        requests_with_etag.load(Ordering::SeqCst),
        1,
        "the ETag was restored"
    );
    body.lock()
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "c"}));
    assert_eq!(
        second.poll_once(&sink).await.unwrap(),
        1,
        "new items are not missed"
    );
    drop(second);

    let mut third = poller(&s, Some(state.clone()));
    assert_eq!(third.poll_once(&sink).await.unwrap(), 0);
    assert_eq!(subjects(&sink), ["a", "b", "c"]);

    std::fs::write(&state, "not json").unwrap();
    let err = Poller::new(
        "team-a/bot",
        "feed",
        &s,
        &no_secrets(),
        reqwest::Client::new(),
        Some(state.into()),
    )
    .unwrap_err();
    assert!(matches!(&err, PollError::State { .. }), "{err:?}");
}

#[tokio::test]
async fn an_emit_failure_does_not_mark_items_seen() {
    let url = serve(Arc::new(|h| {
        if h.contains_key("if-none-match") {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let mut resp = json_response(&json!([{"id": "a"}, {"id": "b"}, {"id": "c"}]));
        resp.headers_mut()
            .insert(header::ETAG, "\"v1\"".parse().unwrap());
        resp
    }))
    .await;
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let mut p = poller(&s, None);

    let refusing = RefusingSink {
        ok: 1,
        inner: MemorySink::default(),
    };
    let err = p.poll_once(&refusing).await.unwrap_err();
    assert!(
        matches!(&err, PollError::Emit { emitted: 1, .. }),
        "{err:?}"
    );
    assert_eq!(subjects(&refusing.inner), ["a"]);

    // The ETag of the failed poll was not kept, so the retry gets the items again.
    let sink = MemorySink::default();
    assert_eq!(p.poll_once(&sink).await.unwrap(), 2);
    assert_eq!(subjects(&sink), ["b", "c"]);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
}

#[tokio::test]
async fn an_emit_failure_without_ids_resumes_after_what_was_emitted() {
    let url = serve(Arc::new(|_| json_response(&json!([1, 2, 3])))).await;
    let mut p = poller(&spec(&url), None);
    let refusing = RefusingSink {
        ok: 2,
        inner: MemorySink::default(),
    };
    assert!(p.poll_once(&refusing).await.is_err());
    let sink = MemorySink::default();
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    assert_eq!(sink.events.lock().unwrap()[0].data, json!(3));
    assert_eq!(p.poll_once(&sink).await.unwrap(), 0);
}

#[tokio::test]
async fn a_header_from_a_secret_is_sent() {
    let url = serve(Arc::new(|h| {
        let token = h.get("authorization").and_then(|v| v.to_str().ok());
        let plain = h.get("x-plain").and_then(|v| v.to_str().ok());
        if token == Some("Bearer s3cr3t") && plain == Some("yes") {
            json_response(&json!([{"ok": true}]))
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("feed-token")).unwrap();
    std::fs::write(dir.path().join("feed-token/header"), "Bearer s3cr3t\n").unwrap();
    let secrets = Secrets::Mounted {
        dir: dir.path().to_path_buf(),
    };
    let mut s = spec(&url);
    s.headers.insert(
        "Authorization".into(),
        SpecHeader {
            value: None,
            secret_ref: Some(SecretKeyRef {
                name: "feed-token".into(),
                key: "header".into(),
            }),
        },
    );
    s.headers.insert(
        "X-Plain".into(),
        SpecHeader {
            value: Some("yes".into()),
            secret_ref: None,
        },
    );
    let mut p = Poller::new(
        "team-a/bot",
        "feed",
        &s,
        &secrets,
        reqwest::Client::new(),
        None,
    )
    .unwrap();
    assert_eq!(p.poll_once(&MemorySink::default()).await.unwrap(), 1);
    assert!(!format!("{p:?}").contains("s3cr3t"));

    // A missing Secret names the header and the reference.
    s.headers.get_mut("Authorization").unwrap().secret_ref = Some(SecretKeyRef {
        name: "absent".into(),
        key: "token".into(),
    });
    let err = Poller::new(
        "team-a/bot",
        "feed",
        &s,
        &secrets,
        reqwest::Client::new(),
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Authorization") && text.contains("absent") && text.contains("token"),
        "{text}"
    );

    // An invalid value names the reference, not the value.
    std::fs::write(dir.path().join("feed-token/header"), "bad\u{1}value").unwrap();
    s.headers.get_mut("Authorization").unwrap().secret_ref = Some(SecretKeyRef {
        name: "feed-token".into(),
        key: "header".into(),
    });
    let err = Poller::new(
        "team-a/bot",
        "feed",
        &s,
        &secrets,
        reqwest::Client::new(),
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("feed-token") && !text.contains("bad"),
        "{text}"
    );
}

#[tokio::test]
async fn run_polls_until_shutdown() {
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    let url = serve(Arc::new(move |_| {
        let n = r.fetch_add(1, Ordering::SeqCst);
        json_response(&json!([{"id": n}]))
    }))
    .await;
    let mut s = spec(&url);
    s.interval = "20ms".into();
    s.id_field = Some("/id".into());
    let p = poller(&s, None);
    let sink = Arc::new(MemorySink::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(p.run(sink.clone(), shutdown.clone()));
    for _ in 0..200 {
        if sink.events.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops on shutdown")
        .unwrap();
    assert!(sink.events.lock().unwrap().len() >= 3);
}

#[test]
fn backoff_doubles_and_is_capped_at_ten_intervals() {
    let i = Duration::from_secs(60);
    assert_eq!(backoff(i, 0), i);
    assert_eq!(backoff(i, 1), i * 2);
    assert_eq!(backoff(i, 3), i * 8);
    assert_eq!(backoff(i, 4), i * 10);
    assert_eq!(backoff(i, u32::MAX), i * 10);
}

#[test]
fn seen_ids_are_bounded_and_forget_the_least_recently_seen() {
    let mut seen = SeenIds::new(3);
    for id in ["a", "b", "c"] {
        seen.touch(id);
    }
    seen.touch("a");
    seen.touch("d");
    assert!(!seen.contains("b"));
    assert_eq!(seen.to_vec(), ["c", "a", "d"]);
    for i in 0..1000 {
        seen.touch(&i.to_string());
    }
    assert_eq!(seen.ticks.len(), 3);
    assert!(seen.order.len() <= 2 * 3 + 64);
}

#[test]
fn bad_specs_are_refused_with_the_field() {
    let mut s = spec("ftp://127.0.0.1/x");
    let err = Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
    assert!(matches!(err, PollError::Config { field: "url", .. }));
    s.url = "http://127.0.0.1/x".into();
    s.id_field = Some("id".into());
    let err = Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
    assert!(matches!(
        err,
        PollError::Config {
            field: "idField",
            ..
        }
    ));
    s.id_field = None;
    s.interval = "0s".into();
    let err = Poller::new("a/b", "c", &s, &no_secrets(), reqwest::Client::new(), None).unwrap_err();
    assert!(matches!(
        err,
        PollError::Config {
            field: "interval",
            ..
        }
    ));
}

#[tokio::test]
async fn a_feed_longer_than_the_seen_capacity_is_not_emitted_again_on_every_poll() {
    let feed = |n: usize| json!((0..n).rev().map(|i| json!({"id": i})).collect::<Vec<_>>());
    let body = Arc::new(Mutex::new(feed(8)));
    let b = body.clone();
    let url = serve(Arc::new(move |_| json_response(&b.lock().unwrap()))).await;
    let mut s = spec(&url);
    s.id_field = Some("/id".into());
    let mut p = poller(&s, None);
    p.seen = SeenIds::new(5);
    let sink = MemorySink::default();

    assert_eq!(p.poll_once(&sink).await.unwrap(), 8);
    // One new item at the top of a feed of nine: only it is new.
    *body.lock().unwrap() = feed(9);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    *body.lock().unwrap() = feed(10);
    assert_eq!(p.poll_once(&sink).await.unwrap(), 1);
    assert_eq!(sink.events.lock().unwrap().len(), 10);
}
