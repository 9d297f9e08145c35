//! The teams and sms actions against recording local servers: the exact request each service
//! documents (method, path, headers, content type, body fields, auth), and how their failures
//! are classified for the delivery policy.

use base64::Engine as _;

use super::*;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "twilio-auth-t0ken-5e6f";

// -- teams ----------------------------------------------------------------------------------

fn teams_spec() -> Value {
    json!({"teams": {
        "webhookSecretRef": {"name": "teams", "key": "url"},
        "title": "Ticket #{{ data.ticket }}",
        "text": "{{ data.from }} wrote: {{ data.text }}",
        "facts": [{"title": "Labels", "value": "{{ labels.join(\", \") }}"},
                  {"title": "Event", "value": "{{ event.id }}"}],
    }})
}

#[tokio::test]
async fn teams_posts_an_adaptive_card_message_as_microsoft_documents_it() {
    let server = server(Reply::status(202, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/workflows/abc/triggers/manual/paths/invoke?sig=s3cr3t-sig");
    let secrets = secrets(dir.path(), &[("teams", "url", &url)]);
    let teams = build_ok(teams_spec(), &secrets);
    assert_eq!(teams.kind(), "teams");
    let e = event();
    teams.attempt(&e, 1).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].uri,
        "/workflows/abc/triggers/manual/paths/invoke?sig=s3cr3t-sig"
    );
    assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.2",
                    "body": [
                        {"type": "TextBlock", "text": "Ticket #42", "size": "Large",
                         "weight": "Bolder", "wrap": true},
                        {"type": "TextBlock", "text": "ann@example.com wrote: please refund",
                         "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Labels", "value": "billing"},
                            {"title": "Event", "value": e.id},
                        ]},
                    ],
                },
            }],
        })
    );
}

#[tokio::test]
async fn teams_failures_are_classified_and_never_show_the_webhook_url() {
    let dir = tempfile::tempdir().unwrap();
    // An incoming webhook that answers 200 but reports a failed delivery.
    let server = server(Reply::status(
        200,
        "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=msgapi",
    ))
    .await;
    let url = server.url("/webhookb2/secret-path@tenant/IncomingWebhook/s3cr3t/x");
    let secrets = secrets(dir.path(), &[("teams", "url", &url)]);
    let err = build_ok(teams_spec(), &secrets)
        .attempt(&event(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(429));
    assert!(default_retry().retries(&err.class));
    assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    assert!(
        err.message.contains("Secret teams key \"url\""),
        "{}",
        err.message
    );

    let server = super::server(Reply::status(400, "Bad payload")).await;
    let secrets = super::secrets(dir.path(), &[("teams2", "url", &server.url("/s3cr3t"))]);
    let mut spec = teams_spec();
    spec["teams"]["webhookSecretRef"]["name"] = json!("teams2");
    let teams = build_ok(spec.clone(), &secrets);
    let err = teams.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.status, Some(400));
    assert!(!default_retry().retries(&err.class));
    assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    assert!(!debug_of(spec, &secrets).contains("s3cr3t"));

    // A template that cannot be rendered never reaches the target.
    let mut broken = teams_spec();
    broken["teams"]["facts"][0]["value"] = json!("{{ data.nope.deeper }}");
    let err = build_ok(broken, &secrets)
        .attempt(&event(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(
        err.message.starts_with("teams.facts[0].value:"),
        "{}",
        err.message
    );
}

// -- sms ------------------------------------------------------------------------------------

fn sms_spec(api_url: &str) -> Value {
    json!({"sms": {
        "accountSidSecretRef": {"name": "twilio", "key": "sid"},
        "authTokenSecretRef": {"name": "twilio", "key": "token"},
        "from": "+15005550006",
        "to": "{{ data.phone }}",
        "body": "Ticket #{{ data.ticket }}: {{ data.text }}",
        "apiUrl": api_url,
    }})
}

fn sms_event() -> Event {
    let mut e = event();
    e.data["phone"] = json!("+4915112345678");
    e
}

fn twilio_secrets(dir: &Path) -> Secrets {
    secrets(
        dir,
        &[
            ("twilio", "sid", TWILIO_SID),
            ("twilio", "token", TWILIO_TOKEN),
        ],
    )
}

const TWILIO_CREATED: &str =
    r#"{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued", "to": "+4915112345678"}"#;

#[tokio::test]
async fn sms_posts_to_twilios_messages_api_form_encoded_with_basic_auth() {
    let server = server(Reply::status(201, TWILIO_CREATED)).await;
    let dir = tempfile::tempdir().unwrap();
    let sms = build_ok(sms_spec(&server.url("")), &twilio_secrets(dir.path()));
    assert_eq!(sms.kind(), "sms");
    sms.attempt(&sms_event(), 1).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].uri,
        format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    );
    assert_eq!(
        header(&seen[0], "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"));
    assert_eq!(
        header(&seen[0], "authorization"),
        Some(format!("Basic {credentials}").as_str())
    );
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&seen[0].body)
        .into_owned()
        .collect();
    assert_eq!(
        form,
        [
            ("To".to_owned(), "+4915112345678".to_owned()),
            ("From".to_owned(), "+15005550006".to_owned()),
            ("Body".to_owned(), "Ticket #42: please refund".to_owned()),
        ]
    );
}

