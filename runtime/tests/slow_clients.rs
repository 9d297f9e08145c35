//! Slow clients against a running `inputbot run` (the real binary, real sockets on 127.0.0.1,
//! server limits set by its flags): 2,000 connections that send half a request head and stall,
//! more than the connection cap, and senders that trickle a body. Meanwhile a new connection's
//! `/healthz` answers within a second and a signed webhook is accepted; past the header-read
//! timeout the server has closed every stalled socket, and a trickled body is answered `408`.

mod support;

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use support::{github_signature, metric, pass_through};

const SECRET: &str = "slow-secret";
/// Stalled connections; fewer when the file-descriptor limit would not allow them.
const STALLED: usize = 2000;
/// Senders that trickle a body.
const TRICKLING: usize = 20;
/// The connection cap the bot runs with: below `STALLED`, so slow clients reach it.
const MAX_CONNECTIONS: usize = 1024;
/// The header-read and request timeouts the bot runs with.
const TIMEOUT: Duration = Duration::from_secs(5);

fn bot() -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{hmac: {SECRET}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: hooks}}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {{hmac: {{preset: github, secretRef: {{name: creds, key: hmac}}}}}}
{}"#,
        pass_through("hooks", "{log: {template: 'got {{ data.n }}'}}", "")
    )
}

/// The binary on a free port; killed when dropped.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Running {
    let file = dir.join("bot.yaml");
    std::fs::write(&file, bot()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let secs = format!("{}s", TIMEOUT.as_secs());
    let child = Command::new(env!("CARGO_BIN_EXE_inputbot"))
        .args(["run", "--listen", &addr, "--data-dir"])
        .arg(dir.join("data"))
        .arg("-f")
        .arg(&file)
        .args(["--http-header-read-timeout", &secs])
        .args(["--http-request-timeout", &secs])
        .args(["--http-idle-timeout", &secs])
        .env("INPUTBOT_HTTP_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string())
        // Logs go to files: a pipe nobody reads would stall the process once full.
        .stdout(Stdio::from(File::create(dir.join("stdout.log")).unwrap()))
        .stderr(Stdio::from(File::create(dir.join("stderr.log")).unwrap()))
        .spawn()
        .unwrap();
    Running { child, addr }
}

/// A client that opens a new connection for every request, as a probe does.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// How long `/healthz` took to answer `200` on a new connection, if it did within a second.
async fn probe(client: &reqwest::Client, addr: &str) -> Option<Duration> {
    let started = Instant::now();
    match client
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => Some(started.elapsed()),
        _ => None,
    }
}

/// The soft limit on open files of this process (Linux), if it can be read.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Reads until the server closes the socket (EOF or reset) or `deadline`; returns what was
/// read, or `None` when the socket was still open at the deadline.
async fn until_closed(socket: &mut TcpStream, deadline: tokio::time::Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `inputbot_http_connections_closed_total{reason="<reason>"}` in the exposition text.
fn closed(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("inputbot_http_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_clients_are_cut_off_while_probes_and_signed_webhooks_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path());
    let client = fresh_client();
    let addr = running.addr.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&client, &addr).await.is_none() {
        assert!(Instant::now() < deadline, "the bot never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Room for the stalled sockets here and the server's (each holds one per connection up to
    // the cap), with a margin for everything else.
    let stalled_count = open_files_limit().map_or(STALLED, |limit| {
        STALLED.min(limit.saturating_sub(MAX_CONNECTIONS + 256))
    });
    assert!(
        stalled_count > MAX_CONNECTIONS,
        "the file-descriptor limit allows only {stalled_count} stalled connections"
    );

    // Half a request head each, then nothing.
    let opened = Instant::now();
    let mut stalled = Vec::with_capacity(stalled_count);
    for _ in 0..stalled_count {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /gh HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    // A whole head announcing 1,000 bytes of body, then 10 of them.
    let mut trickling = Vec::with_capacity(TRICKLING);
    for _ in 0..TRICKLING {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"POST /gh HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"n\": 1, ",
        )
        .await
        .unwrap();
        trickling.push(s);
    }
    let connected = opened.elapsed();

    // While they hold the cap: probes on new connections, and a signed webhook.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let took = probe(&client, &addr)
            .await
            .expect("/healthz did not answer within 1 s on a new connection");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probed = opened.elapsed();
    let body = br#"{"n": 42}"#.to_vec();
    let accepted = client
        .post(format!("http://{addr}/gh"))
        .header("content-type", "application/json")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", github_signature(SECRET, &body))
        .timeout(Duration::from_secs(5))
        .body(body)
        .send()
        .await
        .expect("the signed webhook was not answered");
    assert_eq!(accepted.status(), 202);
    // The probes were answered while slow clients held the cap (not after they timed out).
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = metric(&metrics, "inputbot_http_connections");
    assert!(
        open as usize >= MAX_CONNECTIONS - TRICKLING,
        "only {open} connections open when probed: connected after {connected:?}, probed after \
         {probed:?}, webhook answered after {:?}",
        opened.elapsed()
    );

    // Past the header-read timeout every stalled socket was closed by the server.
    let until = tokio::time::Instant::now() + TIMEOUT + Duration::from_secs(3);
    let mut still_open = 0;
    for s in &mut stalled {
        if until_closed(s, until).await.is_none() {
            still_open += 1;
        }
    }
    let all_closed = opened.elapsed();
    assert_eq!(
        still_open, 0,
        "{still_open} of {stalled_count} stalled sockets still open"
    );
    // A trickled body is answered 408 once the request timeout passed, then closed.
    for s in &mut trickling {
        let answer = until_closed(s, until)
            .await
            .expect("a trickling sender's socket is still open");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    // Still serving; the server counted what it closed and why.
    assert!(probe(&client, &addr).await.is_some(), "/healthz after");
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (timed_out, evicted) = (
        closed(&metrics, "header_timeout"),
        closed(&metrics, "evicted"),
    );
    eprintln!(
        "{stalled_count} stalled + {TRICKLING} trickling connected in {connected:?}; slowest probe \
         {slowest:?}; all closed after {all_closed:?}; header timeouts {timed_out}, evicted at the \
         cap of {MAX_CONNECTIONS}: {evicted}"
    );
    assert!(
        evicted > 0 && timed_out > 0,
        "the cap and the header timeout both closed some: {metrics}"
    );
    assert!(
        timed_out + evicted >= stalled_count as u64,
        "every stalled connection was closed by the server: {timed_out} + {evicted}"
    );
}
