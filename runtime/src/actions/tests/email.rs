//! The email action against a fake SMTP server: delivery, permanent and transient replies.

use super::*;

pub(super) fn email_spec(port: u16, password: bool) -> Value {
    let mut smtp = json!({"host": "127.0.0.1", "port": port, "tls": "none", "timeout": "5s"});
    if password {
        smtp["username"] = json!("bot");
        smtp["passwordSecretRef"] = json!({"name": "smtp", "key": "password"});
    }
    json!({"email": {
        "smtp": smtp,
        "from": "Bot <bot@example.com>",
        "to": ["ann@example.com", "Ops <ops@example.com>"],
        "subject": "Ticket #{{ data.ticket }}",
        "body": "From {{ data.from }}: {{ data.text }}",
    }})
}

#[tokio::test]
async fn email_arrives_with_the_rendered_subject_and_body_for_every_recipient() {
    let (port, mails) = fake_smtp("250 queued\r\n", "235 ok\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[("smtp", "password", SMTP_PASSWORD)]);
    let email = build_ok(email_spec(port, true), &secrets);
    assert_eq!(email.kind(), "email");
    email.attempt(&event(), 1).await.unwrap();
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.auth.as_deref().unwrap().starts_with("AUTH PLAIN"));
    assert_eq!(mail.from, "<bot@example.com>");
    assert_eq!(mail.rcpts, ["<ann@example.com>", "<ops@example.com>"]);
    assert!(
        mail.data.contains("Subject: Ticket #42\r\n"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("From: Bot <bot@example.com>"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("ann@example.com"), "{}", mail.data);
    assert!(mail.data.contains("Ops <ops@example.com>"), "{}", mail.data);
    assert!(
        mail.data.contains("Content-Type: text/plain"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains("\r\n\r\nFrom ann@example.com: please refund"),
        "{}",
        mail.data
    );
}

#[tokio::test]
async fn a_permanent_smtp_reply_is_not_retried() {
    let (port, mails) = fake_smtp("550 5.7.1 message rejected\r\n", "235 ok\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let email = build_ok(email_spec(port, false), &secrets);
    let err = email.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Other);
    assert!(!default_retry().retries(&err.class));
    assert!(
        err.message.starts_with(&format!(
            "email: SMTP 550 from 127.0.0.1:{port} (permanent reply, not retried)"
        )),
        "{}",
        err.message
    );
    assert!(err.message.contains("message rejected"), "{}", err.message);
    assert!(mails.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_transient_smtp_reply_is_retried() {
    let (port, _) = fake_smtp("451 4.3.0 try again later\r\n", "235 ok\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let email = build_ok(email_spec(port, false), &secrets);
    let err = email.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Connection);
    assert_eq!(err.status, None);
    assert!(default_retry().retries(&err.class));
    assert!(err.message.contains("SMTP 451"), "{}", err.message);
    assert!(err.message.contains("try again later"), "{}", err.message);
}

#[tokio::test]
async fn an_smtp_server_that_cannot_be_reached_is_a_connection_failure() {
    let port = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path(), &[]);
    let email = build_ok(email_spec(port, false), &secrets);
    let err = email.attempt(&event(), 1).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Connection, "{}", err.message);
    assert!(
        err.message
            .starts_with(&format!("email: cannot reach SMTP server 127.0.0.1:{port}")),
        "{}",
        err.message
    );
}