#[tokio::test]
async fn sms_a_permanent_twilio_error_is_not_retried_and_names_twilios_code() {
    let server = server(Reply::status(
        400,
        r#"{"code": 21211, "message": "Invalid 'To' Phone Number: +49151123XXXX", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = twilio_secrets(dir.path());
    let err = build_ok(sms_spec(&server.url("")), &secrets)
        .attempt(&sms_event(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Other, "{err:?}");
    assert_eq!(err.status, Some(400));
    assert!(
        err.message
            .contains("Twilio error 21211: Invalid 'To' Phone Number"),
        "{}",
        err.message
    );
    assert!(err.message.contains("errors/21211"), "{}", err.message);
    // Even a policy that retries every 4xx does not retry it.
    let mut eager = default_retry();
    eager.retry_on.push(RetryOn::Class(4));
    assert!(!eager.retries(&err.class));
    assert!(!err.message.contains(TWILIO_TOKEN) && !err.message.contains(TWILIO_SID));
    let debug = debug_of(sms_spec(&server.url("")), &secrets);
    assert!(
        !debug.contains(TWILIO_TOKEN) && !debug.contains(TWILIO_SID),
        "{debug}"
    );
}

#[tokio::test]
async fn sms_429_and_5xx_are_retried_honouring_retry_after() {
    let mut reply = Reply::status(
        429,
        r#"{"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}"#,
    );
    reply.headers.push(("retry-after", "3"));
    let server = server(reply).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = twilio_secrets(dir.path());
    let err = build_ok(sms_spec(&server.url("")), &secrets)
        .attempt(&sms_event(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Status(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
    assert!(default_retry().retries(&err.class));
    assert!(
        err.message.contains("Twilio error 20429"),
        "{}",
        err.message
    );

    let server = super::server(Reply::status(503, "upstream unavailable")).await;
    let err = build_ok(sms_spec(&server.url("")), &secrets)
        .attempt(&sms_event(), 1)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Status(503));
    assert!(default_retry().retries(&err.class));
}

#[tokio::test]
async fn sms_refuses_a_recipient_that_is_not_e164_without_calling_twilio() {
    let server = server(Reply::status(201, TWILIO_CREATED)).await;
    let dir = tempfile::tempdir().unwrap();
    let sms = build_ok(sms_spec(&server.url("")), &twilio_secrets(dir.path()));
    let mut e = sms_event();
    e.data["phone"] = json!("0151 1234");
    let err = sms.attempt(&e, 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(
        err.message
            .starts_with("sms.to: expected a phone number in E.164"),
        "{}",
        err.message
    );
    assert!(server.seen().is_empty());
}

#[test]
fn sms_build_errors_name_the_field_and_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(
        dir.path(),
        &[("twilio", "sid", "AC/../../x"), ("twilio", "token", "t")],
    );
    let err = build_err(sms_spec("http://127.0.0.1:1"), &secrets);
    assert!(err.starts_with("sms.accountSidSecretRef:"), "{err}");
    assert!(!err.contains("AC/../../x"), "{err}");
    let missing = build_err(
        sms_spec("http://127.0.0.1:1"),
        &Secrets::Mounted {
            dir: dir.path().join("none"),
        },
    );
    assert!(missing.starts_with("sms.accountSidSecretRef:"), "{missing}");
}
