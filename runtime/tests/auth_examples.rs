//! The `jwt`, `apiKey` and `oauth2` examples run with `inputbot run` as a user runs them: the
//! binary serves each, refuses what it must, and no secret from the examples reaches its
//! output.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

struct Running {
    child: Child,
    base: String,
}

async fn run(example: &str, data: &Path) -> Running {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_inputbot"))
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .arg("-f")
        .arg(repo(&format!("examples/{example}.yaml")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{example} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running { child, base }
}

impl Running {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// SIGTERM, then stdout and stderr once it exited.
    async fn stop(mut self) -> (String, String) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the bot did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut out, mut err) = (String::new(), String::new());
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (out, err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_examples_run_and_refuse_requests_without_a_token() {
    for (example, path) in [
        ("pubsub-push-jwt", "/pubsub/orders"),
        ("github-actions-oidc", "/deployments"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bot = run(example, dir.path()).await;
        let answer = bot
            .post(path, &[], r#"{"message": {"messageId": "1"}}"#)
            .await;
        assert_eq!(answer.status(), 401, "{example}");
        let challenge = answer.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer "), "{example}: {challenge}");
        let text = answer.text().await.unwrap();
        assert!(text.contains("missing_credentials"), "{example}: {text}");
        let (_, err) = bot.stop().await;
        assert!(err.contains("drained=true"), "{example}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_example_accepts_both_rotated_keys_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let bot = run("partner-api-key", dir.path()).await;
    for (id, key, status) in [
        ("A-1", "change-me-partner-key-2026-11", 202),
        ("A-2", "change-me-partner-key-2026-12", 202),
        ("A-3", "change-me-partner-key-2026-10", 401),
    ] {
        let body = format!(r#"{{"orderId": "{id}"}}"#);
        let answer = bot.post("/orders", &[("x-api-key", key)], &body).await;
        assert_eq!(answer.status(), status, "{id}");
    }
    assert_eq!(
        bot.post("/orders", &[], r#"{"orderId": "A-4"}"#)
            .await
            .status(),
        401
    );
    let (out, err) = bot.stop().await;
    assert!(
        out.contains("order A-1 (key partner-keys/current)"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("order A-2 (key partner-keys/next)"),
        "{out}\n{err}"
    );
    assert!(!out.contains("A-3") && !out.contains("A-4"), "{out}");
    assert!(
        !format!("{out}{err}").contains("change-me-partner-key"),
        "{out}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth2_example_runs_and_dead_letters_with_the_token_endpoint_named_when_it_is_unreachable()
 {
    let dir = tempfile::tempdir().unwrap();
    let bot = run("crm-oauth2", dir.path()).await;
    assert_eq!(
        bot.post(
            "/signups",
            &[("x-api-key", "change-me-signup-key")],
            r#"{"email": "ada@example.org"}"#,
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        bot.post(
            "/signups",
            &[("x-api-key", "nope")],
            r#"{"email": "x@example.org"}"#
        )
        .await
        .status(),
        401
    );
    let (out, err) = bot.stop().await;
    let all = format!("{out}{err}");
    assert!(
        !all.contains("change-me-client-secret") && !all.contains("change-me-signup-key"),
        "{all}"
    );
    // The CRM is not reachable from a test machine: the delivery ends in the dead letter (or,
    // cut short by the drain, with class shutdown), naming the token endpoint.
    let dlq = std::fs::read_to_string(
        dir.path()
            .join("dlq/inputbot.default.signup-to-crm.act.dlq.jsonl"),
    )
    .unwrap_or_default();
    assert!(
        dlq.contains("oauth2 token from POST https://login.crm.example.com/oauth2/token"),
        "{dlq}\n{err}"
    );
    assert!(!dlq.contains("change-me-client-secret"), "{dlq}");
}
