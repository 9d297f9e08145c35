//! A hostile sender against a running `inputbot run` (the real binary, real HTTP): inputs that
//! would overflow a parser's stack or keep an expression busy forever. For each, the process
//! stays up, `/healthz` answers within a second, the next request is answered, the offending
//! event is dead-lettered with its reason (or refused with its 4xx), and SIGTERM still ends
//! the process. The 2,000 slow connections are in `slow_clients.rs`.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BOT: &str = r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: open}
spec:
  sources:
    - name: numbers
      webhook: {path: /numbers, auth: {none: {}}, maxBodyBytes: 1048576}
    - name: loops
      webhook: {path: /loops, auth: {none: {}}}
    - name: edge
      webhook: {path: /edge, auth: {none: {}}, maxBodyBytes: 2097152, idempotencyKey: 'data.key'}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: parse}
spec:
  botRef: {name: open}
  steps:
    - filter: {when: 'event.botsource == "numbers"'}
    - name: read-number
      transform: {jq: '{n: (.n | tonumber)}'}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: count}
spec:
  botRef: {name: open}
  steps:
    - filter: {when: 'event.botsource == "loops"'}
    - name: count-up
      transform: {jq: '{n: last(range(.n))}'}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: show-parse}
spec:
  pipelineRef: {name: parse}
  action: {log: {template: 'parsed {{ data.n }}'}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: show-count}
spec:
  pipelineRef: {name: count}
  action: {log: {template: 'counted {{ data.n }}'}}
"#;

