//! `inputbot run` on a filesystem that fills up: a real, small tmpfs mounted in a private
//! mount namespace (`unshare --user --map-root-user --mount`, no privileges needed), filled
//! to the last block while events stream in, then emptied again.
//!
//! While the disk is full: intake answers `503` (an event the log could not store is never
//! acknowledged), `/healthz` keeps answering, and dead letters that cannot be written keep
//! their events unacknowledged. When space returns: intake accepts again, and every event
//! ever answered `202` is delivered by the binding whose target accepts and dead-lettered by
//! the one whose target refuses.

mod support;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::*;

fn bot(ok: &str, refusing: &str) -> String {
    format!(
        r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: intake}}
spec:
  sources:
    - name: hook
      webhook: {{path: /hook, auth: {{none: {{}}}}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {{name: flow}}
spec:
  botRef: {{name: intake}}
  steps: [{{transform: {{jq: '{{n: .n, pad: .pad}}'}}}}]
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: ok}}
spec:
  pipelineRef: {{name: flow}}
  action: {{http: {{url: '{ok}'}}}}
  delivery:
    retry: {{maxAttempts: 3, initialDelay: 1ms, maxDelay: 5ms, jitter: false}}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: refused}}
spec:
  pipelineRef: {{name: flow}}
  action: {{http: {{url: '{refusing}'}}}}
  delivery:
    retry: {{maxAttempts: 100, initialDelay: 100ms, maxDelay: 100ms, jitter: false}}
    circuitBreaker: {{minRequests: 100000}}
"#
    )
}

/// The shell that mounts the tmpfs in its own namespace, runs the bot on it, and fills,
/// empties and finally copies it out on request (files in `$CTL`).
const SCRIPT: &str = r#"
set -eu
mount -t tmpfs -o size=2m tmpfs "$MNT"
mkdir "$MNT/data"
"$BIN" run --listen "$LISTEN" -f "$FILE" --data-dir "$MNT/data" --bus disk &
pid=$!
i=0
while [ $i -lt 3000 ]; do
  i=$((i + 1))
  if [ -e "$CTL/fill" ]; then
    rm "$CTL/fill"
    dd if=/dev/zero of="$MNT/filler" bs=4096 2>/dev/null || true
    touch "$CTL/filled"
  fi
  if [ -e "$CTL/free" ]; then
    rm "$CTL/free" "$MNT/filler"
    touch "$CTL/freed"
  fi
  if [ -e "$CTL/stop" ]; then
    kill -TERM $pid
    wait $pid || true
    cp -r "$MNT/data" "$CTL/data.copy"
    mv "$CTL/data.copy" "$CTL/data"
    exit 0
  fi
  sleep 0.05
done
kill -KILL $pid
exit 1
"#;

struct Namespace {
    child: Child,
    ctl: PathBuf,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Namespace {
    /// Asks the shell for `what` and waits for its answer `done`.
    async fn ask(&self, what: &str, done: &str) {
        std::fs::write(self.ctl.join(what), "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl.join(done).exists() {
            assert!(Instant::now() < deadline, "the namespace did not {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, n: usize) -> (u16, Option<String>) {
    // 2 KiB per event: the small filesystem fills within a few hundred.
    let body = json!({"n": n, "pad": "x".repeat(2048)});
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let id = r
        .json::<Value>()
        .await
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    (status, id)
}

async fn healthz_within_a_second(client: &reqwest::Client, base: &str) {
    let started = Instant::now();
    let r = client
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .expect("/healthz answers within a second");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

fn dead_lettered(data: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(data.join("dlq")).unwrap().flatten() {
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let record: Value = serde_json::from_str(line).expect("every dead letter is whole");
            ids.push(record["event"]["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_503_loses_nothing_accepted_and_recovers_when_space_returns() {
    let ok = Target::start(Behaviour::Ok).await;
    // Refuses with 503 (retried) until switched to 400: its dead letters are written while the
    // disk is full.
    let refusing = Target::start(Behaviour::Always(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mnt, ctl) = (dir.path().join("mnt"), dir.path().join("ctl"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&ctl).unwrap();
    let file = dir.path().join("bot.yaml");
    std::fs::write(&file, bot(&ok.url("/ok"), &refusing.url("/no"))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let ns = Namespace {
        child: Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", SCRIPT])
            .env("MNT", &mnt)
            .env("CTL", &ctl)
            .env("FILE", &file)
            .env("BIN", env!("CARGO_BIN_EXE_inputbot"))
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("util-linux unshare runs"),
        ctl: ctl.clone(),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        let text = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the bot did not come up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{base}/hook");
    let mut accepted = Vec::new();
    let mut n = 0;

    // Space: accepted.
    for _ in 0..100 {
        let (status, id) = post(&client, &url, n).await;
        n += 1;
        assert_eq!(status, 202);
        accepted.push(id.unwrap());
    }

    // Full: the log cannot store an event, so none is acknowledged; health still answers.
    ns.ask("fill", "filled").await;
    refusing.set(Behaviour::Always(400));
    let mut refused = 0;
    for _ in 0..100 {
        let (status, id) = post(&client, &url, n).await;
        n += 1;
        match status {
            503 => refused += 1,
            // Stored in what was left before the filler took the last block.
            202 => accepted.push(id.unwrap()),
            other => panic!("expected 202 or 503 while the disk is full, got {other}"),
        }
        healthz_within_a_second(&client, &base).await;
    }
    assert!(
        refused >= 95,
        "only {refused} of 100 refused on a full disk"
    );

    // Space returns: accepted again (a sender retries a 503).
    ns.ask("free", "freed").await;
    for _ in 0..50 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, id) = post(&client, &url, n).await;
            if status == 202 {
                accepted.push(id.unwrap());
                break;
            }
            assert_eq!(status, 503);
            assert!(Instant::now() < deadline, "intake never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
    }

    // Every accepted event reaches both bindings' ends: delivered, and dead-lettered.
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let delivered: HashSet<String> = ok.delivered_ids().into_iter().collect();
        if metric(&text, "inputbot_events_dead_lettered_total") >= want.len() as u64
            && want.iter().all(|id| delivered.contains(*id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every accepted event finished: {} of {} delivered, {} dead-lettered",
            want.iter().filter(|id| delivered.contains(**id)).count(),
            want.len(),
            metric(&text, "inputbot_events_dead_lettered_total")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ns.ask("stop", "data").await;
    let dead: HashSet<String> = dead_lettered(&ctl.join("data")).into_iter().collect();
    let missing: Vec<&&str> = want.iter().filter(|id| !dead.contains(**id)).collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");
    // Both stores met the full disk: the log refused appends, and dead letters had to wait.
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(
        log.contains("cannot store events in the bus log") && log.contains("No space left"),
        "the log never met the full disk:\n{log}"
    );
    assert!(
        log.contains("writing a dead letter failed"),
        "no dead letter met the full disk:\n{log}"
    );
    eprintln!(
        "disk full: {} accepted, {refused} answered 503 while full, every one delivered and dead-lettered",
        want.len()
    );
}
