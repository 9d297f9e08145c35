//! The `inputbot` binary as a user runs it: validate's exit codes and messages, `run` serving
//! the built-in quickstart and draining on SIGTERM, and `dlq inspect`.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn inputbot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inputbot"))
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_passes_every_example() {
    let mut cmd = inputbot();
    cmd.arg("validate");
    let mut files: Vec<_> = std::fs::read_dir(repo("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 11, "{files:?}");
    for file in &files {
        cmd.arg("-f").arg(file);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 errors"), "{text}");
}

#[test]
fn validate_names_file_document_resource_and_field_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: inputbot.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: p, namespace: team-a}\nspec:\n  botRef: {name: b}\n  steps:\n    - filter: {when: 'data.x =='}\n",
    )
    .unwrap();
    let out = inputbot()
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bad.yaml (document 1): Pipeline team-a/p: spec.steps[0].filter.when: invalid CEL expression"), "{text}");
    assert!(
        text.contains("warning:") && text.contains("spec.botRef.name"),
        "{text}"
    );
}

#[test]
fn validate_reports_a_missing_file_and_broken_yaml_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    let out = inputbot()
        .args(["validate", "-f", "/nonexistent/bot.yaml", "-f"])
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("/nonexistent/bot.yaml (document 1): cannot read the file"),
        "{text}"
    );
    assert!(
        text.contains("broken.yaml (document 1): not valid YAML"),
        "{text}"
    );
}

#[cfg(unix)]
#[test]
fn run_serves_the_quickstart_and_drains_on_sigterm() {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = inputbot()
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/github");
    let body = r#"{"action":"opened","issue":{"number":42,"title":"App crash on login","user":{"login":"octocat"}}}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"quickstart-secret").unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-github-delivery", "cli-test-1")
                .header("x-hub-signature-256", &signature)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) => break r.status().as_u16(),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("the bot never listened: {e}"),
            }
        }
    });
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM, as Kubernetes sends it.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the bot did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "{stderr}");
    assert!(
        stdout.contains(r#"issue #42 "App crash on login" by octocat → labels bug"#),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("drained=true"), "{stderr}");
    assert!(!stderr.contains("quickstart-secret"), "{stderr}");
}

#[test]
fn dlq_inspect_says_when_there_is_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = inputbot()
        .args(["dlq", "inspect", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dead letters"));
}

#[test]
fn dlq_inspect_never_prints_a_senders_terminal_escapes() {
    use inputbot_runtime::{
        dlq::{DeadLetter, ErrorInfo, FailedAt, rewrite},
        event::Event,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut event = Event::new("ns/b", "s", "t", serde_json::json!({}));
    event.id = "evil\u{1b}]0;owned\u{7}\u{1b}[2J".into();
    let record = DeadLetter::new(
        event,
        FailedAt {
            resource: inputbot_api::config::ResourceId::new("Pipeline", "ns", "p"),
            stage: "step".into(),
            name: "shape".into(),
        },
        ErrorInfo {
            class: "transform".into(),
            message: "bad \u{1b}[31mred\u{1b}[0m\r\nforged line".into(),
            status: None,
            attempts: 1,
        },
        "inputbot.ns.b.raw",
    );
    std::fs::create_dir_all(dir.path().join("dlq")).unwrap();
    rewrite(&dir.path().join("dlq/inputbot.ns.p.dlq.jsonl"), &[record]).unwrap();
    let out = inputbot()
        .args(["dlq", "inspect", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(text.contains(r"evil\u{1b}]0;owned"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn validate_rejects_a_broken_ai_step_teams_and_sms_action_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: b}
spec:
  sources: [{name: hook, webhook: {path: /hook, auth: {none: {}}}}]
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  botRef: {name: b}
  steps:
    - ai:
        url: http://127.0.0.1:11434/v1/chat/completions
        model: llama3.1
        userPrompt: "{{ data.text"
        responseSchema: {type: array}
        resultField: ai
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: t}
spec:
  pipelineRef: {name: p}
  action:
    teams: {webhookSecretRef: {name: teams, key: url}, text: "{{ nope }}"}
---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {name: s}
spec:
  pipelineRef: {name: p}
  action:
    sms:
      accountSidSecretRef: {name: twilio, key: sid}
      authTokenSecretRef: {name: twilio, key: token}
      from: "+15005550006"
      to: "0151-123"
      body: hi
"#,
    )
    .unwrap();
    let out = inputbot()
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "Pipeline default/p: spec.steps[0].ai.userPrompt: template has '{{' at offset 0 without a closing '}}'",
        "Pipeline default/p: spec.steps[0].ai.responseSchema: the answer must be a JSON object",
        "ActionBinding default/t: spec.action.teams.text: in template",
        "ActionBinding default/s: spec.action.sms.to: expected a phone number in E.164 form",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