/// The binary, running `inputbot run` on a free port; killed if the test fails.
struct Running {
    child: Child,
    base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Running {
    let file = dir.join("bot.yaml");
    std::fs::write(&file, BOT).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_inputbot"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "-f"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// `/healthz` answers `200` within a second.
async fn healthy(client: &reqwest::Client, base: &str) -> bool {
    matches!(
        client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

async fn wait_until_listening(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(client, base).await {
        assert!(Instant::now() < deadline, "the bot never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> u16 {
    send(client, url, &[("content-type", "application/json")], body)
        .await
        .0
}

/// Dead letters of a pipeline, once `want` of them are on disk (or after `within`).
async fn dead_letters(
    dir: &Path,
    pipeline: &str,
    want: usize,
    within: Duration,
) -> Vec<inputbot_runtime::dlq::DeadLetter> {
    let path = dir.join(format!("data/dlq/inputbot.default.{pipeline}.dlq.jsonl"));
    let deadline = Instant::now() + within;
    loop {
        let found = inputbot_runtime::dlq::read(&path).unwrap_or_default();
        if found.len() >= want || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM ends the process within `within`; returns its stdout and stderr.
fn terminate(mut running: Running, within: Duration) -> (String, String) {
    let pid = running.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + within;
    loop {
        if running.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not end the process");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    let mut err = String::new();
    running
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    running
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (out, err)
}

/// Asserts the process is alive and answers, several times over `over`.
async fn stays_up(running: &mut Running, client: &reqwest::Client, over: Duration) {
    let deadline = Instant::now() + over;
    while Instant::now() < deadline {
        assert!(
            running.child.try_wait().unwrap().is_none(),
            "the process ended"
        );
        assert!(
            healthy(client, &running.base).await,
            "/healthz did not answer within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_nested_200000_deep_for_tonumber_is_dead_lettered_and_the_process_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path());
    let client = reqwest::Client::new();
    wait_until_listening(&client, &running.base).await;
    let numbers = format!("{}/numbers", running.base);

    let deep = "[".repeat(200_000);
    let body = serde_json::to_string(&serde_json::json!({ "n": deep })).unwrap();
    assert_eq!(post(&client, &numbers, body).await, 202);
    stays_up(&mut running, &client, Duration::from_millis(800)).await;
    // The next request is answered and its event goes through.
    assert_eq!(post(&client, &numbers, r#"{"n": "42"}"#.into()).await, 202);
    let dead = dead_letters(dir.path(), "parse", 1, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].failed_at.name, "read-number");
    assert_eq!(dead[0].error.class, "budget", "{:?}", dead[0].error);
    assert!(
        dead[0].error.message.contains("deeper than 128"),
        "{:?}",
        dead[0].error
    );
    let (out, _) = terminate(running, Duration::from_secs(10));
    assert!(out.contains("parsed 42"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_that_makes_range_count_forever_is_dead_lettered_and_the_process_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path());
    let client = reqwest::Client::new();
    wait_until_listening(&client, &running.base).await;
    let loops = format!("{}/loops", running.base);

    // More hostile events than the machine has cores.
    for _ in 0..3 {
        assert_eq!(post(&client, &loops, r#"{"n": 1e15}"#.into()).await, 202);
    }
    stays_up(&mut running, &client, Duration::from_millis(800)).await;
    assert_eq!(post(&client, &loops, r#"{"n": 3}"#.into()).await, 202);
    let dead = dead_letters(dir.path(), "count", 3, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    for d in &dead {
        assert_eq!(d.failed_at.name, "count-up");
        assert_eq!(d.error.class, "budget", "{:?}", d.error);
    }
    stays_up(&mut running, &client, Duration::from_millis(300)).await;
    let (out, _) = terminate(running, Duration::from_secs(10));
    assert!(out.contains("counted 2"), "{out}");
}

/// Posts `body` with `headers`; returns the status and the JSON answer.
async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, serde_json::Value) {
    let mut request = client.post(url).timeout(Duration::from_secs(5)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: no answer: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_huge_numbers_megabyte_keys_and_broken_cloudevents_get_their_4xx_while_health_holds()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path());
    let client = reqwest::Client::new();
    wait_until_listening(&client, &running.base).await;
    let edge = format!("{}/edge", running.base);
    let json = [("content-type", "application/json")];

    // Nesting past intake's limit (128), as arrays and as objects.
    for deep in [
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000)),
    ] {
        let (status, answer) = send(&client, &edge, &json, deep).await;
        assert_eq!(status, 400, "{answer}");
        stays_up(&mut running, &client, Duration::from_millis(200)).await;
    }
    // A number no float holds, and one with a million digits.
    for huge in [
        r#"{"key": "k", "n": 1e400}"#.to_string(),
        format!(r#"{{"key": "k", "n": 1{}}}"#, "0".repeat(1_000_000)),
    ] {
        let (status, answer) = send(&client, &edge, &json, huge).await;
        assert_eq!(status, 400, "{answer}");
        stays_up(&mut running, &client, Duration::from_millis(200)).await;
    }
    // A 1 MiB idempotency key: accepted once, its repeat answered as a duplicate.
    let key = "k".repeat(1 << 20);
    let body = serde_json::json!({ "key": key }).to_string();
    let (status, first) = send(&client, &edge, &json, body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = send(&client, &edge, &json, body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    stays_up(&mut running, &client, Duration::from_millis(200)).await;
    // A body over the source's limit, announced as a CloudEvent: refused from its
    // Content-Length, before a byte of it is read (sent by hand, so the answer is read while
    // the body is still unsent, as a sender that waits would read it).
    let addr = running.base.trim_start_matches("http://").to_owned();
    let status_line = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "POST /edge HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             ce-specversion: 1.0\r\nce-id: big\r\nce-source: /hostile\r\nce-type: t\r\n\
             content-length: {}\r\n\r\n",
            3 << 20
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    // Broken CloudEvents: binary mode without its id, structured mode that is not JSON, and one
    // whose data is nested past the limit.
    let (status, answer) = send(
        &client,
        &edge,
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-source", "/hostile"),
            ("ce-type", "t"),
        ],
        r#"{"key": "no-id"}"#.into(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let structured = [("content-type", "application/cloudevents+json")];
    let (status, answer) = send(&client, &edge, &structured, "{\"specversion\": ".into()).await;
    assert_eq!(status, 400, "{answer}");
    let nested = format!(
        r#"{{"specversion": "1.0", "id": "deep", "source": "/hostile", "type": "t", "data": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, answer) = send(&client, &edge, &structured, nested).await;
    assert_eq!(status, 400, "{answer}");
    stays_up(&mut running, &client, Duration::from_millis(300)).await;

    // After all that, an ordinary event is still taken.
    let (status, answer) = send(&client, &edge, &json, r#"{"key": "fine"}"#.into()).await;
    assert_eq!(status, 202, "{answer}");
    let (_, err) = terminate(running, Duration::from_secs(10));
    assert!(!err.contains("panicked"), "{err}");
}
