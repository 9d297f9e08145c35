//! The http action and the outbound send it shares: bodies, headers, URL encoding,
//! failure classes, `Retry-After` and timeouts.

use super::*;

#[tokio::test]
async fn http_sends_the_body_method_headers_idempotency_key_and_cloudevent_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[("api", "token", &format!("{TOKEN}\n"))]);
    let server = server(Reply::ok()).await;
    let http = build_ok(
        json!({"http": {
            "url": server.url("/tickets"),
            "method": "PUT",
            "headers": {
                "Authorization": {"secretRef": {"name": "api", "key": "token"}},
                "X-Team": {"value": "support"},
            },
            "body": {"jq": "{id: .ticket, who: .from}"},
        }}),
        &secrets,
    );
    assert_eq!(http.kind(), "http");
    let e = event();
    http.attempt(&e, 1).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(got.method, "PUT");
    assert_eq!(got.uri, "/tickets");
    assert_eq!(
        serde_json::from_slice::<Value>(&got.body).unwrap(),
        json!({"id": 42, "who": "ann@example.com"})
    );
    assert_eq!(header(got, "content-type"), Some("application/json"));
    assert_eq!(header(got, "authorization"), Some(TOKEN));
    assert_eq!(header(got, "x-team"), Some("support"));
    assert_eq!(header(got, "idempotency-key"), Some(e.id.as_str()));
    assert_eq!(header(got, "ce-specversion"), Some("1.0"));
    assert_eq!(header(got, "ce-id"), Some(e.id.as_str()));
    assert_eq!(header(got, "ce-source"), Some(e.source.as_str()));
    assert_eq!(header(got, "ce-type"), Some("ticket.created"));
    assert_eq!(header(got, "traceparent"), e.traceparent.as_deref());
}

#[tokio::test]
async fn http_sends_the_event_data_by_default_and_text_templates_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let server = server(Reply::ok()).await;
    let e = event();

    let plain = build_ok(json!({"http": {"url": server.url("/raw")}}), &secrets);
    plain.attempt(&e, 1).await.unwrap();
    let text = build_ok(
        json!({"http": {
            "url": server.url("/text"),
            "body": {"template": "#{{ data.ticket }} from {{ data.from }} {{ labels }}"},
            "idempotencyHeader": "X-Dedupe",
        }}),
        &secrets,
    );
    text.attempt(&e, 1).await.unwrap();
    let none = build_ok(
        json!({"http": {
            "url": server.url("/csv"),
            "body": {"template": "{{ data.ticket }},{{ data.from }}", "contentType": "text/csv"},
            "idempotencyHeader": "",
        }}),
        &secrets,
    );
    none.attempt(&e, 1).await.unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
        e.data
    );
    assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
    assert_eq!(
        &seen[1].body[..],
        br#"#42 from ann@example.com ["billing"]"#
    );
    assert_eq!(
        header(&seen[1], "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(header(&seen[1], "x-dedupe"), Some(e.id.as_str()));
    assert_eq!(header(&seen[1], "idempotency-key"), None);
    assert_eq!(&seen[2].body[..], b"42,ann@example.com");
    assert_eq!(header(&seen[2], "content-type"), Some("text/csv"));
    assert_eq!(header(&seen[2], "idempotency-key"), None);
    assert_eq!(header(&seen[2], "ce-id"), Some(e.id.as_str()));
}

#[tokio::test]
async fn values_inserted_into_the_url_are_url_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let server = server(Reply::ok()).await;
    let http = build_ok(
        json!({"http": {
            "url": format!("{}/items/{{{{ data.name }}}}?q={{{{ data.q }}}}&n={{{{ data.n }}}}", server.url("")),
            "method": "GET",
        }}),
        &secrets,
    );
    let mut e = event();
    e.data = json!({"name": "a b/c?d", "q": "x&y=z#", "n": 7});
    http.attempt(&e, 1).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/items/a%20b%2Fc%3Fd?q=x%26y%3Dz%23&n=7");
    assert!(seen[0].body.is_empty(), "a GET carries no default body");
}

#[tokio::test]
async fn a_503_with_retry_after_is_a_status_failure_that_carries_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let mut reply = Reply::status(503, "  down for\nmaintenance  ");
    reply.headers.push(("retry-after", "7"));
    let server = server(reply).await;
    let http = build_ok(
        json!({"http": {"url": server.url("/hook?api_key=abc123")}}),
        &secrets,
    );
    let err = http.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Status(503));
    assert_eq!(err.status, Some(503));
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        err.message,
        format!(
            "HTTP 503 from POST {}: down for maintenance",
            server.url("/hook")
        )
    );
    assert!(default_retry().retries(&err.class));
}

