//! A mail server on 127.0.0.1 that speaks just enough plain SMTP for a real client (greeting,
//! EHLO offering AUTH PLAIN, AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT), accepts every message
//! and records it: the stand-in for an example's SMTP relay. On loopback unless
//! `INPUTBOT_E2E_HOST` says where the cluster's pods reach this machine.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One message received.
#[derive(Clone, Debug, Default)]
pub struct Mail {
    /// The `AUTH PLAIN` credentials, decoded: (user, password).
    pub auth: Option<(String, String)>,
    /// `MAIL FROM:` argument.
    pub from: String,
    /// `RCPT TO:` arguments.
    pub to: Vec<String>,
    /// The message (headers and body) as sent after DATA, dot-stuffing undone.
    pub data: String,
}

/// A running mail sink; it stops with the test's runtime.
#[derive(Clone)]
pub struct MailSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The host a client is to connect to (see [`crate::receiver::listen_hosts`]).
    pub host: String,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl MailSink {
    /// Starts a sink on a free port ([`crate::receiver::listen_hosts`]).
    pub async fn start() -> MailSink {
        let (bind, host) = crate::receiver::listen_hosts();
        let listener = TcpListener::bind((bind.as_str(), 0))
            .await
            .expect("a port for the mail sink");
        let addr = listener.local_addr().expect("its address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let record = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, record.clone()));
            }
        });
        MailSink { addr, host, mails }
    }

    /// Every message so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }

    /// Waits until `n` messages arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} mail(s); got {mails:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One SMTP session, bounded in commands and message lines.
async fn session(stream: tokio::net::TcpStream, record: Arc<Mutex<Vec<Mail>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut mail = Mail::default();
    if write
        .write_all(b"220 inputbot-e2e ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    for _ in 0..1000 {
        let mut line = String::new();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-inputbot-e2e\r\n250 AUTH PLAIN\r\n"
        } else if let Some(encoded) = upper.starts_with("AUTH PLAIN ").then(|| line[11..].trim()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            match parts.as_slice() {
                [_, user, password] => {
                    mail.auth = Some((user.clone(), password.clone()));
                    "235 ok\r\n"
                }
                _ => "501 malformed AUTH PLAIN\r\n",
            }
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = line[10..].trim().to_owned();
            "250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(line[8..].trim().to_owned());
            "250 ok\r\n"
        } else if upper.starts_with("DATA") {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            for _ in 0..100_000 {
                let mut data = String::new();
                if lines.read_line(&mut data).await.unwrap_or(0) == 0 {
                    return;
                }
                if data == ".\r\n" {
                    break;
                }
                mail.data.push_str(data.strip_prefix('.').unwrap_or(&data));
            }
            let auth = mail.auth.clone();
            record.lock().expect("lock").push(std::mem::take(&mut mail));
            mail.auth = auth;
            "250 queued\r\n"
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
}