#[test]
fn retry_after_accepts_delta_seconds_and_http_dates() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
    let later = (Utc::now() + chrono::Duration::seconds(90))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let d = parse_retry_after(&later).unwrap();
    assert!(
        d > Duration::from_secs(80) && d <= Duration::from_secs(90),
        "{d:?}"
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
    assert_eq!(parse_retry_after("-3"), None);
}

#[test]
fn long_error_bodies_are_cut_to_200_characters() {
    let body = "é".repeat(300);
    let p = preview(body.as_bytes());
    assert_eq!(p.chars().count(), 2 + 200 + 1);
    assert!(p.ends_with('…'));
    assert_eq!(preview(b"   "), "");
}

#[tokio::test]
async fn a_server_slower_than_the_timeout_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let mut reply = Reply::ok();
    reply.delay = Duration::from_secs(3);
    let server = server(reply).await;
    let http = build_ok(
        json!({"http": {"url": server.url("/slow"), "timeout": "200ms"}}),
        &secrets,
    );
    let started = std::time::Instant::now();
    let err = http.attempt(&event(), 1).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.class, FailureClass::Timeout);
    assert_eq!(err.status, None);
    assert!(err.message.contains("within 200ms"), "{}", err.message);
    assert!(err.message.contains("/slow"), "{}", err.message);
}

#[tokio::test]
async fn a_closed_port_is_a_connection_failure() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let port = closed_port().await;
    let http = build_ok(
        json!({"http": {"url": format!("http://127.0.0.1:{port}/x?token=q")}}),
        &secrets,
    );
    let err = http.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Connection);
    assert!(
        err.message
            .starts_with(&format!("cannot reach POST http://127.0.0.1:{port}/x: ")),
        "{}",
        err.message
    );
    assert!(!err.message.contains("token"), "{}", err.message);
}

#[tokio::test]
async fn a_body_that_cannot_be_evaluated_is_not_retried_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let server = server(Reply::ok()).await;
    let jq = build_ok(
        json!({"http": {"url": server.url("/"), "body": {"jq": ".text + 1"}}}),
        &secrets,
    );
    let err = jq.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(err.message.starts_with("http.body.jq: "), "{}", err.message);
    assert!(!default_retry().retries(&err.class));

    let template = build_ok(
        json!({"http": {"url": server.url("/"), "body": {"template": "{{ data.missing.deeper }}"}}}),
        &secrets,
    );
    let err = template.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(
        err.message.starts_with("http.body.template: "),
        "{}",
        err.message
    );
    assert!(server.seen().is_empty(), "nothing reached the target");
}

#[tokio::test]
async fn send_returns_the_answer_and_prefixes_its_messages_with_what() {
    let client = reqwest::Client::new();
    let mut reply = Reply::status(200, r#"{"tier":"gold"}"#);
    reply.headers.push(("x-answer", "yes"));
    let ok = server(reply).await;
    let (status, headers, body) = send(
        &client,
        client.get(ok.url("/customer")),
        Duration::from_secs(5),
        "enrich customer",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-answer").unwrap(), "yes");
    assert_eq!(&body[..], br#"{"tier":"gold"}"#);

    let mut reply = Reply::status(429, "");
    reply.headers.push(("retry-after", "2"));
    let limited = server(reply).await;
    let err = send(
        &client,
        client.get(limited.url("/customer?key=k")),
        Duration::from_secs(5),
        "enrich customer",
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, FailureClass::Status(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(
        err.message,
        format!(
            "enrich customer: HTTP 429 from GET {}",
            limited.url("/customer")
        )
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_runaway_body_program_fails_its_event_without_stopping_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let server = server(Reply::ok()).await;
    let http = build_ok(
        json!({"http": {"url": server.url("/x"), "body": {"jq": "{n: last(range(.ticket * 1e13))}"}}}),
        &secrets,
    );
    // On this one-thread runtime, a ticker only runs while the evaluation is off the worker.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let started = std::time::Instant::now();
    let err = http.attempt(&event(), 1).await.unwrap_err();
    ticker.abort();
    assert_eq!(err.class, FailureClass::Other, "{err:?}");
    assert!(err.message.contains("http.body.jq"), "{err:?}");
    let (ticked, took) = (
        ticks.load(std::sync::atomic::Ordering::SeqCst),
        started.elapsed(),
    );
    // The budget of a million steps takes tens of milliseconds: long enough to see the ticker.
    assert!(took >= Duration::from_millis(30), "{took:?}");
    assert!(ticked >= 1, "the worker was blocked for {took:?}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_url_scheme_in_capitals_is_taken_as_validation_takes_it() {
    let server = server(Reply::ok()).await;
    let url = server.url("/tickets").replacen("http://", "HTTP://", 1);
    let http = build_ok(
        json!({"http": {"url": url}}),
        &Secrets::Mounted {
            dir: "/nonexistent".into(),
        },
    );
    http.attempt(&event(), 1).await.unwrap();
    assert_eq!(server.seen().len(), 1);
}
